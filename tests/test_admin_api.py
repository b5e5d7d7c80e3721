"""The Synapse-compatible admin API: shared-secret registration, registration tokens."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver import __version__
from homeserver.api.admin import registration_mac
from homeserver.util import now_ms

from .conftest import SHARED_SECRET, with_config

REGISTER = "/_synapse/admin/v1/register"
TOKENS = "/_synapse/admin/v1/registration_tokens"
WHOAMI = "/_matrix/client/v3/account/whoami"


async def nonce(server) -> str:
    resp = await server.get(REGISTER)
    assert resp.status == 200, resp.body
    return resp.body["nonce"]


def shared_secret_body(
    nonce: str,
    username: str,
    password: str = "pw",
    admin: bool = False,
    user_type: str | None = None,
) -> dict[str, Any]:
    body = {
        "nonce": nonce,
        "username": username,
        "password": password,
        "admin": admin,
        "mac": registration_mac(SHARED_SECRET, nonce, username, password, admin, user_type),
    }
    if user_type is not None:
        body["user_type"] = user_type
    return body


# ------------------------------------------------------ shared-secret register


async def test_nonces_are_unique(server):
    assert await nonce(server) != await nonce(server)


@pytest.mark.parametrize("admin", [False, True])
async def test_shared_secret_registration(server, admin):
    resp = await server.post(
        REGISTER, shared_secret_body(await nonce(server), "alice", admin=admin)
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@alice:test.local"
    assert resp.body["home_server"] == "test.local"
    assert resp.body["device_id"]
    who = await server.get(WHOAMI, token=resp.body["access_token"])
    assert who.status == 200 and who.body["user_id"] == "@alice:test.local"
    user = await server.hs.storage.users.get_user("@alice:test.local")
    assert user is not None and user.admin is admin and user.user_type is None
    # Only admins may use the admin API.
    tokens = await server.get(TOKENS, token=resp.body["access_token"])
    assert tokens.status == (200 if admin else 403)


async def test_shared_secret_registration_with_user_type(server):
    resp = await server.post(
        REGISTER, shared_secret_body(await nonce(server), "helpdesk", user_type="support")
    )
    assert resp.status == 200, resp.body
    user = await server.hs.storage.users.get_user("@helpdesk:test.local")
    assert user is not None and user.user_type == "support"


async def test_shared_secret_password_logs_in(server):
    await server.post(REGISTER, shared_secret_body(await nonce(server), "alice", password="s3cret"))
    assert (await server.login("alice", "s3cret"))["user_id"] == "@alice:test.local"


async def test_wrong_mac(server):
    n = await nonce(server)
    body = shared_secret_body(n, "alice")
    body["mac"] = registration_mac("wrong secret", n, "alice", "pw", False, None)
    resp = await server.post(REGISTER, body)
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert await server.hs.storage.users.get_user("@alice:test.local") is None


async def test_mac_covers_admin_flag_and_user_type(server):
    body = shared_secret_body(await nonce(server), "alice", admin=False)
    body["admin"] = True
    resp = await server.post(REGISTER, body)
    assert resp.status == 403 and resp.body["errcode"] == "M_FORBIDDEN"
    body = shared_secret_body(await nonce(server), "alice")
    body["user_type"] = "bot"
    resp = await server.post(REGISTER, body)
    assert resp.status == 403 and resp.body["errcode"] == "M_FORBIDDEN"


async def test_reused_nonce(server):
    n = await nonce(server)
    assert (await server.post(REGISTER, shared_secret_body(n, "alice"))).status == 200
    resp = await server.post(REGISTER, shared_secret_body(n, "bob"))
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


async def test_unknown_nonce(server):
    resp = await server.post(REGISTER, shared_secret_body("made-up", "alice"))
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


async def test_expired_nonce(server):
    n = await nonce(server)
    await server.hs.storage.db.execute(
        "age_nonces", "UPDATE admin_registration_nonces SET created_ts = 0"
    )
    resp = await server.post(REGISTER, shared_secret_body(n, "alice"))
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


async def test_shared_secret_taken_and_invalid_usernames(server):
    await server.register_user("alice")
    resp = await server.post(REGISTER, shared_secret_body(await nonce(server), "alice"))
    assert resp.status == 400 and resp.body["errcode"] == "M_USER_IN_USE"
    resp = await server.post(REGISTER, shared_secret_body(await nonce(server), "not valid"))
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_USERNAME"


async def test_shared_secret_bad_input(server):
    for change, errcode in [
        ({"mac": None}, "M_MISSING_PARAM"),
        ({"username": None}, "M_MISSING_PARAM"),
        ({"password": None}, "M_MISSING_PARAM"),
        ({"nonce": None}, "M_MISSING_PARAM"),
        ({"username": 5}, "M_BAD_JSON"),
        ({"admin": "yes"}, "M_BAD_JSON"),
        ({"username": "a\x00b"}, "M_BAD_JSON"),
        ({"password": "p\x00w"}, "M_BAD_JSON"),
    ]:
        body = {**shared_secret_body(await nonce(server), "alice"), **change}
        resp = await server.post(REGISTER, {k: v for k, v in body.items() if v is not None})
        assert resp.status == 400, (change, resp.body)
        assert resp.body["errcode"] == errcode, (change, resp.body)
    assert await server.hs.storage.users.get_user("@alice:test.local") is None


@with_config(registration_shared_secret=None)
async def test_shared_secret_not_configured(server):
    resp = await server.get(REGISTER)
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"
    resp = await server.post(REGISTER, {"nonce": "x", "username": "a", "password": "b", "mac": "c"})
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


# ------------------------------------------------------- registration tokens


@pytest.fixture
async def admin_token(server) -> str:
    return (await server.register_user("admin", admin=True))["access_token"]


async def test_token_api_requires_admin(server):
    user = (await server.register_user("alice"))["access_token"]
    for method, path in [
        ("GET", TOKENS),
        ("POST", f"{TOKENS}/new"),
        ("GET", f"{TOKENS}/abc"),
        ("PUT", f"{TOKENS}/abc"),
        ("DELETE", f"{TOKENS}/abc"),
    ]:
        resp = await server.request(method, path, {})
        assert resp.status == 401, (method, path)
        assert resp.body["errcode"] == "M_MISSING_TOKEN"
        resp = await server.request(method, path, {}, token=user)
        assert resp.status == 403, (method, path)
        assert resp.body["errcode"] == "M_FORBIDDEN"
        resp = await server.request(method, path, {}, token="bogus")
        assert resp.status == 401, (method, path)
        assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_create_generated_token(server, admin_token):
    resp = await server.post(f"{TOKENS}/new", {}, token=admin_token)
    assert resp.status == 200, resp.body
    token = resp.body["token"]
    assert len(token) == 16
    assert resp.body == {
        "token": token,
        "uses_allowed": None,
        "pending": 0,
        "completed": 0,
        "expiry_time": None,
    }
    resp = await server.post(f"{TOKENS}/new", {"length": 40}, token=admin_token)
    assert resp.status == 200 and len(resp.body["token"]) == 40


async def test_create_token_with_empty_body(server, admin_token):
    resp = await server.post(f"{TOKENS}/new", token=admin_token)
    assert resp.status == 200, resp.body
    assert len(resp.body["token"]) == 16


async def test_create_explicit_token(server, admin_token):
    expiry = now_ms() + 3_600_000
    resp = await server.post(
        f"{TOKENS}/new",
        {"token": "Team.Sales-2024_~", "uses_allowed": 5, "expiry_time": expiry},
        token=admin_token,
    )
    assert resp.status == 200, resp.body
    assert resp.body == {
        "token": "Team.Sales-2024_~",
        "uses_allowed": 5,
        "pending": 0,
        "completed": 0,
        "expiry_time": expiry,
    }
    resp = await server.get(f"{TOKENS}/Team.Sales-2024_~", token=admin_token)
    assert resp.status == 200 and resp.body["uses_allowed"] == 5


async def test_duplicate_token(server, admin_token):
    assert (await server.post(f"{TOKENS}/new", {"token": "abc"}, token=admin_token)).status == 200
    resp = await server.post(f"{TOKENS}/new", {"token": "abc"}, token=admin_token)
    assert resp.status == 400
    assert resp.body["errcode"] == "M_INVALID_PARAM"


async def test_create_token_bad_input(server, admin_token):
    for body, errcode in [
        ({"token": "has space"}, "M_INVALID_PARAM"),
        ({"token": "slash/y"}, "M_INVALID_PARAM"),
        ({"token": "é"}, "M_INVALID_PARAM"),
        ({"token": ""}, "M_INVALID_PARAM"),
        ({"token": "x" * 65}, "M_INVALID_PARAM"),
        ({"token": 5}, "M_BAD_JSON"),
        ({"length": 0}, "M_INVALID_PARAM"),
        ({"length": 65}, "M_INVALID_PARAM"),
        ({"length": "16"}, "M_INVALID_PARAM"),
        ({"uses_allowed": -1}, "M_INVALID_PARAM"),
        ({"uses_allowed": 1.5}, "M_INVALID_PARAM"),
        ({"uses_allowed": True}, "M_INVALID_PARAM"),
        ({"uses_allowed": 2**31}, "M_INVALID_PARAM"),
        ({"expiry_time": 2**63}, "M_INVALID_PARAM"),
        ({"length": 10**400}, "M_INVALID_PARAM"),
        ({"expiry_time": 1000}, "M_INVALID_PARAM"),
        ({"expiry_time": "tomorrow"}, "M_INVALID_PARAM"),
    ]:
        resp = await server.post(f"{TOKENS}/new", body, token=admin_token)
        assert resp.status == 400, (body, resp.body)
        assert resp.body["errcode"] == errcode, (body, resp.body)
    assert (await server.get(TOKENS, token=admin_token)).body == {"registration_tokens": []}


async def test_list_tokens_by_validity(server, admin_token):
    for body in [{"token": "open"}, {"token": "limited", "uses_allowed": 0}]:
        assert (await server.post(f"{TOKENS}/new", body, token=admin_token)).status == 200
    await server.hs.storage.registration.create_token("expired", None, now_ms() - 1)

    resp = await server.get(TOKENS, token=admin_token)
    assert resp.status == 200
    assert [t["token"] for t in resp.body["registration_tokens"]] == ["expired", "limited", "open"]
    valid = await server.get(TOKENS, token=admin_token, params={"valid": "true"})
    assert [t["token"] for t in valid.body["registration_tokens"]] == ["open"]
    invalid = await server.get(TOKENS, token=admin_token, params={"valid": "false"})
    assert [t["token"] for t in invalid.body["registration_tokens"]] == ["expired", "limited"]
    bad = await server.get(TOKENS, token=admin_token, params={"valid": "maybe"})
    assert bad.status == 400 and bad.body["errcode"] == "M_INVALID_PARAM"


async def test_update_token(server, admin_token):
    await server.post(f"{TOKENS}/new", {"token": "abc"}, token=admin_token)
    expiry = now_ms() + 60_000
    resp = await server.put(
        f"{TOKENS}/abc", {"uses_allowed": 3, "expiry_time": expiry}, token=admin_token
    )
    assert resp.status == 200, resp.body
    assert (resp.body["uses_allowed"], resp.body["expiry_time"]) == (3, expiry)
    resp = await server.put(f"{TOKENS}/abc", {"uses_allowed": None}, token=admin_token)
    assert resp.status == 200
    assert (resp.body["uses_allowed"], resp.body["expiry_time"]) == (None, expiry)
    resp = await server.put(f"{TOKENS}/abc", {}, token=admin_token)
    assert resp.status == 200 and resp.body["expiry_time"] == expiry
    assert (await server.get(f"{TOKENS}/abc", token=admin_token)).body == resp.body


async def test_update_token_bad_input(server, admin_token):
    await server.post(f"{TOKENS}/new", {"token": "abc", "uses_allowed": 1}, token=admin_token)
    for body in [
        {"uses_allowed": -2},
        {"uses_allowed": "3"},
        {"expiry_time": 5},
        {"expiry_time": False},
        {"uses_allowed": 2**31},
        {"expiry_time": 2**63},
    ]:
        resp = await server.put(f"{TOKENS}/abc", body, token=admin_token)
        assert resp.status == 400, body
        assert resp.body["errcode"] == "M_INVALID_PARAM", body
    assert (await server.get(f"{TOKENS}/abc", token=admin_token)).body["uses_allowed"] == 1


async def test_delete_token(server, admin_token):
    await server.post(f"{TOKENS}/new", {"token": "abc"}, token=admin_token)
    resp = await server.delete(f"{TOKENS}/abc", token=admin_token)
    assert resp.status == 200 and resp.body == {}
    resp = await server.get(f"{TOKENS}/abc", token=admin_token)
    assert resp.status == 404 and resp.body["errcode"] == "M_NOT_FOUND"


async def test_unknown_token_404s(server, admin_token):
    for method, body in [("GET", None), ("PUT", {"uses_allowed": 1}), ("DELETE", None)]:
        resp = await server.request(method, f"{TOKENS}/nope", body, token=admin_token)
        assert resp.status == 404, method
        assert resp.body["errcode"] == "M_NOT_FOUND"


async def test_server_version(server):
    resp = await server.get("/_synapse/admin/v1/server_version")
    assert resp.status == 200
    assert resp.body == {"server_version": __version__}
