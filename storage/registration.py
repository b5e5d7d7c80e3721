"""Registration tokens and the nonces of shared-secret admin registration."""

from __future__ import annotations

from dataclasses import dataclass

from .engines import Database, Transaction


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def is_valid(self, now: int) -> bool:
        if self.expiry_time is not None and self.expiry_time <= now:
            return False
        if self.uses_allowed is not None and self.pending + self.completed >= self.uses_allowed:
            return False
        return True

    def to_json(self) -> dict:
        return {
            "token": self.token,
            "uses_allowed": self.uses_allowed,
            "pending": self.pending,
            "completed": self.completed,
            "expiry_time": self.expiry_time,
        }


_COLUMNS = "token, uses_allowed, pending, completed, expiry_time"


class RegistrationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_token(self, token: str) -> RegistrationToken | None:
        row = await self.db.fetchone(
            "get_registration_token",
            f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = ?",
            (token,),
        )
        return RegistrationToken(*row) if row else None

    async def list_tokens(self) -> list[RegistrationToken]:
        rows = await self.db.fetchall(
            "list_registration_tokens", f"SELECT {_COLUMNS} FROM registration_tokens ORDER BY token"
        )
        return [RegistrationToken(*r) for r in rows]

    async def create_token(
        self, token: str, uses_allowed: int | None, expiry_time: int | None
    ) -> bool:
        """Returns False if the token already exists."""
        changed = await self.db.execute(
            "create_registration_token",
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES (?, ?, ?)"
            " ON CONFLICT (token) DO NOTHING",
            (token, uses_allowed, expiry_time),
        )
        return changed > 0

    async def update_token(
        self, token: str, changes: dict[str, int | None]
    ) -> RegistrationToken | None:
        async def _fn(txn: Transaction) -> RegistrationToken | None:
            for column, value in changes.items():
                assert column in ("uses_allowed", "expiry_time")
                await txn.execute(
                    f"UPDATE registration_tokens SET {column} = ? WHERE token = ?", (value, token)
                )
            row = await txn.fetchone(
                f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = ?", (token,)
            )
            return RegistrationToken(*row) if row else None

        return await self.db.run("update_registration_token", _fn)

    async def delete_token(self, token: str) -> bool:
        return (
            await self.db.execute(
                "delete_registration_token", "DELETE FROM registration_tokens WHERE token = ?", (token,)
            )
            > 0
        )

    @staticmethod
    async def reserve_token_txn(txn: Transaction, token: str, now: int) -> bool:
        """Count one pending use if the token is still valid; False if it is not."""
        changed = await txn.execute(
            "UPDATE registration_tokens SET pending = pending + 1"
            " WHERE token = ? AND (expiry_time IS NULL OR expiry_time > ?)"
            " AND (uses_allowed IS NULL OR pending + completed < uses_allowed)",
            (token, now),
        )
        return changed > 0

    @staticmethod
    async def complete_token_txn(txn: Transaction, token: str) -> None:
        """A registration that reserved the token finished: pending becomes completed."""
        await txn.execute(
            "UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1"
            " WHERE token = ?",
            (token,),
        )

    @staticmethod
    async def release_token_txn(txn: Transaction, token: str) -> None:
        """A reservation is abandoned (its UIA session expired)."""
        await txn.execute(
            "UPDATE registration_tokens SET pending = pending - 1 WHERE token = ? AND pending > 0",
            (token,),
        )

    # ---------------------------------------------------- admin registration

    async def add_nonce(self, nonce: str, now: int) -> None:
        await self.db.execute(
            "add_admin_nonce",
            "INSERT INTO admin_registration_nonces (nonce, created_ts) VALUES (?, ?)",
            (nonce, now),
        )

    async def take_nonce(self, nonce: str, not_before: int) -> bool:
        """Consume a nonce; True if it existed and was issued after `not_before`."""

        async def _fn(txn: Transaction) -> bool:
            await txn.execute(
                "DELETE FROM admin_registration_nonces WHERE created_ts < ?", (not_before,)
            )
            return (
                await txn.execute("DELETE FROM admin_registration_nonces WHERE nonce = ?", (nonce,))
                > 0
            )

        return await self.db.run("take_admin_nonce", _fn)
