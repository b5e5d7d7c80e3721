"""The full-text index of room events, and the queries that search it.

What is indexed (spec: Server Side Search): `content.body` of
m.room.message, `content.name` of m.room.name and, of m.room.topic,
`content.topic` with the `text/plain` bodies of `content["m.topic"]`.
Events are indexed in the transaction that persists them
(`index_events_txn`) and leave the index in the one that redacts them
(`unindex_event_txn`). Encrypted events have nothing to index.

The index is keyed by the event's `stream_ordering`:

- PostgreSQL: `event_search(stream_ordering, vector)`, a tsvector built
  with the configured text search configuration (`search.language`), a GIN
  index, `to_tsquery` prefix matching and `ts_rank`.
- SQLite: an FTS5 table whose rowid is the stream ordering, Porter stemming
  over Unicode words, ranked by `bm25`.

A search reads only events of rooms the user is joined to, or was, up to
the event by which they left; history visibility of each hit is decided by
the caller, which must apply it to anything it reports, counts included. The event filter's fields are applied in SQL, so a page's limit
counts events the user asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event
from homeserver.search.query import SearchQuery

from .engines import Database, Transaction, placeholders
from .history import EventMatch, match_sql

# Which event type each searchable key belongs to (one key per type).
KEY_TYPES = {
    "content.body": "m.room.message",
    "content.name": "m.room.name",
    "content.topic": "m.room.topic",
}

# Marks around matched words in highlighted text; stripped from indexed text.
_START, _STOP = "\x01", "\x02"
_HIGHLIGHTED = re.compile(f"{_START}([^{_STOP}]*){_STOP}")


def searchable_text(event: Event) -> str | None:
    """The text of `event` the index holds, or None if it holds none."""
    if event.rejected or event.redacted_by is not None:
        return None
    content = event.content
    parts: list[Any] = []
    if event.type == "m.room.message":
        parts = [content.get("body")]
    elif event.type == "m.room.name":
        parts = [content.get("name")]
    elif event.type == "m.room.topic":
        parts = [content.get("topic")]
        block = content.get("m.topic")
        texts = block.get("m.text") if isinstance(block, dict) else None
        if isinstance(texts, list):
            parts += [
                t.get("body")
                for t in texts
                if isinstance(t, dict) and t.get("mimetype", "text/plain") == "text/plain"
            ]
    strings = [p for p in dict.fromkeys(p for p in parts if isinstance(p, str)) if p.strip()]
    if not strings:
        return None
    # (NUL: text columns cannot hold it, and it is no word.)
    return "\n".join(strings).replace(_START, " ").replace(_STOP, " ").replace("\x00", " ")


def tsquery_sql(language: str, query: SearchQuery) -> str:
    """`to_tsquery(...)` of `query`, written into the SQL as literals.

    Literals, not parameters: PostgreSQL then folds the call to a constant
    and plans with the query's real selectivity. With parameters, a generic
    plan of a prepared statement re-parses the query for every row it ranks
    (five times slower on a word in most messages). Both strings are safe
    to inline: the query holds only letters, digits and its own operators
    (see homeserver/search/query.py), the language only a configuration
    name (checked by the config loader); quotes are doubled all the same.
    """

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    return f"to_tsquery({literal(language)}::regconfig, {literal(query.to_tsquery())})"


@dataclass(frozen=True)
class SearchHit:
    event_id: str
    room_id: str
    sender: str
    stream_ordering: int
    # Higher is better; comparable only within one search.
    rank: float


@dataclass(frozen=True)
class SearchScope:
    """Which events a search reads, before its cursor."""

    user_id: str
    query: SearchQuery
    types: Sequence[str]
    match: EventMatch
    rooms: Sequence[str] | None = None
    not_rooms: Sequence[str] = ()


class SearchStore:
    def __init__(self, db: Database, language: str = "english") -> None:
        self.db = db
        # The PostgreSQL text search configuration (`search.language`).
        self.language = language

    async def check_language(self) -> None:
        """Fail (at start-up) if PostgreSQL has no such text search configuration."""
        if self.db.dialect == "postgres":
            await self.db.fetchval("check_search_language", "SELECT ?::regconfig", (self.language,))

    # ------------------------------------------------------------ indexing

    async def index_events_txn(self, txn: Transaction, events: Sequence[tuple[Event, int]]) -> None:
        """Index the searchable ones of (event, stream_ordering) pairs just persisted."""
        rows = [(stream, text) for event, stream in events if (text := searchable_text(event))]
        if not rows:
            return
        if self.db.dialect == "postgres":
            await txn.executemany(
                "INSERT INTO event_search (stream_ordering, vector)"
                " VALUES (?, to_tsvector(?::regconfig, ?))",
                [(stream, self.language, text) for stream, text in rows],
            )
        else:
            await txn.executemany("INSERT INTO event_search (rowid, value) VALUES (?, ?)", rows)

    async def unindex_event_txn(self, txn: Transaction, event_id: str) -> None:
        """Take a redacted event out of the index."""
        key = "stream_ordering" if self.db.dialect == "postgres" else "rowid"
        await txn.execute(
            f"DELETE FROM event_search WHERE {key} IN"
            " (SELECT stream_ordering FROM events WHERE event_id = ?)",
            (event_id,),
        )

    # ----------------------------------------------------------- searching

    def _scope_sql(self, scope: SearchScope) -> tuple[str, list[Any]]:
        """FROM ... WHERE ... of the hits `scope` covers."""
        if self.db.dialect == "postgres":
            sql = (
                " FROM event_search s JOIN events e ON e.stream_ordering = s.stream_ordering"
                " JOIN room_memberships m ON m.room_id = e.room_id AND m.user_id = ?"
                f" WHERE s.vector @@ {tsquery_sql(self.language, scope.query)}"
            )
            params: list[Any] = [scope.user_id]
        else:
            sql = (
                " FROM event_search JOIN events e ON e.stream_ordering = event_search.rowid"
                " JOIN room_memberships m ON m.room_id = e.room_id AND m.user_id = ?"
                " WHERE event_search MATCH ?"
            )
            params = [scope.user_id, scope.query.to_fts5()]
        # Rooms the user is in, or was in until the event by which they left.
        sql += (
            " AND NOT m.forgotten AND (m.membership = 'join' OR"
            " (m.membership IN ('leave', 'ban') AND e.stream_ordering <= m.stream_ordering))"
            " AND NOT e.rejected AND e.redacted_by IS NULL"
            f" AND e.type IN ({placeholders(len(scope.types))})"
        )
        params += scope.types
        if scope.rooms is not None:
            sql += f" AND e.room_id IN ({placeholders(len(scope.rooms))})"
            params += scope.rooms
        if scope.not_rooms:
            sql += f" AND e.room_id NOT IN ({placeholders(len(scope.not_rooms))})"
            params += scope.not_rooms
        clause, match_params = match_sql(self.db.dialect, scope.match)
        return sql + clause, params + match_params

    @staticmethod
    def _covers_nothing(scope: SearchScope) -> bool:
        return scope.query.is_empty or not scope.types or (scope.rooms is not None and not scope.rooms)

    async def search(
        self,
        scope: SearchScope,
        *,
        by_rank: bool,
        after: tuple[float, int] | int | None,
        limit: int,
    ) -> list[SearchHit]:
        """Up to `limit` hits, best (`by_rank`) or newest first.

        `after` continues past the last hit of the previous read: its
        (rank, stream_ordering) by rank, its stream_ordering by recency.
        """
        if self._covers_nothing(scope):
            return []
        if self.db.dialect == "postgres":
            # float8: the value round-trips exactly through a pagination token.
            score = f"ts_rank(s.vector, {tsquery_sql(self.language, scope.query)})::float8"
        else:
            score = "-bm25(event_search)"
        where, params = self._scope_sql(scope)
        cursor, cursor_params = "", []
        if by_rank:
            order = "score DESC, stream_ordering DESC"
            if after is not None:
                assert isinstance(after, tuple)
                cursor, cursor_params = " WHERE (score, stream_ordering) < (?, ?)", list(after)
        else:
            order = "stream_ordering DESC"
            if after is not None:
                cursor, cursor_params = " WHERE stream_ordering < ?", [after]
        rows = await self.db.fetchall(
            "search_events",
            "SELECT event_id, room_id, sender, stream_ordering, score FROM ("
            f"SELECT e.event_id, e.room_id, e.sender, e.stream_ordering, {score} AS score"
            f"{where}) hits{cursor} ORDER BY {order} LIMIT ?",
            (*params, *cursor_params, limit),
        )
        return [SearchHit(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def highlights(self, query: SearchQuery, texts: dict[int, str]) -> set[str]:
        """The words of `texts` (indexed text by stream ordering) that `query` matched."""
        if not texts or query.is_empty:
            return set()
        if self.db.dialect == "postgres":
            options = f"StartSel={_START}, StopSel={_STOP}, HighlightAll=TRUE"
            rows = await self.db.fetchall(
                "search_highlights",
                f"SELECT ts_headline(?::regconfig, t, {tsquery_sql(self.language, query)}, ?)"
                " FROM unnest(?::text[]) AS t",
                (self.language, options, list(texts.values())),
            )
        else:
            ids = list(texts)
            rows = await self.db.fetchall(
                "search_highlights",
                "SELECT highlight(event_search, 0, ?, ?) FROM event_search"
                f" WHERE event_search MATCH ? AND rowid IN ({placeholders(len(ids))})",
                (_START, _STOP, query.to_fts5(), *ids),
            )
        return {word for (marked,) in rows for word in _HIGHLIGHTED.findall(marked or "")}
