"""Reads /sync needs: what changed in a user's rooms between two stream
positions, the newest events of a room, member counts and heroes, and the
filters clients store."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cache import LRUCache
from .engines import Database, Transaction, batches, is_unique_violation, placeholders
from .history import EventMatch, TimelineRow, match_sql

_ADD_FILTER_ATTEMPTS = 20


# Stream ranges at most this long are cached (the incremental syncs of
# clients keeping up); longer ones (a client back after a while) are not.
CACHED_RANGE_SPAN = 1000


@dataclass(frozen=True)
class RoomActivity:
    stream: int  # the latest event's position
    state_group: int | None  # the state after it
    bump_stream: int | None  # the latest "proper" activity's position (sliding sync's bump_stamp)


class SyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._range_rooms: LRUCache[tuple[int, int], list[tuple[str, bool]]] = LRUCache("sync_range_rooms", 256)
        self._recent: LRUCache[tuple, list[TimelineRow]] = LRUCache("sync_recent_events", 4096)

    async def rooms_with_events(
        self, room_ids: Sequence[str], from_stream: int, to_stream: int
    ) -> dict[str, bool]:
        """The rooms with events in (from_stream, to_stream], each with whether
        any was a membership change: one range read of the stream, shared
        by the syncs that ask for the same short range."""
        wanted = set(room_ids)
        if not wanted or from_stream >= to_stream:
            return {}

        async def load() -> list[tuple[str, bool]]:
            rows = await self.db.fetchall(
                "sync_rooms_with_events",
                "SELECT room_id, MAX(CASE WHEN type = 'm.room.member' THEN 1 ELSE 0 END) FROM events"
                " WHERE stream_ordering > ? AND stream_ordering <= ? GROUP BY room_id",
                (from_stream, to_stream),
            )
            return [(room_id, bool(members)) for room_id, members in rows]

        rows = await self._cached_range(self._range_rooms, (from_stream, to_stream), load, to_stream - from_stream)
        return {room_id: members for room_id, members in rows if room_id in wanted}

    @staticmethod
    async def _cached_range(cache: LRUCache, key: Any, load: Any, span: int) -> Any:
        """`load()`, through `cache` when the stream range is short. A range
        up to a position the notifier handed out is committed and complete,
        so what is read of it never changes."""
        if span > CACHED_RANGE_SPAN:
            return await load()
        return await cache.get_or_load(key, load)

    async def recent_events(
        self,
        room_id: str,
        from_stream: int,
        to_stream: int,
        limit: int,
        match: EventMatch,
    ) -> list[TimelineRow]:
        """The newest (at most `limit`) matching events in (from_stream, to_stream], newest first."""
        sql, params = match_sql(self.db.dialect, match)

        async def load() -> list[TimelineRow]:
            rows = await self.db.fetchall(
                "sync_recent_events",
                "SELECT event_id, topological_ordering, stream_ordering, state_group FROM events"
                f" WHERE room_id = ? AND stream_ordering > ? AND stream_ordering <= ? AND NOT rejected{sql}"
                " ORDER BY stream_ordering DESC LIMIT ?",
                (room_id, from_stream, to_stream, *params, limit),
            )
            return [TimelineRow(r[0], (r[1], r[2]), r[3]) for r in rows]

        key = (room_id, from_stream, to_stream, limit, match)
        return list(await self._cached_range(self._recent, key, load, to_stream - from_stream))

    async def state_group_at_stream(self, room_id: str, stream: int) -> int | None:
        """The state group after the room's last event at or before `stream`."""
        return await self.db.fetchval(
            "sync_state_group_at",
            "SELECT state_group FROM events WHERE room_id = ? AND stream_ordering <= ?"
            " ORDER BY stream_ordering DESC LIMIT 1",
            (room_id, stream),
        )

    async def room_activity(
        self, room_ids: Sequence[str], to_stream: int, bump_types: Sequence[str]
    ) -> dict[str, RoomActivity]:
        """Each room's latest event at or before `to_stream` (its position and
        the state group after it) and the position of its latest event of one
        of `bump_types`: backward index probes, one query per batch of rooms."""
        result: dict[str, RoomActivity] = {}
        latest = (
            "(SELECT {column} FROM events e WHERE e.room_id = r.room_id AND e.stream_ordering <= ?{extra}"
            " ORDER BY stream_ordering DESC LIMIT 1)"
        )
        bump_filter = f" AND e.type IN ({placeholders(len(bump_types))}) AND NOT e.rejected"
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "sync_room_activity",
                f"SELECT r.room_id, {latest.format(column='stream_ordering', extra='')},"
                f" {latest.format(column='state_group', extra='')},"
                f" {latest.format(column='stream_ordering', extra=bump_filter)}"
                f" FROM rooms r WHERE r.room_id IN ({placeholders(len(batch))})",
                (to_stream, to_stream, to_stream, *bump_types, *batch),
            )
            for room_id, last, group, bump in rows:
                if last is not None:
                    result[room_id] = RoomActivity(last, group, bump)
        return result

    async def member_summaries(
        self, room_ids: Sequence[str], user_id: str, heroes: int = 5
    ) -> dict[str, tuple[int, int, list[str]]]:
        """{room: (joined count, invited count, heroes)}.

        Heroes (spec: the room summary) are the first members other than the
        user, by stream ordering, who are joined or invited; where there are
        none, those who left or were banned.
        """
        result: dict[str, tuple[int, int, list[str]]] = {}
        for batch in batches(room_ids):
            counts = await self.db.fetchall(
                "sync_member_counts",
                "SELECT room_id, membership, COUNT(*) FROM room_memberships"
                f" WHERE room_id IN ({placeholders(len(batch))}) AND membership IN ('join', 'invite')"
                " GROUP BY room_id, membership",
                batch,
            )
            by_room: dict[str, dict[str, int]] = {}
            for room_id, membership, count in counts:
                by_room.setdefault(room_id, {})[membership] = count
            names = await self._heroes(batch, user_id, ("join", "invite"), heroes)
            lonely = [r for r in batch if r not in names]
            if lonely:
                names.update(await self._heroes(lonely, user_id, ("leave", "ban"), heroes))
            for room_id in batch:
                c = by_room.get(room_id, {})
                result[room_id] = (c.get("join", 0), c.get("invite", 0), names.get(room_id, []))
        return result

    async def _heroes(
        self, room_ids: list[str], user_id: str, memberships: tuple[str, ...], heroes: int
    ) -> dict[str, list[str]]:
        rows = await self.db.fetchall(
            "sync_heroes",
            "SELECT room_id, user_id, n FROM (SELECT room_id, user_id, ROW_NUMBER() OVER"
            " (PARTITION BY room_id ORDER BY stream_ordering) AS n FROM room_memberships"
            f" WHERE room_id IN ({placeholders(len(room_ids))})"
            f" AND membership IN ({placeholders(len(memberships))})"
            " AND user_id <> ?) ranked WHERE n <= ? ORDER BY room_id, n",
            (*room_ids, *memberships, user_id, heroes),
        )
        names: dict[str, list[str]] = {}
        for room_id, hero, _n in rows:
            names.setdefault(room_id, []).append(hero)
        return names

    # ------------------------------------------------------------- filters

    async def add_filter(self, user_id: str, filter_json: dict[str, Any]) -> int:
        async def _fn(txn: Transaction) -> int:
            next_id = await txn.fetchval(
                "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM user_filters WHERE user_id = ?",
                (user_id,),
            )
            await txn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, next_id, json.dumps(filter_json)),
            )
            return next_id

        # Two uploads by one user may pick the same ID; the loser takes the next.
        for _attempt in range(_ADD_FILTER_ATTEMPTS - 1):
            try:
                return await self.db.run("add_filter", _fn)
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
                await asyncio.sleep(random.uniform(0, 0.01))
        return await self.db.run("add_filter", _fn)

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "get_filter",
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
            (user_id, filter_id),
        )
        return json.loads(raw) if raw is not None else None
