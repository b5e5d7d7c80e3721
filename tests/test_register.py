"""POST /register with user-interactive auth, and the registration helpers.

Covers the UIA challenge shape, open (m.login.dummy) and token-gated
(m.login.registration_token) registration, /register/available, the token
validity endpoint, guests and rate limiting.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from homeserver.accounts.uia import UserInteractiveAuth
from homeserver.errors import MatrixError
from homeserver.util import now_ms

from .conftest import with_config

REGISTER = "/_matrix/client/v3/register"
AVAILABLE = "/_matrix/client/v3/register/available"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
TOKENS = "/_synapse/admin/v1/registration_tokens"
PASSWORD = "s3cret password"


REQUIRES_TOKEN = with_config(registration_requires_token=True)


async def register(server, username: str | None = "alice", **params: Any):
    """Register through the m.login.dummy flow; returns the final response."""
    body = {"password": PASSWORD, **params}
    if username is not None:
        body["username"] = username
    challenge = await server.post(REGISTER, body)
    assert challenge.status == 401, challenge.body
    return await server.post(
        REGISTER, {**body, "auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )


async def token_state(server, admin_token: str, token: str) -> dict[str, Any]:
    resp = await server.get(f"{TOKENS}/{token}", token=admin_token)
    assert resp.status == 200, resp.body
    return resp.body


# ------------------------------------------------------------- UIA and dummy


async def test_challenge_lists_dummy_flow(server):
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert resp.status == 401
    assert set(resp.body) == {"flows", "params", "session"}
    assert resp.body["flows"] == [{"stages": ["m.login.dummy"]}]
    assert resp.body["params"] == {}
    assert isinstance(resp.body["session"], str) and resp.body["session"]


async def test_each_challenge_gets_a_new_session(server):
    first = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    second = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert first.body["session"] != second.body["session"]


async def test_dummy_registration_logs_in(server):
    resp = await register(server, "alice")
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@alice:test.local"
    assert resp.body["home_server"] == "test.local"
    assert resp.body["access_token"] and resp.body["device_id"]
    assert "refresh_token" not in resp.body and "expires_in_ms" not in resp.body
    who = await server.get("/_matrix/client/v3/account/whoami", token=resp.body["access_token"])
    assert who.status == 200
    assert who.body == {
        "user_id": "@alice:test.local",
        "device_id": resp.body["device_id"],
        "is_guest": False,
    }
    login = await server.login("alice", PASSWORD)
    assert login["user_id"] == "@alice:test.local"


async def test_params_from_first_request_are_remembered(server):
    challenge = await server.post(REGISTER, {"username": "carol", "password": PASSWORD})
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@carol:test.local"
    await server.login("carol", PASSWORD)


async def test_dummy_auth_without_session_registers_in_one_request(server):
    resp = await server.post(
        REGISTER,
        {"username": "dave", "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@dave:test.local"


async def test_completed_session_cannot_be_replayed(server):
    challenge = await server.post(REGISTER, {"username": "erin", "password": PASSWORD})
    auth = {"type": "m.login.dummy", "session": challenge.body["session"]}
    assert (await server.post(REGISTER, {"auth": auth})).status == 200
    replay = await server.post(REGISTER, {"username": "erin2", "password": PASSWORD, "auth": auth})
    assert replay.status == 400
    assert replay.body["errcode"] == "M_UNKNOWN"


async def test_unknown_session_is_refused(server):
    resp = await server.post(
        REGISTER,
        {
            "username": "alice",
            "password": PASSWORD,
            "auth": {"type": "m.login.dummy", "session": "nope"},
        },
    )
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


async def test_expired_session_is_refused(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    await server.hs.storage.db.execute("age", "UPDATE ui_auth_sessions SET created_ts = 0")
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )
    assert resp.status == 400
    assert resp.body["errcode"] == "M_UNKNOWN"


async def test_unsupported_stage_gets_challenge_with_errcode(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    session = challenge.body["session"]
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.password", "session": session, "password": "x"}}
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNRECOGNIZED"
    assert resp.body["session"] == session
    assert resp.body["flows"] == [{"stages": ["m.login.dummy"]}]


async def test_malformed_session_ids(server):
    for session, status, errcode in [
        (5, 400, "M_BAD_JSON"),
        ("a\x00b", 400, "M_BAD_JSON"),
        ("x" * 1000, 400, "M_UNKNOWN"),
    ]:
        resp = await server.post(
            REGISTER,
            {
                "username": "alice",
                "password": PASSWORD,
                "auth": {"type": "m.login.dummy", "session": session},
            },
        )
        assert resp.status == status, (session, resp.body)
        assert resp.body["errcode"] == errcode, (session, resp.body)


async def test_auth_must_be_an_object(server):
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD, "auth": "dummy"})
    assert resp.status == 400
    assert resp.body["errcode"] == "M_BAD_JSON"


async def test_session_only_auth_repeats_the_challenge(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    session = challenge.body["session"]
    resp = await server.post(REGISTER, {"auth": {"session": session}})
    assert resp.status == 401
    assert resp.body["session"] == session
    assert "errcode" not in resp.body and "completed" not in resp.body


async def test_uia_reports_completed_stages_of_a_multi_stage_flow(server):
    """`completed` lists finished stages; a failed stage adds errcode but keeps them."""
    uia = UserInteractiveAuth(server.hs.storage)

    async def second_stage(auth: dict[str, Any], session: Any) -> bool:
        if auth.get("answer") != 42:
            raise MatrixError(401, "M_FORBIDDEN", "Wrong answer")
        return True

    uia.register_stage("org.example.question", second_stage)
    flows = [["m.login.dummy", "org.example.question"]]
    request = SimpleNamespace(method="POST", path="/_matrix/client/v3/example")

    with pytest.raises(MatrixError) as first:
        await uia.check(request, {"thing": 1}, flows)
    session = first.value.to_json()["session"]
    assert first.value.status == 401
    assert first.value.to_json() == {
        "flows": [{"stages": ["m.login.dummy", "org.example.question"]}],
        "params": {},
        "session": session,
    }

    with pytest.raises(MatrixError) as after_dummy:
        await uia.check(request, {"auth": {"type": "m.login.dummy", "session": session}}, flows)
    assert after_dummy.value.to_json()["completed"] == ["m.login.dummy"]
    assert "errcode" not in after_dummy.value.to_json()

    wrong = {"auth": {"type": "org.example.question", "session": session, "answer": 1}}
    with pytest.raises(MatrixError) as failed:
        await uia.check(request, wrong, flows)
    body = failed.value.to_json()
    assert failed.value.status == 401
    assert body["errcode"] == "M_FORBIDDEN" and body["error"] == "Wrong answer"
    assert body["completed"] == ["m.login.dummy"] and body["session"] == session

    right = {"auth": {"type": "org.example.question", "session": session, "answer": 42}}
    completed, params, done = await uia.check(request, right, flows)
    assert set(completed) == {"m.login.dummy", "org.example.question"}
    assert params == {"thing": 1}
    assert done.session_id == session


# ------------------------------------------------------------ request body


async def test_username_is_lowercased(server):
    resp = await register(server, "Bob")
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@bob:test.local"
    profile = await server.get("/_matrix/client/v3/profile/@bob:test.local")
    assert profile.body == {"displayname": "bob"}
    taken = await server.post(REGISTER, {"username": "BOB", "password": PASSWORD})
    assert taken.status == 400
    assert taken.body["errcode"] == "M_USER_IN_USE"


async def test_taken_username_is_refused_before_auth(server):
    await server.register_user("alice")
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert resp.status == 400
    assert resp.body["errcode"] == "M_USER_IN_USE"


INVALID_USERNAMES = [
    "a b",
    "al:ice",
    "alice#",
    "@alice:test.local",
    "_alice",
    "12345",
    "x" * 250,
    "é",
]


async def test_invalid_username_is_refused(server):
    for username in [*INVALID_USERNAMES, ""]:
        resp = await server.post(REGISTER, {"username": username, "password": PASSWORD})
        assert resp.status == 400, username
        assert resp.body["errcode"] == "M_INVALID_USERNAME", username


async def test_concurrent_registrations_of_one_name(server):
    body = {"username": "twin", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    responses = await asyncio.gather(*(server.post(REGISTER, body) for _ in range(3)))
    assert sorted(r.status for r in responses) == [200, 400, 400]
    assert all(r.body["errcode"] == "M_USER_IN_USE" for r in responses if r.status == 400)


async def test_username_taken_during_auth_is_refused(server):
    challenge = await server.post(REGISTER, {"username": "frank", "password": PASSWORD})
    await server.register_user("frank")
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )
    assert resp.status == 400
    assert resp.body["errcode"] == "M_USER_IN_USE"


async def test_later_params_replace_earlier_ones(server):
    """A client may change its mind (here, the username) after a failed attempt."""
    challenge = await server.post(REGISTER, {"username": "gina", "password": PASSWORD})
    session = challenge.body["session"]
    await server.register_user("gina")
    retry = await server.post(
        REGISTER, {"username": "gina2", "auth": {"type": "m.login.unknown", "session": session}}
    )
    assert retry.status == 401
    resp = await server.post(REGISTER, {"auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@gina2:test.local"


async def test_password_is_never_stored_with_the_uia_session(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    rows = await server.hs.storage.db.fetchall(
        "t", "SELECT clientdict, serverdict FROM ui_auth_sessions"
    )
    assert len(rows) == 1
    assert PASSWORD not in rows[0][0] and PASSWORD not in rows[0][1]
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )
    assert resp.status == 200, resp.body
    await server.login("alice", PASSWORD)


async def test_later_password_replaces_earlier_one(server):
    challenge = await server.post(REGISTER, {"username": "hugo", "password": "first password"})
    session = challenge.body["session"]
    retry = await server.post(
        REGISTER, {"password": PASSWORD, "auth": {"type": "m.login.unknown", "session": session}}
    )
    assert retry.status == 401
    resp = await server.post(REGISTER, {"auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 200, resp.body
    await server.login("hugo", PASSWORD)
    refused = await server.post(
        "/_matrix/client/v3/login",
        {"type": "m.login.password", "user": "hugo", "password": "first password"},
    )
    assert refused.status == 403


async def test_registration_without_password_is_refused(server):
    # An account nobody could ever sign in to again is refused, as Synapse does.
    challenge = await server.post(REGISTER, {"username": "nopass"})
    session = challenge.body["session"]
    resp = await server.post(REGISTER, {"auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 400 and resp.body["errcode"] == "M_MISSING_PARAM", resp.body
    available = await server.get("/_matrix/client/v3/register/available?username=nopass")
    assert available.status == 200 and available.body["available"] is True
    # The same session completes once the password is given.
    resp = await server.post(
        REGISTER,
        {"password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}},
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@nopass:test.local"


async def test_generated_username_without_username(server):
    resp = await register(server, None)
    assert resp.status == 200, resp.body
    assert resp.body["user_id"].startswith("@") and resp.body["user_id"].endswith(":test.local")


async def test_bad_params_are_refused(server):
    for change, errcode in [
        ({"username": 5}, "M_BAD_JSON"),
        ({"password": ["x"]}, "M_BAD_JSON"),
        ({"password": "x" * 513}, "M_BAD_JSON"),
        ({"device_id": ""}, "M_INVALID_PARAM"),
        ({"device_id": "D" * 256}, "M_INVALID_PARAM"),
        ({"inhibit_login": "yes"}, "M_BAD_JSON"),
        ({"refresh_token": 1}, "M_BAD_JSON"),
        ({"initial_device_display_name": 7}, "M_BAD_JSON"),
    ]:
        resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD, **change})
        assert resp.status == 400, (change, resp.body)
        assert resp.body["errcode"] == errcode, (change, resp.body)
    assert (await server.get(AVAILABLE, params={"username": "alice"})).status == 200


async def test_non_json_bodies(server):
    resp = await server.post(
        REGISTER, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    resp = await server.post(REGISTER, ["username"])
    assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON"


async def test_inhibit_login(server):
    resp = await register(server, "hank", inhibit_login=True)
    assert resp.status == 200, resp.body
    assert resp.body == {"user_id": "@hank:test.local", "home_server": "test.local"}
    devices = await server.get(
        "/_matrix/client/v3/devices", token=(await server.login("hank", PASSWORD))["access_token"]
    )
    assert len(devices.body["devices"]) == 1


async def test_device_id_and_display_name(server):
    resp = await register(
        server, "ivy", device_id="MYPHONE", initial_device_display_name="Ivy's phone"
    )
    assert resp.status == 200, resp.body
    assert resp.body["device_id"] == "MYPHONE"
    devices = await server.get("/_matrix/client/v3/devices", token=resp.body["access_token"])
    assert devices.status == 200
    assert [(d["device_id"], d.get("display_name")) for d in devices.body["devices"]] == [
        ("MYPHONE", "Ivy's phone")
    ]


async def test_refresh_token_requested(server):
    resp = await register(server, "jack", refresh_token=True)
    assert resp.status == 200, resp.body
    assert resp.body["refresh_token"]
    assert resp.body["expires_in_ms"] == server.hs.config.refreshable_access_token_lifetime
    refreshed = await server.post(
        "/_matrix/client/v3/refresh", {"refresh_token": resp.body["refresh_token"]}
    )
    assert refreshed.status == 200, refreshed.body


# ---------------------------------------------------------- disabled, guests


@with_config(enable_registration=False)
async def test_registration_disabled(server):
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"
    resp = await server.post(
        REGISTER, {"username": "alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    )
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"


@with_config(enable_registration=False)
async def test_token_validity_refused_when_registration_disabled(server):
    resp = await server.get(VALIDITY, params={"token": "abc"})
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"


async def test_guest_registration_refused_by_default(server):
    resp = await server.post(REGISTER + "?kind=guest", {})
    assert resp.status == 403
    assert resp.body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


async def test_unknown_kind(server):
    resp = await server.post(REGISTER + "?kind=bot", {})
    assert resp.status == 400
    assert resp.body["errcode"] == "M_INVALID_PARAM"


@with_config(allow_guest_access=True)
async def test_guest_registration_when_allowed(server):
    resp = await server.post(
        REGISTER + "?kind=guest",
        {
            "initial_device_display_name": "guest device",
            "username": "ignored",
            "device_id": "IGNORED",
        },
    )
    assert resp.status == 200, resp.body
    localpart = resp.body["user_id"][1:].split(":")[0]
    assert localpart.isdigit()
    assert resp.body["device_id"] != "IGNORED"
    token = resp.body["access_token"]
    who = await server.get("/_matrix/client/v3/account/whoami", token=token)
    assert who.status == 200 and who.body["is_guest"] is True
    devices = await server.get("/_matrix/client/v3/devices", token=token)
    assert devices.status == 403
    assert devices.body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


# ---------------------------------------------------------- rate limiting


@with_config(rc_registration={"per_second": 0.001, "burst_count": 2})
async def test_registration_is_rate_limited(server):
    for _ in range(2):
        resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
        assert resp.status == 401
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert resp.status == 429
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert isinstance(resp.body["retry_after_ms"], int) and resp.body["retry_after_ms"] > 0


@with_config(rc_registration_token_validity={"per_second": 0.001, "burst_count": 1})
async def test_token_validity_is_rate_limited(server):
    assert (await server.get(VALIDITY, params={"token": "abc"})).status == 200
    resp = await server.get(VALIDITY, params={"token": "abc"})
    assert resp.status == 429
    assert resp.body["errcode"] == "M_LIMIT_EXCEEDED"
    assert resp.body["retry_after_ms"] > 0


# ------------------------------------------------------ /register/available


async def test_available(server):
    resp = await server.get(AVAILABLE, params={"username": "alice"})
    assert resp.status == 200
    assert resp.body == {"available": True}


async def test_available_taken_in_any_case(server):
    await server.register_user("alice")
    for name in ("alice", "Alice", "ALICE"):
        resp = await server.get(AVAILABLE, params={"username": name})
        assert resp.status == 400, name
        assert resp.body["errcode"] == "M_USER_IN_USE"


async def test_available_invalid(server):
    for username in INVALID_USERNAMES:
        resp = await server.get(AVAILABLE, params={"username": username})
        assert resp.status == 400, username
        assert resp.body["errcode"] == "M_INVALID_USERNAME", username


async def test_available_requires_username(server):
    resp = await server.get(AVAILABLE)
    assert resp.status == 400
    assert resp.body["errcode"] == "M_MISSING_PARAM"


# ------------------------------------------------------- registration tokens


async def make_token(server, admin_token: str, **body: Any) -> str:
    resp = await server.post(f"{TOKENS}/new", body, token=admin_token)
    assert resp.status == 200, resp.body
    return resp.body["token"]


@REQUIRES_TOKEN
async def test_token_flow_is_offered(server):
    resp = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    assert resp.status == 401
    assert resp.body["flows"] == [{"stages": ["m.login.registration_token"]}]


@REQUIRES_TOKEN
async def test_dummy_is_not_enough_when_token_required(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}}
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNRECOGNIZED"


@REQUIRES_TOKEN
async def test_invalid_and_missing_token(server):
    challenge = await server.post(REGISTER, {"username": "alice", "password": PASSWORD})
    session = challenge.body["session"]
    resp = await server.post(
        REGISTER,
        {"auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}},
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert resp.body["session"] == session
    assert resp.body["flows"] == [{"stages": ["m.login.registration_token"]}]
    resp = await server.post(
        REGISTER, {"auth": {"type": "m.login.registration_token", "session": session}}
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_MISSING_PARAM"
    # Tokens outside the opaque identifier grammar cannot exist.
    for token in ["a\x00b", "has space", "x" * 65, "é"]:
        resp = await server.post(
            REGISTER,
            {"auth": {"type": "m.login.registration_token", "token": token, "session": session}},
        )
        assert resp.status == 401, token
        assert resp.body["errcode"] == "M_FORBIDDEN", token


@REQUIRES_TOKEN
async def test_valid_token_registers_and_counts_use(server):
    admin = (await server.register_user("admin", admin=True))["access_token"]
    token = await make_token(server, admin, uses_allowed=2)
    assert (await server.get(VALIDITY, params={"token": token})).body == {"valid": True}

    challenge = await server.post(REGISTER, {"username": "kate", "password": PASSWORD})
    resp = await server.post(
        REGISTER,
        {
            "auth": {
                "type": "m.login.registration_token",
                "token": token,
                "session": challenge.body["session"],
            }
        },
    )
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == "@kate:test.local"
    state = await token_state(server, admin, token)
    assert (state["pending"], state["completed"]) == (0, 1)
    assert (await server.get(VALIDITY, params={"token": token})).body == {"valid": True}


@REQUIRES_TOKEN
async def test_exhausted_token(server):
    admin = (await server.register_user("admin", admin=True))["access_token"]
    token = await make_token(server, admin, uses_allowed=1)
    resp = await server.post(
        REGISTER,
        {
            "username": "liam",
            "password": PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": token},
        },
    )
    assert resp.status == 200, resp.body
    assert (await server.get(VALIDITY, params={"token": token})).body == {"valid": False}
    resp = await server.post(
        REGISTER,
        {
            "username": "mia",
            "password": PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": token},
        },
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_FORBIDDEN"
    state = await token_state(server, admin, token)
    assert (state["pending"], state["completed"]) == (0, 1)


@REQUIRES_TOKEN
async def test_single_use_token_used_concurrently(server):
    await server.hs.storage.registration.create_token("once", 1, None)
    responses = await asyncio.gather(
        *(
            server.post(
                REGISTER,
                {
                    "username": f"racer{i}",
                    "password": PASSWORD,
                    "auth": {"type": "m.login.registration_token", "token": "once"},
                },
            )
            for i in range(3)
        )
    )
    assert sorted(r.status for r in responses) == [200, 401, 401]
    assert all(r.body["errcode"] == "M_FORBIDDEN" for r in responses if r.status == 401)
    token = await server.hs.storage.registration.get_token("once")
    assert (token.pending, token.completed) == (0, 1)


@REQUIRES_TOKEN
async def test_expired_token(server):
    await server.hs.storage.registration.create_token("expired", None, now_ms() - 1000)
    assert (await server.get(VALIDITY, params={"token": "expired"})).body == {"valid": False}
    resp = await server.post(
        REGISTER,
        {
            "username": "noah",
            "password": PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": "expired"},
        },
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_FORBIDDEN"


@REQUIRES_TOKEN
async def test_token_reserved_while_pending_then_released(server):
    """A stage completed by a registration that then fails holds the token (pending)."""
    admin = (await server.register_user("admin", admin=True))["access_token"]
    token = await make_token(server, admin, uses_allowed=1)
    challenge = await server.post(REGISTER, {"username": "olga", "password": PASSWORD})
    session = challenge.body["session"]
    await server.register_user("olga")
    auth = {"type": "m.login.registration_token", "token": token, "session": session}
    resp = await server.post(REGISTER, {"auth": auth})
    assert resp.status == 400
    assert resp.body["errcode"] == "M_USER_IN_USE"
    state = await token_state(server, admin, token)
    assert (state["pending"], state["completed"]) == (1, 0)
    # The one use is reserved, so nobody else may take it...
    assert (await server.get(VALIDITY, params={"token": token})).body == {"valid": False}
    other = await server.post(
        REGISTER,
        {
            "username": "pete",
            "password": PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": token},
        },
    )
    assert other.status == 401 and other.body["errcode"] == "M_FORBIDDEN"
    # ...but the session that reserved it may still finish with another name.
    resp = await server.post(REGISTER, {"username": "olga2", "auth": auth})
    assert resp.status == 200, resp.body
    state = await token_state(server, admin, token)
    assert (state["pending"], state["completed"]) == (0, 1)


@REQUIRES_TOKEN
async def test_expired_session_releases_reserved_token(server):
    admin = (await server.register_user("admin", admin=True))["access_token"]
    token = await make_token(server, admin, uses_allowed=1)
    challenge = await server.post(REGISTER, {"username": "quinn", "password": PASSWORD})
    await server.register_user("quinn")
    auth = {
        "type": "m.login.registration_token",
        "token": token,
        "session": challenge.body["session"],
    }
    assert (await server.post(REGISTER, {"auth": auth})).status == 400
    assert (await token_state(server, admin, token))["pending"] == 1
    await server.hs.storage.db.execute("age_sessions", "UPDATE ui_auth_sessions SET created_ts = 0")
    await server.hs.accounts.expire_uia_sessions()
    state = await token_state(server, admin, token)
    assert (state["pending"], state["completed"]) == (0, 0)
    assert (await server.get(VALIDITY, params={"token": token})).body == {"valid": True}


async def test_token_validity(server):
    assert (await server.get(VALIDITY, params={"token": "unknown"})).body == {"valid": False}
    await server.hs.storage.registration.create_token("known", None, None)
    resp = await server.get(VALIDITY, params={"token": "known"})
    assert resp.status == 200 and resp.body == {"valid": True}
    missing = await server.get(VALIDITY)
    assert missing.status == 400 and missing.body["errcode"] == "M_MISSING_PARAM"
