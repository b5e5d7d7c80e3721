"""User-interactive authentication sessions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction


@dataclass
class UIASession:
    session_id: str
    created_ts: int
    method: str
    uri: str
    clientdict: dict[str, Any]
    completed: dict[str, Any]
    serverdict: dict[str, Any]


_COLUMNS = "session_id, created_ts, method, uri, clientdict, completed, serverdict"


def _session(row: tuple) -> UIASession:
    return UIASession(
        row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]), json.loads(row[6])
    )


class UIAStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_session(self, session: UIASession) -> None:
        await self.db.execute(
            "create_uia_session",
            f"INSERT INTO ui_auth_sessions ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                session.session_id,
                session.created_ts,
                session.method,
                session.uri,
                json.dumps(session.clientdict),
                json.dumps(session.completed),
                json.dumps(session.serverdict),
            ),
        )

    async def get_session(self, session_id: str) -> UIASession | None:
        row = await self.db.fetchone(
            "get_uia_session",
            f"SELECT {_COLUMNS} FROM ui_auth_sessions WHERE session_id = ?",
            (session_id,),
        )
        return _session(row) if row else None

    async def set_clientdict(self, session_id: str, clientdict: dict[str, Any]) -> None:
        await self.db.execute(
            "set_uia_clientdict",
            "UPDATE ui_auth_sessions SET clientdict = ? WHERE session_id = ?",
            (json.dumps(clientdict), session_id),
        )

    async def mark_stage_completed(self, session_id: str, stage: str, result: Any) -> dict[str, Any]:
        """Record a completed stage; returns every stage completed so far."""

        async def _fn(txn: Transaction) -> dict[str, Any]:
            raw = await txn.fetchval(
                "SELECT completed FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            )
            completed = json.loads(raw) if raw else {}
            completed[stage] = result
            await txn.execute(
                "UPDATE ui_auth_sessions SET completed = ? WHERE session_id = ?",
                (json.dumps(completed), session_id),
            )
            return completed

        return await self.db.run("mark_uia_stage_completed", _fn)

    async def set_server_value(self, session_id: str, key: str, value: Any) -> None:
        async def _fn(txn: Transaction) -> None:
            raw = await txn.fetchval(
                "SELECT serverdict FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            )
            serverdict = json.loads(raw) if raw else {}
            serverdict[key] = value
            await txn.execute(
                "UPDATE ui_auth_sessions SET serverdict = ? WHERE session_id = ?",
                (json.dumps(serverdict), session_id),
            )

        await self.db.run("set_uia_server_value", _fn)

    @staticmethod
    async def delete_session_txn(txn: Transaction, session_id: str) -> None:
        await txn.execute("DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,))

    async def delete_session(self, session_id: str) -> None:
        await self.db.run("delete_uia_session", UIAStore.delete_session_txn, session_id)

    async def expired_sessions(self, older_than: int) -> list[UIASession]:
        rows = await self.db.fetchall(
            "expired_uia_sessions",
            f"SELECT {_COLUMNS} FROM ui_auth_sessions WHERE created_ts < ?",
            (older_than,),
        )
        return [_session(r) for r in rows]
