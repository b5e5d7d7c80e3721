"""Device management: list, read, rename and delete (with user-interactive auth)."""

from __future__ import annotations

from typing import Any

from homeserver.util import now_ms

DEVICES = "/_matrix/client/v3/devices"
DELETE_DEVICES = "/_matrix/client/v3/delete_devices"
WHOAMI = "/_matrix/client/v3/account/whoami"
PASSWORD = "correct horse battery"


def password_auth(session: str, user: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "session": session,
    }


async def alice_with_devices(server, *device_ids: str) -> dict[str, dict[str, Any]]:
    """Alice, signed in once per device ID; returns the logins by device ID."""
    await server.register_user("alice")
    return {d: await server.login("alice", device_id=d) for d in device_ids}


async def device_ids(server, token: str) -> set[str]:
    resp = await server.get(DEVICES, token=token)
    assert resp.status == 200, resp.body
    return {d["device_id"] for d in resp.body["devices"]}


# ------------------------------------------------------------- reading


async def test_list_devices(server):
    reg = await server.register_user("alice")
    login = await server.login("alice", device_id="PHONE", initial_device_display_name="Phone")
    resp = await server.get(DEVICES, token=login["access_token"])
    assert resp.status == 200
    by_id = {d["device_id"]: d for d in resp.body["devices"]}
    assert set(by_id) == {reg["device_id"], "PHONE"}
    assert by_id["PHONE"]["display_name"] == "Phone"
    # Unknown values are null, not absent: clients such as matrix-nio require
    # every key (as Synapse sends them).
    unnamed = by_id[reg["device_id"]]
    assert set(unnamed) == {"device_id", "display_name", "last_seen_ip", "last_seen_ts"}
    assert unnamed["display_name"] is None and unnamed["last_seen_ip"] is None


async def test_devices_of_others_are_not_listed(server):
    await server.register_user("alice")
    bob = await server.register_user("bob")
    alice = await server.login("alice")
    assert bob["device_id"] not in await device_ids(server, alice["access_token"])


async def test_get_device(server):
    logins = await alice_with_devices(server, "PHONE")
    token = logins["PHONE"]["access_token"]
    resp = await server.get(f"{DEVICES}/PHONE", token=token)
    assert resp.status == 200
    assert resp.body["device_id"] == "PHONE"


async def test_get_unknown_device(server):
    logins = await alice_with_devices(server, "PHONE")
    resp = await server.get(f"{DEVICES}/NOPE", token=logins["PHONE"]["access_token"])
    assert resp.status == 404
    assert resp.body["errcode"] == "M_NOT_FOUND"


async def test_cannot_see_another_users_device(server):
    logins = await alice_with_devices(server, "PHONE")
    await server.register_user("bob")
    bob = await server.login("bob", device_id="BOBPHONE")
    resp = await server.get(f"{DEVICES}/BOBPHONE", token=logins["PHONE"]["access_token"])
    assert resp.status == 404
    assert resp.body["errcode"] == "M_NOT_FOUND"
    resp = await server.put(
        f"{DEVICES}/BOBPHONE", {"display_name": "mine now"}, token=logins["PHONE"]["access_token"]
    )
    assert resp.status == 404
    assert resp.body["errcode"] == "M_NOT_FOUND"
    resp = await server.get(f"{DEVICES}/BOBPHONE", token=bob["access_token"])
    assert resp.body["display_name"] is None


async def test_devices_require_auth(server):
    for method, path in [
        ("GET", DEVICES),
        ("GET", f"{DEVICES}/X"),
        ("PUT", f"{DEVICES}/X"),
        ("DELETE", f"{DEVICES}/X"),
    ]:
        resp = await server.request(method, path, {})
        assert resp.status == 401, (method, path)
        assert resp.body["errcode"] == "M_MISSING_TOKEN"
    resp = await server.post(DELETE_DEVICES, {"devices": []})
    assert resp.status == 401 and resp.body["errcode"] == "M_MISSING_TOKEN"


async def test_last_seen(server):
    await server.register_user("alice")
    before = now_ms()
    login = await server.login("alice", device_id="PHONE")
    assert (
        await server.get(WHOAMI, token=login["access_token"], headers={"User-Agent": "test/1.0"})
    ).status == 200
    resp = await server.get(f"{DEVICES}/PHONE", token=login["access_token"])
    assert resp.status == 200
    assert resp.body["last_seen_ip"] == "127.0.0.1"
    assert before <= resp.body["last_seen_ts"] <= now_ms()
    listed = await server.get(DEVICES, token=login["access_token"])
    phone = next(d for d in listed.body["devices"] if d["device_id"] == "PHONE")
    assert phone["last_seen_ip"] == "127.0.0.1" and phone["last_seen_ts"] >= before
    row = await server.hs.storage.db.fetchone(
        "t", "SELECT last_seen_user_agent FROM devices WHERE device_id = 'PHONE'"
    )
    assert row is not None and row[0] is not None


# ------------------------------------------------------------- renaming


async def test_rename_device(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    resp = await server.put(f"{DEVICES}/LAPTOP", {"display_name": "Work laptop"}, token=token)
    assert resp.status == 200 and resp.body == {}
    assert (await server.get(f"{DEVICES}/LAPTOP", token=token)).body[
        "display_name"
    ] == "Work laptop"


async def test_rename_without_display_name_keeps_it(server):
    await server.register_user("alice")
    login = await server.login("alice", device_id="PHONE", initial_device_display_name="Phone")
    token = login["access_token"]
    resp = await server.put(f"{DEVICES}/PHONE", {}, token=token)
    assert resp.status == 200
    assert (await server.get(f"{DEVICES}/PHONE", token=token)).body["display_name"] == "Phone"


async def test_rename_unknown_device(server):
    logins = await alice_with_devices(server, "PHONE")
    token = logins["PHONE"]["access_token"]
    resp = await server.put(f"{DEVICES}/NOPE", {"display_name": "x"}, token=token)
    assert resp.status == 404 and resp.body["errcode"] == "M_NOT_FOUND"
    resp = await server.put(f"{DEVICES}/NOPE", {}, token=token)
    assert resp.status == 404 and resp.body["errcode"] == "M_NOT_FOUND"


async def test_rename_bad_input(server):
    await server.register_user("alice")
    login = await server.login("alice", device_id="PHONE", initial_device_display_name="Phone")
    token = login["access_token"]
    for body in [{"display_name": 5}, {"display_name": ["x"]}, {"display_name": "x" * 257}]:
        resp = await server.put(f"{DEVICES}/PHONE", body, token=token)
        assert resp.status == 400, body
        assert resp.body["errcode"] == "M_BAD_JSON", body
    resp = await server.put(f"{DEVICES}/PHONE", data=b"nope", token=token)
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    assert (await server.get(f"{DEVICES}/PHONE", token=token)).body["display_name"] == "Phone"


# ------------------------------------------------------------- deleting


async def test_delete_device_with_password(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", token=token)
    assert challenge.status == 401
    assert challenge.body["flows"] == [{"stages": ["m.login.password"]}]
    assert challenge.body["params"] == {}
    assert "errcode" not in challenge.body
    session = challenge.body["session"]

    wrong = await server.delete(
        f"{DEVICES}/LAPTOP", {"auth": password_auth(session, password="wrong")}, token=token
    )
    assert wrong.status == 401
    assert wrong.body["errcode"] == "M_FORBIDDEN"
    assert wrong.body["session"] == session
    assert wrong.body["flows"] == [{"stages": ["m.login.password"]}]
    assert "LAPTOP" in await device_ids(server, token)

    resp = await server.delete(f"{DEVICES}/LAPTOP", {"auth": password_auth(session)}, token=token)
    assert resp.status == 200, resp.body
    assert resp.body == {}
    assert "LAPTOP" not in await device_ids(server, token)
    gone = await server.get(WHOAMI, token=logins["LAPTOP"]["access_token"])
    assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_delete_device_with_full_user_id_and_no_session(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    auth = password_auth("", user="@alice:test.local")
    del auth["session"]
    resp = await server.delete(f"{DEVICES}/LAPTOP", {"auth": auth}, token=token)
    assert resp.status == 200, resp.body
    assert "LAPTOP" not in await device_ids(server, token)


async def test_delete_own_current_device(server):
    logins = await alice_with_devices(server, "PHONE")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/PHONE", {}, token=token)
    resp = await server.delete(
        f"{DEVICES}/PHONE", {"auth": password_auth(challenge.body["session"])}, token=token
    )
    assert resp.status == 200
    gone = await server.get(WHOAMI, token=token)
    assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_delete_device_authenticating_as_someone_else(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    await server.register_user("bob")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", {}, token=token)
    resp = await server.delete(
        f"{DEVICES}/LAPTOP",
        {"auth": password_auth(challenge.body["session"], user="bob")},
        token=token,
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert "LAPTOP" in await device_ids(server, token)


async def test_delete_device_missing_password(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", {}, token=token)
    resp = await server.delete(
        f"{DEVICES}/LAPTOP",
        {"auth": {"type": "m.login.password", "session": challenge.body["session"]}},
        token=token,
    )
    assert resp.status == 401
    assert resp.body["errcode"] == "M_MISSING_PARAM"


async def test_dummy_stage_not_accepted_for_password_users(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", {}, token=token)
    resp = await server.delete(
        f"{DEVICES}/LAPTOP",
        {"auth": {"type": "m.login.dummy", "session": challenge.body["session"]}},
        token=token,
    )
    assert resp.status == 401
    assert "LAPTOP" in await device_ids(server, token)


async def test_uia_session_of_another_user_is_refused(server):
    logins = await alice_with_devices(server, "PHONE")
    await server.register_user("bob")
    bob = await server.login("bob", device_id="PHONE")
    challenge = await server.delete(f"{DEVICES}/PHONE", {}, token=logins["PHONE"]["access_token"])
    session = challenge.body["session"]
    # Bob completes Alice's session with his own password.
    resp = await server.delete(
        f"{DEVICES}/PHONE", {"auth": password_auth(session, user="bob")}, token=bob["access_token"]
    )
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert (await server.get(WHOAMI, token=bob["access_token"])).status == 200
    assert (await server.get(WHOAMI, token=logins["PHONE"]["access_token"])).status == 200


async def test_uia_session_for_another_request_is_refused(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP", "TABLET")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", {}, token=token)
    resp = await server.delete(
        f"{DEVICES}/TABLET", {"auth": password_auth(challenge.body["session"])}, token=token
    )
    assert resp.status == 403
    assert resp.body["errcode"] == "M_FORBIDDEN"
    assert {"LAPTOP", "TABLET"} <= await device_ids(server, token)


async def test_uia_session_is_single_use(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    challenge = await server.delete(f"{DEVICES}/LAPTOP", {}, token=token)
    auth = password_auth(challenge.body["session"])
    assert (await server.delete(f"{DEVICES}/LAPTOP", {"auth": auth}, token=token)).status == 200
    again = await server.delete(f"{DEVICES}/LAPTOP", {"auth": auth}, token=token)
    assert again.status == 400
    assert again.body["errcode"] == "M_UNKNOWN"


async def test_delete_devices(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP", "TABLET")
    token = logins["PHONE"]["access_token"]
    body = {"devices": ["LAPTOP", "TABLET", "UNKNOWN"]}
    challenge = await server.post(DELETE_DEVICES, body, token=token)
    assert challenge.status == 401
    assert challenge.body["flows"] == [{"stages": ["m.login.password"]}]
    resp = await server.post(
        DELETE_DEVICES, {**body, "auth": password_auth(challenge.body["session"])}, token=token
    )
    assert resp.status == 200, resp.body
    remaining = await device_ids(server, token)
    assert "PHONE" in remaining and not {"LAPTOP", "TABLET"} & remaining
    for device in ("LAPTOP", "TABLET"):
        gone = await server.get(WHOAMI, token=logins[device]["access_token"])
        assert gone.status == 401 and gone.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_delete_devices_wrong_password(server):
    logins = await alice_with_devices(server, "PHONE", "LAPTOP")
    token = logins["PHONE"]["access_token"]
    body = {"devices": ["LAPTOP"]}
    challenge = await server.post(DELETE_DEVICES, body, token=token)
    resp = await server.post(
        DELETE_DEVICES,
        {**body, "auth": password_auth(challenge.body["session"], password="nope")},
        token=token,
    )
    assert resp.status == 401 and resp.body["errcode"] == "M_FORBIDDEN"
    assert "LAPTOP" in await device_ids(server, token)


async def test_delete_devices_cannot_touch_another_users_devices(server):
    logins = await alice_with_devices(server, "PHONE")
    await server.register_user("bob")
    bob = await server.login("bob", device_id="BOBPHONE")
    token = logins["PHONE"]["access_token"]
    body = {"devices": ["BOBPHONE"]}
    challenge = await server.post(DELETE_DEVICES, body, token=token)
    resp = await server.post(
        DELETE_DEVICES, {**body, "auth": password_auth(challenge.body["session"])}, token=token
    )
    assert resp.status == 200
    assert (await server.get(WHOAMI, token=bob["access_token"])).status == 200


async def test_delete_devices_bad_input(server):
    logins = await alice_with_devices(server, "PHONE")
    for body, errcode in [
        ({}, "M_MISSING_PARAM"),
        ({"devices": "LAPTOP"}, "M_BAD_JSON"),
        ({"devices": [1]}, "M_BAD_JSON"),
    ]:
        resp = await server.post(DELETE_DEVICES, body, token=logins["PHONE"]["access_token"])
        assert resp.status == 400, body
        assert resp.body["errcode"] == errcode, body
