"""Per-user and ephemeral data: account data, receipts, typing and presence.

Every change is filed under a position of its stream (see `streams.py`),
allocated inside the transaction that writes it; those transactions run at
READ COMMITTED so that, once the stream's lock is theirs, they read what
the previous holder committed. Each write returns the position it took, or
None when nothing changed (the caller then has nobody to wake).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, dump_json, placeholders
from .streams import next_position_txn

JsonDict = dict[str, Any]




# ------------------------------------------------------------- account data


@dataclass(frozen=True)
class AccountDataChange:
    room_id: str  # '' for global account data
    type: str
    content: JsonDict


class AccountDataStore:
    """Global (room_id '') and per-room account data, one row per type."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str, room_id: str, data_type: str) -> JsonDict | None:
        content = await self.db.fetchval(
            "get_account_data",
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            (user_id, room_id, data_type),
        )
        return json.loads(content) if content is not None else None

    async def get_global_for_users(self, user_ids: Collection[str], data_type: str) -> dict[str, JsonDict]:
        """The global account data of one type of those of these users who have it."""
        rows = await self.db.fetchall_in(
            "get_account_data_for_users",
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = ? AND user_id IN ({})",
            user_ids,
            data_type,
        )
        return {user_id: json.loads(content) for user_id, content in rows}

    async def update(
        self,
        user_id: str,
        room_id: str,
        data_type: str,
        change: Callable[[JsonDict | None], JsonDict | None],
    ) -> int | None:
        """Replace the content with `change(current)`; None from `change` writes nothing.

        The stream position is taken first: its lock serializes account-data
        writers, so the read-modify-write cannot lose a concurrent update.
        """

        async def txn_fn(txn: Transaction) -> int | None:
            position = await next_position_txn(txn, "account_data")
            current = await txn.fetchval(
                "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                (user_id, room_id, data_type),
            )
            content = change(json.loads(current) if current is not None else None)
            if content is None:
                return None  # the position stays unused: a gap is harmless
            await txn.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_id)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, type) DO UPDATE SET"
                " content = excluded.content, stream_id = excluded.stream_id",
                (user_id, room_id, data_type, dump_json(content), position),
            )
            return position

        return await self.db.run("update_account_data", txn_fn, read_committed=True)

    async def get_changes(self, user_id: str, from_pos: int, to_pos: int) -> list[AccountDataChange]:
        """The user's account data written in (from_pos, to_pos], oldest first."""
        rows = await self.db.fetchall(
            "get_account_data_changes",
            "SELECT room_id, type, content FROM account_data"
            " WHERE user_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            (user_id, from_pos, to_pos),
        )
        return [AccountDataChange(room_id, t, json.loads(content)) for room_id, t, content in rows]


# ----------------------------------------------------------------- receipts


@dataclass(frozen=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str  # '' for an unthreaded receipt
    event_id: str
    data: JsonDict


class ReceiptStore:
    """The latest receipt of each type per (room, user, thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def advance(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        event_stream_ordering: int,
        data: JsonDict,
    ) -> int | None:
        """Store the receipt unless the existing one is for this event or a later one."""

        async def txn_fn(txn: Transaction) -> int | None:
            existing = await txn.fetchval(
                "SELECT event_stream_ordering FROM receipts"
                " WHERE room_id = ? AND receipt_type = ? AND user_id = ? AND thread_id = ?",
                (room_id, receipt_type, user_id, thread_id),
            )
            if existing is not None and existing >= event_stream_ordering:
                return None
            position = await next_position_txn(txn, "receipts")
            # The WHERE keeps a receipt that moved further meanwhile.
            changed = await txn.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream_ordering, data, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id,"
                " event_stream_ordering = excluded.event_stream_ordering,"
                " data = excluded.data, stream_id = excluded.stream_id"
                " WHERE receipts.event_stream_ordering < excluded.event_stream_ordering",
                (
                    room_id, receipt_type, user_id, thread_id, event_id,
                    event_stream_ordering, dump_json(data), position,
                ),
            )
            return position if changed else None

        return await self.db.run("advance_receipt", txn_fn, read_committed=True)

    async def get_changes(
        self,
        room_ids: Sequence[str],
        from_pos: int,
        to_pos: int,
        *,
        private_type: str,
        viewer: str,
    ) -> list[Receipt]:
        """Receipts of the rooms written in (from_pos, to_pos]; of `private_type`, only the viewer's."""
        receipts: list[Receipt] = []
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "get_receipt_changes",
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, data FROM receipts"
                f" WHERE room_id IN ({placeholders(len(batch))})"
                " AND stream_id > ? AND stream_id <= ? AND (receipt_type <> ? OR user_id = ?)",
                (*batch, from_pos, to_pos, private_type, viewer),
            )
            receipts.extend(
                Receipt(room_id, receipt_type, user_id, thread_id, event_id, json.loads(data))
                for room_id, receipt_type, user_id, thread_id, event_id, data in rows
            )
        return receipts


# ------------------------------------------------------------------- typing


class TypingStore:
    """Who is typing where, until when (expires_ts 0: stopped)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self, room_id: str, user_id: str, expires_ts: int, now: int) -> int | None:
        """Mark the user typing until `expires_ts`; a position only if they were not typing."""

        async def txn_fn(txn: Transaction) -> int | None:
            renewed = await txn.execute(
                "UPDATE typing SET expires_ts = ? WHERE room_id = ? AND user_id = ? AND expires_ts > ?",
                (expires_ts, room_id, user_id, now),
            )
            if renewed:
                return None  # still typing: the room's typing set is unchanged
            position = await next_position_txn(txn, "typing")
            await txn.execute(
                "INSERT INTO typing (room_id, user_id, expires_ts, stream_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room_id, user_id) DO UPDATE SET"
                " expires_ts = excluded.expires_ts, stream_id = excluded.stream_id",
                (room_id, user_id, expires_ts, position),
            )
            return position

        return await self.db.run("start_typing", txn_fn, read_committed=True)

    async def stop(self, room_id: str, user_id: str) -> int | None:
        """Mark the user not typing; a position only if a typing mark was still standing.

        A mark that has expired but not yet been swept counts as standing:
        syncs have not been told it ended.
        """

        async def txn_fn(txn: Transaction) -> int | None:
            expires = await txn.fetchval(
                "SELECT expires_ts FROM typing WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            )
            if not expires:
                return None
            position = await next_position_txn(txn, "typing")
            await txn.execute(
                "UPDATE typing SET expires_ts = 0, stream_id = ? WHERE room_id = ? AND user_id = ?",
                (position, room_id, user_id),
            )
            return position

        return await self.db.run("stop_typing", txn_fn, read_committed=True)

    async def expire(self, now: int) -> tuple[int, list[str]] | None:
        """End every typing mark past its expiry: (position, rooms changed), or None if none."""

        async def txn_fn(txn: Transaction) -> tuple[int, list[str]] | None:
            due = await txn.fetchval(
                "SELECT 1 FROM typing WHERE expires_ts > 0 AND expires_ts <= ? LIMIT 1", (now,)
            )
            if due is None:
                return None
            position = await next_position_txn(txn, "typing")
            # Another process may have swept them meanwhile: RETURNING says what we did.
            rows = await txn.fetchall(
                "UPDATE typing SET expires_ts = 0, stream_id = ?"
                " WHERE expires_ts > 0 AND expires_ts <= ? RETURNING room_id",
                (position, now),
            )
            if not rows:
                return None
            return position, sorted({room_id for (room_id,) in rows})

        return await self.db.run("expire_typing", txn_fn, read_committed=True)

    async def next_expiry(self) -> int | None:
        return await self.db.fetchval(
            "next_typing_expiry", "SELECT MIN(expires_ts) FROM typing WHERE expires_ts > 0"
        )

    async def changed_rooms(self, from_pos: int, to_pos: int) -> set[str]:
        """Rooms whose typing set changed in (from_pos, to_pos]."""
        rows = await self.db.fetchall(
            "typing_changed_rooms",
            "SELECT DISTINCT room_id FROM typing WHERE stream_id > ? AND stream_id <= ?",
            (from_pos, to_pos),
        )
        return {room_id for (room_id,) in rows}

    async def typing_users(self, room_ids: Sequence[str], now: int) -> dict[str, list[str]]:
        """Who is typing now in each of the rooms (rooms with nobody typing are left out)."""
        typing: dict[str, list[str]] = {}
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "typing_users",
                "SELECT room_id, user_id FROM typing"
                f" WHERE expires_ts > ? AND room_id IN ({placeholders(len(batch))})"
                " ORDER BY room_id, user_id",
                (now, *batch),
            )
            for room_id, user_id in rows:
                typing.setdefault(room_id, []).append(user_id)
        return typing


# ----------------------------------------------------------------- presence


@dataclass(frozen=True)
class UserPresence:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int  # 0: never active
    last_seen_ts: int
    currently_active: bool
    stream_id: int = 0


_PRESENCE_COLUMNS = (
    "user_id, state, status_msg, last_active_ts, last_seen_ts, currently_active, stream_id"
)

# Users joined to a room the given user is joined to.
_ROOM_MATES = (
    "SELECT m2.user_id FROM room_memberships m1"
    " JOIN room_memberships m2 ON m2.room_id = m1.room_id AND m2.membership = 'join'"
    " WHERE m1.user_id = ? AND m1.membership = 'join'"
)


def _presence(row: Sequence[Any]) -> UserPresence:
    user_id, state, status_msg, last_active, last_seen, active, stream_id = row
    return UserPresence(user_id, state, status_msg, last_active, last_seen, bool(active), stream_id)


# (the new presence, whether clients must be told) or None to write nothing
PresenceChange = Callable[[UserPresence | None], tuple[UserPresence, bool] | None]


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> UserPresence | None:
        row = await self.db.fetchone(
            "get_presence", f"SELECT {_PRESENCE_COLUMNS} FROM presence WHERE user_id = ?", (user_id,)
        )
        return _presence(row) if row else None

    async def update(self, user_id: str, change: PresenceChange) -> tuple[UserPresence, int | None] | None:
        """Apply `change` to the user's presence: (what was written, its position if told), or None.

        A change clients need not be told of (a later last-active time while
        currently active) keeps the row's stream position.
        """

        async def txn_fn(txn: Transaction) -> tuple[UserPresence, int | None] | None:
            # A no-op UPDATE takes the row's lock (on PostgreSQL) while reading it.
            row = await txn.fetchone(
                f"UPDATE presence SET user_id = user_id WHERE user_id = ? RETURNING {_PRESENCE_COLUMNS}",
                (user_id,),
            )
            current = _presence(row) if row else None
            decided = change(current)
            if decided is None:
                return None
            new, tell = decided
            position: int | None = None
            if tell or current is None:
                position = stream_id = await next_position_txn(txn, "presence")
            else:
                stream_id = current.stream_id
            await txn.execute(
                f"INSERT INTO presence ({_PRESENCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " last_seen_ts = excluded.last_seen_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                (
                    user_id, new.state, new.status_msg, new.last_active_ts, new.last_seen_ts,
                    new.currently_active, stream_id,
                ),
            )
            return dataclasses.replace(new, stream_id=stream_id), position

        return await self.db.run("update_presence", txn_fn, read_committed=True)

    async def time_out(self, seen_before: int) -> tuple[int, list[str]] | None:
        """Mark offline everyone not seen since `seen_before`: (position, users), or None."""

        async def txn_fn(txn: Transaction) -> tuple[int, list[str]] | None:
            due = await txn.fetchval(
                "SELECT 1 FROM presence WHERE state <> 'offline' AND last_seen_ts < ? LIMIT 1",
                (seen_before,),
            )
            if due is None:
                return None
            position = await next_position_txn(txn, "presence")
            rows = await txn.fetchall(
                "UPDATE presence SET state = 'offline', currently_active = FALSE, stream_id = ?"
                " WHERE state <> 'offline' AND last_seen_ts < ? RETURNING user_id",
                (position, seen_before),
            )
            return (position, [user_id for (user_id,) in rows]) if rows else None

        return await self.db.run("presence_time_out", txn_fn, read_committed=True)

    async def get_changes(
        self, user_id: str, from_pos: int, to_pos: int, *, include_offline: bool
    ) -> list[UserPresence]:
        """Presence of the user and their room-mates, changed in (from_pos, to_pos]."""
        offline = "" if include_offline else " AND state <> 'offline'"
        rows = await self.db.fetchall(
            "get_presence_changes",
            f"SELECT {_PRESENCE_COLUMNS} FROM presence"
            f" WHERE stream_id > ? AND stream_id <= ?{offline}"
            f" AND (user_id = ? OR user_id IN ({_ROOM_MATES}))",
            (from_pos, to_pos, user_id, user_id),
        )
        return [_presence(row) for row in rows]

    async def shares_room(self, user_id: str, other_id: str) -> bool:
        """Whether both users are joined to some room."""
        found = await self.db.fetchval(
            "users_share_room",
            "SELECT 1 FROM room_memberships m1"
            " JOIN room_memberships m2 ON m2.room_id = m1.room_id"
            " WHERE m1.user_id = ? AND m1.membership = 'join'"
            " AND m2.user_id = ? AND m2.membership = 'join' LIMIT 1",
            (user_id, other_id),
        )
        return found is not None

    async def room_mates(self, user_ids: Sequence[str]) -> set[str]:
        """Everyone joined to a room one of the users is joined to (those users included)."""
        mates: set[str] = set(user_ids)
        for batch in batches(user_ids):
            rows = await self.db.fetchall(
                "presence_room_mates",
                "SELECT DISTINCT m2.user_id FROM room_memberships m1"
                " JOIN room_memberships m2 ON m2.room_id = m1.room_id AND m2.membership = 'join'"
                f" WHERE m1.user_id IN ({placeholders(len(batch))}) AND m1.membership = 'join'",
                batch,
            )
            mates.update(user_id for (user_id,) in rows)
        return mates
