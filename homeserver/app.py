"""The composition root: builds the services and the aiohttp application.

`HomeServer` owns every long-lived object (config, database, stores,
services). `build_app` exposes the resources a listener serves; `serve`
opens the database, migrates it and runs the listeners until stopped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appservices.api import register as register_appservice_api
from appservices.registration import load_application_services
from appservices.service import ApplicationServices
from federation.api import register_routes as register_federation_routes
from federation.keys import load_or_create_signing_key
from storage import Database, Storage, create_database
from storage.engines import PostgresDatabase
from storage.migrations import migrate
from storage.streams import current_positions

from .accounts.auth import Auth
from .accounts.service import Accounts
from .accounts.uia import UserInteractiveAuth
from .api import register_client_api
from .config import Config
from .e2ee.backup import KeyBackup
from .ephemeral.account_data import AccountData
from .ephemeral.presence import Presence
from .ephemeral.receipts import Receipts
from .ephemeral.typing import TypingNotifications
from .e2ee.devices import DeviceLists, ToDevice
from .e2ee.keys import E2EKeys
from .events.client import ClientEventSerializer
from .media.repository import MediaRepository
from .net import AddressPolicy
from .push.service import PushService
from .rooms.directory import Directory
from .rooms.hierarchy import RoomHierarchy
from .rooms.history import RoomHistory
from .rooms.relations import Relations
from .rooms.service import Rooms
from .rooms.upgrade import RoomUpgrader
from .rooms.writer import RoomWriter, SentEvent
from .search.service import MessageSearch
from .search.user_directory import UserDirectory
from .sync.handler import SyncHandler
from .sync.sliding import SlidingSyncHandler
from .sync.notifier import Notifier
from .sync.pgnotify import PgNotifyBridge
from .http import COMPRESS_KEY, MAX_BODY_KEY, X_FORWARDED_KEY, Router, request_middleware

logger = logging.getLogger(__name__)

HS_KEY = web.AppKey("homeserver", object)


def database_for(config: Config) -> Database:
    """The engine `database` configures, with an SQLite path resolved against the config."""
    db_args = dict(config.database.args)
    if config.database.name == "sqlite3" and db_args["database"] != ":memory:":
        db_args["database"] = str(config.resolve_path(db_args["database"]))
    return create_database(config.database.name, db_args)


class HomeServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.db = database_for(config)
        self.storage = Storage(self.db)
        key_path = config.signing_key_path or f"{config.server_name.replace(':', '_')}.signing.key"
        self.signing_key = load_or_create_signing_key(config.resolve_path(key_path))
        self.auth = Auth(self.storage)
        self.uia = UserInteractiveAuth(self.storage)
        self.accounts = Accounts(config, self.storage, self.uia)
        self.room_writer = RoomWriter(self.storage, config.server_name, self.signing_key)
        self.rooms = Rooms(self.storage, self.room_writer, config.server_name)
        self.serializer = ClientEventSerializer(self.storage.events, self.storage.relations)
        self.relations = Relations(self.storage, self.rooms)
        self.directory = Directory(self.storage, self.rooms, config.server_name)
        self.notifier = Notifier({})
        self.typing = TypingNotifications(self.storage.typing, self.rooms, self.notifier)
        self.account_data = AccountData(self.storage.account_data, self.storage.events, self.notifier)
        self.receipts = Receipts(
            self.storage.receipts, self.storage.events, self.rooms, self.account_data, self.notifier
        )
        self.presence = Presence(
            self.storage.presence, self.notifier, enabled=config.presence.enabled
        )
        self.e2ee_keys = E2EKeys(self.storage, config.server_name, self.notifier)
        self.device_lists = DeviceLists(self.storage, self.notifier)
        self.to_device = ToDevice(self.storage, self.notifier, config.server_name)
        self.e2ee_keys.listeners.append(self.device_lists.notify)
        self.accounts.device_listeners.append(self.device_lists.notify)
        self.accounts.deactivation_listeners.append(self.rooms.leave_all)
        self.sync_handler = SyncHandler(self)
        self.sliding_sync = SlidingSyncHandler(self)
        # Other processes on this PostgreSQL database hear of our changes, and we of theirs.
        self.pg_notify = (
            PgNotifyBridge(self.db, self.notifier)
            if isinstance(self.db, PostgresDatabase)
            else None
        )
        self.push = PushService(
            self.storage, self.notifier, config.server_name,
            AddressPolicy(config.ip_range_blacklist, config.ip_range_whitelist), self.account_data,
        )
        # Before the notifier's listener: counts are stored before /sync wakes.
        self.room_writer.listeners.append(self.push.on_events)
        self.room_writer.listeners.append(self._notify_events)
        # Sending is activity: the sender is online (after the syncs are woken).
        self.room_writer.listeners.append(self.presence.on_events)
        self.hierarchy = RoomHierarchy(self.storage, self.rooms)
        self.upgrades = RoomUpgrader(self.storage, self.rooms, self.room_writer)
        self.history = RoomHistory(self.storage, self.rooms, self.account_data)
        self.search = MessageSearch(self.storage, self.history, config.search.language)
        self.user_directory = UserDirectory(
            self.storage,
            enabled=config.user_directory.enabled,
            search_all_users=config.user_directory.search_all_users,
        )
        self.appservices = ApplicationServices(self, load_application_services(config))
        self.appservices.attach(self)
        self.media = MediaRepository(config, self.storage.media)
        self.media.is_quarantined = self.storage.admin_media.is_quarantined
        self.key_backup = KeyBackup(self.storage)

    def _notify_events(self, sent: list[SentEvent]) -> None:
        """Wake the syncs of the room's members (and of a membership's target)."""
        for item in sent:
            event = item.event
            users = (event.state_key,) if event.type == "m.room.member" and event.state_key else ()
            self.notifier.on_new(
                "events", item.position.stream_ordering, rooms=(event.room_id,), users=users
            )

    async def start(self) -> None:
        await self.db.open()
        applied = await migrate(self.db)
        for migration in applied:
            logger.info("applied schema migration %04d_%s", migration.version, migration.name)
        if self.pg_notify is not None:
            # Listening before reading the positions: nothing committed in between is missed.
            await self.pg_notify.start()
        self.notifier.positions.update(await current_positions(self.db))
        await self.search.start()
        self.auth.start()
        self.accounts.start()
        await self.push.start()
        await self.appservices.start()
        self.typing.start()
        self.presence.start()
        self.media.start()

    async def stop(self) -> None:
        await self.appservices.stop()
        await self.push.stop()
        if self.pg_notify is not None:
            await self.pg_notify.stop()
        await self.presence.stop()
        await self.typing.stop()
        await self.accounts.stop()
        await self.auth.stop()
        await self.db.close()


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    hs: HomeServer,
    resources: Iterable[str] = ("client", "federation", "metrics"),
    *,
    x_forwarded: bool = False,
    compress: bool = False,
) -> web.Application:
    """The aiohttp application serving `resources` (a listener's `resources.names`)."""
    resources = set(resources)
    app = web.Application(
        middlewares=[request_middleware],
        # JSON bodies; uploads are streamed from request.content, unaffected.
        client_max_size=hs.config.max_request_body_size,
    )
    app[HS_KEY] = hs
    app[MAX_BODY_KEY] = hs.config.max_request_body_size
    app[X_FORWARDED_KEY] = x_forwarded
    app[COMPRESS_KEY] = compress
    router = Router(app)
    if "client" in resources:
        register_client_api(router, hs)
        register_appservice_api(router, hs)
    elif "health" in resources:
        router.add("GET", "/health", _health)
    if resources & {"federation", "keys"}:
        register_federation_routes(app, hs.config.server_name, hs.signing_key)
    if "metrics" in resources:
        router.add("GET", "/metrics", _metrics)
    return app


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run the homeserver until SIGINT/SIGTERM."""
    hs = HomeServer(config)
    await hs.start()
    runners: list[web.AppRunner] = []
    try:
        for listener in config.listeners:
            names = listener.resource_names()
            app = build_app(
                hs,
                names,
                x_forwarded=listener.x_forwarded,
                compress=any(r.compress for r in listener.resources),
            )
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            for address in listener.bind_addresses:
                await web.TCPSite(runner, address, listener.port, reuse_address=True).start()
                logger.info(
                    "listening on http://%s:%d (%s)",
                    f"[{address}]" if ":" in address else address,
                    listener.port,
                    ", ".join(sorted(names)),
                )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        logger.info("shutting down")
    finally:
        for runner in runners:
            await runner.cleanup()
        await hs.stop()
