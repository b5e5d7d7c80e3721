"""Application services: per-service stream positions and the transaction queue.

The sender reads the streams (events, receipts, typing, presence,
to-device) from the position a service has reached, and in ONE
transaction stores what it found for the service as a transaction and
moves the positions on (deleting from the device inbox the to-device
messages the service consumed). A crash between the two is therefore
impossible, and a transaction, once stored, is sent with the same ID and
body until the service accepts it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, placeholders
from .ephemeral import _PRESENCE_COLUMNS, UserPresence, _presence

# The streams an application service follows, and their columns in appservice_state.
STREAMS = ("events", "receipts", "typing", "presence", "to_device")
_COLUMNS = ", ".join(f"{s}_position" for s in STREAMS)


@dataclass(frozen=True)
class AppserviceState:
    positions: dict[str, int]
    last_txn_id: int


@dataclass(frozen=True)
class ToDeviceMessage:
    """A message of the device inbox: for `device_id` of `user_id`, at `stream_id`."""

    stream_id: int
    user_id: str
    device_id: str
    message: dict[str, Any]


@dataclass(frozen=True)
class QueuedTransaction:
    txn_id: int
    body: str
    event_count: int


class AppserviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_state(self, appservice_id: str) -> AppserviceState:
        """The service's positions; a service seen for the first time starts at the
        streams' current positions (it is sent what happens from now on)."""

        async def txn_fn(txn: Transaction) -> AppserviceState:
            row = await txn.fetchone(
                f"SELECT {_COLUMNS}, last_txn_id FROM appservice_state WHERE appservice_id = ?",
                (appservice_id,),
            )
            if row is None:
                current = dict(await txn.fetchall("SELECT stream, position FROM stream_positions"))
                row = (*(current.get(s, 0) for s in STREAMS), 0)
                await txn.execute(
                    f"INSERT INTO appservice_state (appservice_id, {_COLUMNS}, last_txn_id)"
                    f" VALUES ({placeholders(len(STREAMS) + 2)}) ON CONFLICT (appservice_id) DO NOTHING",
                    (appservice_id, *row),
                )
            return AppserviceState(dict(zip(STREAMS, row[:-1])), row[-1])

        return await self.db.run("appservice_get_state", txn_fn)

    async def queue(
        self,
        appservice_id: str,
        seen: AppserviceState,
        positions: dict[str, int],
        body: str | None,
        event_count: int,
        now: int,
        consumed: Sequence[ToDeviceMessage] = (),
    ) -> AppserviceState | None:
        """Move the positions from `seen` to `positions`, storing `body` (if any)
        as the next transaction and deleting the `consumed` to-device messages
        from the device inbox. None if the row is no longer `seen` (another
        process sent meanwhile): nothing is written."""

        async def txn_fn(txn: Transaction) -> AppserviceState | None:
            txn_id = seen.last_txn_id + (1 if body is not None else 0)
            changed = await txn.execute(
                "UPDATE appservice_state SET"
                f" {', '.join(f'{s}_position = ?' for s in STREAMS)}, last_txn_id = ?"
                f" WHERE appservice_id = ? AND last_txn_id = ?"
                f" AND {' AND '.join(f'{s}_position = ?' for s in STREAMS)}",
                (
                    *(positions[s] for s in STREAMS), txn_id, appservice_id, seen.last_txn_id,
                    *(seen.positions[s] for s in STREAMS),
                ),
            )
            if not changed:
                return None
            if body is not None:
                await txn.execute(
                    "INSERT INTO appservice_txns (appservice_id, txn_id, body, event_count, created_ts)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (appservice_id, txn_id, body, event_count, now),
                )
            if consumed:
                await txn.executemany(
                    "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND stream_id = ?",
                    [(m.user_id, m.device_id, m.stream_id) for m in consumed],
                )
            return AppserviceState(dict(positions), txn_id)

        return await self.db.run("appservice_queue", txn_fn)

    async def oldest_transaction(self, appservice_id: str) -> QueuedTransaction | None:
        row = await self.db.fetchone(
            "appservice_oldest_txn",
            "SELECT txn_id, body, event_count FROM appservice_txns WHERE appservice_id = ?"
            " ORDER BY txn_id LIMIT 1",
            (appservice_id,),
        )
        return QueuedTransaction(*row) if row else None

    async def delete_transaction(self, appservice_id: str, txn_id: int) -> None:
        await self.db.execute(
            "appservice_delete_txn",
            "DELETE FROM appservice_txns WHERE appservice_id = ? AND txn_id = ?",
            (appservice_id, txn_id),
        )

    async def queued_event_count(self, appservice_id: str) -> int:
        """Events in the service's unacknowledged transactions."""
        return await self.db.fetchval(
            "appservice_queue_depth",
            "SELECT COALESCE(SUM(event_count), 0) FROM appservice_txns WHERE appservice_id = ?",
            (appservice_id,),
        )

    # ------------------------------------------------------- stream reads

    async def events_after(self, position: int, limit: int) -> list[tuple[int, str, bool]]:
        """(stream_ordering, event_id, rejected) of the first `limit` events after `position`."""
        rows = await self.db.fetchall(
            "appservice_events_after",
            "SELECT stream_ordering, event_id, rejected FROM events WHERE stream_ordering > ?"
            " ORDER BY stream_ordering LIMIT ?",
            (position, limit),
        )
        return [(stream, event_id, bool(rejected)) for stream, event_id, rejected in rows]

    async def receipt_rooms(self, from_pos: int, to_pos: int) -> set[str]:
        """Rooms with receipts written in (from_pos, to_pos]."""
        rows = await self.db.fetchall(
            "appservice_receipt_rooms",
            "SELECT DISTINCT room_id FROM receipts WHERE stream_id > ? AND stream_id <= ?",
            (from_pos, to_pos),
        )
        return {room_id for (room_id,) in rows}

    async def presence_changes(self, from_pos: int, to_pos: int) -> list[UserPresence]:
        """Everyone's presence changed in (from_pos, to_pos]."""
        rows = await self.db.fetchall(
            "appservice_presence_changes",
            f"SELECT {_PRESENCE_COLUMNS} FROM presence WHERE stream_id > ? AND stream_id <= ?",
            (from_pos, to_pos),
        )
        return [_presence(row) for row in rows]

    async def to_device_recipients(self, from_pos: int, to_pos: int) -> set[str]:
        """Users with to-device messages queued in (from_pos, to_pos]: an indexed range read."""
        rows = await self.db.fetchall(
            "appservice_to_device_recipients",
            "SELECT DISTINCT user_id FROM device_inbox WHERE stream_id > ? AND stream_id <= ?",
            (from_pos, to_pos),
        )
        return {user_id for (user_id,) in rows}

    async def to_device_messages(
        self, user_ids: Collection[str], from_pos: int, to_pos: int
    ) -> list[ToDeviceMessage]:
        """The to-device messages queued in (from_pos, to_pos] for these users'
        devices, in stream order (then by recipient, for a stable order)."""
        rows = await self.db.fetchall_in(
            "appservice_to_device_messages",
            "SELECT stream_id, user_id, device_id, message_json FROM device_inbox"
            " WHERE stream_id > ? AND stream_id <= ? AND user_id IN ({})",
            user_ids,
            from_pos,
            to_pos,
        )
        found = [ToDeviceMessage(stream, user, device, json.loads(raw)) for stream, user, device, raw in rows]
        return sorted(found, key=lambda m: (m.stream_id, m.user_id, m.device_id))
