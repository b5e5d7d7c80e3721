"""Account management: changing the password, deactivating; password hashing."""

from __future__ import annotations

from typing import Any


from homeserver.accounts.passwords import PasswordHasher
from homeserver.config import Config, parse_config

from .conftest import with_config

PASSWORD_PATH = "/_matrix/client/v3/account/password"
DEACTIVATE = "/_matrix/client/v3/account/deactivate"
LOGIN = "/_matrix/client/v3/login"
WHOAMI = "/_matrix/client/v3/account/whoami"
DEVICES = "/_matrix/client/v3/devices"
OLD = "correct horse battery"
NEW = "new battery staple"


def password_auth(session: str | None, password: str = OLD, user: str = "alice") -> dict[str, Any]:
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


async def login_status(server, user: str, password: str) -> tuple[int, str | None]:
    resp = await server.post(
        LOGIN,
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
    )
    return resp.status, resp.body.get("errcode")


async def with_uia(server, path: str, body: dict[str, Any], token: str, password: str = OLD):
    """Make a UIA request: the challenge, then the same request with the password."""
    challenge = await server.post(path, body, token=token)
    assert challenge.status == 401, challenge.body
    assert challenge.body["flows"] == [{"stages": ["m.login.password"]}]
    return await server.post(
        path, {**body, "auth": password_auth(challenge.body["session"], password)}, token=token
    )


# ------------------------------------------------------------ password hashing


def test_default_bcrypt_cost_is_12():
    assert Config.bcrypt_rounds == 12
    config, unknown = parse_config(
        {
            "server_name": "example.com",
            "database": {"name": "sqlite3", "args": {"database": "x.db"}},
        }
    )
    assert not unknown
    assert config.bcrypt_rounds == 12


async def test_hasher_at_cost_12():
    hasher = PasswordHasher(12)
    hashed = await hasher.hash("hunter2")
    assert hashed.startswith("$2b$12$")
    assert await hasher.check("hunter2", hashed)
    assert not await hasher.check("hunter2", None)
    assert not await hasher.check("hunter2", "not a bcrypt hash")


async def test_hasher_pepper():
    peppered = PasswordHasher(4, pepper="pepper")
    hashed = await peppered.hash("hunter2")
    assert await peppered.check("hunter2", hashed)
    assert not await peppered.check("hunter3", hashed)
    assert not await PasswordHasher(4).check("hunter2", hashed)


async def test_stored_password_is_a_bcrypt_hash(server):
    await server.register_user("alice")
    user = await server.hs.storage.users.get_user("@alice:test.local")
    assert user is not None and user.password_hash is not None
    assert user.password_hash.startswith(f"$2b$0{server.hs.config.bcrypt_rounds}$")
    assert OLD not in user.password_hash


# ------------------------------------------------------------ change password


async def test_change_password(server):
    await server.register_user("alice")
    current = await server.login("alice")
    other = await server.login("alice")
    resp = await with_uia(server, PASSWORD_PATH, {"new_password": NEW}, current["access_token"])
    assert resp.status == 200, resp.body
    assert resp.body == {}
    assert await login_status(server, "alice", OLD) == (403, "M_FORBIDDEN")
    assert (await login_status(server, "alice", NEW))[0] == 200
    # Other devices are logged out by default; the current one is kept.
    assert (await server.get(WHOAMI, token=current["access_token"])).status == 200
    gone = await server.get(WHOAMI, token=other["access_token"])
    assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"
    devices = await server.get(DEVICES, token=current["access_token"])
    assert other["device_id"] not in {d["device_id"] for d in devices.body["devices"]}


async def test_change_password_keeping_other_devices(server):
    await server.register_user("alice")
    current = await server.login("alice")
    other = await server.login("alice")
    resp = await with_uia(
        server,
        PASSWORD_PATH,
        {"new_password": NEW, "logout_devices": False},
        current["access_token"],
    )
    assert resp.status == 200, resp.body
    assert (await server.get(WHOAMI, token=other["access_token"])).status == 200
    assert (await login_status(server, "alice", NEW))[0] == 200


async def test_change_password_params_sent_once(server):
    await server.register_user("alice")
    current = await server.login("alice")
    challenge = await server.post(
        PASSWORD_PATH, {"new_password": NEW}, token=current["access_token"]
    )
    resp = await server.post(
        PASSWORD_PATH,
        {"auth": password_auth(challenge.body["session"])},
        token=current["access_token"],
    )
    assert resp.status == 200, resp.body
    assert (await login_status(server, "alice", NEW))[0] == 200


async def test_new_password_is_never_stored_with_the_uia_session(server):
    await server.register_user("alice")
    current = await server.login("alice")
    challenge = await server.post(
        PASSWORD_PATH, {"new_password": NEW}, token=current["access_token"]
    )
    assert challenge.status == 401
    rows = await server.hs.storage.db.fetchall(
        "t", "SELECT clientdict, serverdict FROM ui_auth_sessions"
    )
    assert len(rows) == 1
    assert NEW not in rows[0][0] and NEW not in rows[0][1]


async def test_change_password_wrong_old_password(server):
    await server.register_user("alice")
    current = await server.login("alice")
    resp = await with_uia(
        server, PASSWORD_PATH, {"new_password": NEW}, current["access_token"], password="nope"
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert resp.body["session"]
    assert (await login_status(server, "alice", OLD))[0] == 200


async def test_change_password_other_users_session(server):
    await server.register_user("alice")
    await server.register_user("bob")
    alice = await server.login("alice")
    bob = await server.login("bob")
    challenge = await server.post(PASSWORD_PATH, {"new_password": NEW}, token=alice["access_token"])
    resp = await server.post(
        PASSWORD_PATH,
        {"new_password": NEW, "auth": password_auth(challenge.body["session"], user="bob")},
        token=bob["access_token"],
    )
    assert resp.status == 403 and resp.body["errcode"] == "M_FORBIDDEN"
    assert (await login_status(server, "bob", OLD))[0] == 200
    assert (await login_status(server, "alice", OLD))[0] == 200


async def test_change_password_bad_input(server):
    await server.register_user("alice")
    token = (await server.login("alice"))["access_token"]
    # Refused before any auth is asked for.
    for body in [{"new_password": 12345}, {"new_password": "x" * 513}]:
        resp = await server.post(PASSWORD_PATH, body, token=token)
        assert resp.status == 400, (body, resp.body)
        assert resp.body["errcode"] == "M_BAD_JSON", body
    # Refused once auth is done.
    body = {"new_password": NEW, "logout_devices": "no"}
    resp = await with_uia(server, PASSWORD_PATH, body, token)
    assert resp.status == 400, resp.body
    assert resp.body["errcode"] == "M_BAD_JSON"
    assert (await login_status(server, "alice", OLD))[0] == 200


async def test_change_password_missing_new_password(server):
    await server.register_user("alice")
    current = await server.login("alice")
    resp = await with_uia(server, PASSWORD_PATH, {}, current["access_token"])
    assert resp.status == 400
    assert resp.body["errcode"] == "M_MISSING_PARAM"
    assert (await login_status(server, "alice", OLD))[0] == 200


async def test_change_password_requires_auth(server):
    resp = await server.post(PASSWORD_PATH, {"new_password": NEW})
    assert resp.status == 401 and resp.body["errcode"] == "M_MISSING_TOKEN"


@with_config(password_config={"enabled": False})
async def test_change_password_disabled(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.post(PASSWORD_PATH, {"new_password": NEW}, token=token)
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"


# ---------------------------------------------------------------- deactivate


async def test_deactivate(server):
    await server.register_user("alice")
    current = await server.login("alice")
    other = await server.login("alice")
    resp = await with_uia(server, DEACTIVATE, {}, current["access_token"])
    assert resp.status == 200, resp.body
    assert resp.body == {"id_server_unbind_result": "no-support"}
    for session in (current, other):
        gone = await server.get(WHOAMI, token=session["access_token"])
        assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"
    assert await login_status(server, "alice", OLD) == (403, "M_FORBIDDEN")
    # The user ID is never handed out again.
    available = await server.get(
        "/_matrix/client/v3/register/available", params={"username": "alice"}
    )
    assert available.status == 400 and available.body["errcode"] == "M_USER_IN_USE"
    taken = await server.post("/_matrix/client/v3/register", {"username": "alice", "password": OLD})
    assert taken.status == 400 and taken.body["errcode"] == "M_USER_IN_USE"
    # The profile is erased.
    profile = await server.get("/_matrix/client/v3/profile/@alice:test.local")
    assert profile.status == 200 and profile.body == {}


async def test_deactivate_without_body(server):
    await server.register_user("alice")
    current = await server.login("alice")
    challenge = await server.post(DEACTIVATE, token=current["access_token"])
    assert challenge.status == 401
    assert challenge.body["flows"] == [{"stages": ["m.login.password"]}]


async def test_deactivate_wrong_password(server):
    await server.register_user("alice")
    current = await server.login("alice")
    resp = await with_uia(server, DEACTIVATE, {}, current["access_token"], password="nope")
    assert resp.status == 401 and resp.body["errcode"] == "M_FORBIDDEN"
    assert (await server.get(WHOAMI, token=current["access_token"])).status == 200
    assert (await login_status(server, "alice", OLD))[0] == 200


async def test_deactivate_requires_auth(server):
    resp = await server.post(DEACTIVATE, {})
    assert resp.status == 401 and resp.body["errcode"] == "M_MISSING_TOKEN"


async def test_deactivate_other_users_session(server):
    await server.register_user("alice")
    await server.register_user("bob")
    alice = await server.login("alice")
    bob = await server.login("bob")
    challenge = await server.post(DEACTIVATE, {}, token=alice["access_token"])
    resp = await server.post(
        DEACTIVATE,
        {"auth": password_auth(challenge.body["session"], user="bob")},
        token=bob["access_token"],
    )
    assert resp.status == 403 and resp.body["errcode"] == "M_FORBIDDEN"
    assert (await server.get(WHOAMI, token=alice["access_token"])).status == 200
    assert (await server.get(WHOAMI, token=bob["access_token"])).status == 200


async def test_deactivated_users_leave_their_rooms(server):
    alice = await server.register_user("alice")
    bob = await server.register_user("bob")
    v3 = "/_matrix/client/v3"
    joined = (await server.post(f"{v3}/createRoom", {"preset": "public_chat"}, token=bob["access_token"])).body["room_id"]
    invited = (await server.post(f"{v3}/createRoom", {}, token=bob["access_token"])).body["room_id"]
    assert (await server.post(f"{v3}/join/{joined}", {}, token=alice["access_token"])).status == 200
    resp = await server.post(f"{v3}/rooms/{invited}/invite", {"user_id": alice["user_id"]}, token=bob["access_token"])
    assert resp.status == 200
    resp = await with_uia(server, DEACTIVATE, {}, alice["access_token"])
    assert resp.status == 200, resp.body
    for room_id in (joined, invited):
        state = await server.get(f"{v3}/rooms/{room_id}/state/m.room.member/{alice['user_id']}", token=bob["access_token"])
        assert state.body["membership"] == "leave", (room_id, state.body)
