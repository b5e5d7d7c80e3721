"""The HTTP layer every endpoint shares: CORS, errors, limits, discovery, metrics.

Runs against a real server over real HTTP on both engines (the `server`
fixture). The last part throws garbage at the endpoints that take a body
and checks that every answer is a Matrix error, never a 500.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from homeserver.api.admin import registration_mac

from .conftest import SHARED_SECRET, with_config

if TYPE_CHECKING:
    from .conftest import Response, TestServer

LOGIN = "/_matrix/client/v3/login"


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert isinstance(resp.body, dict), resp.body
    assert resp.body.get("errcode") == errcode, resp.body
    assert isinstance(resp.body.get("error"), str), resp.body


def assert_cors(resp: Response) -> None:
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    methods = {m.strip() for m in resp.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "content-type"} <= allowed


# ---------------------------------------------------------------------- CORS


async def test_cors_preflight(server: TestServer) -> None:
    resp = await server.request(
        "OPTIONS",
        LOGIN,
        headers={
            "Origin": "https://app.element.io",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status == 204
    assert_cors(resp)


async def test_cors_preflight_on_path_with_parameters(server: TestServer) -> None:
    # Preflights come for every path a browser client calls, including ones
    # with user IDs in them and ones this server does not serve (yet).
    for path in (
        "/_matrix/client/v3/profile/@alice:test.local/displayname",
        "/_matrix/client/v3/sync",
    ):
        resp = await server.request(
            "OPTIONS", path, headers={"Origin": "https://app.element.io",
                                      "Access-Control-Request-Method": "PUT"}
        )
        assert resp.status == 204, path
        assert_cors(resp)


async def test_cors_headers_on_normal_and_error_responses(server: TestServer) -> None:
    ok = await server.get("/_matrix/client/versions", headers={"Origin": "https://app.element.io"})
    assert ok.status == 200
    assert_cors(ok)

    not_found = await server.get("/_matrix/client/v3/no_such_endpoint")
    assert not_found.status == 404
    assert_cors(not_found)

    unauthorized = await server.get("/_matrix/client/v3/account/whoami")
    assert_error(unauthorized, 401, "M_MISSING_TOKEN")
    assert_cors(unauthorized)

    bad = await server.post(LOGIN, data=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status == 400
    assert_cors(bad)


# -------------------------------------------------------- routing errors


async def test_unknown_endpoint_is_unrecognized(server: TestServer) -> None:
    for path in (
        "/_matrix/client/v3/no_such_endpoint",
        "/_matrix/client/v3/rooms/!r:test.local/no_such_thing",
        "/totally/unknown",
    ):
        resp = await server.get(path)
        assert_error(resp, 404, "M_UNRECOGNIZED")
    resp = await server.post("/_matrix/client/v3/no_such_endpoint", {"a": 1})
    assert_error(resp, 404, "M_UNRECOGNIZED")


async def test_wrong_method_is_405_unrecognized(server: TestServer) -> None:
    resp = await server.delete(LOGIN)
    assert_error(resp, 405, "M_UNRECOGNIZED")
    resp = await server.put("/_matrix/client/versions", {})
    assert_error(resp, 405, "M_UNRECOGNIZED")
    resp = await server.post("/_matrix/client/v3/capabilities", {})
    assert_error(resp, 405, "M_UNRECOGNIZED")


async def test_msc2965_auth_issuer_is_unrecognized(server: TestServer) -> None:
    # Element Web asks; a 404 M_UNRECOGNIZED tells it to use password login.
    resp = await server.get("/_matrix/client/unstable/org.matrix.msc2965/auth_issuer")
    assert_error(resp, 404, "M_UNRECOGNIZED")


# ------------------------------------------------------------ request bodies


async def _post_raw(server: TestServer, path: str, data: Any, **kw: Any) -> Response:
    return await server.post(path, data=data, headers={"Content-Type": "application/json"}, **kw)


async def test_invalid_json_is_not_json(server: TestServer) -> None:
    for data in (b"{nope", b'{"type": "m.login.password",}', b"'single'", b"{", b"}"):
        resp = await _post_raw(server, LOGIN, data)
        assert_error(resp, 400, "M_NOT_JSON")


async def test_empty_body_is_not_json(server: TestServer) -> None:
    resp = await _post_raw(server, LOGIN, b"")
    assert_error(resp, 400, "M_NOT_JSON")


@pytest.mark.parametrize("data", [b"[]", b'[{"type": "m.login.password"}]', b'"text"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_is_bad_json(server: TestServer, data: bytes) -> None:
    resp = await _post_raw(server, LOGIN, data)
    assert_error(resp, 400, "M_BAD_JSON")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_standard_number_literals_are_not_json(server: TestServer, literal: bytes) -> None:
    resp = await _post_raw(server, LOGIN, b'{"type": "m.login.password", "x": ' + literal + b"}")
    assert_error(resp, 400, "M_NOT_JSON")


async def test_non_utf8_body_is_not_json(server: TestServer) -> None:
    for data in (b'{"type": "\xff\xfe"}', "{\"type\": \"é\"}".encode("latin-1"), b"\xc3\x28"):
        resp = await _post_raw(server, LOGIN, data)
        assert_error(resp, 400, "M_NOT_JSON")


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["arrays", "objects"],
)
async def test_deeply_nested_json_is_a_client_error(server: TestServer, data: bytes) -> None:
    resp = await _post_raw(server, LOGIN, data)
    assert 400 <= resp.status < 500, resp.status
    assert resp.body["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), resp.body


class TestBodyLimit:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return {"max_request_body_size": "64K"}

    async def test_body_over_the_limit_is_too_large(self, server: TestServer) -> None:
        big = {"type": "m.login.password", "padding": "x" * 70_000}
        resp = await server.post(LOGIN, big)
        assert_error(resp, 413, "M_TOO_LARGE")

    async def test_body_under_the_limit_is_read(self, server: TestServer) -> None:
        ok = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"},
              "password": "wrong", "padding": "x" * 60_000}
        resp = await server.post(LOGIN, ok)
        assert_error(resp, 403, "M_FORBIDDEN")

    async def test_chunked_body_over_the_limit_is_too_large(self, server: TestServer) -> None:
        # Without Content-Length the limit must still hold once the body is read.
        async def chunks():
            yield b'{"type": "m.login.password", "padding": "'
            for _ in range(10):
                yield b"x" * 10_000
            yield b'"}'

        resp = await _post_raw(server, LOGIN, chunks())
        assert_error(resp, 413, "M_TOO_LARGE")

    async def test_body_over_the_limit_with_invalid_json_is_too_large(self, server: TestServer) -> None:
        resp = await _post_raw(server, LOGIN, b"[" * 70_000)
        assert_error(resp, 413, "M_TOO_LARGE")


# ------------------------------------------------ client address behind a proxy


def _address_limited(x_forwarded: bool) -> dict[str, Any]:
    """Two logins per client address, everything else unlimited."""
    generous = {"per_second": 1000, "burst_count": 1000}
    return {
        "listeners": [{"port": 8008, "x_forwarded": x_forwarded,
                       "resources": [{"names": ["client", "federation", "metrics"]}]}],
        "rc_login": {"address": {"per_second": 0.001, "burst_count": 2},
                     "account": generous, "failed_attempts": generous},
    }


async def _logins_from(server: TestServer, addresses: list[str]) -> list[int]:
    statuses = []
    for i, address in enumerate(addresses):
        resp = await server.post(
            LOGIN,
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": f"nobody{i}"},
             "password": "wrong"},
            headers={"X-Forwarded-For": address},
        )
        statuses.append(resp.status)
    return statuses


class TestWithoutXForwarded:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return _address_limited(x_forwarded=False)

    async def test_forwarded_for_is_ignored(self, server: TestServer) -> None:
        # Not behind a proxy, X-Forwarded-For is the client's say-so: it must
        # not let one client dodge the per-address limit.
        statuses = await _logins_from(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        assert statuses == [403, 403, 429]


class TestWithXForwarded:
    @pytest.fixture
    def config_overrides(self) -> dict[str, Any]:
        return _address_limited(x_forwarded=True)

    async def test_forwarded_for_is_the_client_address(self, server: TestServer) -> None:
        statuses = await _logins_from(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
        assert statuses == [403, 403, 403, 403]
        # The limit still holds per real client.
        assert await _logins_from(server, ["10.0.0.1", "10.0.0.1"]) == [403, 429]


# ------------------------------------------------------- request ids, health


async def test_request_id_on_every_response(server: TestServer) -> None:
    ids = set()
    for resp in (
        await server.get("/_matrix/client/versions"),
        await server.get("/_matrix/client/v3/no_such_endpoint"),
        await server.get("/_matrix/client/v3/account/whoami"),
        await _post_raw(server, LOGIN, b"{nope"),
    ):
        request_id = resp.headers.get("X-Request-Id")
        assert request_id, resp.headers
        ids.add(request_id)
    assert len(ids) == 4, "request ids must be unique"


async def test_health(server: TestServer) -> None:
    resp = await server.get("/health")
    assert resp.status == 200


# -------------------------------------------------------------------- metrics


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in Prometheus text format, as (labels, value)."""
    found = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?", line)
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        found.append((labels, float(m.group(3))))
    return found


async def test_metrics(server: TestServer) -> None:
    await server.register_user("metricuser")
    profile = await server.get("/_matrix/client/v3/profile/@metricuser:test.local")
    assert profile.status == 200
    await server.get("/_matrix/client/v3/profile/@nosuchuser-zq9:test.local")
    await server.get("/_matrix/client/v3/no_such_endpoint_zq9x")

    resp = await server.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = resp.body if isinstance(resp.body, str) else str(resp.body)

    requests = _samples(text, "homeserver_http_requests_total")
    assert requests, text[:2000]
    routes = {labels["route"] for labels, _ in requests}
    profile_route = "/_matrix/client/v3/profile/{userId}"
    assert profile_route in routes
    hits = [(lab, v) for lab, v in requests if lab["route"] == profile_route and lab["method"] == "GET"]
    assert any(lab["status"] == "200" and v >= 1 for lab, v in hits), hits
    assert any(lab["status"] == "404" and v >= 1 for lab, v in hits), hits
    # Route templates only: never a concrete user id or an unknown raw path,
    # or the label set would grow with every user and every scanner.
    for route in routes:
        assert "@" not in route, route
        assert "zq9" not in route, route

    buckets = _samples(text, "homeserver_http_request_duration_seconds_bucket")
    assert any(lab.get("route") == profile_route and lab.get("le") == "+Inf" for lab, _ in buckets)
    assert _samples(text, "homeserver_http_request_duration_seconds_count")
    assert _samples(text, "homeserver_http_request_duration_seconds_sum")

    pool = _samples(text, "homeserver_db_pool_connections")
    assert pool and pool[0][1] >= 1, pool
    assert _samples(text, "homeserver_db_pool_connections_in_use")


# ------------------------------------------------------------------ discovery


async def test_well_known_client(server: TestServer) -> None:
    resp = await server.get("/.well-known/matrix/client")
    assert resp.status == 200
    base_url = resp.body["m.homeserver"]["base_url"]
    assert re.match(r"^https?://", base_url), base_url
    assert_cors(resp)


async def test_well_known_server(server: TestServer) -> None:
    resp = await server.get("/.well-known/matrix/server")
    assert resp.status == 200
    host, _, port = resp.body["m.server"].rpartition(":")
    assert host and port.isdigit(), resp.body


async def test_versions(server: TestServer) -> None:
    resp = await server.get("/_matrix/client/versions")
    assert resp.status == 200
    versions = resp.body["versions"]
    assert isinstance(versions, list) and versions
    assert all(re.fullmatch(r"[rv]\d+\.\d+(\.\d+)?", v) for v in versions), versions
    assert "v1.1" in versions
    assert isinstance(resp.body.get("unstable_features", {}), dict)


async def test_capabilities(server: TestServer) -> None:
    unauthenticated = await server.get("/_matrix/client/v3/capabilities")
    assert_error(unauthenticated, 401, "M_MISSING_TOKEN")
    bad_token = await server.get("/_matrix/client/v3/capabilities", token="mat_nope")
    assert_error(bad_token, 401, "M_UNKNOWN_TOKEN")

    token = (await server.register_user("capuser"))["access_token"]
    for version in ("v3", "r0"):
        resp = await server.get(f"/_matrix/client/{version}/capabilities", token=token)
        assert resp.status == 200, resp.body
        caps = resp.body["capabilities"]
        assert caps["m.room_versions"]["default"] == "12"
        available = caps["m.room_versions"]["available"]
        assert {"10", "11", "12"} <= set(available)
        assert set(available.values()) <= {"stable", "unstable"}
        assert available["12"] == "stable"
        assert caps["m.change_password"] == {"enabled": True}
        assert caps["m.set_displayname"] == {"enabled": True}
        assert caps["m.set_avatar_url"] == {"enabled": True}
        assert caps["m.3pid_changes"] == {"enabled": False}


# ----------------------------------------------------------------------- fuzz
#
# Garbage in every field of every endpoint that takes a body: wrong types,
# empty and huge values, broken `auth` dicts. Every answer must be a Matrix
# error (or a success), never a 500. Values that once exposed server bugs
# (lone surrogates, NUL, huge integers) have tests of their own at the end.

GARBAGE_VALUES: list[Any] = [
    None,
    0,
    -1,
    1.5,
    True,
    False,
    "",
    " ",
    "x" * 100_000,
    "\u00e9\u4e2d\U0001f600",
    "@:",
    [],
    ["a", 1, None],
    {},
    {"type": 1},
]

LONE_SURROGATE = "\ud800"  # valid JSON ("\ud800" escaped), not encodable as UTF-8
NUL = "\u0000"  # valid JSON, but PostgreSQL text cannot hold it
HUGE_INT = 2**70  # valid JSON, larger than any database integer

WHOLE_BODIES: list[Any] = [{}, [], "x", 1, {"": ""}, {"auth": "x"}, {"auth": []}, {"auth": None}]


def _auth_garbage(values: list[Any]) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    for value in values:
        bodies += [
            {"auth": value},
            {"auth": {"type": value}},
            {"auth": {"type": "m.login.dummy", "session": value}},
            {"auth": {"type": "m.login.password", "password": value}},
            {"auth": {"type": "m.login.password", "password": "x", "identifier": value}},
            {"auth": {"type": "m.login.password", "password": "x",
                      "identifier": {"type": "m.id.user", "user": value}}},
            {"auth": {"type": "m.login.password", "password": "x", "user": value}},
            {"auth": {"type": "m.login.registration_token", "token": value}},
        ]
    return bodies


def _field_bodies(fields: list[str], values: list[Any], base: dict[str, Any] | None = None) -> list[Any]:
    """`base` with each of `fields` set to each of `values`."""
    return [{**(base or {}), name: value} for name in fields for value in values]


class Probe:
    """Sends requests and collects every answer that is not a clean Matrix error."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.problems: list[str] = []

    async def send(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        resp = await self.server.request(method, path, body, **kw)
        problem = _problem(resp, method, path, body if body is not None else kw.get("headers"))
        if problem:
            self.problems.append(problem)
        return resp

    async def many(self, method: str, path: str, bodies: list[Any], **kw: Any) -> None:
        for body in bodies:
            await self.send(method, path, body, **kw)

    def check(self) -> None:
        assert not self.problems, f"{len(self.problems)} bad answers:\n" + "\n".join(self.problems)


def _problem(resp: Response, method: str, path: str, body: Any) -> str | None:
    """What is wrong with an answer to garbage, or None."""
    shown = repr(body)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    where = f"{method} {path[:100]} with {shown}: {resp.status} {str(resp.body)[:300]}"
    if resp.status >= 500:
        return where
    if resp.status >= 400:
        if not isinstance(resp.body, dict):
            return where
        if resp.status == 401 and "flows" in resp.body and "session" in resp.body:
            return None  # a user-interactive auth challenge carries no errcode
        errcode = resp.body.get("errcode")
        if not isinstance(errcode, str) or not errcode.startswith("M_"):
            return where
    return None


FUZZER = "fuzzer"
FUZZER_PASSWORD = "fuzzer password"


@pytest.fixture
async def fuzz_user(server: TestServer) -> dict[str, Any]:
    await server.register_user(FUZZER, FUZZER_PASSWORD)
    return await server.login(FUZZER, FUZZER_PASSWORD)


@pytest.fixture
def probe(server: TestServer) -> Probe:
    return Probe(server)


# One function per endpoint area, each sending `values` in every field.


async def fuzz_login(probe: Probe, values: list[Any]) -> None:
    base = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": FUZZER},
            "password": "wrong password"}
    bodies = _field_bodies(["type"], values)
    bodies += _field_bodies(["identifier"], values, {"type": "m.login.password", "password": "x"})
    bodies += [{**base, "identifier": {"type": "m.id.user", "user": v}} for v in values]
    bodies += [{**base, "identifier": {"type": v, "user": FUZZER}} for v in values]
    bodies += _field_bodies(
        ["password", "device_id", "initial_device_display_name", "refresh_token", "user"], values, base
    )
    await probe.many("POST", LOGIN, bodies)


async def fuzz_register(probe: Probe, values: list[Any]) -> None:
    fields = ["username", "password", "device_id", "initial_device_display_name",
              "inhibit_login", "refresh_token", "auth"]
    base = {"username": "fuzzy", "password": "a fine password", "auth": {"type": "m.login.dummy"}}
    bodies = _field_bodies(fields, values) + _field_bodies(fields, values, base)
    bodies += _auth_garbage(values)
    await probe.many("POST", "/_matrix/client/v3/register", bodies)
    await probe.many("POST", "/_matrix/client/v3/register?kind=guest",
                     _field_bodies(["initial_device_display_name", "refresh_token"], values))


async def fuzz_refresh(probe: Probe, values: list[Any]) -> None:
    bodies = _field_bodies(["refresh_token"], values)
    await probe.many("POST", "/_matrix/client/v3/refresh", bodies)
    await probe.many("POST", "/_matrix/client/v1/refresh", bodies)


async def fuzz_profile(probe: Probe, values: list[Any], user: dict[str, Any]) -> None:
    for field in ("displayname", "avatar_url"):
        path = f"/_matrix/client/v3/profile/{user['user_id']}/{field}"
        await probe.many("PUT", path, _field_bodies([field], values), token=user["access_token"])
        # Whatever was accepted, the profile still reads back.
        resp = await probe.send("GET", f"/_matrix/client/v3/profile/{user['user_id']}")
        assert resp.status == 200, resp.body


async def fuzz_devices(probe: Probe, values: list[Any], user: dict[str, Any]) -> None:
    token = user["access_token"]
    await probe.many("PUT", f"/_matrix/client/v3/devices/{user['device_id']}",
                     _field_bodies(["display_name"], values), token=token)
    await probe.many("DELETE", "/_matrix/client/v3/devices/NO_SUCH_DEVICE",
                     _auth_garbage(values), token=token)
    await probe.many("POST", "/_matrix/client/v3/delete_devices",
                     _field_bodies(["devices", "auth"], values) + [{"devices": [v]} for v in values]
                     + [{"devices": [], **b} for b in _auth_garbage(values)], token=token)
    resp = await probe.send("GET", "/_matrix/client/v3/devices", token=token)
    assert user["device_id"] in [d["device_id"] for d in resp.body["devices"]]


async def fuzz_change_password(probe: Probe, values: list[Any], user: dict[str, Any]) -> None:
    bodies = _field_bodies(["new_password", "logout_devices", "auth"], values)
    bodies += [{"new_password": "a new password", **b} for b in _auth_garbage(values)]
    await probe.many("POST", "/_matrix/client/v3/account/password", bodies, token=user["access_token"])


async def fuzz_deactivate(probe: Probe, values: list[Any], user: dict[str, Any]) -> None:
    await probe.many("POST", "/_matrix/client/v3/account/deactivate", _auth_garbage(values),
                     token=user["access_token"])


async def fuzz_admin_register(probe: Probe, values: list[Any]) -> None:
    path = "/_synapse/admin/v1/register"
    fields = ["nonce", "username", "password", "admin", "user_type", "displayname", "mac"]
    await probe.many("POST", path, _field_bodies(fields, values))
    # Garbage in one field of an otherwise correct request, with a fresh nonce each.
    for name in fields:
        for value in values:
            nonce = (await probe.send("GET", path)).body["nonce"]
            body = {
                "nonce": nonce,
                "username": "fuzzadmin",
                "password": "a password",
                "admin": False,
                "mac": registration_mac(SHARED_SECRET, nonce, "fuzzadmin", "a password", False, None),
                name: value,
            }
            await probe.send("POST", path, body)


async def fuzz_registration_tokens(probe: Probe, values: list[Any], admin_token: str) -> None:
    prefix = "/_synapse/admin/v1/registration_tokens"
    await probe.many("POST", f"{prefix}/new",
                     _field_bodies(["token", "length", "uses_allowed", "expiry_time"], values),
                     token=admin_token)
    await probe.send("POST", f"{prefix}/new", {"token": "fuzztoken"}, token=admin_token)
    await probe.many("PUT", f"{prefix}/fuzztoken",
                     _field_bodies(["uses_allowed", "expiry_time"], values), token=admin_token)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


async def fuzz_query_and_path(probe: Probe, strings: list[str], user: dict[str, Any]) -> None:
    token = user["access_token"]
    for s in strings:
        q = _quote(s)
        await probe.send("GET", f"/_matrix/client/v3/register/available?username={q}")
        await probe.send("GET", f"/_matrix/client/v1/register/m.login.registration_token/validity?token={q}")
        await probe.send("GET", f"/_matrix/client/v3/account/whoami?access_token={q}")
        await probe.send("GET", f"/_matrix/client/v3/profile/{q}")
        await probe.send("GET", f"/_matrix/client/v3/profile/{q}/displayname")
        await probe.send("PUT", f"/_matrix/client/v3/profile/{q}/displayname", {"displayname": "x"}, token=token)
        await probe.send("GET", f"/_matrix/client/v3/devices/{q}", token=token)
        await probe.send("PUT", f"/_matrix/client/v3/devices/{q}", {"display_name": "x"}, token=token)


async def test_fuzz_login(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    await probe.many("POST", LOGIN, WHOLE_BODIES)
    await fuzz_login(probe, GARBAGE_VALUES)
    probe.check()


async def test_fuzz_register(server: TestServer, probe: Probe) -> None:
    await probe.many("POST", "/_matrix/client/v3/register", WHOLE_BODIES)
    await probe.many("POST", "/_matrix/client/v3/register?kind=guest", WHOLE_BODIES)
    await probe.many("POST", "/_matrix/client/v3/register?kind=nonsense", WHOLE_BODIES)
    await fuzz_register(probe, GARBAGE_VALUES)
    probe.check()


async def test_fuzz_refresh(server: TestServer, probe: Probe) -> None:
    await probe.many("POST", "/_matrix/client/v3/refresh", WHOLE_BODIES)
    await fuzz_refresh(probe, GARBAGE_VALUES)
    probe.check()


async def test_fuzz_logout(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    # Logout ignores its body; garbage must not break it. Each successful
    # call ends the session, so every body gets a session of its own.
    for body in WHOLE_BODIES[:4]:
        for path in ("/_matrix/client/v3/logout", "/_matrix/client/v3/logout/all"):
            token = (await server.login(FUZZER, FUZZER_PASSWORD))["access_token"]
            resp = await probe.send("POST", path, body, token=token)
            assert resp.status == 200, resp.body
    for header in ("Bearer", "Bearer ", "Basic abc", "bearer\tx", "Bearer " + "x" * 4000, "Bearer \u00ff"):
        resp = await probe.send("POST", "/_matrix/client/v3/logout", {}, headers={"Authorization": header})
        assert resp.status == 401, (header[:20], resp.body)
    probe.check()


async def test_fuzz_profile(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    for field in ("displayname", "avatar_url"):
        await probe.many("PUT", f"/_matrix/client/v3/profile/{fuzz_user['user_id']}/{field}",
                         WHOLE_BODIES, token=fuzz_user["access_token"])
    await fuzz_profile(probe, GARBAGE_VALUES, fuzz_user)
    probe.check()


async def test_fuzz_devices(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    token = fuzz_user["access_token"]
    await probe.many("PUT", f"/_matrix/client/v3/devices/{fuzz_user['device_id']}", WHOLE_BODIES, token=token)
    await probe.many("POST", "/_matrix/client/v3/delete_devices", WHOLE_BODIES, token=token)
    await fuzz_devices(probe, GARBAGE_VALUES, fuzz_user)
    probe.check()


async def test_fuzz_change_password(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    token = fuzz_user["access_token"]
    await probe.many("POST", "/_matrix/client/v3/account/password", WHOLE_BODIES, token=token)
    await fuzz_change_password(probe, GARBAGE_VALUES, fuzz_user)
    probe.check()
    # None of it changed the password or ended the session.
    assert (await server.get("/_matrix/client/v3/account/whoami", token=token)).status == 200
    await server.login(FUZZER, FUZZER_PASSWORD)


async def test_fuzz_deactivate(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    token = fuzz_user["access_token"]
    await probe.many("POST", "/_matrix/client/v3/account/deactivate", WHOLE_BODIES, token=token)
    await fuzz_deactivate(probe, GARBAGE_VALUES, fuzz_user)
    probe.check()
    assert (await server.get("/_matrix/client/v3/account/whoami", token=token)).status == 200


async def test_fuzz_admin_register(server: TestServer, probe: Probe) -> None:
    await probe.many("POST", "/_synapse/admin/v1/register", WHOLE_BODIES)
    await fuzz_admin_register(probe, GARBAGE_VALUES)
    probe.check()


async def test_fuzz_admin_registration_tokens(server: TestServer, probe: Probe) -> None:
    admin = await server.register_user("fuzzboss", admin=True)
    token = admin["access_token"]
    await probe.many("POST", "/_synapse/admin/v1/registration_tokens/new", WHOLE_BODIES[1:], token=token)
    await fuzz_registration_tokens(probe, GARBAGE_VALUES + [2**31 - 1], token)
    for query in ("?valid=maybe", "?valid=true", "?valid=%FF"):
        await probe.send("GET", "/_synapse/admin/v1/registration_tokens" + query, token=token)
    probe.check()


async def test_fuzz_query_and_path(server: TestServer, probe: Probe, fuzz_user: dict[str, Any]) -> None:
    await probe.send("GET", "/_matrix/client/v3/register/available")
    await probe.send("GET", "/_matrix/client/v1/register/m.login.registration_token/validity")
    await fuzz_query_and_path(probe, ["", "@", "@:", "@a:", "x" * 2000, "\u00e9", "%", "/", "..", "@a:b/c"], fuzz_user)
    # Raw, invalid percent-escapes.
    for path in ("/_matrix/client/v3/profile/%FF", "/_matrix/client/v3/profile/%",
                 "/_matrix/client/v3/register/available?username=%FF"):
        await probe.send("GET", path)
    probe.check()


async def test_fuzz_authorization_header(server: TestServer, probe: Probe) -> None:
    for header in ("Bearer", "Bearer ", "Basic abc", "bearer\tx", "Bearer " + "x" * 4000, "Bearer \u00ff"):
        resp = await probe.send("GET", "/_matrix/client/v3/account/whoami", headers={"Authorization": header})
        assert resp.status == 401, (header[:20], resp.body)
    probe.check()


# ------------------------------------------------- known bugs, found by fuzzing


async def _sweep(server: TestServer, probe: Probe, values: list[Any]) -> None:
    """Every fuzz target above with `values`."""
    await server.register_user(FUZZER, FUZZER_PASSWORD)
    user = await server.login(FUZZER, FUZZER_PASSWORD)
    admin_token = (await server.register_user("fuzzboss", admin=True))["access_token"]
    await fuzz_login(probe, values)
    await fuzz_register(probe, values)
    await fuzz_refresh(probe, values)
    await fuzz_profile(probe, values, user)
    await fuzz_devices(probe, values, user)
    await fuzz_change_password(probe, values, user)
    await fuzz_deactivate(probe, values, user)
    await fuzz_admin_register(probe, values)
    await fuzz_registration_tokens(probe, values, admin_token)
    # Lone surrogates cannot even be put in a URL; the rest go in paths and queries.
    strings = [v for v in values if isinstance(v, str) and v.encode("utf-8", "replace").decode() == v]
    if strings:
        await fuzz_query_and_path(probe, strings, user)


async def test_lone_surrogates_are_a_client_error(server: TestServer, probe: Probe) -> None:
    await _sweep(server, probe, [LONE_SURROGATE, "a" + LONE_SURROGATE + "b", "\udfff"])
    probe.check()


async def test_nul_characters_are_a_client_error(server: TestServer, probe: Probe) -> None:
    await _sweep(server, probe, [NUL, "a" + NUL + "b"])
    probe.check()


async def test_huge_integers_are_a_client_error(server: TestServer, probe: Probe) -> None:
    await _sweep(server, probe, [HUGE_INT, -HUGE_INT, 2**31, 2**63, 10**400])
    probe.check()


@with_config(listeners=[{"port": 8008, "resources": [{"names": ["client", "metrics"], "compress": True}]}])
async def test_compress_gzips_large_responses(server: TestServer) -> None:
    big = await server.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert big.status == 200
    assert big.headers.get("Content-Encoding") == "gzip"
    small = await server.get("/health", headers={"Accept-Encoding": "gzip"})
    assert small.status == 200 and "Content-Encoding" not in small.headers


async def test_no_compression_unless_configured(server: TestServer) -> None:
    resp = await server.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and "Content-Encoding" not in resp.headers
