"""Users and their profiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .engines import Database, Transaction, like_pattern, placeholders


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
class UserSummary:
    """A user as the admin API lists them: the account, its profile, when last seen."""

    user_id: str
    creation_ts: int
    admin: bool
    is_guest: bool
    deactivated: bool
    user_type: str | None
    appservice_id: str | None
    displayname: str | None
    avatar_url: str | None
    last_seen_ts: int | None


_SUMMARY_COLUMNS = (
    "u.user_id, u.creation_ts, u.admin, u.is_guest, u.deactivated, u.user_type, u.appservice_id,"
    " p.displayname, p.avatar_url,"
    " (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id)"
)
_SUMMARY_FROM = " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
# The orders the admin API offers, as SQL expressions over _SUMMARY_FROM.
USER_ORDERS = {
    "name": "u.user_id",
    "displayname": "p.displayname",
    "is_guest": "u.is_guest",
    "admin": "u.admin",
    "deactivated": "u.deactivated",
    "user_type": "u.user_type",
    "avatar_url": "p.avatar_url",
    "creation_ts": "u.creation_ts",
    "last_seen_ts": "(SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id)",
}


def _summary(row: tuple) -> UserSummary:
    return UserSummary(
        row[0], row[1], bool(row[2]), bool(row[3]), bool(row[4]), row[5], row[6], row[7], row[8],
        row[9],
    )


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

    async def reactivate(self, user_id: str, password_hash: str | None) -> None:
        await self.db.execute(
            "reactivate_user",
            "UPDATE users SET deactivated = FALSE, password_hash = ? WHERE user_id = ?",
            (password_hash, user_id),
        )

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self.db.execute(
            "set_user_type", "UPDATE users SET user_type = ? WHERE user_id = ?", (user_type, user_id)
        )

    async def get_user_summary(self, user_id: str) -> UserSummary | None:
        row = await self.db.fetchone(
            "get_user_summary",
            f"SELECT {_SUMMARY_COLUMNS}{_SUMMARY_FROM} WHERE u.user_id = ?",
            (user_id,),
        )
        return _summary(row) if row else None

    async def list_users(
        self,
        *,
        offset: int,
        limit: int,
        user_id: str | None = None,
        name: str | None = None,
        guests: bool = True,
        deactivated: bool | None = False,
        admins: bool | None = None,
        not_user_types: Sequence[str] = (),
        order_by: str = "name",
        descending: bool = False,
    ) -> tuple[list[UserSummary], int]:
        """A page of users and how many match in all, filtered as Synapse's
        admin API filters: `user_id` is contained in the ID, `name` in the
        localpart or the display name (ignoring case); `deactivated` and
        `admins` of None match both; a `not_user_types` of "" excludes users
        without a type. Ties in `order_by` are broken by ascending user ID."""
        clauses: list[str] = []
        params: list[object] = []
        if name:
            clauses.append(
                "(LOWER(u.user_id) LIKE LOWER(?) ESCAPE '\\'"
                " OR LOWER(p.displayname) LIKE LOWER(?) ESCAPE '\\')"
            )
            params += ["@" + like_pattern(name) + ":%", like_pattern(name)]
        elif user_id:
            clauses.append("LOWER(u.user_id) LIKE LOWER(?) ESCAPE '\\'")
            params.append(like_pattern(user_id))
        if not guests:
            clauses.append("NOT u.is_guest")
        if deactivated is not None:
            clauses.append("u.deactivated" if deactivated else "NOT u.deactivated")
        if admins is not None:
            clauses.append("u.admin" if admins else "NOT u.admin")
        if "" in not_user_types:
            clauses.append("u.user_type IS NOT NULL")
        excluded = [t for t in not_user_types if t]
        if excluded:
            clauses.append(
                f"(u.user_type IS NULL OR u.user_type NOT IN ({placeholders(len(excluded))}))"
            )
            params += excluded
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        column = USER_ORDERS[order_by]
        direction = "DESC" if descending else "ASC"
        # NULLs sort first going forwards on both engines (PostgreSQL would put them last).
        order = f"({column} IS NOT NULL) {direction}, {column} {direction}, u.user_id ASC"

        async def _fn(txn: Transaction) -> tuple[list[UserSummary], int]:
            total = await txn.fetchval(f"SELECT COUNT(*){_SUMMARY_FROM}{where}", params)
            rows = await txn.fetchall(
                f"SELECT {_SUMMARY_COLUMNS}{_SUMMARY_FROM}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            return [_summary(r) for r in rows], total

        return await self.db.run("list_users", _fn)

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
