"""Persistence: database engines, migrations and one store per domain.

Nothing here knows about HTTP or Matrix routing; the homeserver's services
compose these stores, and run several store calls in one transaction with
`Database.run` and the stores' `*_txn` methods.
"""

from __future__ import annotations

from typing import Any

from .admin_rooms import AdminMediaStore, AdminRoomStore
from .appservices import AppserviceStore
from .devices import DeviceStore
from .directory import DirectoryStore
from .e2ee import E2EStore
from .engines import Database, PostgresDatabase, SQLiteDatabase
from .ephemeral import AccountDataStore, PresenceStore, ReceiptStore, TypingStore
from .events import EventStore
from .history import HistoryStore
from .key_backup import KeyBackupStore
from .media import MediaStore
from .push import PushStore
from .registration import RegistrationStore
from .relations import RelationStore
from .reports import ReportStore
from .search import SearchStore
from .sliding_sync import SlidingSyncStore
from .sync import SyncStore
from .spaces import SpaceStore
from .uia import UIAStore
from .user_directory import UserDirectoryStore
from .users import UserStore

__all__ = ["Database", "Storage", "create_database"]

# Keys of Synapse's `database.args` that configure the pool, not libpq.
_POOL_ARGS = ("cp_min", "cp_max")


def create_database(name: str, args: dict[str, Any]) -> Database:
    """Build (but do not open) the engine that `database.name`/`database.args` describe."""
    if name == "sqlite3":
        return SQLiteDatabase(args["database"], synchronous=args.get("synchronous", "NORMAL"))
    if name in ("psycopg", "psycopg2"):
        from psycopg.conninfo import make_conninfo

        libpq = {k: v for k, v in args.items() if k not in _POOL_ARGS and k != "dsn"}
        if "database" in libpq:  # Synapse's (psycopg2's) name for libpq's dbname
            libpq.setdefault("dbname", libpq.pop("database"))
        conninfo = make_conninfo(args.get("dsn", ""), **libpq)
        return PostgresDatabase(
            conninfo, min_size=int(args.get("cp_min", 2)), max_size=int(args.get("cp_max", 10))
        )
    raise ValueError(f"unknown database engine {name!r}")


class Storage:
    """Every store, over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = UserStore(db)
        self.appservices = AppserviceStore(db)
        self.devices = DeviceStore(db)
        self.registration = RegistrationStore(db)
        self.uia = UIAStore(db)
        self.search = SearchStore(db)
        self.user_directory = UserDirectoryStore(db)
        self.events = EventStore(db, self.search)
        self.history = HistoryStore(db)
        self.relations = RelationStore(db)
        self.directory = DirectoryStore(db)
        self.reports = ReportStore(db)
        self.push = PushStore(db)
        self.sync = SyncStore(db)
        self.sliding_sync = SlidingSyncStore(db)
        self.spaces = SpaceStore(db)
        self.account_data = AccountDataStore(db)
        self.receipts = ReceiptStore(db)
        self.typing = TypingStore(db)
        self.presence = PresenceStore(db)
        self.e2ee = E2EStore(db)
        self.key_backup = KeyBackupStore(db)
        self.media = MediaStore(db)
        self.admin_rooms = AdminRoomStore(db, self.events, self.search)
        self.admin_media = AdminMediaStore(db)
