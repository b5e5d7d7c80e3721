"""Login, access-token authentication, refresh, logout and whoami."""

from __future__ import annotations

import asyncio
from typing import Any


from homeserver.util import hash_token

from .conftest import with_config

LOGIN = "/_matrix/client/v3/login"
REFRESH = "/_matrix/client/v3/refresh"
LOGOUT = "/_matrix/client/v3/logout"
WHOAMI = "/_matrix/client/v3/account/whoami"
DEVICES = "/_matrix/client/v3/devices"
PASSWORD = "correct horse battery"


def password_login(user: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        **extra,
    }


async def assert_unknown_token(server, token: str, *, soft_logout: bool = False) -> None:
    resp = await server.get(WHOAMI, token=token)
    assert resp.status == 401, resp.body
    assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"
    assert resp.body["soft_logout"] is soft_logout


# ----------------------------------------------------------------- login


async def test_login_flows(server):
    resp = await server.get(LOGIN)
    assert resp.status == 200
    assert resp.body == {"flows": [{"type": "m.login.password"}]}


async def test_password_login_identifiers(server):
    await server.register_user("alice")
    for user in ["alice", "@alice:test.local", "ALICE", "@Alice:test.local"]:
        resp = await server.post(LOGIN, password_login(user))
        assert resp.status == 200, (user, resp.body)
        assert resp.body["user_id"] == "@alice:test.local"
        assert resp.body["home_server"] == "test.local"
        assert resp.body["access_token"] and resp.body["device_id"]
        assert resp.body["well_known"]["m.homeserver"]["base_url"].startswith("http")
        assert "refresh_token" not in resp.body and "expires_in_ms" not in resp.body
        who = await server.get(WHOAMI, token=resp.body["access_token"])
        assert who.status == 200
        assert who.body == {
            "user_id": "@alice:test.local",
            "device_id": resp.body["device_id"],
            "is_guest": False,
        }


async def test_deprecated_top_level_user(server):
    await server.register_user("alice")
    resp = await server.post(
        LOGIN, {"type": "m.login.password", "user": "alice", "password": PASSWORD}
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@alice:test.local"


async def test_each_login_is_a_new_device(server):
    await server.register_user("alice")
    first = await server.login("alice")
    second = await server.login("alice")
    assert first["device_id"] != second["device_id"]
    assert first["access_token"] != second["access_token"]
    devices = await server.get(DEVICES, token=second["access_token"])
    assert {d["device_id"] for d in devices.body["devices"]} >= {
        first["device_id"],
        second["device_id"],
    }


async def test_login_refused(server):
    await server.register_user("alice")
    for user, password in [
        ("alice", "wrong password"),
        ("nobody", PASSWORD),
        ("@alice:other.server", PASSWORD),
        ("@alice", PASSWORD),
        ("", PASSWORD),
    ]:
        resp = await server.post(LOGIN, password_login(user, password))
        assert resp.status == 403, (user, resp.body)
        assert resp.body["errcode"] == "M_FORBIDDEN"


def password_body(**fields: Any) -> dict[str, Any]:
    """A valid password login body with `fields` changed (None removes one)."""
    body = {"type": "m.login.password", "user": "alice", "password": PASSWORD, **fields}
    return {k: v for k, v in body.items() if v is not None}


BAD_LOGINS = [
    ({"type": "m.login.token", "token": "abc"}, "M_UNKNOWN"),
    (password_body(type="org.example.login"), "M_UNKNOWN"),
    (
        password_body(
            user=None,
            identifier={"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"},
        ),
        "M_UNKNOWN",
    ),
    (password_body(type=None), "M_MISSING_PARAM"),
    (password_body(password=None), "M_MISSING_PARAM"),
    (password_body(user=None), "M_MISSING_PARAM"),
    (password_body(user=None, identifier={"type": "m.id.user"}), "M_MISSING_PARAM"),
    (password_body(type=1), "M_BAD_JSON"),
    (password_body(password=1234), "M_BAD_JSON"),
    (password_body(user=["alice"]), "M_BAD_JSON"),
    (password_body(user=None, identifier="alice"), "M_BAD_JSON"),
    (password_body(user=None, identifier={"type": "m.id.user", "user": 5}), "M_BAD_JSON"),
    (password_body(device_id=3), "M_BAD_JSON"),
    (password_body(device_id=""), "M_INVALID_PARAM"),
    (password_body(refresh_token="yes"), "M_BAD_JSON"),
    (password_body(initial_device_display_name={}), "M_BAD_JSON"),
]


async def test_bad_login_requests(server):
    await server.register_user("alice")
    for body, errcode in BAD_LOGINS:
        resp = await server.post(LOGIN, body)
        assert resp.status == 400, (body, resp.body)
        assert resp.body["errcode"] == errcode, (body, resp.body)


async def test_login_body_must_be_json_object(server):
    resp = await server.post(LOGIN, data=b"type=m.login.password")
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    resp = await server.post(LOGIN, data=b"")
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    resp = await server.post(LOGIN, [1, 2])
    assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON"


async def test_device_id_reuse_keeps_one_device_and_revokes_old_token(server):
    await server.register_user("alice")
    first = await server.login("alice", device_id="LAPTOP", initial_device_display_name="Laptop")
    assert first["device_id"] == "LAPTOP"
    second = await server.login("alice", device_id="LAPTOP", initial_device_display_name="Renamed?")
    assert second["device_id"] == "LAPTOP"
    devices = await server.get(DEVICES, token=second["access_token"])
    assert devices.status == 200
    laptops = [d for d in devices.body["devices"] if d["device_id"] == "LAPTOP"]
    assert len(laptops) == 1
    # An existing device keeps its name.
    assert laptops[0]["display_name"] == "Laptop"
    # "If the client sets the device_id, the server will invalidate any access
    # and refresh tokens previously assigned to that device."
    await assert_unknown_token(server, first["access_token"])


async def test_device_id_reuse_revokes_refresh_token(server):
    await server.register_user("alice")
    first = await server.login("alice", device_id="LAPTOP", refresh_token=True)
    await server.login("alice", device_id="LAPTOP")
    resp = await server.post(REFRESH, {"refresh_token": first["refresh_token"]})
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_same_device_id_for_two_users_is_two_devices(server):
    await server.register_user("alice")
    await server.register_user("bob")
    alice = await server.login("alice", device_id="SHARED")
    bob = await server.login("bob", device_id="SHARED")
    assert (await server.get(WHOAMI, token=alice["access_token"])).body[
        "user_id"
    ] == "@alice:test.local"
    assert (await server.get(WHOAMI, token=bob["access_token"])).body[
        "user_id"
    ] == "@bob:test.local"


async def test_initial_device_display_name(server):
    await server.register_user("alice")
    login = await server.login("alice", initial_device_display_name="Work laptop")
    resp = await server.get(f"{DEVICES}/{login['device_id']}", token=login["access_token"])
    assert resp.status == 200
    assert resp.body["display_name"] == "Work laptop"


async def test_access_tokens_are_stored_hashed(server):
    await server.register_user("alice")
    login = await server.login("alice")
    rows = await server.hs.storage.db.fetchall("t", "SELECT token_hash FROM access_tokens")
    stored = {r[0] for r in rows}
    assert login["access_token"] not in stored
    assert hash_token(login["access_token"]) in stored
    refresh = await server.login("alice", refresh_token=True)
    rows = await server.hs.storage.db.fetchall("t", "SELECT token_hash FROM refresh_tokens")
    assert refresh["refresh_token"] not in {r[0] for r in rows}


# ---------------------------------------------------------- rate limiting


@with_config(
    rc_login={
        "address": {"per_second": 0.001, "burst_count": 2},
        "account": {"per_second": 1000, "burst_count": 1000},
        "failed_attempts": {"per_second": 1000, "burst_count": 1000},
    }
)
async def test_login_rate_limited_by_address(server):
    await server.register_user("alice")
    await server.register_user("bob")
    assert (await server.post(LOGIN, password_login("alice"))).status == 200
    assert (await server.post(LOGIN, password_login("bob", "wrong"))).status == 403
    resp = await server.post(LOGIN, password_login("bob"))
    assert resp.status == 429
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert isinstance(resp.body["retry_after_ms"], int) and resp.body["retry_after_ms"] > 0


@with_config(
    rc_login={
        "address": {"per_second": 1000, "burst_count": 1000},
        "account": {"per_second": 0.001, "burst_count": 2},
        "failed_attempts": {"per_second": 1000, "burst_count": 1000},
    }
)
async def test_login_rate_limited_by_account(server):
    await server.register_user("alice")
    await server.register_user("bob")
    for _ in range(2):
        assert (await server.post(LOGIN, password_login("alice"))).status == 200
    resp = await server.post(LOGIN, password_login("Alice"))
    assert resp.status == 429
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert resp.body["retry_after_ms"] > 0
    assert (await server.post(LOGIN, password_login("bob"))).status == 200


@with_config(
    rc_login={
        "address": {"per_second": 1000, "burst_count": 1000},
        "account": {"per_second": 1000, "burst_count": 1000},
        "failed_attempts": {"per_second": 0.001, "burst_count": 2},
    }
)
async def test_login_rate_limited_after_failures(server):
    await server.register_user("alice")
    await server.register_user("bob")
    assert (await server.post(LOGIN, password_login("alice"))).status == 200
    for _ in range(2):
        assert (await server.post(LOGIN, password_login("alice", "wrong"))).status == 403
    # Even the right password is refused until the bucket refills.
    resp = await server.post(LOGIN, password_login("alice"))
    assert resp.status == 429
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert resp.body["retry_after_ms"] > 0
    assert (await server.post(LOGIN, password_login("bob"))).status == 200


# ------------------------------------------------------------ refreshing


async def test_refresh_token_login(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    assert login["refresh_token"].startswith("mar_")
    assert login["expires_in_ms"] == server.hs.config.refreshable_access_token_lifetime


async def test_refresh_rotates_tokens(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    first = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert first.status == 200, first.body
    assert set(first.body) == {"access_token", "refresh_token", "expires_in_ms"}
    assert first.body["access_token"] != login["access_token"]
    assert first.body["refresh_token"] != login["refresh_token"]
    assert first.body["expires_in_ms"] == server.hs.config.refreshable_access_token_lifetime

    # Until the new access token is used, the old refresh token still works
    # (the client may have lost the response)...
    again = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert again.status == 200, again.body
    # ...and the successor it replaces is revoked with its access token.
    await assert_unknown_token(server, first.body["access_token"])
    gone = await server.post(REFRESH, {"refresh_token": first.body["refresh_token"]})
    assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"

    new_access = again.body["access_token"]
    who = await server.get(WHOAMI, token=new_access)
    assert who.status == 200
    assert who.body["device_id"] == login["device_id"]
    # Using the new access token retires the old refresh and access tokens.
    resp = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"
    await assert_unknown_token(server, login["access_token"])
    # The new refresh token carries on.
    resp = await server.post(REFRESH, {"refresh_token": again.body["refresh_token"]})
    assert resp.status == 200, resp.body


async def test_refresh_via_v1_path(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    resp = await server.post(
        "/_matrix/client/v1/refresh", {"refresh_token": login["refresh_token"]}
    )
    assert resp.status == 200, resp.body


async def test_refresh_token_used_twice_in_chain_is_refused(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    first = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    second = await server.post(REFRESH, {"refresh_token": first.body["refresh_token"]})
    assert second.status == 200
    resp = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert resp.status == 401 and resp.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_bad_refresh(server):
    for body, status, errcode in [
        ({"refresh_token": "mar_nonsense"}, 401, "M_UNKNOWN_TOKEN"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"refresh_token": 12}, 400, "M_BAD_JSON"),
    ]:
        resp = await server.post(REFRESH, body)
        assert resp.status == status, (body, resp.body)
        assert resp.body["errcode"] == errcode, (body, resp.body)


async def test_access_token_is_not_a_refresh_token(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    resp = await server.post(REFRESH, {"refresh_token": login["access_token"]})
    assert resp.status == 401 and resp.body["errcode"] == "M_UNKNOWN_TOKEN"


@with_config(refreshable_access_token_lifetime=1)
async def test_expired_access_token_is_soft_logout(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    assert login["expires_in_ms"] == 1
    await asyncio.sleep(0.02)
    await assert_unknown_token(server, login["access_token"], soft_logout=True)
    refreshed = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert refreshed.status == 200, refreshed.body
    # An expired token may still log out.
    resp = await server.post(LOGOUT, {}, token=login["access_token"])
    assert resp.status == 200, resp.body
    resp = await server.post(REFRESH, {"refresh_token": refreshed.body["refresh_token"]})
    assert resp.status == 401 and resp.body["errcode"] == "M_UNKNOWN_TOKEN"


@with_config(refresh_token_lifetime=50)
async def test_refresh_token_expires_unless_used(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    refreshed = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert refreshed.status == 200, refreshed.body
    await asyncio.sleep(0.1)
    resp = await server.post(REFRESH, {"refresh_token": refreshed.body["refresh_token"]})
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"
    assert resp.body["soft_logout"] is False


@with_config(session_lifetime=300)
async def test_session_lifetime_bounds_every_token_of_a_login(server):
    await server.register_user("alice")
    refreshable = await server.login("alice", refresh_token=True)
    plain = await server.login("alice")
    assert 0 < refreshable["expires_in_ms"] <= 300
    assert 0 < plain["expires_in_ms"] <= 300
    refreshed = await server.post(REFRESH, {"refresh_token": refreshable["refresh_token"]})
    assert refreshed.status == 200, refreshed.body
    assert refreshed.body["expires_in_ms"] <= 300
    await asyncio.sleep(0.35)
    await assert_unknown_token(server, plain["access_token"], soft_logout=True)
    resp = await server.post(REFRESH, {"refresh_token": refreshed.body["refresh_token"]})
    assert resp.status == 401 and resp.body["errcode"] == "M_UNKNOWN_TOKEN", resp.body
    assert resp.body["soft_logout"] is False


@with_config(nonrefreshable_access_token_lifetime=1)
async def test_nonrefreshable_access_token_lifetime(server):
    await server.register_user("alice")
    login = await server.login("alice")
    assert login["expires_in_ms"] == 1
    assert "refresh_token" not in login
    await asyncio.sleep(0.02)
    await assert_unknown_token(server, login["access_token"], soft_logout=True)


@with_config(refreshable_access_token_lifetime=1)
async def test_non_refreshable_tokens_do_not_expire(server):
    await server.register_user("alice")
    login = await server.login("alice")
    await asyncio.sleep(0.02)
    assert (await server.get(WHOAMI, token=login["access_token"])).status == 200


# ---------------------------------------------------- logout and whoami


async def test_logout(server):
    await server.register_user("alice")
    other = await server.login("alice")
    login = await server.login("alice")
    resp = await server.post(LOGOUT, {}, token=login["access_token"])
    assert resp.status == 200 and resp.body == {}
    await assert_unknown_token(server, login["access_token"])
    devices = await server.get(DEVICES, token=other["access_token"])
    assert login["device_id"] not in {d["device_id"] for d in devices.body["devices"]}
    again = await server.post(LOGOUT, {}, token=login["access_token"])
    assert again.status == 401 and again.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_logout_without_body(server):
    await server.register_user("alice")
    login = await server.login("alice")
    resp = await server.post(LOGOUT, token=login["access_token"])
    assert resp.status == 200
    await assert_unknown_token(server, login["access_token"])


async def test_logout_revokes_refresh_token(server):
    await server.register_user("alice")
    login = await server.login("alice", refresh_token=True)
    assert (await server.post(LOGOUT, {}, token=login["access_token"])).status == 200
    resp = await server.post(REFRESH, {"refresh_token": login["refresh_token"]})
    assert resp.status == 401 and resp.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_logout_all(server):
    await server.register_user("alice")
    await server.register_user("bob")
    sessions = [await server.login("alice") for _ in range(3)]
    bob = await server.login("bob")
    resp = await server.post(LOGOUT + "/all", {}, token=sessions[0]["access_token"])
    assert resp.status == 200 and resp.body == {}
    for session in sessions:
        await assert_unknown_token(server, session["access_token"])
    assert (await server.get(WHOAMI, token=bob["access_token"])).status == 200
    # The password still works: logging out is not deactivation.
    fresh = await server.login("alice")
    devices = await server.get(DEVICES, token=fresh["access_token"])
    assert [d["device_id"] for d in devices.body["devices"]] == [fresh["device_id"]]


async def test_missing_token(server):
    for method, path in [
        ("GET", WHOAMI),
        ("POST", LOGOUT),
        ("POST", LOGOUT + "/all"),
        ("GET", DEVICES),
    ]:
        resp = await server.request(method, path)
        assert resp.status == 401, path
        assert resp.body["errcode"] == "M_MISSING_TOKEN"


async def test_unknown_token(server):
    await assert_unknown_token(server, "mat_not_a_real_token")


async def test_malformed_authorization_header(server):
    for header in ["Basic YWxpY2U6cGFzcw==", "Bearer", "Bearer   ", "Token abc", "abc"]:
        resp = await server.get(WHOAMI, headers={"Authorization": header})
        assert resp.status == 401, header
        assert resp.body["errcode"] == "M_MISSING_TOKEN", header


async def test_token_in_query_and_lowercase_scheme(server):
    await server.register_user("alice")
    login = await server.login("alice")
    resp = await server.get(WHOAMI, params={"access_token": login["access_token"]})
    assert resp.status == 200 and resp.body["user_id"] == "@alice:test.local"
    resp = await server.get(WHOAMI, headers={"Authorization": f"bearer {login['access_token']}"})
    assert resp.status == 200
