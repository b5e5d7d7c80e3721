"""Stream positions: the ordered positions every sync-able change is filed under.

Each stream (room events, receipts, typing, account data, presence,
to-device messages, device-list changes) has one row in `stream_positions`.
A writer allocates the next position by updating that row inside its own
transaction; the row lock is held until commit, so positions commit in
the order they are handed out, and "everything up to N" is complete as soon
as N is. Transactions that allocate must run with `read_committed=True` on
PostgreSQL, so that waiting for the row lock ends in the next position
rather than a serialization failure.
"""

from __future__ import annotations

from .engines import Database, Transaction

STREAMS = ("events", "receipts", "typing", "account_data", "presence", "to_device", "device_lists")


async def next_position_txn(txn: Transaction, stream: str) -> int:
    """Allocate the next position of `stream` (held until this transaction ends)."""
    return await txn.fetchval(
        "UPDATE stream_positions SET position = position + 1 WHERE stream = ? RETURNING position",
        (stream,),
    )


async def current_positions(db: Database) -> dict[str, int]:
    """Every stream's committed position."""
    rows = await db.fetchall("stream_positions", "SELECT stream, position FROM stream_positions")
    return {stream: position for stream, position in rows}
