"""Shared fixtures: a real homeserver over real HTTP, on SQLite and on PostgreSQL.

Every test that asks for `server` (or `db`) runs twice, once per engine.
When CI=true, PostgreSQL being unavailable fails the run instead of skipping.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from homeserver.api.admin import registration_mac
from homeserver.app import HomeServer, build_app
from homeserver.config import Config, parse_config
from storage import Database, create_database
from storage.migrations import migrate

from . import postgres

SHARED_SECRET = "test-shared-secret"
# Tests register many users; cost 4 keeps them fast. The default (12) is
# what production uses, and a test checks that it is.
TEST_BCRYPT_ROUNDS = 4

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_dsn() -> str | None:
    dsn = postgres.server_dsn()
    if dsn is None:
        return None
    return postgres.ensure_test_database(dsn)


def _require_postgres(dsn: str | None) -> str:
    if dsn is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required when CI=true, and none could be found or started")
        pytest.skip("no PostgreSQL server available (set HOMESERVER_TEST_POSTGRES)")
    return dsn


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_config(
    engine: str, tmp_path: Path, postgres_dsn: str | None
) -> Any:
    """`database` config section for a fresh, empty database on the engine."""
    if engine == "sqlite":
        yield {"name": "sqlite3", "args": {"database": str(tmp_path / "homeserver.db")}}
        return
    schema = postgres.Schema(_require_postgres(postgres_dsn))
    try:
        yield {"name": "psycopg", "args": schema.database_args()}
    finally:
        schema.drop()


@pytest.fixture
async def db(database_config: dict) -> AsyncIterator[Database]:
    """An open, migrated database on the engine, without any HTTP around it."""
    database = create_database(database_config["name"], database_config["args"])
    await database.open()
    await migrate(database)
    try:
        yield database
    finally:
        await database.close()


def make_config(tmp_path: Path, database: dict, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "server_name": "test.local",
        "database": database,
        "signing_key_path": str(tmp_path / "signing.key"),
        "media_store_path": str(tmp_path / "media"),
        "registration_shared_secret": SHARED_SECRET,
        "enable_registration": True,
        "bcrypt_rounds": TEST_BCRYPT_ROUNDS,
        # Tests log in far more often than people do.
        "rc_login": {
            "address": {"per_second": 1000, "burst_count": 1000},
            "account": {"per_second": 1000, "burst_count": 1000},
            "failed_attempts": {"per_second": 1000, "burst_count": 1000},
        },
        "rc_registration": {"per_second": 1000, "burst_count": 1000},
        "rc_registration_token_validity": {"per_second": 1000, "burst_count": 1000},
        "rc_key_requests": {"per_second": 1000, "burst_count": 1000},
    }
    raw.update(overrides)
    config, unknown = parse_config(raw, str(tmp_path))
    assert not unknown, unknown
    return config


@dataclass
class Response:
    status: int
    body: Any
    headers: Any


@dataclass
class TestServer:
    """A running homeserver and an HTTP client pointed at it."""

    __test__ = False  # not a test class, whatever its name

    hs: HomeServer
    url: str
    http: aiohttp.ClientSession
    _runner: web.AppRunner = field(repr=False)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url + path, json=json, data=data, headers=hdrs, params=params
        ) as resp:
            raw = await resp.read()
            try:
                body = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return Response(resp.status, body, resp.headers)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, json, **kw)

    async def delete(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("DELETE", path, json, **kw)

    async def register_user(
        self, localpart: str, password: str = "correct horse battery", *, admin: bool = False
    ) -> dict[str, Any]:
        """Create a user through shared-secret registration; returns the login response."""
        nonce = (await self.get("/_synapse/admin/v1/register")).body["nonce"]
        resp = await self.post(
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": registration_mac(SHARED_SECRET, nonce, localpart, password, admin, None),
            },
        )
        assert resp.status == 200, resp.body
        return resp.body

    async def login(self, localpart: str, password: str = "correct horse battery", **extra: Any) -> dict[str, Any]:
        resp = await self.post(
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
                **extra,
            },
        )
        assert resp.status == 200, resp.body
        return resp.body


async def start_server(config: Config) -> TestServer:
    hs = HomeServer(config)
    await hs.start()
    listener = config.listeners[0]
    app = build_app(
        hs,
        x_forwarded=listener.x_forwarded,
        compress=any(r.compress for r in listener.resources),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    http = aiohttp.ClientSession()
    return TestServer(hs, f"http://127.0.0.1:{port}", http, runner)


async def stop_server(server: TestServer) -> None:
    await server.http.close()
    await server._runner.cleanup()
    await server.hs.stop()


def with_config(**overrides: Any) -> pytest.MarkDecorator:
    """Run the test against a server with these config overrides."""
    return pytest.mark.parametrize("config_overrides", [overrides], ids=["config"])


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrization) to change the config."""
    return {}


@pytest.fixture
async def server(
    tmp_path: Path, database_config: dict, config_overrides: dict[str, Any]
) -> AsyncIterator[TestServer]:
    config = make_config(tmp_path, database_config, **config_overrides)
    srv = await start_server(config)
    try:
        yield srv
    finally:
        await stop_server(srv)
