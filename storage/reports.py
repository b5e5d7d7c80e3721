"""Reports of events (and rooms) by users, kept for the server's admins."""

from __future__ import annotations

from dataclasses import dataclass

from .engines import Database, Transaction, like_pattern
from .events import EventStore

_REPORT_COLUMNS = "id, received_ts, room_id, event_id, user_id, reason, score"


@dataclass(frozen=True)
class EventReport:
    id: int
    received_ts: int
    room_id: str
    event_id: str
    user_id: str  # who reported it
    reason: str | None
    score: int | None


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_event_report(
        self,
        room_id: str,
        event_id: str,
        user_id: str,
        reason: str | None,
        score: int | None,
        received_ts: int,
    ) -> int:
        async def txn_fn(txn: Transaction) -> int:
            report_id = await EventStore.next_id_txn(txn, self.db.dialect, "event_reports", "id")
            await txn.execute(
                f"INSERT INTO event_reports ({_REPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (report_id, received_ts, room_id, event_id, user_id, reason, score),
            )
            return report_id

        return await self.db.run("add_event_report", txn_fn)

    async def add_room_report(
        self, room_id: str, user_id: str, reason: str, received_ts: int
    ) -> int:
        async def txn_fn(txn: Transaction) -> int:
            report_id = await EventStore.next_id_txn(txn, self.db.dialect, "room_reports", "id")
            await txn.execute(
                "INSERT INTO room_reports (id, received_ts, room_id, user_id, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                (report_id, received_ts, room_id, user_id, reason),
            )
            return report_id

        return await self.db.run("add_room_report", txn_fn)

    async def get_event_reports(
        self,
        *,
        offset: int,
        limit: int,
        newest_first: bool,
        room_id: str | None = None,
        user_id: str | None = None,
    ) -> tuple[list[EventReport], int]:
        """A page of event reports and how many match in all.

        As Synapse's admin API does, `room_id` and `user_id` (the reporter)
        match any report whose value contains them.
        """
        clauses, params = [], []
        for column, value in (("room_id", room_id), ("user_id", user_id)):
            if value:
                clauses.append(f"{column} LIKE ? ESCAPE '\\'")
                params.append(like_pattern(value))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if newest_first else "ASC"

        async def txn_fn(txn: Transaction) -> tuple[list[EventReport], int]:
            total = await txn.fetchval(f"SELECT COUNT(*) FROM event_reports{where}", params)
            rows = await txn.fetchall(
                f"SELECT {_REPORT_COLUMNS} FROM event_reports{where}"
                f" ORDER BY received_ts {order}, id {order} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            return [EventReport(*row) for row in rows], total

        return await self.db.run("get_event_reports", txn_fn)

    async def get_event_report(self, report_id: int) -> EventReport | None:
        row = await self.db.fetchone(
            "get_event_report",
            f"SELECT {_REPORT_COLUMNS} FROM event_reports WHERE id = ?",
            (report_id,),
        )
        return EventReport(*row) if row else None
