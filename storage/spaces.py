"""Pagination sessions of the space hierarchy API.

A page of GET /hierarchy ends part-way through a walk of the space tree;
the rest of the walk (its queue and the rooms already seen) is kept here
under the `next_batch` token, so any server process can continue it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction


@dataclass(frozen=True)
class HierarchySession:
    user_id: str
    room_id: str
    suggested_only: bool
    max_depth: int | None
    state: dict[str, Any]


class SpaceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save_hierarchy_session(
        self, token: str, session: HierarchySession, now: int, expired_before: int
    ) -> None:
        """Store a session, and drop those created before `expired_before`."""

        async def txn_fn(txn: Transaction) -> None:
            await txn.execute(
                "DELETE FROM hierarchy_sessions WHERE created_ts < ?", (expired_before,)
            )
            await txn.execute(
                "INSERT INTO hierarchy_sessions (token, user_id, room_id, suggested_only,"
                " max_depth, state, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token,
                    session.user_id,
                    session.room_id,
                    session.suggested_only,
                    session.max_depth,
                    json.dumps(session.state, separators=(",", ":")),
                    now,
                ),
            )

        await self.db.run("save_hierarchy_session", txn_fn)

    async def get_hierarchy_session(
        self, token: str, created_after: int
    ) -> HierarchySession | None:
        row = await self.db.fetchone(
            "get_hierarchy_session",
            "SELECT user_id, room_id, suggested_only, max_depth, state FROM hierarchy_sessions"
            " WHERE token = ? AND created_ts >= ?",
            (token, created_after),
        )
        if row is None:
            return None
        user_id, room_id, suggested_only, max_depth, state = row
        return HierarchySession(
            user_id, room_id, bool(suggested_only), max_depth, json.loads(state)
        )
