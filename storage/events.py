"""The event graph: events, DAG edges, forward extremities, state groups,
current state and current membership.

Events and state groups never change once written, so both are cached
without invalidation (a redaction is recorded beside the event, and the
cached copy is dropped). Storage imports only the pure data model
(`homeserver.events.model`), never services or HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import ROOM_VERSIONS, Event, StateKey

from .cache import LRUCache
from .engines import Database, Transaction, batches, dump_json, placeholders
from .relations import RelationStore
from .search import SearchStore
from .streams import next_position_txn

# A delta chain longer than this gets a full snapshot instead.
MAX_STATE_DELTA_CHAIN = 50

StateMap = dict[StateKey, str]


@dataclass(frozen=True)
class EventPosition:
    """Where an event sits: in the global stream and in its room's topology."""

    stream_ordering: int
    topological_ordering: int


@dataclass(frozen=True)
class PersistedEvent:
    event: Event
    position: EventPosition
    state_group: int


@dataclass(frozen=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str
    stream_ordering: int
    displayname: str | None
    avatar_url: str | None



def _column_text(value: Any) -> str | None:
    """A string from event content for a text column (which cannot hold NUL)."""
    return value.replace("\x00", "") if isinstance(value, str) else None


def room_lock_id(room_id: str) -> int:
    """A stable 32-bit key for PostgreSQL advisory locks on one room."""
    return zlib.crc32(room_id.encode()) - 2**31


class EventStore:
    def __init__(self, db: Database, search: SearchStore) -> None:
        self.db = db
        # The full-text index, written in the same transactions as the events.
        self.search = search
        self._events: LRUCache[str, Event] = LRUCache("events", 50_000)
        self._state_groups: LRUCache[int, StateMap] = LRUCache("state_groups", 5_000)
        self._room_versions: LRUCache[str, str] = LRUCache("room_versions", 100_000)

    # --------------------------------------------------------------- rooms

    @staticmethod
    async def insert_room_txn(
        txn: Transaction, room_id: str, room_version: str, creator: str, now: int, is_public: bool
    ) -> None:
        await txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts, is_public)"
            " VALUES (?, ?, ?, ?, ?)",
            (room_id, room_version, creator, now, is_public),
        )

    async def get_room_version(self, room_id: str) -> str | None:
        version = self._room_versions.get(room_id)
        if version is None:
            version = await self.db.fetchval(
                "get_room_version", "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
            )
            if version is not None:
                self._room_versions.set(room_id, version)
        return version

    async def claim_room_upgrade(
        self, room_id: str, user_id: str, now: int, since: int
    ) -> tuple[str, str | None] | None:
        """Mark `user_id`'s upgrade of `room_id` as under way from `now`; None once marked.

        Otherwise returns the upgrade in the way, as (upgrader, replacement
        room): one under way (replacement None) or finished, claimed or
        finished at or after `since` (older ones are over, or from a
        process that died). The primary key is the guard every process shares.
        """

        async def claim(txn: Transaction) -> tuple[str, str | None] | None:
            row = await txn.fetchone(
                "SELECT user_id, started_ts, new_room_id, finished_ts FROM room_upgrades"
                " WHERE room_id = ?",
                (room_id,),
            )
            if row is not None:
                upgrader, started, replacement, finished = row
                if (started if replacement is None else finished) >= since:
                    return upgrader, replacement
                await txn.execute("DELETE FROM room_upgrades WHERE room_id = ?", (room_id,))
            inserted = await txn.execute(
                "INSERT INTO room_upgrades (room_id, user_id, started_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                (room_id, user_id, now),
            )
            return None if inserted else ("", None)

        return await self.db.run("claim_room_upgrade", claim)

    async def end_room_upgrade(
        self, room_id: str, user_id: str, claimed_at: int, replacement: str | None, now: int
    ) -> None:
        """Record the replacement room of the upgrade claimed at `claimed_at`, or
        (None: it failed) drop the claim."""
        where = "WHERE room_id = ? AND user_id = ? AND started_ts = ?"
        if replacement is None:
            await self.db.execute(
                "drop_room_upgrade", f"DELETE FROM room_upgrades {where}", (room_id, user_id, claimed_at)
            )
            return
        await self.db.execute(
            "finish_room_upgrade",
            f"UPDATE room_upgrades SET new_room_id = ?, finished_ts = ? {where}",
            (replacement, now, room_id, user_id, claimed_at),
        )

    @staticmethod
    async def lock_room_txn(txn: Transaction, dialect: str, room_id: str) -> None:
        """Serialize writers to one room across processes (SQLite is serial already)."""
        if dialect == "postgres":
            await txn.execute("SELECT pg_advisory_xact_lock(?)", (room_lock_id(room_id),))

    # -------------------------------------------------------------- events

    def _event_from_row(self, row: Sequence[Any]) -> Event:
        event_id, room_version, pdu_json, rejected, device_id, txn_id, redacted_by, replaces = row
        return Event(
            event_id,
            ROOM_VERSIONS[room_version],
            json.loads(pdu_json),
            bool(rejected),
            (device_id, txn_id) if txn_id is not None else None,
            redacted_by,
            replaces,
        )

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        """Events by ID (those that exist), from the cache where possible."""
        found, missing = self._cached_events(event_ids)
        if missing:
            found.update(await self.db.run("get_events", self._fetch_events_txn, missing))
        return found

    async def get_events_txn(self, txn: Transaction, event_ids: Iterable[str]) -> dict[str, Event]:
        """`get_events` inside an open transaction."""
        found, missing = self._cached_events(event_ids)
        if missing:
            found.update(await self._fetch_events_txn(txn, missing))
        return found

    def _cached_events(self, event_ids: Iterable[str]) -> tuple[dict[str, Event], list[str]]:
        found: dict[str, Event] = {}
        missing = []
        for event_id in event_ids:
            event = self._events.get(event_id)
            if event is None:
                missing.append(event_id)
            else:
                found[event_id] = event
        return found, missing

    async def _fetch_events_txn(self, txn: Transaction, event_ids: list[str]) -> dict[str, Event]:
        found: dict[str, Event] = {}
        for batch in batches(event_ids):
            rows = await txn.fetchall(
                "SELECT e.event_id, r.room_version, e.json, e.rejected, e.device_id, e.txn_id,"
                " e.redacted_by, e.replaces_state"
                " FROM events e JOIN rooms r ON r.room_id = e.room_id"
                f" WHERE e.event_id IN ({placeholders(len(batch))})",
                batch,
            )
            for row in rows:
                event = self._event_from_row(row)
                self._events.set(event.event_id, event)
                found[event.event_id] = event
        return found

    async def get_event(self, event_id: str) -> Event | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_positions(self, event_ids: Iterable[str]) -> dict[str, tuple[EventPosition, int]]:
        """(position, state group after the event) for each stored event."""
        ids = list(event_ids)
        result: dict[str, tuple[EventPosition, int]] = {}
        for batch in batches(ids):
            rows = await self.db.fetchall(
                "get_event_positions",
                "SELECT event_id, stream_ordering, topological_ordering, state_group FROM events"
                f" WHERE event_id IN ({placeholders(len(batch))})",
                batch,
            )
            for event_id, stream, topo, group in rows:
                result[event_id] = (EventPosition(stream, topo), group)
        return result

    def invalidate_event(self, event_id: str) -> None:
        self._events.invalidate(event_id)

    def uncache_room(self, room_id: str) -> None:
        """Drop what is cached of a purged room (its version: it exists no more)."""
        self._room_versions.invalidate(room_id)

    # ------------------------------------------------------------ the graph

    @staticmethod
    async def forward_extremities_txn(txn: Transaction, room_id: str) -> list[str]:
        rows = await txn.fetchall(
            "SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,)
        )
        return [r[0] for r in rows]

    @staticmethod
    async def event_meta_txn(txn: Transaction, event_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(depth, state group) of each given event."""
        if not event_ids:
            return {}
        rows = await txn.fetchall(
            "SELECT event_id, topological_ordering, state_group FROM events"
            f" WHERE event_id IN ({placeholders(len(event_ids))})",
            list(event_ids),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    @staticmethod
    async def next_id_txn(txn: Transaction, dialect: str, table: str, column: str) -> int:
        """The next value of an increasing ID column that orders nothing clients see.

        SQLite serializes all writes, so MAX()+1 is safe there; PostgreSQL
        uses a sequence. (Stream positions come from `streams.next_position_txn`.)
        """
        if dialect == "postgres":
            return await txn.fetchval(f"SELECT nextval('{table}_{column}_seq')")
        return await txn.fetchval(f"SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}")

    async def persist_event_txn(
        self,
        txn: Transaction,
        event: Event,
        state_group: int,
        *,
        txn_id: str | None = None,
        device_id: str | None = None,
        replaces_state: str | None = None,
    ) -> EventPosition:
        """Write one event: its DAG edges, the room's new extremities and its row.

        State groups and current state are written by the caller (see
        `store_state_group_txn` and `update_current_state_txn`), the state
        group before this and the current state after it.
        """
        await txn.executemany(
            "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)",
            [(event.event_id, p) for p in event.prev_event_ids],
        )
        await txn.executemany(
            "INSERT INTO event_auth (event_id, auth_id) VALUES (?, ?)",
            [(event.event_id, a) for a in event.auth_event_ids],
        )
        if event.prev_event_ids:
            await txn.execute(
                "DELETE FROM event_forward_extremities WHERE room_id = ?"
                f" AND event_id IN ({placeholders(len(event.prev_event_ids))})",
                (event.room_id, *event.prev_event_ids),
            )
        await txn.execute(
            "INSERT INTO event_forward_extremities (room_id, event_id) VALUES (?, ?)",
            (event.room_id, event.event_id),
        )
        relates = event.content.get("m.relates_to")
        relates_to_id = relation_type = thread_id = None
        if isinstance(relates, dict) and isinstance(relates.get("event_id"), str):
            rel = relates.get("rel_type")
            # (An ID or type with a NUL in it names nothing; text columns cannot hold it.)
            if isinstance(rel, str) and "\x00" not in rel + relates["event_id"]:
                relates_to_id, relation_type = relates["event_id"], rel
                if rel == "m.thread":
                    thread_id = relates_to_id
        contains_url = isinstance(event.content.get("url"), str)
        # The events stream's position last: its lock is held until commit,
        # and every room's writer waits for it.
        stream = await next_position_txn(txn, "events")
        await txn.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender,"
            " topological_ordering, origin_server_ts, json, rejected, txn_id, device_id,"
            " state_group, relates_to_id, relation_type, thread_id, contains_url, replaces_state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stream, event.event_id, event.room_id, event.type, event.state_key, event.sender,
                event.depth, event.origin_server_ts, dump_json(event.pdu), event.rejected, txn_id,
                device_id, state_group, relates_to_id, relation_type, thread_id, contains_url,
                replaces_state,
            ),
        )
        await self.search.index_events_txn(txn, [(event, stream)])
        if thread_id is not None and not event.rejected:
            await RelationStore.thread_reply_txn(txn, event.room_id, thread_id, event.sender, stream)
        event = dataclasses.replace(
            event,
            transaction=(device_id, txn_id) if txn_id is not None and device_id is not None else None,
            replaces_state=replaces_state,
        )
        txn.call_after(lambda: self._events.set(event.event_id, event))
        return EventPosition(stream, event.depth)

    async def mark_redacted_txn(self, txn: Transaction, target_id: str, redaction_id: str) -> None:
        """Record an accepted redaction; clients then see the target redacted."""
        await txn.execute(
            "UPDATE events SET redacted_by = ? WHERE event_id = ? AND redacted_by IS NULL",
            (redaction_id, target_id),
        )
        await self.search.unindex_event_txn(txn, target_id)
        await RelationStore.reply_redacted_txn(txn, target_id)
        txn.call_after(lambda: self._events.invalidate(target_id))

    async def forget_room(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "forget_room",
            "UPDATE room_memberships SET forgotten = TRUE WHERE user_id = ? AND room_id = ?",
            (user_id, room_id),
        )

    # -------------------------------------------------------- state groups

    async def store_state_group_txn(
        self, txn: Transaction, room_id: str, prev_group: int | None, delta: StateMap
    ) -> int:
        """A new state group: `delta` over `prev_group` (or a full snapshot)."""
        group_id = await self.next_id_txn(txn, self.db.dialect, "state_groups", "id")
        chain_len = 0
        entries = delta
        if prev_group is not None:
            prev_len = await txn.fetchval(
                "SELECT chain_len FROM state_groups WHERE id = ?", (prev_group,)
            )
            if prev_len is not None and prev_len + 1 <= MAX_STATE_DELTA_CHAIN:
                chain_len = prev_len + 1
            else:
                full = dict(await self.state_group_txn(txn, prev_group))
                full.update(delta)
                entries, prev_group = full, None
        await txn.execute(
            "INSERT INTO state_groups (id, room_id, prev_group, chain_len) VALUES (?, ?, ?, ?)",
            (group_id, room_id, prev_group, chain_len),
        )
        await txn.executemany(
            "INSERT INTO state_group_entries (state_group, type, state_key, event_id)"
            " VALUES (?, ?, ?, ?)",
            [(group_id, t, k, e) for (t, k), e in entries.items()],
        )
        return group_id

    async def state_group_txn(self, txn: Transaction, group: int) -> StateMap:
        """The full state of a group: its delta chain, newest entries winning."""
        cached = self._state_groups.get(group)
        if cached is not None:
            return cached
        # The whole delta chain in one round trip; older links apply first.
        rows = await txn.fetchall(
            "WITH RECURSIVE chain(id, prev_group, n) AS ("
            " SELECT id, prev_group, 0 FROM state_groups WHERE id = ?"
            " UNION ALL"
            " SELECT g.id, g.prev_group, c.n + 1 FROM state_groups g JOIN chain c ON g.id = c.prev_group)"
            " SELECT c.n, e.type, e.state_key, e.event_id"
            " FROM chain c JOIN state_group_entries e ON e.state_group = c.id",
            (group,),
        )
        state: StateMap = {}
        for _n, t, k, e in sorted(rows, key=lambda r: -r[0]):
            state[(t, k)] = e
        self._state_groups.set(group, state)
        return state

    async def get_state_group(self, group: int) -> StateMap:
        cached = self._state_groups.get(group)
        if cached is not None:
            return cached
        return await self.db.run("get_state_group", self.state_group_txn, group)

    # ------------------------------------------------ current state, members

    @staticmethod
    async def update_current_state_txn(
        txn: Transaction, event: Event, stream_ordering: int
    ) -> None:
        """Make a state event part of its room's current state (and membership)."""
        await txn.execute(
            "INSERT INTO current_state_events (room_id, type, state_key, event_id)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (room_id, type, state_key)"
            " DO UPDATE SET event_id = excluded.event_id",
            (event.room_id, event.type, event.state_key, event.event_id),
        )
        if event.type == "m.room.member" and event.membership is not None:
            displayname = event.content.get("displayname")
            avatar_url = event.content.get("avatar_url")
            await txn.execute(
                "INSERT INTO room_memberships (room_id, user_id, membership, event_id,"
                " stream_ordering, displayname, avatar_url, forgotten)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, FALSE) ON CONFLICT (room_id, user_id) DO UPDATE SET"
                " membership = excluded.membership, event_id = excluded.event_id,"
                " stream_ordering = excluded.stream_ordering, displayname = excluded.displayname,"
                " avatar_url = excluded.avatar_url, forgotten = FALSE",
                (
                    event.room_id, event.state_key, event.membership, event.event_id,
                    stream_ordering,
                    _column_text(displayname),
                    _column_text(avatar_url),
                ),
            )

    async def get_current_state_ids(
        self, room_id: str, types: Iterable[StateKey] | None = None
    ) -> StateMap:
        """The room's current state, optionally only the given (type, state_key)s."""
        if types is None:
            rows = await self.db.fetchall(
                "get_current_state",
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
                (room_id,),
            )
            return {(t, k): e for t, k, e in rows}
        wanted = list(types)
        if not wanted:
            return {}
        clause = " OR ".join("(type = ? AND state_key = ?)" for _ in wanted)
        rows = await self.db.fetchall(
            "get_current_state_some",
            f"SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ? AND ({clause})",
            (room_id, *[x for key in wanted for x in key]),
        )
        return {(t, k): e for t, k, e in rows}

    async def get_current_state_ids_for_rooms(
        self, room_ids: Sequence[str], types: Sequence[str]
    ) -> dict[str, StateMap]:
        """Several rooms' current state events of the given types (any state key), in one read."""
        result: dict[str, StateMap] = {room_id: {} for room_id in room_ids}
        if not types:
            return result
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "get_current_state_for_rooms",
                "SELECT room_id, type, state_key, event_id FROM current_state_events"
                f" WHERE room_id IN ({placeholders(len(batch))})"
                f" AND type IN ({placeholders(len(types))})",
                (*batch, *types),
            )
            for room_id, t, k, e in rows:
                result[room_id][(t, k)] = e
        return result

    async def count_joined_members(self, room_ids: Sequence[str]) -> dict[str, int]:
        """How many users are joined to each room (0 for unknown rooms)."""
        counts = {room_id: 0 for room_id in room_ids}
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "count_joined_members",
                "SELECT room_id, COUNT(*) FROM room_memberships"
                f" WHERE room_id IN ({placeholders(len(batch))}) AND membership = 'join'"
                " GROUP BY room_id",
                batch,
            )
            counts.update({room_id: count for room_id, count in rows})
        return counts

    async def get_membership(self, room_id: str, user_id: str) -> Membership | None:
        row = await self.db.fetchone(
            "get_membership",
            "SELECT room_id, user_id, membership, event_id, stream_ordering, displayname, avatar_url"
            " FROM room_memberships WHERE room_id = ? AND user_id = ?",
            (room_id, user_id),
        )
        return Membership(*row) if row else None

    async def rooms_for_user(self, user_id: str, memberships: Sequence[str] = ("join",)) -> list[Membership]:
        rows = await self.db.fetchall(
            "rooms_for_user",
            "SELECT room_id, user_id, membership, event_id, stream_ordering, displayname, avatar_url"
            f" FROM room_memberships WHERE user_id = ? AND membership IN ({placeholders(len(memberships))})"
            " AND NOT forgotten",
            (user_id, *memberships),
        )
        return [Membership(*r) for r in rows]

    async def members_of_room(
        self, room_id: str, memberships: Sequence[str] = ("join",)
    ) -> list[Membership]:
        rows = await self.db.fetchall(
            "members_of_room",
            "SELECT room_id, user_id, membership, event_id, stream_ordering, displayname, avatar_url"
            f" FROM room_memberships WHERE room_id = ? AND membership IN ({placeholders(len(memberships))})",
            (room_id, *memberships),
        )
        return [Membership(*r) for r in rows]
