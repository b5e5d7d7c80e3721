"""Server-side key backups: backup versions and the room keys stored in them.

The key-backup service composes these `*_txn` methods in one transaction
per request. A transaction that writes takes the user's lock first
(`lock_user_txn`) and runs at READ COMMITTED: one user's writes are thereby
serialized, across processes too, and each reads what the previous one
committed; as in Synapse, which queues each user's backup writes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, dump_json, placeholders

JsonDict = dict[str, Any]



@dataclass(frozen=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: JsonDict
    etag: int


@dataclass(frozen=True)
class RoomKey:
    """One backed-up session key, as the client uploaded it."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict


# room ID -> session ID -> key
RoomKeys = dict[str, dict[str, RoomKey]]

# The first key of the two-key PostgreSQL advisory locks on one user's
# backups (a key space apart from the one-key locks on rooms).
_LOCK_CLASS = 0x6B62  # "kb"

_VERSION_COLUMNS = "version, algorithm, auth_data, etag"
_KEY_COLUMNS = "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"


def _version(row: tuple[Any, ...]) -> BackupVersion:
    version, algorithm, auth_data, etag = row
    return BackupVersion(version, algorithm, json.loads(auth_data), etag)


def _add_keys(into: RoomKeys, rows: Iterable[tuple[Any, ...]]) -> RoomKeys:
    for room_id, session_id, first_index, forwarded, verified, data in rows:
        into.setdefault(room_id, {})[session_id] = RoomKey(
            first_index, forwarded, bool(verified), json.loads(data)
        )
    return into


def _where(
    user_id: str, version: int, room_id: str | None, session_id: str | None
) -> tuple[str, list[Any]]:
    """The condition for a version's keys, one room's (room_id), or one session's (both)."""
    where = "user_id = ? AND version = ?"
    params: list[Any] = [user_id, version]
    if room_id is not None:
        where += " AND room_id = ?"
        params.append(room_id)
        if session_id is not None:
            where += " AND session_id = ?"
            params.append(session_id)
    return where, params


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def lock_user_txn(txn: Transaction, dialect: str, user_id: str) -> None:
        """Serialize writers to one user's backups (SQLite is serial already)."""
        if dialect == "postgres":
            await txn.execute(
                "SELECT pg_advisory_xact_lock(?, ?)",
                (_LOCK_CLASS, zlib.crc32(user_id.encode()) - 2**31),
            )

    # ---------------------------------------------------------------- versions

    @staticmethod
    async def create_version_txn(
        txn: Transaction, user_id: str, algorithm: str, auth_data: JsonDict
    ) -> int:
        """A new version, numbered one past every version the user ever had."""
        version = await txn.fetchval(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM e2e_room_keys_versions WHERE user_id = ?",
            (user_id,),
        )
        await txn.execute(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data)"
            " VALUES (?, ?, ?, ?)",
            (user_id, version, algorithm, dump_json(auth_data)),
        )
        return version

    @staticmethod
    async def get_version_txn(txn: Transaction, user_id: str, version: int) -> BackupVersion | None:
        """The version, unless it does not exist or was deleted."""
        row = await txn.fetchone(
            f"SELECT {_VERSION_COLUMNS} FROM e2e_room_keys_versions"
            " WHERE user_id = ? AND version = ? AND NOT deleted",
            (user_id, version),
        )
        return _version(row) if row else None

    @staticmethod
    async def current_version_txn(txn: Transaction, user_id: str) -> BackupVersion | None:
        """The user's newest version that is not deleted."""
        row = await txn.fetchone(
            f"SELECT {_VERSION_COLUMNS} FROM e2e_room_keys_versions"
            " WHERE user_id = ? AND NOT deleted ORDER BY version DESC LIMIT 1",
            (user_id,),
        )
        return _version(row) if row else None

    @staticmethod
    async def update_auth_data_txn(
        txn: Transaction, user_id: str, version: int, auth_data: JsonDict
    ) -> None:
        await txn.execute(
            "UPDATE e2e_room_keys_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
            (dump_json(auth_data), user_id, version),
        )

    @staticmethod
    async def delete_version_txn(txn: Transaction, user_id: str, version: int) -> bool:
        """Mark the version deleted and drop its keys; False if it never existed
        (True for one deleted before)."""
        found = await txn.execute(
            "UPDATE e2e_room_keys_versions SET deleted = TRUE WHERE user_id = ? AND version = ?",
            (user_id, version),
        )
        await txn.execute(
            "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?", (user_id, version)
        )
        return found > 0

    @staticmethod
    async def delete_all_txn(txn: Transaction, user_id: str) -> None:
        """Every backup of the user (a deactivated account's)."""
        await txn.execute("UPDATE e2e_room_keys_versions SET deleted = TRUE WHERE user_id = ?", (user_id,))
        await txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ?", (user_id,))

    @staticmethod
    async def bump_etag_txn(txn: Transaction, user_id: str, version: int) -> int:
        """Record a change to the version's keys; returns the new etag."""
        return await txn.fetchval(
            "UPDATE e2e_room_keys_versions SET etag = etag + 1"
            " WHERE user_id = ? AND version = ? RETURNING etag",
            (user_id, version),
        )

    # -------------------------------------------------------------------- keys

    @staticmethod
    async def count_keys_txn(txn: Transaction, user_id: str, version: int) -> int:
        return await txn.fetchval(
            "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND version = ?",
            (user_id, version),
        )

    @staticmethod
    async def get_keys_txn(
        txn: Transaction,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> RoomKeys:
        """The version's keys: all of them, one room's, or one session's."""
        where, params = _where(user_id, version, room_id, session_id)
        return _add_keys(
            {}, await txn.fetchall(f"SELECT {_KEY_COLUMNS} FROM e2e_room_keys WHERE {where}", params)
        )

    @staticmethod
    async def get_sessions_txn(
        txn: Transaction, user_id: str, version: int, sessions: dict[str, Collection[str]]
    ) -> RoomKeys:
        """The stored keys of the given sessions (room ID -> session IDs)."""
        found: RoomKeys = {}
        for room_id, session_ids in sessions.items():
            for batch in batches(list(session_ids)):
                _add_keys(
                    found,
                    await txn.fetchall(
                        f"SELECT {_KEY_COLUMNS} FROM e2e_room_keys"
                        " WHERE user_id = ? AND version = ? AND room_id = ?"
                        f" AND session_id IN ({placeholders(len(batch))})",
                        (user_id, version, room_id, *batch),
                    ),
                )
        return found

    @staticmethod
    async def put_keys_txn(
        txn: Transaction, user_id: str, version: int, keys: Iterable[tuple[str, str, RoomKey]]
    ) -> None:
        """Insert or replace keys, given as (room ID, session ID, key)."""
        await txn.executemany(
            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,"
            " first_message_index, forwarded_count, is_verified, session_data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
            " first_message_index = excluded.first_message_index,"
            " forwarded_count = excluded.forwarded_count,"
            " is_verified = excluded.is_verified, session_data = excluded.session_data",
            [
                (
                    user_id,
                    version,
                    room_id,
                    session_id,
                    key.first_message_index,
                    key.forwarded_count,
                    key.is_verified,
                    dump_json(key.session_data),
                )
                for room_id, session_id, key in keys
            ],
        )

    @staticmethod
    async def delete_keys_txn(
        txn: Transaction,
        user_id: str,
        version: int,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> int:
        """Delete all of the version's keys, one room's, or one session's; returns how many."""
        where, params = _where(user_id, version, room_id, session_id)
        return await txn.execute(f"DELETE FROM e2e_room_keys WHERE {where}", params)
