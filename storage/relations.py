"""Relations between events (threads, edits, reactions, references) and their aggregation.

Relations are columns of the `events` table (`relates_to_id`,
`relation_type`, `thread_id`), written when the child is persisted. A
relation counts only while both events are in the same room, the child is
not rejected and has not been redacted (redaction strips `m.relates_to`),
so every query here joins the child to its parent and filters on that.

Threads also have a summary (`threads`, `thread_participants`): the latest
reply, the number of replies and who took part, kept up to date in the
transaction that persists a reply or redacts one (`thread_reply_txn`,
`reply_redacted_txn`), so neither `/threads` nor a bundled m.thread
aggregation reads every reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, placeholders


# The relation types the server aggregates (annotations are not bundled);
# m.thread's aggregation comes from the thread summaries.
COUNTED_TYPES = ("m.replace", "m.reference")

# A child relates to its parent: same room, not rejected, not redacted.
_LIVE_CHILD = (
    "FROM events c JOIN events p ON p.event_id = c.relates_to_id AND p.room_id = c.room_id"
    " WHERE c.redacted_by IS NULL AND NOT c.rejected"
)


@dataclass(frozen=True)
class Position:
    """A point between events in a room's history, as pagination tokens carry it.

    It sits just after the event at (`topological`, `stream`); without a
    topological part (a stream token, as `/sync` gives) only `stream` counts.
    """

    stream: int
    topological: int | None = None

    def _compare(self, alias: str, op: str) -> tuple[str, tuple[int, ...]]:
        if self.topological is None:
            return f"{alias}.stream_ordering {op} ?", (self.stream,)
        return (
            f"({alias}.topological_ordering, {alias}.stream_ordering) {op} (?, ?)",
            (self.topological, self.stream),
        )

    def at_or_before(self, alias: str) -> tuple[str, tuple[int, ...]]:
        """SQL (and params) selecting the events of `alias` up to this point."""
        return self._compare(alias, "<=")

    def after(self, alias: str) -> tuple[str, tuple[int, ...]]:
        """SQL (and params) selecting the events of `alias` past this point."""
        return self._compare(alias, ">")


@dataclass(frozen=True)
class RelatedEvent:
    """A child event's ID and place in the room's history."""

    event_id: str
    topological_ordering: int
    stream_ordering: int


@dataclass(frozen=True)
class RelationSummary:
    """How many live children of one relation type an event has, and if the user sent one."""

    count: int
    user_participated: bool


@dataclass(frozen=True)
class ParentEvent:
    """The stored event a new relation targets: its room, and its own relation type if any."""

    room_id: str
    relation_type: str | None


@dataclass(frozen=True)
class ThreadActivity:
    """A thread root and the stream position of the thread's latest reply."""

    root_id: str
    latest_stream_ordering: int


class RelationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def children(
        self,
        room_id: str,
        parent_id: str,
        *,
        relation_type: str | None,
        event_type: str | None,
        start: Position | None,
        end: Position | None,
        forwards: bool,
        limit: int,
        depth: int,
    ) -> list[RelatedEvent]:
        """One page of the events relating to `parent_id`, in (topological, stream) order.

        Backwards pages run from `start` (inclusive) down to `end`
        (exclusive), forwards pages from past `start` up to `end`. With
        `depth` > 1, children of children are followed that many levels
        down, and the type filters apply at every level.
        """
        conditions: list[str] = []
        params: list[Any] = []
        if relation_type is not None:
            conditions.append("e.relation_type = ?")
            params.append(relation_type)
        if event_type is not None:
            conditions.append("e.type = ?")
            params.append(event_type)
        lower, upper = (start, end) if forwards else (end, start)
        if lower is not None:
            clause, values = lower.after("e")
            conditions.append(clause)
            params.extend(values)
        if upper is not None:
            clause, values = upper.at_or_before("e")
            conditions.append(clause)
            params.extend(values)
        order = "ASC" if forwards else "DESC"
        where = "".join(f" AND {c}" for c in conditions)
        # Without table statistics SQLite's planner would walk the whole room
        # (events_room_*) rather than the parent's children; unary + keeps
        # room_id out of index choice. PostgreSQL plans from its statistics.
        room = "+e.room_id" if self.db.dialect == "sqlite" else "e.room_id"
        live = f"{room} = ? AND e.redacted_by IS NULL AND NOT e.rejected"
        if depth <= 1:
            sql = (
                "SELECT e.event_id, e.topological_ordering, e.stream_ordering FROM events e"
                f" WHERE e.relates_to_id = ? AND {live}{where}"
            )
            args: list[Any] = [parent_id, room_id, *params]
        else:
            # Each level is an indexed lookup on relates_to_id; event IDs are
            # hashes of content naming the parent, so there are no cycles.
            sql = (
                "WITH RECURSIVE related (event_id, depth) AS ("
                f" SELECT e.event_id, 1 FROM events e WHERE e.relates_to_id = ? AND {live}"
                " UNION ALL"
                " SELECT e.event_id, r.depth + 1 FROM related r"
                f" JOIN events e ON e.relates_to_id = r.event_id WHERE r.depth < ? AND {live})"
                " SELECT e.event_id, e.topological_ordering, e.stream_ordering"
                f" FROM related r JOIN events e ON e.event_id = r.event_id WHERE TRUE{where}"
            )
            args = [parent_id, room_id, depth, room_id, *params]
        sql += f" ORDER BY e.topological_ordering {order}, e.stream_ordering {order} LIMIT ?"
        rows = await self.db.fetchall("relation_children", sql, (*args, limit))
        return [RelatedEvent(*row) for row in rows]

    async def summaries(
        self, parent_ids: Sequence[str], user_id: str
    ) -> dict[str, dict[str, RelationSummary]]:
        """Per parent with aggregated children, per relation type: count, and if `user_id` sent one.

        For m.thread, "sent one" includes having sent the root. Two indexed
        queries per batch; parents without children cost nothing more.
        """
        result: dict[str, dict[str, RelationSummary]] = {}
        for batch in batches(parent_ids):
            rows = await self.db.fetchall(
                "relation_summaries",
                "SELECT c.relates_to_id, c.relation_type, COUNT(*),"
                " MAX(CASE WHEN c.sender = ? THEN 1 ELSE 0 END)"
                f" {_LIVE_CHILD} AND c.relates_to_id IN ({placeholders(len(batch))})"
                f" AND c.relation_type IN ({placeholders(len(COUNTED_TYPES))})"
                " GROUP BY c.relates_to_id, c.relation_type",
                (user_id, *batch, *COUNTED_TYPES),
            )
            rows += await self.db.fetchall(
                "thread_summaries",
                "SELECT t.thread_id, 'm.thread', t.reply_count, EXISTS (SELECT 1 FROM"
                " thread_participants p WHERE p.thread_id = t.thread_id AND p.user_id = ?)"
                f" FROM threads t WHERE t.thread_id IN ({placeholders(len(batch))})",
                (user_id, *batch),
            )
            for parent_id, relation_type, count, participated in rows:
                result.setdefault(parent_id, {})[relation_type] = RelationSummary(
                    count, bool(participated)
                )
        return result

    async def latest_thread_events(
        self, root_ids: Sequence[str], skip: int, take: int
    ) -> dict[str, list[str]]:
        """Per thread root, its replies newest first (topologically), ranks skip+1 to skip+take.

        The first rank is the summary's latest reply (local writes to a room
        are serialized, so stream order is topological order there); further
        ranks, wanted when the latest is hidden from the user, are counted.
        """
        if skip == 0 and take == 1:
            result: dict[str, list[str]] = {}
            for batch in batches(root_ids):
                rows = await self.db.fetchall(
                    "latest_thread_event",
                    "SELECT t.thread_id, e.event_id FROM threads t"
                    " JOIN events e ON e.stream_ordering = t.latest_stream_ordering"
                    f" WHERE t.thread_id IN ({placeholders(len(batch))})",
                    batch,
                )
                result.update({root_id: [event_id] for root_id, event_id in rows})
            return result
        return await self._ranked(
            "latest_thread_events",
            root_ids,
            "m.thread",
            "",
            "c.topological_ordering DESC, c.stream_ordering DESC",
            skip,
            take,
        )

    async def latest_replacements(
        self, parent_ids: Sequence[str], skip: int, take: int
    ) -> dict[str, list[str]]:
        """Per parent, its candidate edits ranked most recent first, ranks skip+1..skip+take.

        Only edits by the original sender, of the original type, of a
        non-state event qualify (spec: validity of replacement events); the
        caller checks what needs the content (`m.new_content`).
        """
        return await self._ranked(
            "latest_replacements",
            parent_ids,
            "m.replace",
            " AND c.sender = p.sender AND c.type = p.type"
            " AND c.state_key IS NULL AND p.state_key IS NULL",
            "c.origin_server_ts DESC, c.event_id DESC",
            skip,
            take,
        )

    async def _ranked(
        self,
        name: str,
        parent_ids: Sequence[str],
        relation_type: str,
        extra: str,
        order: str,
        skip: int,
        take: int,
    ) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for batch in batches(parent_ids):
            rows = await self.db.fetchall(
                name,
                "SELECT parent_id, event_id FROM ("
                " SELECT c.relates_to_id AS parent_id, c.event_id AS event_id,"
                f" ROW_NUMBER() OVER (PARTITION BY c.relates_to_id ORDER BY {order}) AS rn"
                f" {_LIVE_CHILD} AND c.relates_to_id IN ({placeholders(len(batch))})"
                f" AND c.relation_type = ?{extra}"
                ") ranked WHERE rn > ? AND rn <= ? ORDER BY parent_id, rn",
                (*batch, relation_type, skip, skip + take),
            )
            for parent_id, event_id in rows:
                result.setdefault(parent_id, []).append(event_id)
        return result

    async def references(self, parent_ids: Sequence[str]) -> dict[str, list[str]]:
        """Per parent, the events referencing it (`m.reference`), oldest first."""
        result: dict[str, list[str]] = {}
        for batch in batches(parent_ids):
            rows = await self.db.fetchall(
                "relation_references",
                f"SELECT c.relates_to_id, c.event_id {_LIVE_CHILD}"
                f" AND c.relates_to_id IN ({placeholders(len(batch))}) AND c.relation_type = ?"
                " ORDER BY c.topological_ordering, c.stream_ordering",
                (*batch, "m.reference"),
            )
            for parent_id, event_id in rows:
                result.setdefault(parent_id, []).append(event_id)
        return result

    async def threads(
        self,
        room_id: str,
        *,
        participant: str | None,
        before: Position | None,
        limit: int,
    ) -> list[ThreadActivity]:
        """The room's thread roots, most recent reply first (an index walk on `threads`).

        `participant` keeps only threads that user started or replied to;
        `before` keeps threads whose latest reply is at or before it. A root
        that itself relates to another event does not start a thread (spec).
        """
        joins = ""
        params: list[Any] = []
        if participant is not None:
            joins = " JOIN thread_participants p ON p.thread_id = t.thread_id AND p.user_id = ?"
            params.append(participant)
        # (A redacted root has lost its m.relates_to.)
        conditions = ["t.room_id = ?", "(r.relation_type IS NULL OR r.redacted_by IS NOT NULL)"]
        params.append(room_id)
        if before is not None:
            conditions.append("t.latest_stream_ordering <= ?")
            params.append(before.stream)
        rows = await self.db.fetchall(
            "room_threads",
            "SELECT t.thread_id, t.latest_stream_ordering FROM threads t"
            f"{joins} JOIN events r ON r.event_id = t.thread_id WHERE {' AND '.join(conditions)}"
            " ORDER BY t.latest_stream_ordering DESC LIMIT ?",
            (*params, limit),
        )
        return [ThreadActivity(root_id, latest) for root_id, latest in rows]

    # ------------------------------------------------- inside event writes

    @staticmethod
    async def relation_parent_txn(txn: Transaction, event_id: str) -> ParentEvent | None:
        """What a new relation needs to know of the event it targets, if that is stored."""
        row = await txn.fetchone(
            "SELECT room_id, relation_type, redacted_by FROM events WHERE event_id = ?",
            (event_id,),
        )
        if row is None:
            return None
        room_id, relation_type, redacted_by = row
        # Redaction strips m.relates_to: a redacted event relates to nothing.
        return ParentEvent(room_id, relation_type if redacted_by is None else None)

    @staticmethod
    async def has_annotation_txn(
        txn: Transaction, room_id: str, parent_id: str, sender: str, event_type: str, key: str
    ) -> bool:
        """Whether `sender` has a live annotation of `parent_id` of this type and key."""
        rows = await txn.fetchall(
            "SELECT json FROM events WHERE relates_to_id = ? AND sender = ?"
            " AND relation_type = 'm.annotation' AND room_id = ? AND type = ?"
            " AND redacted_by IS NULL AND NOT rejected",
            (parent_id, sender, room_id, event_type),
        )
        for (pdu_json,) in rows:
            relates = json.loads(pdu_json).get("content", {}).get("m.relates_to")
            if isinstance(relates, dict) and relates.get("key") == key:
                return True
        return False

    @staticmethod
    async def thread_reply_txn(
        txn: Transaction, room_id: str, thread_id: str, sender: str, stream_ordering: int
    ) -> None:
        """A live reply to `thread_id` was persisted at `stream_ordering`: update its summary.

        The first reply makes the thread (when its root is in the room), with
        the root's sender as its first participant.
        """
        updated = await txn.execute(
            "UPDATE threads SET latest_stream_ordering = ?, reply_count = reply_count + 1"
            " WHERE thread_id = ? AND room_id = ?",
            (stream_ordering, thread_id, room_id),
        )
        if not updated:
            root_sender = await txn.fetchval(
                "SELECT sender FROM events WHERE event_id = ? AND room_id = ?",
                (thread_id, room_id),
            )
            if root_sender is None:
                return  # no root in this room: no thread
            await txn.execute(
                "INSERT INTO threads (thread_id, room_id, latest_stream_ordering, reply_count)"
                " VALUES (?, ?, ?, 1)",
                (thread_id, room_id, stream_ordering),
            )
            await _add_participant_txn(txn, thread_id, root_sender, room_id)
        await _add_participant_txn(txn, thread_id, sender, room_id)

    @staticmethod
    async def reply_redacted_txn(txn: Transaction, event_id: str) -> None:
        """`event_id` was redacted: if it was a thread reply, recount its thread from the replies left."""
        row = await txn.fetchone(
            "SELECT e.room_id, e.thread_id FROM events e JOIN threads t"
            " ON t.thread_id = e.thread_id AND t.room_id = e.room_id WHERE e.event_id = ?",
            (event_id,),
        )
        if row is None:
            return
        room_id, thread_id = row
        live = "FROM events WHERE room_id = ? AND thread_id = ? AND redacted_by IS NULL AND NOT rejected"
        count, latest = await txn.fetchone(
            f"SELECT COUNT(*), MAX(stream_ordering) {live}", (room_id, thread_id)
        )
        await txn.execute("DELETE FROM thread_participants WHERE thread_id = ?", (thread_id,))
        if not count:
            await txn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
            return
        await txn.execute(
            "UPDATE threads SET latest_stream_ordering = ?, reply_count = ? WHERE thread_id = ?",
            (latest, count, thread_id),
        )
        senders = await txn.fetchall(
            f"SELECT sender {live} UNION SELECT sender FROM events WHERE event_id = ?",
            (room_id, thread_id, thread_id),
        )
        await txn.executemany(
            "INSERT INTO thread_participants (thread_id, user_id, room_id) VALUES (?, ?, ?)",
            [(thread_id, sender, room_id) for (sender,) in senders],
        )


async def _add_participant_txn(txn: Transaction, thread_id: str, user_id: str, room_id: str) -> None:
    await txn.execute(
        "INSERT INTO thread_participants (thread_id, user_id, room_id) VALUES (?, ?, ?)"
        " ON CONFLICT (thread_id, user_id) DO NOTHING",
        (thread_id, user_id, room_id),
    )
