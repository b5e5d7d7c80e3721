"""Room aliases and the public room directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


from .engines import Database, Transaction, placeholders



@dataclass(frozen=True)
class AliasMapping:
    room_alias: str
    room_id: str
    creator: str


class DirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------- aliases

    async def create_alias(self, room_alias: str, room_id: str, creator: str, now: int) -> bool:
        """Map an alias to a room; False if the alias is taken (or reserved)."""
        changed = await self.db.execute(
            "create_room_alias",
            "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_alias) DO NOTHING",
            (room_alias, room_id, creator, now),
        )
        return changed == 1

    async def reserve_alias(self, room_alias: str, creator: str, now: int, expired_before: int) -> bool:
        """Hold an alias for a room about to be created; False if it is taken.

        A reservation older than `expired_before` was left by a crash between
        reserving and binding, and no longer holds the alias.
        """

        async def reserve_txn(txn: Transaction) -> bool:
            await txn.execute(
                "DELETE FROM room_aliases WHERE room_alias = ? AND room_id IS NULL AND created_ts < ?",
                (room_alias, expired_before),
            )
            changed = await txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts)"
                " VALUES (?, NULL, ?, ?) ON CONFLICT (room_alias) DO NOTHING",
                (room_alias, creator, now),
            )
            return changed == 1

        return await self.db.run("reserve_room_alias", reserve_txn)

    async def bind_reserved_alias(self, room_alias: str, room_id: str) -> None:
        await self.db.execute(
            "bind_room_alias",
            "UPDATE room_aliases SET room_id = ? WHERE room_alias = ? AND room_id IS NULL",
            (room_id, room_alias),
        )

    async def release_reserved_alias(self, room_alias: str) -> None:
        await self.db.execute(
            "release_room_alias",
            "DELETE FROM room_aliases WHERE room_alias = ? AND room_id IS NULL",
            (room_alias,),
        )

    async def get_alias(self, room_alias: str) -> AliasMapping | None:
        row = await self.db.fetchone(
            "get_room_alias",
            "SELECT room_alias, room_id, creator FROM room_aliases"
            " WHERE room_alias = ? AND room_id IS NOT NULL",
            (room_alias,),
        )
        return AliasMapping(*row) if row else None

    async def get_aliases(self, room_aliases: Sequence[str]) -> dict[str, str]:
        """{alias: room ID} for those of `room_aliases` that are mapped."""
        if not room_aliases:
            return {}
        rows = await self.db.fetchall(
            "get_room_aliases",
            "SELECT room_alias, room_id FROM room_aliases"
            f" WHERE room_alias IN ({placeholders(len(room_aliases))}) AND room_id IS NOT NULL",
            list(room_aliases),
        )
        return {alias: room_id for alias, room_id in rows}

    async def delete_alias(self, room_alias: str, room_id: str) -> bool:
        """Remove the alias if it still maps to `room_id`; False if it no longer did."""
        changed = await self.db.execute(
            "delete_room_alias",
            "DELETE FROM room_aliases WHERE room_alias = ? AND room_id = ?",
            (room_alias, room_id),
        )
        return changed == 1

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "aliases_for_room",
            "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, room_alias",
            (room_id,),
        )
        return [r[0] for r in rows]

    # ---------------------------------------------------- the room directory

    async def is_room_public(self, room_id: str) -> bool | None:
        """Whether the room is published; None for an unknown room."""
        value = await self.db.fetchval(
            "is_room_public", "SELECT is_public FROM rooms WHERE room_id = ?", (room_id,)
        )
        return None if value is None else bool(value)

    async def set_room_public(self, room_id: str, is_public: bool) -> None:
        await self.db.execute(
            "set_room_public", "UPDATE rooms SET is_public = ? WHERE room_id = ?", (is_public, room_id)
        )

    async def public_rooms(self) -> list[str]:
        """Every room published in the directory."""
        rows = await self.db.fetchall("public_rooms", "SELECT room_id FROM rooms WHERE is_public")
        return [r[0] for r in rows]
