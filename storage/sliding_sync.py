"""Simplified Sliding Sync connections (MSC4186): the state behind each `pos`.

A position's state is a JSON document the sync handler writes and reads
back whole; this store only keeps it, per user, device and connection ID,
and forgets what a connection has moved past (see schema 0018).
"""

from __future__ import annotations

import json
import time
from typing import Any

from .engines import Database, Transaction
from .events import EventStore

# Connections (conn_ids) one device may keep; starting another forgets the
# least recently started one.
MAX_CONNECTIONS_PER_DEVICE = 20


class SlidingSyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, pos_id: int, user_id: str, device_id: str, conn_id: str) -> dict[str, Any] | None:
        """The state of position `pos_id` if it belongs to this connection of
        this user's device (anyone else's position is unknown), forgetting
        the connection's older positions: the client has moved past them."""

        async def fn(txn: Transaction) -> dict[str, Any] | None:
            raw = await txn.fetchval(
                "SELECT state FROM sliding_sync_positions"
                " WHERE pos_id = ? AND user_id = ? AND device_id = ? AND conn_id = ?",
                (pos_id, user_id, device_id, conn_id),
            )
            if raw is None:
                return None
            await txn.execute(
                "DELETE FROM sliding_sync_positions"
                " WHERE user_id = ? AND device_id = ? AND conn_id = ? AND pos_id < ?",
                (user_id, device_id, conn_id, pos_id),
            )
            return json.loads(raw)

        return await self.db.run("sliding_sync_load", fn)

    async def save(
        self, user_id: str, device_id: str, conn_id: str, state: dict[str, Any], *, new_connection: bool
    ) -> int:
        """Store a new position of the connection; its ID. A new connection
        replaces one of the same conn_id, and the device's oldest beyond
        MAX_CONNECTIONS_PER_DEVICE."""
        encoded = json.dumps(state, separators=(",", ":"))

        async def fn(txn: Transaction) -> int:
            if new_connection:
                await txn.execute(
                    "DELETE FROM sliding_sync_positions WHERE user_id = ? AND device_id = ? AND conn_id = ?",
                    (user_id, device_id, conn_id),
                )
                rows = await txn.fetchall(
                    "SELECT conn_id, MAX(pos_id) FROM sliding_sync_positions"
                    " WHERE user_id = ? AND device_id = ? GROUP BY conn_id ORDER BY MAX(pos_id) DESC",
                    (user_id, device_id),
                )
                for old_conn, _latest in rows[MAX_CONNECTIONS_PER_DEVICE - 1:]:
                    await txn.execute(
                        "DELETE FROM sliding_sync_positions WHERE user_id = ? AND device_id = ? AND conn_id = ?",
                        (user_id, device_id, old_conn),
                    )
            pos_id = await EventStore.next_id_txn(txn, self.db.dialect, "sliding_sync_positions", "pos_id")
            await txn.execute(
                "INSERT INTO sliding_sync_positions (pos_id, user_id, device_id, conn_id, state, created_ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (pos_id, user_id, device_id, conn_id, encoded, int(time.time() * 1000)),
            )
            return pos_id

        return await self.db.run("sliding_sync_save", fn)

    @staticmethod
    async def delete_devices_txn(txn: Transaction, user_id: str, device_ids: list[str]) -> None:
        await txn.executemany(
            "DELETE FROM sliding_sync_positions WHERE user_id = ? AND device_id = ?",
            [(user_id, d) for d in device_ids],
        )
