"""The application-service API against real application services over HTTP.

mautrix-python's `AppService` (the library mautrix bridges are built on) is
the independent service for the bridge-like scenario; a tiny aiohttp
service, whose answers each test sets, covers outages, queries and pings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from aiohttp import web
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import Event, EventType

from appservices.registration import load_application_services
from appservices.sender import TransactionSender
from appservices.service import ApplicationServices
from homeserver.api.admin import registration_mac
from homeserver.app import HomeServer
from homeserver.config import ConfigError, parse_config

from .conftest import SHARED_SECRET, TestServer, make_config, start_server, stop_server

# mautrix still passes `loop` to aiohttp.
pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")

V3 = "/_matrix/client/v3"
SERVER_NAME = "test.local"
AS_TOKEN = "as-secret-bridge"
HS_TOKEN = "hs-secret-bridge"
LOGGER_AS_TOKEN = "as-secret-logger"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def bridge_registration(url: str | None, **overrides: Any) -> dict[str, Any]:
    """A bridge owning @bridge_* and #bridge_* exclusively, with ephemeral data."""
    reg: dict[str, Any] = {
        "id": "bridge",
        "url": url,
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "bridgebot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": r"@bridge_.*:test\.local"}],
            "aliases": [{"exclusive": True, "regex": r"#bridge_.*"}],
            "rooms": [],
        },
        "rate_limited": False,
        "de.sorunome.msc2409.push_ephemeral": True,
        "protocols": ["bridgeproto"],
    }
    reg.update(overrides)
    return reg


def logger_registration() -> dict[str, Any]:
    """A second service: no URL, every user in a non-exclusive namespace, rate-limited."""
    return {
        "id": "logger",
        "url": None,
        "as_token": LOGGER_AS_TOKEN,
        "hs_token": "hs-secret-logger",
        "sender_localpart": "logbot",
        "namespaces": {"users": [{"exclusive": False, "regex": "@.*"}]},
    }


def write_registrations(directory: Path, *registrations: dict[str, Any]) -> list[str]:
    paths = []
    for i, reg in enumerate(registrations):
        path = directory / f"registration-{i}.yaml"
        path.write_text(yaml.safe_dump(reg))
        paths.append(str(path))
    return paths


@pytest.fixture(autouse=True)
def fast_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TransactionSender, "initial_backoff", 0.05)
    monkeypatch.setattr(TransactionSender, "max_backoff", 0.2)
    monkeypatch.setattr(TransactionSender, "poll_interval", 0.1)
    monkeypatch.setattr(TransactionSender, "ownership_retry", 0.2)
    monkeypatch.setattr(ApplicationServices, "ping_timeout", 0.5)


# ------------------------------------------------------------ a tiny service


@dataclass
class FakeAS:
    """An application service whose answers the test decides."""

    port: int
    transactions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    txn_status: int = 200
    pings: list[dict[str, Any]] = field(default_factory=list)
    ping_status: int = 200
    ping_delay: float = 0.0
    queried_users: list[str] = field(default_factory=list)
    queried_aliases: list[str] = field(default_factory=list)
    on_user: Callable[[str], Awaitable[bool]] | None = None
    on_alias: Callable[[str], Awaitable[bool]] | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted_events(self) -> list[dict[str, Any]]:
        return [e for _txn_id, body in self.accepted for e in body.get("events", [])]

    def saw_join(self, user_id: str) -> bool:
        return any(
            e["type"] == "m.room.member" and e["state_key"] == user_id and e["content"]["membership"] == "join"
            for e in self.accepted_events()
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txnId}", self._transaction)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        app.router.add_get("/_matrix/app/v1/users/{userId}", self._query_user)
        app.router.add_get("/_matrix/app/v1/rooms/{alias}", self._query_alias)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _transaction(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        entry = (request.match_info["txnId"], await request.json())
        self.transactions.append(entry)
        if self.txn_status == 200:
            self.accepted.append(entry)
        return web.json_response({}, status=self.txn_status)

    async def _ping(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        self.pings.append(await request.json())
        await asyncio.sleep(self.ping_delay)
        if self.ping_status != 200:
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad hs_token"}, status=self.ping_status)
        return web.json_response({})

    async def _query_user(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        user_id = request.match_info["userId"]
        self.queried_users.append(user_id)
        found = self.on_user is not None and await self.on_user(user_id)
        return web.json_response({} if found else {"errcode": "M_NOT_FOUND"}, status=200 if found else 404)

    async def _query_alias(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        alias = request.match_info["alias"]
        self.queried_aliases.append(alias)
        found = self.on_alias is not None and await self.on_alias(alias)
        return web.json_response({} if found else {"errcode": "M_NOT_FOUND"}, status=200 if found else 404)


@pytest.fixture
async def fake_as() -> AsyncIterator[FakeAS]:
    service = FakeAS(port=free_port())
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def as_config(tmp_path: Path, database_config: dict, fake_as: FakeAS, config_overrides: dict[str, Any]) -> Any:
    files = write_registrations(tmp_path, bridge_registration(fake_as.url), logger_registration())
    return make_config(tmp_path, database_config, app_service_config_files=files, **config_overrides)


@pytest.fixture
async def as_server(as_config: Any) -> AsyncIterator[TestServer]:
    server = await start_server(as_config)
    try:
        yield server
    finally:
        await stop_server(server)


async def register_ghost(server: TestServer, localpart: str, **extra: Any) -> Any:
    return await server.post(
        f"{V3}/register",
        {"type": "m.login.application_service", "username": localpart, "inhibit_login": True, **extra},
        token=AS_TOKEN,
    )


async def send_text(server: TestServer, token: str, room_id: str, body: str, txn: str, **params: str) -> str:
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
        token=token,
        params=params or None,
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def room_with_ghost(server: TestServer, alice: dict[str, Any], ghost: str) -> str:
    """Alice's room, which `ghost` (registered by the bridge) has joined."""
    resp = await server.post(f"{V3}/createRoom", {"invite": [ghost]}, token=alice["access_token"])
    assert resp.status == 200, resp.body
    room_id = resp.body["room_id"]
    resp = await server.post(f"{V3}/join/{q(room_id)}", {}, token=AS_TOKEN, params={"user_id": ghost})
    assert resp.status == 200, resp.body
    return room_id


# ------------------------------------------------------- registration files


def _config(tmp_path: Path, files: list[str]) -> Any:
    config, _ = parse_config(
        {
            "server_name": SERVER_NAME,
            "database": {"name": "sqlite3", "args": {"database": str(tmp_path / "hs.db")}},
            "signing_key_path": str(tmp_path / "signing.key"),
            "app_service_config_files": files,
        },
        str(tmp_path),
    )
    return config


def _without(reg: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in reg.items() if k != key}


@pytest.mark.parametrize(
    ("registrations", "field_named"),
    [
        ([_without(bridge_registration("http://as"), "as_token")], "as_token"),
        ([_without(bridge_registration("http://as"), "hs_token")], "hs_token"),
        ([_without(bridge_registration("http://as"), "id")], "id"),
        ([_without(bridge_registration("http://as"), "sender_localpart")], "sender_localpart"),
        ([_without(bridge_registration("http://as"), "url")], "url"),
        ([bridge_registration("ftp://as")], "url"),
        ([_without(bridge_registration("http://as"), "namespaces")], "namespaces"),
        (
            [bridge_registration("http://as", namespaces={"users": [{"exclusive": True, "regex": "@bridge_(.*"}]})],
            "namespaces.users[0].regex",
        ),
        (
            [bridge_registration("http://as", namespaces={"aliases": [{"regex": "#x_.*"}]})],
            "namespaces.aliases[0].exclusive",
        ),
        ([bridge_registration("http://as", namespaces={"rooms": "!abc"})], "namespaces.rooms"),
        ([bridge_registration("http://as", rate_limited="no")], "rate_limited"),
        ([bridge_registration("http://as", protocols="irc")], "protocols"),
        ([bridge_registration("http://as", sender_localpart="Bridge Bot")], "sender_localpart"),
        ([bridge_registration("http://as"), bridge_registration("http://as2", as_token="b", hs_token="c", sender_localpart="d")], "id"),
        ([bridge_registration("http://as"), bridge_registration("http://as2", id="other", hs_token="c", sender_localpart="d")], "as_token"),
        ([bridge_registration("http://as"), bridge_registration("http://as2", id="other", as_token="b", sender_localpart="d")], "hs_token"),
        ([bridge_registration("http://as"), bridge_registration("http://as2", id="other", as_token="b", hs_token="c")], "sender_localpart"),
    ],
)
def test_registration_errors_name_the_file_and_field(
    tmp_path: Path, registrations: list[dict[str, Any]], field_named: str
) -> None:
    files = write_registrations(tmp_path, *registrations)
    with pytest.raises(ConfigError) as err:
        load_application_services(_config(tmp_path, files))
    message = str(err.value)
    assert f"{files[-1]}: {field_named}:" in message, message


def test_unreadable_and_invalid_registration_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read .*nope.yaml"):
        load_application_services(_config(tmp_path, [missing]))
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_application_services(_config(tmp_path, [str(broken)]))
    # The server refuses to start on it, before touching the database.
    with pytest.raises(ConfigError, match="broken.yaml"):
        HomeServer(_config(tmp_path, [str(broken)]))


def test_valid_registration_is_loaded(tmp_path: Path) -> None:
    files = write_registrations(tmp_path, bridge_registration("http://as:9000/"), logger_registration())
    bridge, logger = load_application_services(_config(tmp_path, files))
    assert bridge.url == "http://as:9000"
    assert bridge.sender == "@bridgebot:test.local"
    assert bridge.receive_ephemeral and not bridge.rate_limited
    assert bridge.protocols == ("bridgeproto",)
    assert bridge.is_exclusive_user("@bridge_x:test.local")
    assert not bridge.is_interested_in_user("@bridge_x:elsewhere.org")
    assert logger.url is None and logger.rate_limited and not logger.receive_ephemeral
    assert logger.is_interested_in_user("@anyone:test.local")
    assert not logger.is_exclusive_user("@anyone:test.local")


# ------------------------------------------------ a mautrix bridge end to end


class _MemoryASStore(ASStateStore, MemoryStateStore):
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


async def test_mautrix_bridge_gets_its_events_in_order_once(tmp_path: Path, database_config: dict) -> None:
    port = free_port()
    files = write_registrations(tmp_path, bridge_registration(f"http://127.0.0.1:{port}"))
    server = await start_server(make_config(tmp_path, database_config, app_service_config_files=files))
    bridge = AppService(
        server=server.url,
        domain=SERVER_NAME,
        as_token=AS_TOKEN,
        hs_token=HS_TOKEN,
        bot_localpart="bridgebot",
        id="bridge",
        state_store=_MemoryASStore(),
        ephemeral_events=True,
    )
    raw: list[tuple[str, dict[str, Any]]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if "/transactions/" in request.path:
            raw.append((request.match_info.get("transaction_id", ""), json.loads(await request.read())))
        return await handler(request)

    bridge.app.middlewares.append(record)
    seen: list[Event] = []

    @bridge.matrix_event_handler
    async def on_event(event: Event) -> None:
        seen.append(event)

    await bridge.start(host="127.0.0.1", port=port)
    try:
        alice = await server.register_user("alice")
        # The bridge makes its ghost and talks as it (identity assertion).
        ghost_id = "@bridge_bob:test.local"
        ghost = bridge.intent.user(ghost_id)
        await ghost.ensure_registered()
        room_id = await room_with_ghost(server, alice, ghost_id)
        await ghost.send_text(room_id, "hello from the other side")
        sent = [await send_text(server, alice["access_token"], room_id, f"m{i}", f"t{i}") for i in range(5)]
        # Nothing of a room without the bridge's users reaches it.
        other = await server.post(f"{V3}/createRoom", {}, token=alice["access_token"])
        unrelated = await send_text(server, alice["access_token"], other.body["room_id"], "private", "p1")
        # Ephemeral data of the room: typing, a read receipt, presence.
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/typing/{q(alice['user_id'])}",
            {"typing": True, "timeout": 30000},
            token=alice["access_token"],
        )
        assert resp.status == 200, resp.body
        resp = await server.post(
            f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(sent[-1])}", {}, token=alice["access_token"]
        )
        assert resp.status == 200, resp.body
        resp = await server.put(
            f"{V3}/presence/{q(alice['user_id'])}/status", {"presence": "online"}, token=alice["access_token"]
        )
        assert resp.status == 200, resp.body

        def message_ids() -> list[str]:
            return [e.event_id for e in seen if e.type == EventType.ROOM_MESSAGE and e.sender == alice["user_id"]]

        def ephemeral_types() -> set[str]:
            return {e["type"] for _t, body in raw for e in body.get("ephemeral", [])}

        await until(lambda: message_ids() == sent and ephemeral_types() >= {"m.typing", "m.receipt", "m.presence"})
        all_ids = [e["event_id"] for _t, body in raw for e in body["events"]]
        assert len(all_ids) == len(set(all_ids)), "an event was sent twice"
        txn_ids = [int(t) for t, _b in raw]
        assert txn_ids == sorted(set(txn_ids)), "transaction IDs must increase, never repeat"
        assert unrelated not in all_ids
        positions = await server.hs.storage.events.get_positions(all_ids)
        orderings = [positions[e][0].stream_ordering for e in all_ids]
        assert orderings == sorted(orderings), "events must arrive in stream order"
        ghost_messages = [e for e in seen if e.type == EventType.ROOM_MESSAGE and e.sender == ghost_id]
        assert [e.content.body for e in ghost_messages] == ["hello from the other side"]
        ephemeral = [e for _t, body in raw for e in body.get("ephemeral", [])]
        assert ephemeral == [e for _t, body in raw for e in body.get("de.sorunome.msc2409.ephemeral", [])]
        typing = next(e for e in ephemeral if e["type"] == "m.typing")
        assert typing == {"type": "m.typing", "room_id": room_id, "content": {"user_ids": [alice["user_id"]]}}
        receipt = next(e for e in ephemeral if e["type"] == "m.receipt")
        assert receipt["room_id"] == room_id and alice["user_id"] in receipt["content"][sent[-1]]["m.read"]
        # (Sending makes the ghosts online too: pick alice's.)
        presence = next(e for e in ephemeral if e["type"] == "m.presence" and e["sender"] == alice["user_id"])
        assert presence["content"]["presence"] == "online"
        # The bridge pings the homeserver, which pings it back.
        assert isinstance(await bridge.ping_self("meow"), int)
    finally:
        await bridge.stop()
        await stop_server(server)


# ------------------------------------------------------ outages and restarts


def metric(body: str, name: str, labels: str) -> float:
    """A sample of the /metrics text (0 when absent)."""
    for line in body.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


SENT = ("homeserver_appservice_transactions_total", 'appservice="bridge",outcome="sent"')
FAILED = ("homeserver_appservice_transactions_total", 'appservice="bridge",outcome="failed"')
QUEUED = ("homeserver_appservice_queued_events", 'appservice="bridge"')
LAST_SENT = ("homeserver_appservice_last_sent_timestamp_seconds", 'appservice="bridge"')


async def test_outage_then_backlog_in_order_once(as_server: TestServer, fake_as: FakeAS) -> None:
    server = as_server
    alice = await server.register_user("alice")
    assert (await register_ghost(server, "bridge_bob")).status == 200
    room_id = await room_with_ghost(server, alice, "@bridge_bob:test.local")
    await until(lambda: fake_as.saw_join("@bridge_bob:test.local"))  # all sent so far is accepted
    before = (await server.get("/metrics")).body
    accepted_before = len(fake_as.accepted)

    # Down (answering errors): the same transaction is retried, unchanged.
    fake_as.txn_status = 503
    first = [await send_text(server, alice["access_token"], room_id, f"a{i}", f"a{i}") for i in range(3)]
    await until(lambda: len(fake_as.transactions) >= accepted_before + 3)
    failed = fake_as.transactions[accepted_before:]
    assert len({txn_id for txn_id, _ in failed}) == 1
    assert all(body == failed[0][1] for _, body in failed)
    # Gone altogether (connection refused) while more is said.
    await fake_as.stop()
    second = [await send_text(server, alice["access_token"], room_id, f"b{i}", f"b{i}") for i in range(3)]
    await asyncio.sleep(0.3)
    during = (await server.get("/metrics")).body
    assert metric(during, *QUEUED) >= 3
    assert metric(during, *FAILED) > metric(before, *FAILED)
    # Back: the backlog arrives, each event once, in order.
    fake_as.txn_status = 200
    await fake_as.start()
    wanted = first + second
    await until(lambda: [e["event_id"] for e in fake_as.accepted_events() if e["event_id"] in wanted] == wanted)
    ids = [e["event_id"] for e in fake_as.accepted_events()]
    assert len(ids) == len(set(ids)), "an event was accepted twice"
    txn_ids = [int(t) for t, _ in fake_as.accepted]
    assert txn_ids == sorted(set(txn_ids))
    assert failed[0] in fake_as.accepted  # the failed transaction, finally taken as it was
    assert set(fake_as.auth_headers) == {f"Bearer {HS_TOKEN}"}
    after = (await server.get("/metrics")).body
    assert metric(after, *QUEUED) == 0
    assert metric(after, *SENT) > metric(before, *SENT)
    assert metric(after, *LAST_SENT) >= metric(before, *LAST_SENT) > 0


async def test_restart_loses_nothing(as_config: Any, fake_as: FakeAS) -> None:
    server = await start_server(as_config)
    try:
        alice = await server.register_user("alice")
        assert (await register_ghost(server, "bridge_bob")).status == 200
        room_id = await room_with_ghost(server, alice, "@bridge_bob:test.local")
        await until(lambda: fake_as.saw_join("@bridge_bob:test.local"))
        # A transaction is built but refused...
        fake_as.txn_status = 503
        queued = await send_text(server, alice["access_token"], room_id, "queued", "q1")
        await until(lambda: any(e["event_id"] == queued for _, b in fake_as.transactions for e in b["events"]))
        refused_txn = fake_as.transactions[-1]
        # ...and these are committed while the sender is gone, as in a crash
        # between the commit and any queueing.
        await server.hs.appservices.sender.stop()
        unqueued = [await send_text(server, alice["access_token"], room_id, f"u{i}", f"u{i}") for i in range(3)]
    finally:
        await stop_server(server)
    fake_as.txn_status = 200
    server = await start_server(as_config)
    try:
        wanted = [queued, *unqueued]
        await until(lambda: [e["event_id"] for e in fake_as.accepted_events() if e["event_id"] in wanted] == wanted)
        assert refused_txn in fake_as.accepted  # same txnId, same body after the restart
        ids = [e["event_id"] for e in fake_as.accepted_events()]
        assert len(ids) == len(set(ids))
        txn_ids = [int(t) for t, _ in fake_as.accepted]
        assert txn_ids == sorted(set(txn_ids))
    finally:
        await stop_server(server)


# ------------------------------------------------- namespaces, masquerading


async def test_exclusive_user_namespace(as_server: TestServer) -> None:
    server = as_server
    for localpart in ("bridge_x", "bridgebot"):  # the namespace, and the service's own sender
        resp = await server.get(f"{V3}/register/available", params={"username": localpart})
        assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE"), resp.body
        resp = await server.post(f"{V3}/register", {"username": localpart, "password": "long enough pw"})
        assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE"), resp.body
    # The shared-secret (admin) path is held to it too, as in Synapse.
    nonce = (await server.get("/_synapse/admin/v1/register")).body["nonce"]
    mac = registration_mac(SHARED_SECRET, nonce, "bridge_x", "long enough pw", False, None)
    resp = await server.post(
        "/_synapse/admin/v1/register",
        {"nonce": nonce, "username": "bridge_x", "password": "long enough pw", "mac": mac},
    )
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE"), resp.body
    resp = await server.get(f"{V3}/register/available", params={"username": "carol"})
    assert resp.status == 200 and resp.body == {"available": True}
    # The sender was created at start.
    resp = await server.get(f"{V3}/profile/{q('@bridgebot:test.local')}")
    assert resp.status == 200, resp.body


async def test_appservice_registration(as_server: TestServer) -> None:
    server = as_server
    alice = await server.register_user("alice")
    resp = await register_ghost(server, "bridge_alice")
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@bridge_alice:test.local" and "access_token" not in resp.body
    # Leading underscores are the services' to use.
    resp = await register_ghost(server, "bridge__x")
    assert resp.status == 200, resp.body
    resp = await register_ghost(server, "bridge_alice")
    assert (resp.status, resp.body["errcode"]) == (400, "M_USER_IN_USE")
    # Without inhibit_login the service gets a session for the user.
    resp = await register_ghost(server, "bridge_dev", inhibit_login=False, device_id="GHOSTDEV")
    assert resp.status == 200 and resp.body["device_id"] == "GHOSTDEV" and resp.body["access_token"]
    # Outside its namespace, in another's exclusive one, without or with a wrong token.
    resp = await register_ghost(server, "carol")
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.post(
        f"{V3}/register", {"type": "m.login.application_service", "username": "bridge_y"}, token=LOGGER_AS_TOKEN
    )
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.post(
        f"{V3}/register",
        {"type": "m.login.application_service", "username": "logged", "inhibit_login": True},
        token=LOGGER_AS_TOKEN,
    )
    assert resp.status == 200, resp.body
    resp = await server.post(f"{V3}/register", {"type": "m.login.application_service", "username": "bridge_z"})
    assert (resp.status, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await server.post(
        f"{V3}/register",
        {"type": "m.login.application_service", "username": "bridge_z"},
        token=alice["access_token"],
    )
    assert (resp.status, resp.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    resp = await server.post(f"{V3}/register", {"type": "m.login.application_service"}, token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (400, "M_MISSING_PARAM")


@pytest.mark.parametrize(
    "config_overrides",
    [{"enable_registration": False, "rc_registration": {"per_second": 0.001, "burst_count": 1}}],
    ids=["strict"],
)
async def test_rate_limits_and_closed_registration(as_server: TestServer) -> None:
    server = as_server
    # rate_limited: false, and registration closed to people: the bridge still registers.
    for i in range(3):
        resp = await register_ghost(server, f"bridge_{i}")
        assert resp.status == 200, resp.body
    # The logger is rate-limited (the default).
    body = {"type": "m.login.application_service", "username": "first", "inhibit_login": True}
    assert (await server.post(f"{V3}/register", body, token=LOGGER_AS_TOKEN)).status == 200
    resp = await server.post(f"{V3}/register", {**body, "username": "second"}, token=LOGGER_AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # People are held to the limit (before being told registration is closed).
    resp = await server.post(f"{V3}/register", {"username": "human", "password": "long enough pw"})
    assert (resp.status, resp.body["errcode"]) == (429, "M_LIMIT_EXCEEDED")


async def test_identity_assertion(as_server: TestServer) -> None:
    server = as_server
    alice = await server.register_user("alice")
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN)
    assert resp.status == 200 and resp.body["user_id"] == "@bridgebot:test.local"
    # The token also works as the access_token query parameter.
    resp = await server.get(f"{V3}/account/whoami", params={"access_token": AS_TOKEN})
    assert resp.status == 200 and resp.body["user_id"] == "@bridgebot:test.local"
    ghost = await register_ghost(server, "bridge_alice", inhibit_login=False, device_id="PHONE")
    assert ghost.status == 200, ghost.body
    ghost_id = ghost.body["user_id"]
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={"user_id": ghost_id})
    assert resp.status == 200 and resp.body["user_id"] == ghost_id
    for key in ("device_id", "org.matrix.msc3202.device_id"):
        resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={"user_id": ghost_id, key: "PHONE"})
        assert resp.status == 200 and resp.body == {"user_id": ghost_id, "device_id": "PHONE", "is_guest": False}
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={"user_id": ghost_id, "device_id": "NOPE"})
    assert (resp.status, resp.body["errcode"]) == (400, "M_UNKNOWN_DEVICE")
    # Outside the namespace: a local person, a remote user, the other service's sender.
    for outsider in (alice["user_id"], "@bridge_x:elsewhere.org", "@logbot:test.local"):
        resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={"user_id": outsider})
        assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN"), outsider
    # A masquerading request acts as the ghost: it creates a room as them.
    resp = await server.post(f"{V3}/createRoom", {}, token=AS_TOKEN, params={"user_id": ghost_id})
    assert resp.status == 200, resp.body
    members = await server.hs.storage.events.members_of_room(resp.body["room_id"])
    assert [m.user_id for m in members] == [ghost_id]


async def test_exclusive_alias_namespace(as_server: TestServer) -> None:
    server = as_server
    alice = await server.register_user("alice")
    room = await server.post(f"{V3}/createRoom", {}, token=alice["access_token"])
    room_id = room.body["room_id"]
    resp = await server.put(
        f"{V3}/directory/room/{q('#bridge_room:test.local')}", {"room_id": room_id}, token=alice["access_token"]
    )
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.post(f"{V3}/createRoom", {"room_alias_name": "bridge_new"}, token=alice["access_token"])
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.put(
        f"{V3}/directory/room/{q('#alices:test.local')}", {"room_id": room_id}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    # The service: inside its namespace yes, outside no.
    resp = await server.post(f"{V3}/createRoom", {"room_alias_name": "bridge_own"}, token=AS_TOKEN)
    assert resp.status == 200, resp.body
    own_room = resp.body["room_id"]
    resp = await server.put(
        f"{V3}/directory/room/{q('#bridge_second:test.local')}", {"room_id": own_room}, token=AS_TOKEN
    )
    assert resp.status == 200, resp.body
    resp = await server.put(
        f"{V3}/directory/room/{q('#elsewhere:test.local')}", {"room_id": own_room}, token=AS_TOKEN
    )
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    # People may not delete the service's aliases either.
    resp = await server.delete(f"{V3}/directory/room/{q('#bridge_second:test.local')}", token=alice["access_token"])
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.delete(f"{V3}/directory/room/{q('#bridge_second:test.local')}", token=AS_TOKEN)
    assert resp.status == 200, resp.body


# ------------------------------------------------------------------ queries


async def test_queries_create_users_and_aliases(as_server: TestServer, fake_as: FakeAS) -> None:
    server = as_server
    alice = await server.register_user("alice")

    async def create_user(user_id: str) -> bool:
        if user_id == "@bridge_refused:test.local":
            return False
        resp = await register_ghost(server, user_id[1:].partition(":")[0])
        return resp.status == 200

    async def create_alias(alias: str) -> bool:
        name = alias[1:].partition(":")[0]
        resp = await server.post(
            f"{V3}/createRoom", {"room_alias_name": name, "preset": "public_chat"}, token=AS_TOKEN
        )
        return resp.status == 200

    fake_as.on_user = create_user
    fake_as.on_alias = create_alias
    # Profile lookup of an unknown user of the namespace.
    resp = await server.get(f"{V3}/profile/{q('@bridge_new:test.local')}")
    assert resp.status == 200, resp.body
    assert fake_as.queried_users == ["@bridge_new:test.local"]
    resp = await server.get(f"{V3}/profile/{q('@bridge_new:test.local')}")
    assert resp.status == 200 and fake_as.queried_users == ["@bridge_new:test.local"]  # known now: not asked
    resp = await server.get(f"{V3}/profile/{q('@bridge_refused:test.local')}")
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/profile/{q('@stranger:test.local')}")
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    assert "@stranger:test.local" not in fake_as.queried_users
    # Inviting an unknown user of the namespace (here in createRoom, as DMs do, and later).
    resp = await server.post(
        f"{V3}/createRoom", {"invite": ["@bridge_dm:test.local"], "is_direct": True}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    room_id = resp.body["room_id"]
    resp = await server.post(
        f"{V3}/rooms/{q(room_id)}/invite", {"user_id": "@bridge_late:test.local"}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    resp = await server.post(
        f"{V3}/rooms/{q(room_id)}/invite", {"user_id": "@bridge_refused:test.local"}, token=alice["access_token"]
    )
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    # Resolving and joining unknown aliases of the namespace.
    resp = await server.get(f"{V3}/directory/room/{q('#bridge_lobby:test.local')}")
    assert resp.status == 200, resp.body
    assert fake_as.queried_aliases == ["#bridge_lobby:test.local"]
    resp = await server.post(f"{V3}/join/{q('#bridge_hall:test.local')}", {}, token=alice["access_token"])
    assert resp.status == 200, resp.body
    resp = await server.get(f"{V3}/directory/room/{q('#nobody:test.local')}")
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    assert fake_as.queried_aliases == ["#bridge_lobby:test.local", "#bridge_hall:test.local"]
    assert set(fake_as.auth_headers) == {f"Bearer {HS_TOKEN}"}


async def test_query_of_unreachable_service_is_not_found(as_server: TestServer, fake_as: FakeAS) -> None:
    await fake_as.stop()
    resp = await as_server.get(f"{V3}/profile/{q('@bridge_new:test.local')}")
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await as_server.get(f"{V3}/directory/room/{q('#bridge_lobby:test.local')}")
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")


# --------------------------------------------------------------------- ping

PING = "/_matrix/client/v1/appservice/{}/ping"


async def test_ping(as_server: TestServer, fake_as: FakeAS) -> None:
    server = as_server
    resp = await server.post(PING.format("bridge"), {"transaction_id": "meow"}, token=AS_TOKEN)
    assert resp.status == 200 and isinstance(resp.body["duration_ms"], int), resp.body
    assert fake_as.pings == [{"transaction_id": "meow"}]
    assert fake_as.auth_headers == [f"Bearer {HS_TOKEN}"]
    resp = await server.post(PING.format("bridge"), {}, token=AS_TOKEN)
    assert resp.status == 200 and fake_as.pings[-1] == {}
    # The service refuses the homeserver.
    fake_as.ping_status = 403
    resp = await server.post(PING.format("bridge"), {"transaction_id": "x"}, token=AS_TOKEN)
    assert resp.status == 502, resp.body
    assert resp.body["errcode"] == "M_BAD_STATUS" and resp.body["status"] == 403
    assert json.loads(resp.body["body"]) == {"errcode": "M_FORBIDDEN", "error": "bad hs_token"}
    # Too slow.
    fake_as.ping_status, fake_as.ping_delay = 200, 2.0
    resp = await server.post(PING.format("bridge"), {}, token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (504, "M_CONNECTION_TIMEOUT")
    # Not there.
    await fake_as.stop()
    resp = await server.post(PING.format("bridge"), {}, token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (502, "M_CONNECTION_FAILED")


async def test_ping_refusals(as_server: TestServer) -> None:
    server = as_server
    alice = await server.register_user("alice")
    resp = await server.post(PING.format("logger"), {}, token=LOGGER_AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (400, "M_URL_NOT_SET")
    resp = await server.post(PING.format("logger"), {}, token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.post(PING.format("bridge"), {}, token=alice["access_token"])
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.post(PING.format("bridge"), {})
    assert (resp.status, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await server.post(PING.format("bridge"), {"transaction_id": 5}, token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (400, "M_BAD_JSON")


# ------------------------------------------------ several processes (PostgreSQL)


async def test_one_process_sends_and_hands_over(
    tmp_path: Path, postgres_dsn: str | None, fake_as: FakeAS
) -> None:
    """Two HomeServers on one PostgreSQL schema: one sends, each event once; the
    other takes over when it goes, and hears of events the first one wrote."""
    from . import postgres
    from .conftest import _require_postgres

    schema = postgres.Schema(_require_postgres(postgres_dsn))
    files = write_registrations(tmp_path, bridge_registration(fake_as.url))
    config = make_config(
        tmp_path, {"name": "psycopg", "args": schema.database_args()}, app_service_config_files=files
    )
    servers = [HomeServer(config) for _ in range(2)]
    started: list[HomeServer] = []
    try:
        for hs in servers:
            await hs.start()
            started.append(hs)
        a, b = servers
        await until(lambda: a.appservices.sender.is_owner or b.appservices.sender.is_owner)
        await asyncio.sleep(0.5)  # the other has tried, and failed, to take over
        assert a.appservices.sender.is_owner != b.appservices.sender.is_owner
        owner, other = (a, b) if a.appservices.sender.is_owner else (b, a)
        alice, ghost = "@alice:test.local", "@bridge_bob:test.local"
        room_id = await other.rooms.create_room(alice, {"preset": "public_chat"})
        await other.rooms.update_membership(ghost, room_id, ghost, "join")
        # Written by the process that does not send: it arrives by polling.
        first = await other.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "1"})
        await until(lambda: first in [e["event_id"] for e in fake_as.accepted_events()])
        await owner.appservices.sender.stop()
        await until(lambda: other.appservices.sender.is_owner)
        second = await owner.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "2"})
        await until(lambda: second in [e["event_id"] for e in fake_as.accepted_events()])
        ids = [e["event_id"] for e in fake_as.accepted_events()]
        assert len(ids) == len(set(ids)), "an event was sent by both processes"
        assert ids.index(first) < ids.index(second)
    finally:
        for hs in reversed(started):
            await hs.stop()
        schema.drop()


async def test_appservice_login(as_server: TestServer) -> None:
    server = as_server
    alice = await server.register_user("alice")
    resp = await server.get(f"{V3}/login")
    assert {"type": "m.login.application_service"} in resp.body["flows"]
    assert (await register_ghost(server, "bridge_alice")).status == 200

    def login(user: str) -> dict[str, Any]:
        return {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": user}}

    resp = await server.post(f"{V3}/login", {**login("bridge_alice"), "device_id": "BRIDGEDEV"}, token=AS_TOKEN)
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@bridge_alice:test.local" and resp.body["device_id"] == "BRIDGEDEV"
    whoami = await server.get(f"{V3}/account/whoami", token=resp.body["access_token"])
    assert whoami.body == {"user_id": "@bridge_alice:test.local", "device_id": "BRIDGEDEV", "is_guest": False}
    resp = await server.post(f"{V3}/login", login(alice["user_id"]), token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (400, "M_EXCLUSIVE")
    resp = await server.post(f"{V3}/login", login("bridge_nobody"), token=AS_TOKEN)
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.post(f"{V3}/login", login("bridge_alice"))
    assert (resp.status, resp.body["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await server.post(f"{V3}/login", login("bridge_alice"), token=alice["access_token"])
    assert (resp.status, resp.body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # Acting without a device, whoami has no device_id.
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN)
    assert resp.body == {"user_id": "@bridgebot:test.local", "is_guest": False}


# ------------------------------------ to-device, timestamps, devices (MSCs)

OTHER_AS_TOKEN = "as-secret-other"
WATCHER_AS_TOKEN = "as-secret-watcher"
BOB = "@bridge_bob:test.local"


def other_registration(url: str) -> dict[str, Any]:
    """A second bridge opted into to-device under the stable name: @other_* are
    its own, @shared_* only interest it (people may have those IDs too)."""
    return {
        "id": "other",
        "url": url,
        "as_token": OTHER_AS_TOKEN,
        "hs_token": "hs-secret-other",
        "sender_localpart": "otherbot",
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": r"@other_.*"},
                {"exclusive": False, "regex": r"@shared_.*"},
            ]
        },
        "receive_ephemeral": True,
        "receive_to_device": True,
    }


def watcher_registration(url: str) -> dict[str, Any]:
    """Interested in the bridge's users too, with ephemeral data but neither
    to-device messages nor device management."""
    return {
        "id": "watcher",
        "url": url,
        "as_token": WATCHER_AS_TOKEN,
        "hs_token": "hs-secret-watcher",
        "sender_localpart": "watchbot",
        "namespaces": {"users": [{"exclusive": False, "regex": r"@bridge_.*"}]},
        "receive_ephemeral": True,
    }


@pytest.fixture
async def more_fake_as() -> AsyncIterator[tuple[FakeAS, FakeAS]]:
    services = (FakeAS(port=free_port()), FakeAS(port=free_port()))
    for service in services:
        await service.start()
    try:
        yield services
    finally:
        for service in services:
            await service.stop()


@pytest.fixture
async def msc_server(
    tmp_path: Path, database_config: dict, fake_as: FakeAS, more_fake_as: tuple[FakeAS, FakeAS]
) -> AsyncIterator[TestServer]:
    """The bridge opted into to-device (unstable name) and MSC4190; `other` and `watcher` beside it."""
    other, watcher = more_fake_as
    bridge = bridge_registration(
        fake_as.url, **{"org.matrix.msc4203.receive_to_device": True, "io.element.msc4190": True}
    )
    files = write_registrations(
        tmp_path, bridge, other_registration(other.url), watcher_registration(watcher.url)
    )
    server = await start_server(make_config(tmp_path, database_config, app_service_config_files=files))
    try:
        yield server
    finally:
        await stop_server(server)


def to_device_of(service: FakeAS) -> list[dict[str, Any]]:
    """The to-device messages the service accepted, checking both names carry the same."""
    found = []
    for _txn_id, body in service.accepted:
        if "to_device" in body:
            assert body["to_device"] == body["de.sorunome.msc2409.to_device"]
            found.extend(body["to_device"])
    return found


async def send_to_device(server: TestServer, token: str, txn: str, messages: dict[str, Any]) -> None:
    resp = await server.put(f"{V3}/sendToDevice/m.test/{txn}", {"messages": messages}, token=token)
    assert resp.status == 200, resp.body


async def inbox(server: TestServer, user_id: str, device_id: str) -> list[Any]:
    """What waits in the device's inbox (read without acknowledging anything)."""
    found = await server.hs.storage.e2ee.to_device_messages(user_id, device_id, 0, 2**62, 1000)
    return [message["content"] for _stream, message in found]


async def read_to_device_past(server: TestServer, service_id: str) -> None:
    """Wait until the service's sender has looked at the whole to_device stream."""
    current = server.hs.notifier.positions["to_device"]
    for _ in range(500):
        state = await server.hs.storage.appservices.get_state(service_id)
        if state.positions["to_device"] >= current:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{service_id} never read the to_device stream")


def test_msc_registration_flags(tmp_path: Path) -> None:
    files = write_registrations(
        tmp_path,
        bridge_registration("http://as", **{"org.matrix.msc4203.receive_to_device": True, "org.matrix.msc4190": True}),
        other_registration("http://other"),
        watcher_registration("http://watcher"),
        logger_registration() | {"receive_to_device": True},
    )
    bridge, other, watcher, logger = load_application_services(_config(tmp_path, files))
    assert bridge.sends_to_device and bridge.device_management
    assert other.sends_to_device and not other.device_management
    assert not watcher.sends_to_device and not watcher.device_management
    # To-device messages ride on ephemeral data: without receive_ephemeral, none.
    assert logger.receive_to_device and not logger.sends_to_device
    for key in ("org.matrix.msc4203.receive_to_device", "receive_to_device", "io.element.msc4190"):
        files = write_registrations(tmp_path, bridge_registration("http://as", **{key: "yes"}))
        with pytest.raises(ConfigError) as err:
            load_application_services(_config(tmp_path, files))
        assert f"{files[0]}: {key}: expected true or false" in str(err.value)


async def test_to_device_goes_to_the_opted_in_service_once_in_order(
    msc_server: TestServer, fake_as: FakeAS, more_fake_as: tuple[FakeAS, FakeAS]
) -> None:
    server = msc_server
    other, watcher = more_fake_as
    alice = await server.register_user("alice")
    carol = await server.register_user("shared_carol")  # a person in `other`'s non-exclusive namespace
    bob = await register_ghost(server, "bridge_bob", inhibit_login=False, device_id="PHONE")
    assert bob.status == 200, bob.body
    resp = await server.put(f"{V3}/devices/LAPTOP", {}, token=AS_TOKEN, params={"user_id": BOB})
    assert resp.status == 201, resp.body
    resp = await server.post(
        f"{V3}/register",
        {"type": "m.login.application_service", "username": "other_x", "device_id": "XDEV"},
        token=OTHER_AS_TOKEN,
    )
    assert resp.status == 200, resp.body
    other_x = resp.body["user_id"]

    for i in range(5):
        await send_to_device(server, alice["access_token"], f"t{i}", {BOB: {"PHONE": {"n": i}}})
    await send_to_device(
        server,
        alice["access_token"],
        "all",
        {
            BOB: {"*": {"n": 5}},
            alice["user_id"]: {alice["device_id"]: {"n": 6}},
            other_x: {"XDEV": {"n": 7}},
            carol["user_id"]: {carol["device_id"]: {"n": 8}},
        },
    )
    # The bridge: its users' messages, in stream order (one position: by device), each once.
    await until(lambda: len(to_device_of(fake_as)) >= 7)
    await until(lambda: len(to_device_of(other)) >= 2)
    await read_to_device_past(server, "watcher")
    await asyncio.sleep(0.3)  # time enough for a duplicate to show
    expected = [(i, "PHONE") for i in range(5)] + [(5, "LAPTOP"), (5, "PHONE")]
    got = to_device_of(fake_as)
    assert [(m["content"]["n"], m["to_device_id"]) for m in got] == expected
    assert got[0] == {
        "type": "m.test", "sender": alice["user_id"], "content": {"n": 0},
        "to_user_id": BOB, "to_device_id": "PHONE",
    }
    assert {m["to_user_id"] for m in got} == {BOB}
    # Consumed by the service: not in the inbox, and /sync of the ghost's device gets none.
    assert await inbox(server, BOB, "PHONE") == [] and await inbox(server, BOB, "LAPTOP") == []
    resp = await server.get(f"{V3}/sync", token=bob.body["access_token"])
    assert resp.status == 200 and resp.body["to_device"]["events"] == []
    # The other bridge: only its users' messages. A person's (non-exclusive
    # namespace) stays for their own devices too.
    assert [(m["to_user_id"], m["content"]) for m in to_device_of(other)] == [
        (other_x, {"n": 7}), (carol["user_id"], {"n": 8}),
    ]
    assert await inbox(server, other_x, "XDEV") == []
    assert await inbox(server, carol["user_id"], carol["device_id"]) == [{"n": 8}]
    resp = await server.get(f"{V3}/sync", token=carol["access_token"])
    assert [e["content"] for e in resp.body["to_device"]["events"]] == [{"n": 8}]
    # Alice's message is hers: no service is sent it.
    assert await inbox(server, alice["user_id"], alice["device_id"]) == [{"n": 6}]
    # The watcher, interested in @bridge_* but not opted in: nothing, not even the key.
    assert not any("to_device" in body for _t, body in watcher.transactions)


async def test_to_device_survives_an_outage_and_is_consumed_when_queued(
    msc_server: TestServer, fake_as: FakeAS
) -> None:
    server = msc_server
    alice = await server.register_user("alice")
    assert (await register_ghost(server, "bridge_bob", inhibit_login=False, device_id="PHONE")).status == 200
    fake_as.txn_status = 503
    await send_to_device(server, alice["access_token"], "a", {BOB: {"PHONE": {"n": 0}}})
    await until(lambda: any("to_device" in body for _t, body in fake_as.transactions))
    refused = next(entry for entry in fake_as.transactions if "to_device" in entry[1])
    # Stored with the transaction: no longer in the inbox, though not yet accepted.
    assert await inbox(server, BOB, "PHONE") == []
    for i in (1, 2):
        await send_to_device(server, alice["access_token"], f"b{i}", {BOB: {"PHONE": {"n": i}}})
    await asyncio.sleep(0.3)
    assert all(body == refused[1] for txn_id, body in fake_as.transactions if txn_id == refused[0])
    fake_as.txn_status = 200
    await until(lambda: len(to_device_of(fake_as)) >= 3)
    await asyncio.sleep(0.3)
    assert [m["content"]["n"] for m in to_device_of(fake_as)] == [0, 1, 2]
    assert fake_as.accepted[0] == refused
    assert await inbox(server, BOB, "PHONE") == []


async def test_timestamp_massaging(msc_server: TestServer) -> None:
    server = msc_server
    alice = await server.register_user("alice")
    room_id = (await server.post(f"{V3}/createRoom", {}, token=AS_TOKEN)).body["room_id"]

    async def origin_ts(event_id: str) -> int:
        resp = await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}", token=AS_TOKEN)
        assert resp.status == 200, resp.body
        return resp.body["origin_server_ts"]

    sent = await send_text(server, AS_TOKEN, room_id, "from the past", "ts1", ts="1234567890123")
    assert await origin_ts(sent) == 1234567890123
    for name, ts in (("ts", 1111), ("org.matrix.msc3316.ts", 2222)):
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/state/m.room.topic", {"topic": name}, token=AS_TOKEN, params={name: str(ts)}
        )
        assert resp.status == 200, resp.body
        assert await origin_ts(resp.body["event_id"]) == ts
    # A member event through /state (a per-room display name) too.
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/state/m.room.member/{q('@bridgebot:test.local')}",
        {"membership": "join", "displayname": "Bot"},
        token=AS_TOKEN,
        params={"ts": "3333"},
    )
    assert resp.status == 200, resp.body
    assert await origin_ts(resp.body["event_id"]) == 3333
    for bad in ("soon", "-5", str(2**53)):
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/send/m.room.message/bad{bad}", {"body": "x"}, token=AS_TOKEN, params={"ts": bad}
        )
        assert (resp.status, resp.body["errcode"]) == (400, "M_INVALID_PARAM"), bad
    # People's `ts` is ignored (as Synapse does), even a malformed one.
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/invite", {"user_id": alice["user_id"]}, token=AS_TOKEN)
    assert resp.status == 200, resp.body
    assert (await server.post(f"{V3}/join/{q(room_id)}", {}, token=alice["access_token"])).status == 200
    before = int(time.time() * 1000)
    for i, ts in enumerate(("1000", "soon")):
        event_id = await send_text(server, alice["access_token"], room_id, "now", f"p{i}", ts=ts)
        assert await origin_ts(event_id) >= before
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/state/m.room.member/{q(alice['user_id'])}",
        {"membership": "join", "displayname": "Alice"},
        token=alice["access_token"],
        params={"ts": "1000", "org.matrix.msc3316.ts": "1000"},
    )
    assert resp.status == 200, resp.body
    assert await origin_ts(resp.body["event_id"]) >= before


async def test_appservice_device_management(msc_server: TestServer) -> None:
    server = msc_server
    alice = await server.register_user("alice")
    assert (await register_ghost(server, "bridge_dev")).status == 200
    ghost = {"user_id": "@bridge_dev:test.local"}

    async def ghost_devices() -> list[tuple[str, str | None]]:
        resp = await server.get(f"{V3}/devices", token=AS_TOKEN, params=ghost)
        assert resp.status == 200, resp.body
        return [(d["device_id"], d["display_name"]) for d in resp.body["devices"]]

    assert await ghost_devices() == []
    resp = await server.put(f"{V3}/devices/AABB", {"display_name": "Bridge"}, token=AS_TOKEN, params=ghost)
    assert resp.status == 201, resp.body
    assert await ghost_devices() == [("AABB", "Bridge")]
    resp = await server.put(f"{V3}/devices/AABB", {"display_name": "Renamed"}, token=AS_TOKEN, params=ghost)
    assert resp.status == 200, resp.body
    resp = await server.put(f"{V3}/devices/AABB", {}, token=AS_TOKEN, params=ghost)
    assert resp.status == 200, resp.body
    assert await ghost_devices() == [("AABB", "Renamed")]
    # The service acts as the device it made (MSC4326).
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={**ghost, "device_id": "AABB"})
    assert resp.body == {"user_id": ghost["user_id"], "device_id": "AABB", "is_guest": False}
    # Deleting needs no user-interactive auth.
    resp = await server.delete(f"{V3}/devices/AABB", token=AS_TOKEN, params=ghost)
    assert resp.status == 200, resp.body
    assert await ghost_devices() == []
    for device_id in ("D1", "D2", "D3"):
        assert (await server.put(f"{V3}/devices/{device_id}", {}, token=AS_TOKEN, params=ghost)).status == 201
    resp = await server.post(f"{V3}/delete_devices", {"devices": ["D1", "D3"]}, token=AS_TOKEN, params=ghost)
    assert resp.status == 200, resp.body
    assert await ghost_devices() == [("D2", None)]
    # Its own sender is one of its users.
    assert (await server.put(f"{V3}/devices/BOTDEV", {}, token=AS_TOKEN)).status == 201
    resp = await server.get(f"{V3}/account/whoami", token=AS_TOKEN, params={"device_id": "BOTDEV"})
    assert resp.body == {"user_id": "@bridgebot:test.local", "device_id": "BOTDEV", "is_guest": False}

    # Refusals: a user it has not registered, one outside its namespaces, bad input.
    resp = await server.put(f"{V3}/devices/X", {}, token=AS_TOKEN, params={"user_id": "@bridge_nobody:test.local"})
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.put(f"{V3}/devices/X", {}, token=AS_TOKEN, params={"user_id": alice["user_id"]})
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.delete(f"{V3}/devices/{alice['device_id']}", token=AS_TOKEN, params={"user_id": alice["user_id"]})
    assert (resp.status, resp.body["errcode"]) == (403, "M_FORBIDDEN")
    resp = await server.put(f"{V3}/devices/{'x' * 256}", {}, token=AS_TOKEN, params=ghost)
    assert (resp.status, resp.body["errcode"]) == (400, "M_INVALID_PARAM")
    resp = await server.put(f"{V3}/devices/Y", {"display_name": 5}, token=AS_TOKEN, params=ghost)
    assert (resp.status, resp.body["errcode"]) == (400, "M_BAD_JSON")
    resp = await server.post(f"{V3}/delete_devices", {"devices": "D2"}, token=AS_TOKEN, params=ghost)
    assert (resp.status, resp.body["errcode"]) == (400, "M_BAD_JSON")
    # A service that did not opt in: as before (unknown device 404, deleting needs UIA).
    resp = await server.put(f"{V3}/devices/NEW", {}, token=WATCHER_AS_TOKEN, params=ghost)
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await server.delete(f"{V3}/devices/D2", token=WATCHER_AS_TOKEN, params=ghost)
    assert resp.status == 401 and "flows" in resp.body, resp.body
    assert await ghost_devices() == [("D2", None)]
    # People: unchanged.
    resp = await server.put(f"{V3}/devices/UNKNOWN", {"display_name": "x"}, token=alice["access_token"])
    assert (resp.status, resp.body["errcode"]) == (404, "M_NOT_FOUND")
    resp = await server.delete(f"{V3}/devices/{alice['device_id']}", token=alice["access_token"])
    assert resp.status == 401 and "flows" in resp.body, resp.body
    resp = await server.post(f"{V3}/delete_devices", {"devices": [alice["device_id"]]}, token=alice["access_token"])
    assert resp.status == 401 and "flows" in resp.body, resp.body
    # `device_id` means nothing to a person's token (MSC4326).
    resp = await server.get(f"{V3}/account/whoami", token=alice["access_token"], params={"device_id": "D2"})
    assert resp.body["device_id"] == alice["device_id"]


async def test_appservice_replaces_cross_signing_keys_without_uia(msc_server: TestServer) -> None:
    from tests.e2ee_helpers import CrossSigning

    server = msc_server
    assert (await register_ghost(server, "bridge_cs")).status == 200
    ghost = {"user_id": "@bridge_cs:test.local"}
    for _ in range(2):  # the first upload, then a replacement: neither asks for UIA
        body = CrossSigning(ghost["user_id"]).upload_body()
        resp = await server.post(f"{V3}/keys/device_signing/upload", body, token=AS_TOKEN, params=ghost)
        assert resp.status == 200, resp.body
    # A service that did not opt in gets the UIA challenge for a replacement.
    body = CrossSigning(ghost["user_id"]).upload_body()
    resp = await server.post(f"{V3}/keys/device_signing/upload", body, token=WATCHER_AS_TOKEN, params=ghost)
    assert resp.status == 401 and "flows" in resp.body, resp.body


async def test_to_device_transactions_hold_whole_stream_positions(
    msc_server: TestServer, fake_as: FakeAS, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appservices import sender

    monkeypatch.setattr(sender, "MAX_TO_DEVICE_PER_TRANSACTION", 3)
    server = msc_server
    alice = await server.register_user("alice")
    assert (await register_ghost(server, "bridge_bob", inhibit_login=False, device_id="PHONE")).status == 200
    assert (await server.put(f"{V3}/devices/LAPTOP", {}, token=AS_TOKEN, params={"user_id": BOB})).status == 201
    # Queued while nothing sends, so that they are read together.
    await server.hs.appservices.sender.stop()
    await send_to_device(server, alice["access_token"], "t0", {BOB: {"PHONE": {"n": 0}}})
    for i in range(1, 4):  # each reaches both devices under one position
        await send_to_device(server, alice["access_token"], f"t{i}", {BOB: {"*": {"n": i}}})
    await server.hs.appservices.sender.start()
    await until(lambda: len(to_device_of(fake_as)) >= 7)
    per_txn = [
        [(m["content"]["n"], m["to_device_id"]) for m in body["to_device"]]
        for _t, body in fake_as.accepted
        if body["to_device"]
    ]
    assert per_txn == [
        [(0, "PHONE"), (1, "LAPTOP"), (1, "PHONE")],
        [(2, "LAPTOP"), (2, "PHONE"), (3, "LAPTOP"), (3, "PHONE")],  # the third one's position whole
    ]
