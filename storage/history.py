"""Reading a room's history: timeline pages, contexts, members at a point.

A room's history is ordered by (topological_ordering, stream_ordering),
which the `events_room_topo` index holds; every page is one range read on
it. Positions are passed as that pair (a "key"); the homeserver turns
tokens into keys. Rejected events are never part of the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engines import Database, placeholders

Key = tuple[int, int]  # (topological_ordering, stream_ordering)

# Before every event of any room: depths and stream orderings start at 1.
START_KEY: Key = (0, 0)


@dataclass(frozen=True)
class EventMatch:
    """The event fields of a RoomEventFilter, applied in SQL so a page's
    limit counts matching events. `None` means "not constrained"; in
    `types`/`not_types`, `*` matches any run of characters."""

    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    contains_url: bool | None = None


@dataclass(frozen=True)
class TimelineRow:
    event_id: str
    key: Key
    # The state group holding the room state after the event.
    state_group: int


def _type_clause(dialect: str, pattern: str) -> tuple[str, str]:
    """SQL matching `type` against one pattern, case-sensitively on both engines."""
    if "*" not in pattern:
        return "type = ?", pattern
    if dialect == "postgres":
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "type LIKE ? ESCAPE '\\'", escaped.replace("*", "%")
    # SQLite's LIKE ignores ASCII case; GLOB does not. `*` is already GLOB's
    # wildcard; its other metacharacters are escaped as one-character classes.
    return "type GLOB ?", pattern.replace("[", "[[]").replace("?", "[?]")


def match_sql(dialect: str, match: EventMatch) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if match.types is not None:
        if not match.types:
            return " AND 1 = 0", []
        parts = [_type_clause(dialect, t) for t in match.types]
        clauses.append("(" + " OR ".join(sql for sql, _ in parts) + ")")
        params += [p for _, p in parts]
    for pattern in match.not_types:
        sql, param = _type_clause(dialect, pattern)
        clauses.append(f"NOT {sql}")
        params.append(param)
    if match.senders is not None:
        if not match.senders:
            return " AND 1 = 0", []
        clauses.append(f"sender IN ({placeholders(len(match.senders))})")
        params += match.senders
    if match.not_senders:
        clauses.append(f"sender NOT IN ({placeholders(len(match.not_senders))})")
        params += match.not_senders
    if match.contains_url is not None:
        clauses.append("contains_url = ?")
        params.append(match.contains_url)
    return "".join(f" AND {c}" for c in clauses), params


class HistoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest_key(self, room_id: str) -> Key:
        """The position of the room's newest event (START_KEY for an unknown room)."""
        row = await self.db.fetchone(
            "history_latest_key",
            "SELECT topological_ordering, stream_ordering FROM events WHERE room_id = ?"
            " ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1",
            (room_id,),
        )
        return (row[0], row[1]) if row else START_KEY

    async def key_at_stream(self, room_id: str, stream_ordering: int) -> Key:
        """The room position a global stream position corresponds to: just
        after the room's last event at or before it."""
        row = await self.db.fetchone(
            "history_key_at_stream",
            "SELECT topological_ordering, stream_ordering FROM events"
            " WHERE room_id = ? AND stream_ordering <= ?"
            " ORDER BY stream_ordering DESC LIMIT 1",
            (room_id, stream_ordering),
        )
        return (row[0], row[1]) if row else START_KEY

    async def timeline(
        self,
        room_id: str,
        from_key: Key,
        to_key: Key | None,
        *,
        backwards: bool,
        limit: int,
        match: EventMatch | None = None,
    ) -> list[TimelineRow]:
        """Up to `limit` non-rejected events of the room between two positions.

        Backwards: keys <= from_key and > to_key, newest first. Forwards:
        keys > from_key and <= to_key, oldest first.
        """
        if limit <= 0:
            return []
        if backwards:
            bounds = "(topological_ordering, stream_ordering) <= (?, ?)"
            if to_key is not None:
                bounds += " AND (topological_ordering, stream_ordering) > (?, ?)"
            order = "DESC"
        else:
            bounds = "(topological_ordering, stream_ordering) > (?, ?)"
            if to_key is not None:
                bounds += " AND (topological_ordering, stream_ordering) <= (?, ?)"
            order = "ASC"
        params: list[Any] = [room_id, *from_key, *(to_key or ())]
        clause, match_params = match_sql(self.db.dialect, match or EventMatch())
        rows = await self.db.fetchall(
            "history_timeline",
            "SELECT event_id, topological_ordering, stream_ordering, state_group FROM events"
            f" WHERE room_id = ? AND {bounds} AND NOT rejected{clause}"
            f" ORDER BY topological_ordering {order}, stream_ordering {order} LIMIT ?",
            (*params, *match_params, limit),
        )
        return [TimelineRow(r[0], (r[1], r[2]), r[3]) for r in rows]

    async def events_near_timestamp(
        self,
        room_id: str,
        ts: int,
        *,
        forwards: bool,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[tuple[str, int, int]]:
        """(event_id, origin_server_ts, stream_ordering) of non-rejected events
        from `ts` on (forwards) or back (backwards), nearest first.

        `after` is the (origin_server_ts, stream_ordering) of the last event
        of the previous batch, to continue past it.
        """
        cmp, order = (">=", "ASC") if forwards else ("<=", "DESC")
        strict = ">" if forwards else "<"
        continue_sql = f" AND (origin_server_ts, stream_ordering) {strict} (?, ?)" if after else ""
        return [
            (r[0], r[1], r[2])
            for r in await self.db.fetchall(
                "history_events_near_timestamp",
                "SELECT event_id, origin_server_ts, stream_ordering FROM events"
                f" WHERE room_id = ? AND origin_server_ts {cmp} ?{continue_sql} AND NOT rejected"
                f" ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT ?",
                (room_id, ts, *(after or ()), limit),
            )
        ]
