"""Devices, access tokens and refresh tokens.

Tokens are never stored in the clear: only their SHA-256 digests are, so a
leaked database does not leak sessions. A device owns its tokens; deleting
the device deletes them (foreign keys cascade).
"""

from __future__ import annotations

from dataclasses import dataclass

from .e2ee import E2EStore
from .engines import Database, Transaction
from .sliding_sync import SlidingSyncStore


@dataclass(frozen=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None


@dataclass(frozen=True)
class AccessTokenInfo:
    token_hash: str
    user_id: str
    device_id: str
    expires_ts: int | None
    refresh_token_hash: str | None
    used: bool
    is_guest: bool
    deactivated: bool
    admin: bool


@dataclass(frozen=True)
class RefreshTokenInfo:
    token_hash: str
    user_id: str
    device_id: str
    created_ts: int
    # When the login this token descends from ends (session_lifetime), if ever.
    session_expires_ts: int | None
    next_token_hash: str | None
    # Whether the successor (or an access token made from it) has been used.
    next_used: bool


_DEVICE_COLUMNS = (
    "user_id, device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent"
)


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------- devices

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self.db.fetchone(
            "get_device",
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        )
        return Device(*row) if row else None

    async def get_devices(self, user_id: str) -> list[Device]:
        rows = await self.db.fetchall(
            "get_devices",
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ? ORDER BY device_id",
            (user_id,),
        )
        return [Device(*row) for row in rows]

    @staticmethod
    async def upsert_device_txn(
        txn: Transaction, user_id: str, device_id: str, display_name: str | None, now: int
    ) -> bool:
        """Create the device if it is new; returns True if it was created.

        An existing device keeps its display name: logging in again with the
        same device_id must not rename it.
        """
        changed = await txn.execute(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO NOTHING",
            (user_id, device_id, display_name, now, now),
        )
        return changed > 0

    async def set_display_name(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        changed = await self.db.execute(
            "set_device_display_name",
            "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
            (display_name, user_id, device_id),
        )
        return changed > 0

    @staticmethod
    async def delete_devices_txn(txn: Transaction, user_id: str, device_ids: list[str]) -> int | None:
        """Delete devices with their tokens (cascade), their pushers (a
        signed-out phone must stop receiving notifications) and their keys
        and queued to-device messages. Returns the device_lists position
        the change took (None if no device was named)."""
        if not device_ids:
            return None
        rows = [(user_id, d) for d in device_ids]
        await txn.executemany("DELETE FROM devices WHERE user_id = ? AND device_id = ?", rows)
        await txn.executemany("DELETE FROM pushers WHERE user_id = ? AND device_id = ?", rows)
        await E2EStore.delete_devices_txn(txn, user_id, device_ids)
        await SlidingSyncStore.delete_devices_txn(txn, user_id, device_ids)
        return await E2EStore.device_list_changed_txn(txn, (user_id,))

    @staticmethod
    async def device_ids_txn(txn: Transaction, user_id: str) -> list[str]:
        rows = await txn.fetchall("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
        return [r[0] for r in rows]

    async def record_last_seen(self, seen: list[tuple[str, str, int, str | None, str | None]]) -> None:
        """Batch-update last-seen data: (user_id, device_id, ts, ip, user_agent) rows."""

        async def _fn(txn: Transaction) -> None:
            await txn.executemany(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
                " WHERE user_id = ? AND device_id = ?",
                [(ts, ip, ua, user_id, device_id) for user_id, device_id, ts, ip, ua in seen],
            )

        await self.db.run("record_last_seen", _fn)

    # ----------------------------------------------------------- access tokens

    @staticmethod
    async def insert_access_token_txn(
        txn: Transaction,
        token_hash: str,
        user_id: str,
        device_id: str,
        now: int,
        expires_ts: int | None,
        refresh_token_hash: str | None,
    ) -> None:
        await txn.execute(
            "INSERT INTO access_tokens"
            " (token_hash, user_id, device_id, created_ts, expires_ts, refresh_token_hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token_hash, user_id, device_id, now, expires_ts, refresh_token_hash),
        )

    async def get_access_token(self, token_hash: str) -> AccessTokenInfo | None:
        row = await self.db.fetchone(
            "get_access_token",
            "SELECT t.token_hash, t.user_id, t.device_id, t.expires_ts, t.refresh_token_hash,"
            " t.used, u.is_guest, u.deactivated, u.admin"
            " FROM access_tokens t JOIN users u ON u.user_id = t.user_id"
            " WHERE t.token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return AccessTokenInfo(
            row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), bool(row[7]),
            bool(row[8]),
        )

    async def set_access_token_expiry(self, token_hash: str, expires_ts: int) -> None:
        await self.db.execute(
            "set_access_token_expiry",
            "UPDATE access_tokens SET expires_ts = ? WHERE token_hash = ?",
            (expires_ts, token_hash),
        )

    async def mark_access_token_used(self, token_hash: str, refresh_token_hash: str) -> None:
        """First use of a refreshed access token: revoke the refresh token it replaced."""

        async def _fn(txn: Transaction) -> None:
            await txn.execute("UPDATE access_tokens SET used = TRUE WHERE token_hash = ?", (token_hash,))
            await DeviceStore.revoke_predecessors_txn(txn, refresh_token_hash)

        await self.db.run("mark_access_token_used", _fn)

    @staticmethod
    async def delete_device_tokens_txn(txn: Transaction, user_id: str, device_id: str) -> None:
        """Revoke every access and refresh token of one device; the device stays."""
        params = (user_id, device_id)
        await txn.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", params)
        await txn.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?", params)

    # ---------------------------------------------------------- refresh tokens

    @staticmethod
    async def insert_refresh_token_txn(
        txn: Transaction,
        token_hash: str,
        user_id: str,
        device_id: str,
        now: int,
        session_expires_ts: int | None,
    ) -> None:
        await txn.execute(
            "INSERT INTO refresh_tokens"
            " (token_hash, user_id, device_id, created_ts, session_expires_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash, user_id, device_id, now, session_expires_ts),
        )

    @staticmethod
    async def get_refresh_token_txn(txn: Transaction, token_hash: str) -> RefreshTokenInfo | None:
        row = await txn.fetchone(
            "SELECT r.token_hash, r.user_id, r.device_id, r.created_ts, r.session_expires_ts,"
            " r.next_token_hash,"
            " (n.next_token_hash IS NOT NULL OR EXISTS ("
            "    SELECT 1 FROM access_tokens a"
            "    WHERE a.refresh_token_hash = r.next_token_hash AND a.used))"
            " FROM refresh_tokens r LEFT JOIN refresh_tokens n ON n.token_hash = r.next_token_hash"
            " WHERE r.token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return RefreshTokenInfo(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))

    @staticmethod
    async def delete_refresh_token_txn(txn: Transaction, token_hash: str) -> None:
        """Delete a refresh token and the access tokens made with it."""
        await txn.execute("DELETE FROM access_tokens WHERE refresh_token_hash = ?", (token_hash,))
        await txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (token_hash,))

    @staticmethod
    async def set_next_refresh_token_txn(txn: Transaction, token_hash: str, next_hash: str) -> None:
        await txn.execute(
            "UPDATE refresh_tokens SET next_token_hash = ? WHERE token_hash = ?",
            (next_hash, token_hash),
        )

    @staticmethod
    async def revoke_predecessors_txn(txn: Transaction, refresh_token_hash: str) -> None:
        """Delete the refresh token(s) replaced by this one, and their access tokens."""
        await txn.execute(
            "DELETE FROM access_tokens WHERE refresh_token_hash IN"
            " (SELECT token_hash FROM refresh_tokens WHERE next_token_hash = ?)",
            (refresh_token_hash,),
        )
        await txn.execute(
            "DELETE FROM refresh_tokens WHERE next_token_hash = ?", (refresh_token_hash,)
        )
