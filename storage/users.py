"""Users and their profiles."""

from __future__ import annotations

from dataclasses import dataclass

from .engines import Database, Transaction


@dataclass(frozen=True)
class User:
    user_id: str
    password_hash: str | None
    creation_ts: int
    admin: bool
    is_guest: bool
    deactivated: bool
    user_type: str | None
    appservice_id: str | None


_USER_COLUMNS = (
    "user_id, password_hash, creation_ts, admin, is_guest, deactivated, user_type, appservice_id"
)


def _user(row: tuple | None) -> User | None:
    if row is None:
        return None
    return User(row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]), row[6], row[7])


@dataclass(frozen=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_user(self, user_id: str) -> User | None:
        row = await self.db.fetchone(
            "get_user", f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,)
        )
        return _user(row)

    async def user_exists(self, user_id: str) -> bool:
        return (
            await self.db.fetchone("user_exists", "SELECT 1 FROM users WHERE user_id = ?", (user_id,))
            is not None
        )

    @staticmethod
    async def insert_user_txn(
        txn: Transaction,
        user_id: str,
        password_hash: str | None,
        creation_ts: int,
        *,
        admin: bool = False,
        is_guest: bool = False,
        user_type: str | None = None,
        appservice_id: str | None = None,
        displayname: str | None = None,
    ) -> None:
        """Insert a user and an empty profile; raises a unique violation if taken."""
        await txn.execute(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, FALSE, ?, ?)",
            (user_id, password_hash, creation_ts, admin, is_guest, user_type, appservice_id),
        )
        await txn.execute(
            "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)", (user_id, displayname)
        )

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> None:
        await self.db.execute(
            "set_password_hash",
            "UPDATE users SET password_hash = ? WHERE user_id = ?",
            (password_hash, user_id),
        )

    @staticmethod
    async def set_password_hash_txn(
        txn: Transaction, user_id: str, password_hash: str | None
    ) -> None:
        await txn.execute(
            "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
        )

    @staticmethod
    async def deactivate_txn(txn: Transaction, user_id: str) -> None:
        await txn.execute(
            "UPDATE users SET deactivated = TRUE, password_hash = NULL WHERE user_id = ?",
            (user_id,),
        )
        await txn.execute(
            "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?",
            (user_id,),
        )

    async def set_admin(self, user_id: str, admin: bool) -> None:
        await self.db.execute(
            "set_admin", "UPDATE users SET admin = ? WHERE user_id = ?", (admin, user_id)
        )

    async def count_users(self) -> int:
        return await self.db.fetchval("count_users", "SELECT COUNT(*) FROM users")

    # ---------------------------------------------------------------- profiles

    async def get_profile(self, user_id: str) -> Profile | None:
        row = await self.db.fetchone(
            "get_profile",
            "SELECT p.displayname, p.avatar_url FROM profiles p WHERE p.user_id = ?",
            (user_id,),
        )
        return Profile(row[0], row[1]) if row else None

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(f"not a profile column: {field}")
        await self.db.execute(
            "set_profile_field",
            f"UPDATE profiles SET {field} = ? WHERE user_id = ?",
            (value, user_id),
        )
