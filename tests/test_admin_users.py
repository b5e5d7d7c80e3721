"""The admin API for user accounts (/_synapse/admin/.../users...), over real
HTTP on both engines: what admins may do, what everyone else is refused,
and that signing out, deactivating and password resets end sessions at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from homeserver.admin.users import ADMIN_LOGIN_DEVICE_NAME
from homeserver.util import hash_token, now_ms

from .conftest import with_config

if TYPE_CHECKING:
    from .conftest import TestServer

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
V3 = "/_matrix/client/v3"
ADMIN = "@admin:test.local"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
PASSWORD = "correct horse battery"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


async def setup(server: TestServer) -> tuple[str, str]:
    """An admin and alice, a user; returns their access tokens."""
    admin = await server.register_user("admin", admin=True)
    alice = await server.register_user("alice")
    return admin["access_token"], alice["access_token"]


async def whoami(server: TestServer, token: str) -> Any:
    return await server.get(f"{V3}/account/whoami", token=token)


def assert_error(resp: Any, status: int, errcode: str) -> None:
    assert resp.status == status, resp.body
    assert resp.body["errcode"] == errcode, resp.body
    assert resp.body["error"], resp.body


# --------------------------------------------------------------- refusals

ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", f"{V2}/users", None),
    ("GET", "/_synapse/admin/v3/users", None),
    ("GET", f"{V2}/users/{q(ALICE)}", None),
    ("PUT", f"{V2}/users/{q(BOB)}", {"password": "pw"}),
    ("POST", f"{V1}/deactivate/{q(ALICE)}", {}),
    ("POST", f"{V1}/reset_password/{q(ALICE)}", {"new_password": "pw"}),
    ("GET", f"{V1}/whois/{q(ADMIN)}", None),
    ("GET", f"{V2}/users/{q(ALICE)}/devices", None),
    ("GET", f"{V2}/users/{q(ALICE)}/devices/X", None),
    ("PUT", f"{V2}/users/{q(ALICE)}/devices/X", {"display_name": "x"}),
    ("DELETE", f"{V2}/users/{q(ALICE)}/devices/X", None),
    ("POST", f"{V2}/users/{q(ALICE)}/delete_devices", {"devices": []}),
    ("GET", f"{V1}/users/{q(ALICE)}/joined_rooms", None),
    ("GET", f"{V1}/users/{q(ALICE)}/admin", None),
    ("PUT", f"{V1}/users/{q(ALICE)}/admin", {"admin": True}),
    ("POST", f"{V1}/users/{q(ADMIN)}/login", {}),
    ("GET", f"{V1}/username_available?username=zed", None),
]


async def test_only_admins_may_use_the_user_admin_api(server):
    _admin_token, alice_token = await setup(server)
    for method, path, body in ENDPOINTS:
        anonymous = await server.request(method, path, body)
        assert_error(anonymous, 401, "M_MISSING_TOKEN")
        bad_token = await server.request(method, path, body, token="mat_nonsense")
        assert_error(bad_token, 401, "M_UNKNOWN_TOKEN")
        refused = await server.request(method, path, body, token=alice_token)
        assert_error(refused, 403, "M_FORBIDDEN")
    # Nothing changed: alice is still signed in, not an admin, bob does not exist.
    assert (await whoami(server, alice_token)).status == 200
    user = await server.hs.storage.users.get_user(ALICE)
    assert user is not None and not user.admin and not user.deactivated
    assert not await server.hs.storage.users.user_exists(BOB)


# ------------------------------------------------------------------ listing


async def test_list_users_pages_filters_and_orders(server):
    admin_token, _ = await setup(server)
    for name in ("bob", "carol", "dave"):
        await server.register_user(name)
    await server.put(f"{V3}/profile/{q(BOB)}/displayname", {"displayname": "Bobby Tables"},
                     token=admin_token)
    resp = await server.get(f"{V2}/users", token=admin_token)
    assert resp.status == 200, resp.body
    assert resp.body["total"] == 5
    assert [u["name"] for u in resp.body["users"]] == [
        ADMIN, ALICE, BOB, "@carol:test.local", "@dave:test.local",
    ]
    assert "next_token" not in resp.body
    first = resp.body["users"][0]
    assert first["admin"] is True and first["is_guest"] is False and first["deactivated"] is False
    assert first["displayname"] == "admin" and first["avatar_url"] is None
    assert first["user_type"] is None and first["erased"] is False and first["locked"] is False
    assert abs(first["creation_ts"] - now_ms()) < 60_000
    assert first["last_seen_ts"] is not None  # the admin's device was just seen

    # Pages: next_token is a string, as Synapse sends it.
    page = await server.get(f"{V2}/users", token=admin_token, params={"limit": "2"})
    assert [u["name"] for u in page.body["users"]] == [ADMIN, ALICE]
    assert page.body["next_token"] == "2" and page.body["total"] == 5
    page = await server.get(
        f"{V2}/users", token=admin_token, params={"limit": "2", "from": page.body["next_token"]}
    )
    assert [u["name"] for u in page.body["users"]] == [BOB, "@carol:test.local"]
    last = await server.get(f"{V2}/users", token=admin_token, params={"limit": "2", "from": "4"})
    assert [u["name"] for u in last.body["users"]] == ["@dave:test.local"]
    assert "next_token" not in last.body

    async def names(**params: str) -> list[str]:
        got = await server.get(f"{V2}/users", token=admin_token, params=params)
        assert got.status == 200, got.body
        return [u["name"] for u in got.body["users"]]

    assert await names(user_id="aro") == ["@carol:test.local"]
    assert await names(user_id="%") == []  # wildcards are taken literally
    assert await names(name="TABLES") == [BOB]  # display names, ignoring case
    assert await names(name="dav") == ["@dave:test.local"]
    assert await names(admins="true") == [ADMIN]
    assert ADMIN not in await names(admins="false")
    assert (await names(dir="b"))[0] == "@dave:test.local"
    assert (await names(order_by="creation_ts", dir="b"))[0] == "@dave:test.local"
    assert (await names(order_by="admin", dir="b"))[0] == ADMIN
    # NULL display names sort first going forwards, on both engines.
    await server.put(f"{V3}/profile/{q(ALICE)}/displayname", {"displayname": None}, token=admin_token)
    assert (await names(order_by="displayname"))[0] == ALICE
    assert (await names(order_by="displayname", dir="b"))[-1] == ALICE
    assert (await names(order_by="shadow_banned", dir="b"))[0] == ADMIN

    # Deactivated users: left out by v2 unless asked for; v3 filters either way.
    await server.post(f"{V1}/deactivate/{q('@carol:test.local')}", {}, token=admin_token)
    assert "@carol:test.local" not in await names()
    assert "@carol:test.local" in await names(deactivated="true")
    v3 = await server.get("/_synapse/admin/v3/users", token=admin_token, params={"deactivated": "true"})
    assert [u["name"] for u in v3.body["users"]] == ["@carol:test.local"]
    assert v3.body["users"][0]["deactivated"] is True
    v3 = await server.get("/_synapse/admin/v3/users", token=admin_token)
    assert v3.body["total"] == 5

    # User types.
    await server.put(f"{V2}/users/{q('@dave:test.local')}", {"user_type": "bot"}, token=admin_token)
    assert "@dave:test.local" not in await names(not_user_type="bot")
    assert await names(not_user_type="") == ["@dave:test.local"]


@with_config(allow_guest_access=True)
async def test_list_users_guests(server):
    admin_token, _ = await setup(server)
    guest = await server.post(f"{V3}/register?kind=guest", {})
    assert guest.status == 200, guest.body
    found = await server.get(f"{V2}/users", token=admin_token)
    guests = [u for u in found.body["users"] if u["is_guest"]]
    assert [u["name"] for u in guests] == [guest.body["user_id"]]
    without = await server.get(f"{V2}/users", token=admin_token, params={"guests": "false"})
    assert without.body["total"] == 2
    assert not any(u["is_guest"] for u in without.body["users"])


@pytest.mark.parametrize(
    "params",
    [
        {"from": "-1"},
        {"limit": "-5"},
        {"limit": "ten"},
        {"from": str(2**40)},
        {"order_by": "password_hash"},
        {"dir": "up"},
        {"guests": "maybe"},
        {"deactivated": "1"},
        {"admins": "yes"},
        {"locked": "sometimes"},
    ],
)
async def test_list_users_refuses_bad_parameters(server, params):
    admin_token, _ = await setup(server)
    assert_error(await server.get(f"{V2}/users", token=admin_token, params=params), 400, "M_INVALID_PARAM")


# -------------------------------------------------------------- one account


async def test_get_user(server):
    admin_token, _ = await setup(server)
    resp = await server.get(f"{V2}/users/{q(ALICE)}", token=admin_token)
    assert resp.status == 200, resp.body
    body = resp.body
    assert body["name"] == ALICE and body["displayname"] == "alice"
    assert body["admin"] is False and body["deactivated"] is False and body["is_guest"] is False
    assert body["threepids"] == [] and body["external_ids"] == []
    assert body["appservice_id"] is None and body["user_type"] is None
    assert isinstance(body["creation_ts"], int)
    assert "password_hash" not in body

    assert_error(await server.get(f"{V2}/users/{q('@nobody:test.local')}", token=admin_token),
                 404, "M_NOT_FOUND")
    assert_error(await server.get(f"{V2}/users/{q('@alice:elsewhere.org')}", token=admin_token),
                 400, "M_INVALID_PARAM")
    assert_error(await server.get(f"{V2}/users/not-a-user-id", token=admin_token),
                 400, "M_INVALID_PARAM")


async def test_create_user(server):
    admin_token, _ = await setup(server)
    resp = await server.put(
        f"{V2}/users/{q(BOB)}",
        {
            "password": "bob's password",
            "displayname": "Bob",
            "avatar_url": "mxc://test.local/abc",
            "admin": False,
            "user_type": "bot",
            "threepids": [],
            "external_ids": [],
        },
        token=admin_token,
    )
    assert resp.status == 201, resp.body
    assert resp.body["name"] == BOB and resp.body["displayname"] == "Bob"
    assert resp.body["avatar_url"] == "mxc://test.local/abc" and resp.body["user_type"] == "bot"
    login = await server.login("bob", "bob's password")
    assert login["user_id"] == BOB
    # The password was hashed with the server's bcrypt settings.
    user = await server.hs.storage.users.get_user(BOB)
    assert user is not None and user.password_hash.startswith("$2b$04$")

    # Without a password the account exists but cannot log in; admin=true makes an admin.
    made = await server.put(f"{V2}/users/{q('@carol:test.local')}", {"admin": True}, token=admin_token)
    assert made.status == 201 and made.body["admin"] is True
    assert made.body["displayname"] == "carol"


@pytest.mark.parametrize(
    "uid, body, status, errcode",
    [
        ("@Bob:test.local", {}, 400, "M_INVALID_USERNAME"),
        ("@bad name:test.local", {}, 400, "M_INVALID_USERNAME"),
        ("@_reserved:test.local", {}, 400, "M_INVALID_USERNAME"),
        ("@bob:elsewhere.org", {}, 400, "M_INVALID_PARAM"),
        (BOB, {"user_type": "wizard"}, 400, "M_INVALID_PARAM"),
        (BOB, {"user_type": 5}, 400, "M_BAD_JSON"),
        (BOB, {"password": 12345}, 400, "M_BAD_JSON"),
        (BOB, {"password": "x" * 513}, 400, "M_BAD_JSON"),
        (BOB, {"password": ""}, 400, "M_INVALID_PARAM"),
        (BOB, {"admin": "yes"}, 400, "M_BAD_JSON"),
        (BOB, {"deactivated": "no"}, 400, "M_BAD_JSON"),
        (BOB, {"deactivated": True}, 400, "M_INVALID_PARAM"),
        (BOB, {"logout_devices": 0}, 400, "M_BAD_JSON"),
        (BOB, {"displayname": ["x"]}, 400, "M_BAD_JSON"),
        (BOB, {"displayname": "x" * 257}, 400, "M_BAD_JSON"),
        (BOB, {"avatar_url": "https://example.com/a.png"}, 400, "M_INVALID_PARAM"),
        (BOB, {"threepids": [{"medium": "email", "address": "b@example.com"}]}, 400, "M_INVALID_PARAM"),
        (BOB, {"threepids": "b@example.com"}, 400, "M_BAD_JSON"),
        (BOB, {"external_ids": [{"auth_provider": "x", "external_id": "y"}]}, 400, "M_INVALID_PARAM"),
        (BOB, {"locked": True}, 400, "M_INVALID_PARAM"),
        (BOB, [], 400, "M_BAD_JSON"),
    ],
)
async def test_create_user_refusals(server, uid, body, status, errcode):
    admin_token, _ = await setup(server)
    assert_error(await server.put(f"{V2}/users/{q(uid)}", body, token=admin_token), status, errcode)
    assert await server.hs.storage.users.count_users() == 2


async def test_create_user_without_a_body(server):
    admin_token, _ = await setup(server)
    resp = await server.put(f"{V2}/users/{q(BOB)}", data=b"", token=admin_token)
    assert_error(resp, 400, "M_NOT_JSON")


@with_config(password_config={"enabled": False})
async def test_passwords_cannot_be_set_when_password_login_is_off(server):
    admin_token = (await server.register_user("admin", admin=True))["access_token"]
    resp = await server.put(f"{V2}/users/{q(BOB)}", {"password": "pw"}, token=admin_token)
    assert_error(resp, 403, "M_FORBIDDEN")
    resp = await server.post(f"{V1}/reset_password/{q(ADMIN)}", {"new_password": "pw"}, token=admin_token)
    assert_error(resp, 403, "M_FORBIDDEN")


async def test_modify_user(server):
    admin_token, alice_token = await setup(server)
    room = await server.post(f"{V3}/createRoom", {}, token=alice_token)
    room_id = room.body["room_id"]
    resp = await server.put(
        f"{V2}/users/{q(ALICE)}",
        {"displayname": "Alice Marigold", "avatar_url": "mxc://test.local/face", "admin": True},
        token=admin_token,
    )
    assert resp.status == 200, resp.body
    assert resp.body["displayname"] == "Alice Marigold" and resp.body["admin"] is True
    profile = await server.get(f"{V3}/profile/{q(ALICE)}")
    assert profile.body == {"displayname": "Alice Marigold", "avatar_url": "mxc://test.local/face"}
    # The new name reaches alice's rooms.
    member = await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.member/{q(ALICE)}", token=alice_token)
    assert member.body["displayname"] == "Alice Marigold"
    # Now an admin, alice may use the admin API.
    assert (await server.get(f"{V2}/users", token=alice_token)).status == 200

    # "" removes; user_type null clears; a field not given stays.
    await server.put(f"{V2}/users/{q(ALICE)}", {"user_type": "support"}, token=admin_token)
    resp = await server.put(
        f"{V2}/users/{q(ALICE)}", {"avatar_url": "", "user_type": None}, token=admin_token
    )
    assert resp.body["avatar_url"] is None and resp.body["user_type"] is None
    assert resp.body["displayname"] == "Alice Marigold" and resp.body["admin"] is True
    # A session was not touched by any of it.
    assert (await whoami(server, alice_token)).status == 200


async def test_modify_password_signs_out_unless_told_not_to(server):
    admin_token, alice_token = await setup(server)
    resp = await server.put(f"{V2}/users/{q(ALICE)}", {"password": "new one", "logout_devices": False},
                            token=admin_token)
    assert resp.status == 200, resp.body
    assert (await whoami(server, alice_token)).status == 200
    resp = await server.put(f"{V2}/users/{q(ALICE)}", {"password": "newer one"}, token=admin_token)
    assert resp.status == 200, resp.body
    assert_error(await whoami(server, alice_token), 401, "M_UNKNOWN_TOKEN")
    assert (await server.hs.storage.devices.get_devices(ALICE)) == []
    await server.login("alice", "newer one")


async def test_an_admin_may_not_demote_themselves(server):
    admin_token, _ = await setup(server)
    resp = await server.put(f"{V2}/users/{q(ADMIN)}", {"admin": False, "displayname": "Demoted"},
                            token=admin_token)
    assert_error(resp, 400, "M_UNKNOWN")
    assert "demote yourself" in resp.body["error"]
    resp = await server.put(f"{V1}/users/{q(ADMIN)}/admin", {"admin": False}, token=admin_token)
    assert_error(resp, 400, "M_UNKNOWN")
    user = await server.hs.storage.users.get_user(ADMIN)
    assert user is not None and user.admin
    profile = await server.hs.storage.users.get_profile(ADMIN)
    assert profile is not None and profile.displayname == "admin"  # nothing half-applied
    # Saying what is already so is fine.
    ok = await server.put(f"{V2}/users/{q(ADMIN)}", {"admin": True}, token=admin_token)
    assert ok.status == 200, ok.body


# ---------------------------------------------------- deactivate, reactivate


async def test_deactivate_and_reactivate(server):
    admin_token, alice_token = await setup(server)
    second = await server.login("alice")
    resp = await server.post(f"{V1}/deactivate/{q(ALICE)}", {"erase": False}, token=admin_token)
    assert resp.status == 200, resp.body
    assert resp.body == {"id_server_unbind_result": "no-support"}
    # Every session ended at once.
    for token in (alice_token, second["access_token"]):
        assert_error(await whoami(server, token), 401, "M_UNKNOWN_TOKEN")
    assert await server.hs.storage.devices.get_devices(ALICE) == []
    login = await server.post(f"{V3}/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD,
    })
    assert_error(login, 403, "M_FORBIDDEN")
    details = await server.get(f"{V2}/users/{q(ALICE)}", token=admin_token)
    assert details.body["deactivated"] is True and details.body["displayname"] is None

    # Deactivating again is harmless; an empty body is allowed.
    again = await server.post(f"{V1}/deactivate/{q(ALICE)}", data=b"", token=admin_token)
    assert again.status == 200, again.body

    # Reactivating needs a password: deactivation wiped it.
    resp = await server.put(f"{V2}/users/{q(ALICE)}", {"deactivated": False}, token=admin_token)
    assert_error(resp, 400, "M_UNKNOWN")
    assert "password" in resp.body["error"]
    resp = await server.put(
        f"{V2}/users/{q(ALICE)}", {"deactivated": False, "password": "fresh start"}, token=admin_token
    )
    assert resp.status == 200, resp.body
    assert resp.body["deactivated"] is False
    await server.login("alice", "fresh start")


async def test_deactivate_through_put(server):
    admin_token, alice_token = await setup(server)
    resp = await server.put(f"{V2}/users/{q(ALICE)}", {"deactivated": True}, token=admin_token)
    assert resp.status == 200, resp.body
    assert resp.body["deactivated"] is True
    assert_error(await whoami(server, alice_token), 401, "M_UNKNOWN_TOKEN")


async def test_deactivate_refusals(server):
    admin_token, alice_token = await setup(server)
    assert_error(await server.post(f"{V1}/deactivate/{q('@nobody:test.local')}", {}, token=admin_token),
                 404, "M_NOT_FOUND")
    assert_error(await server.post(f"{V1}/deactivate/{q('@alice:elsewhere.org')}", {}, token=admin_token),
                 400, "M_INVALID_PARAM")
    assert_error(await server.post(f"{V1}/deactivate/{q(ALICE)}", {"erase": "yes"}, token=admin_token),
                 400, "M_BAD_JSON")
    assert_error(await server.post(f"{V1}/deactivate/{q(ALICE)}", data=b"[", token=admin_token),
                 400, "M_NOT_JSON")
    assert (await whoami(server, alice_token)).status == 200


# ------------------------------------------------------------ reset password


async def test_reset_password(server):
    admin_token, alice_token = await setup(server)
    resp = await server.post(f"{V1}/reset_password/{q(ALICE)}",
                             {"new_password": "kept", "logout_devices": False}, token=admin_token)
    assert resp.status == 200 and resp.body == {}
    assert (await whoami(server, alice_token)).status == 200
    resp = await server.post(f"{V1}/reset_password/{q(ALICE)}", {"new_password": "reset"},
                             token=admin_token)
    assert resp.status == 200, resp.body
    assert_error(await whoami(server, alice_token), 401, "M_UNKNOWN_TOKEN")
    await server.login("alice", "reset")
    assert await server.hs.accounts.check_password(ALICE, "kept") is False


@pytest.mark.parametrize(
    "uid, body, status, errcode",
    [
        (ALICE, {}, 400, "M_MISSING_PARAM"),
        (ALICE, {"new_password": None}, 400, "M_BAD_JSON"),
        (ALICE, {"new_password": 5}, 400, "M_BAD_JSON"),
        (ALICE, {"new_password": ""}, 400, "M_INVALID_PARAM"),
        (ALICE, {"new_password": "y" * 513}, 400, "M_BAD_JSON"),
        (ALICE, {"new_password": "pw", "logout_devices": "no"}, 400, "M_BAD_JSON"),
        ("@nobody:test.local", {"new_password": "pw"}, 404, "M_NOT_FOUND"),
        ("@alice:elsewhere.org", {"new_password": "pw"}, 400, "M_INVALID_PARAM"),
        ("alice", {"new_password": "pw"}, 400, "M_INVALID_PARAM"),
    ],
)
async def test_reset_password_refusals(server, uid, body, status, errcode):
    admin_token, alice_token = await setup(server)
    resp = await server.post(f"{V1}/reset_password/{q(uid)}", body, token=admin_token)
    assert_error(resp, status, errcode)
    assert (await whoami(server, alice_token)).status == 200
    assert await server.hs.accounts.check_password(ALICE, PASSWORD)


# -------------------------------------------------------------- admin flag


async def test_admin_flag(server):
    admin_token, alice_token = await setup(server)
    resp = await server.get(f"{V1}/users/{q(ALICE)}/admin", token=admin_token)
    assert resp.status == 200 and resp.body == {"admin": False}
    resp = await server.put(f"{V1}/users/{q(ALICE)}/admin", {"admin": True}, token=admin_token)
    assert resp.status == 200 and resp.body == {}
    assert (await server.get(f"{V1}/users/{q(ALICE)}/admin", token=admin_token)).body == {"admin": True}
    # Takes effect on alice's existing token at once, both ways.
    assert (await server.get(f"{V2}/users", token=alice_token)).status == 200
    # Another admin may demote the first.
    resp = await server.put(f"{V1}/users/{q(ADMIN)}/admin", {"admin": False}, token=alice_token)
    assert resp.status == 200, resp.body
    assert_error(await server.get(f"{V2}/users", token=admin_token), 403, "M_FORBIDDEN")

    for body, errcode in (({}, "M_MISSING_PARAM"), ({"admin": "true"}, "M_BAD_JSON")):
        resp = await server.put(f"{V1}/users/{q(BOB)}/admin", body, token=alice_token)
        assert_error(resp, 400, errcode)
    assert_error(await server.put(f"{V1}/users/{q(BOB)}/admin", {"admin": True}, token=alice_token),
                 404, "M_NOT_FOUND")
    assert_error(await server.get(f"{V1}/users/{q('@x:elsewhere.org')}/admin", token=alice_token),
                 400, "M_INVALID_PARAM")


# ------------------------------------------------------------------ devices


async def test_devices(server):
    admin_token, alice_token = await setup(server)
    phone = await server.login("alice", device_id="PHONE", initial_device_display_name="Phone")
    await server.get(f"{V3}/account/whoami", token=phone["access_token"],
                     headers={"User-Agent": "PhoneClient/1.0"})
    resp = await server.get(f"{V2}/users/{q(ALICE)}/devices", token=admin_token)
    assert resp.status == 200, resp.body
    assert resp.body["total"] == 2
    by_id = {d["device_id"]: d for d in resp.body["devices"]}
    assert by_id["PHONE"]["display_name"] == "Phone"
    assert by_id["PHONE"]["user_id"] == ALICE
    assert by_id["PHONE"]["last_seen_user_agent"] == "PhoneClient/1.0"
    assert by_id["PHONE"]["last_seen_ip"] == "127.0.0.1"
    assert by_id["PHONE"]["dehydrated"] is False

    one = await server.get(f"{V2}/users/{q(ALICE)}/devices/PHONE", token=admin_token)
    assert one.status == 200 and one.body["device_id"] == "PHONE"
    assert_error(await server.get(f"{V2}/users/{q(ALICE)}/devices/NOPE", token=admin_token),
                 404, "M_NOT_FOUND")

    renamed = await server.put(f"{V2}/users/{q(ALICE)}/devices/PHONE", {"display_name": "Old phone"},
                               token=admin_token)
    assert renamed.status == 200 and renamed.body == {}
    assert (await server.hs.storage.devices.get_device(ALICE, "PHONE")).display_name == "Old phone"
    assert_error(await server.put(f"{V2}/users/{q(ALICE)}/devices/NOPE", {"display_name": "x"},
                                  token=admin_token), 404, "M_NOT_FOUND")
    assert_error(await server.put(f"{V2}/users/{q(ALICE)}/devices/PHONE", {"display_name": 3},
                                  token=admin_token), 400, "M_BAD_JSON")

    # Deleting a device ends its session at once; the other stays.
    deleted = await server.delete(f"{V2}/users/{q(ALICE)}/devices/PHONE", token=admin_token)
    assert deleted.status == 200 and deleted.body == {}
    assert_error(await whoami(server, phone["access_token"]), 401, "M_UNKNOWN_TOKEN")
    assert (await whoami(server, alice_token)).status == 200
    # Deleting one that is not there is not an error, as in Synapse.
    again = await server.delete(f"{V2}/users/{q(ALICE)}/devices/PHONE", token=admin_token)
    assert again.status == 200

    laptop = await server.login("alice", device_id="LAPTOP")
    resp = await server.post(f"{V2}/users/{q(ALICE)}/delete_devices", {"devices": ["LAPTOP", "NOPE"]},
                             token=admin_token)
    assert resp.status == 200 and resp.body == {}
    assert_error(await whoami(server, laptop["access_token"]), 401, "M_UNKNOWN_TOKEN")
    assert (await whoami(server, alice_token)).status == 200

    for body, errcode in (({}, "M_MISSING_PARAM"), ({"devices": "LAPTOP"}, "M_BAD_JSON"),
                          ({"devices": [1]}, "M_BAD_JSON")):
        resp = await server.post(f"{V2}/users/{q(ALICE)}/delete_devices", body, token=admin_token)
        assert_error(resp, 400, errcode)
    for path in (f"{V2}/users/{q('@nobody:test.local')}/devices", f"{V2}/users/{q('@x:elsewhere.org')}/devices"):
        resp = await server.get(path, token=admin_token)
        assert resp.status in (400, 404) and resp.body["errcode"] in ("M_NOT_FOUND", "M_INVALID_PARAM")


# ---------------------------------------------------- whois, joined rooms


async def test_whois(server):
    admin_token, alice_token = await setup(server)
    await server.get(f"{V3}/account/whoami", token=alice_token, headers={"User-Agent": "Test/2"})
    device_id = (await server.hs.storage.devices.get_devices(ALICE))[0].device_id
    resp = await server.get(f"{V1}/whois/{q(ALICE)}", token=admin_token)
    assert resp.status == 200, resp.body
    assert resp.body["user_id"] == ALICE
    (connection,) = resp.body["devices"][device_id]["sessions"][0]["connections"]
    assert connection["ip"] == "127.0.0.1" and connection["user_agent"] == "Test/2"
    assert abs(connection["last_seen"] - now_ms()) < 60_000

    # The client-server API's whois: admins, and users about themselves.
    own = await server.get(f"{V3}/admin/whois/{q(ALICE)}", token=alice_token)
    assert own.status == 200 and own.body["user_id"] == ALICE
    assert_error(await server.get(f"{V3}/admin/whois/{q(ADMIN)}", token=alice_token), 403, "M_FORBIDDEN")
    assert (await server.get(f"{V3}/admin/whois/{q(ALICE)}", token=admin_token)).status == 200
    assert_error(await server.get(f"{V1}/whois/{q('@x:elsewhere.org')}", token=admin_token),
                 400, "M_INVALID_PARAM")
    assert_error(await server.get(f"{V1}/whois/{q('@nobody:test.local')}", token=admin_token),
                 404, "M_NOT_FOUND")


async def test_joined_rooms(server):
    admin_token, alice_token = await setup(server)
    empty = await server.get(f"{V1}/users/{q(ALICE)}/joined_rooms", token=admin_token)
    assert empty.status == 200 and empty.body == {"joined_rooms": [], "total": 0}
    rooms = [(await server.post(f"{V3}/createRoom", {}, token=alice_token)).body["room_id"] for _ in range(2)]
    await server.post(f"{V3}/rooms/{q(rooms[1])}/leave", {}, token=alice_token)
    resp = await server.get(f"{V1}/users/{q(ALICE)}/joined_rooms", token=admin_token)
    assert resp.body == {"joined_rooms": [rooms[0]], "total": 1}
    # Remote users: what this server knows (here, nothing).
    remote = await server.get(f"{V1}/users/{q('@x:elsewhere.org')}/joined_rooms", token=admin_token)
    assert remote.status == 200 and remote.body == {"joined_rooms": [], "total": 0}
    assert_error(await server.get(f"{V1}/users/{q('@nobody:test.local')}/joined_rooms", token=admin_token),
                 404, "M_NOT_FOUND")
    assert_error(await server.get(f"{V1}/users/nonsense/joined_rooms", token=admin_token),
                 400, "M_INVALID_PARAM")


# ------------------------------------------------------------- login as


async def test_login_as_a_user(server):
    admin_token, _ = await setup(server)
    resp = await server.post(f"{V1}/users/{q(ALICE)}/login", {}, token=admin_token)
    assert resp.status == 200, resp.body
    token = resp.body["access_token"]
    assert (await whoami(server, token)).body["user_id"] == ALICE
    devices = await server.hs.storage.devices.get_devices(ALICE)
    assert ADMIN_LOGIN_DEVICE_NAME in [d.display_name for d in devices]
    # Signing out with it removes its device.
    assert (await server.post(f"{V3}/logout", {}, token=token)).status == 200
    assert len(await server.hs.storage.devices.get_devices(ALICE)) == 1

    until = now_ms() + 3_600_000
    resp = await server.post(f"{V1}/users/{q(ALICE)}/login", {"valid_until_ms": until}, token=admin_token)
    assert resp.status == 200, resp.body
    info = await server.hs.storage.devices.get_access_token(hash_token(resp.body["access_token"]))
    assert info is not None and info.expires_ts == until

    for body, errcode in (({"valid_until_ms": "soon"}, "M_BAD_JSON"),
                          ({"valid_until_ms": 1.5}, "M_BAD_JSON"),
                          ({"valid_until_ms": now_ms() - 1000}, "M_INVALID_PARAM")):
        resp = await server.post(f"{V1}/users/{q(ALICE)}/login", body, token=admin_token)
        assert_error(resp, 400, errcode)
    assert_error(await server.post(f"{V1}/users/{q(ADMIN)}/login", {}, token=admin_token), 400, "M_UNKNOWN")
    assert_error(await server.post(f"{V1}/users/{q('@x:elsewhere.org')}/login", {}, token=admin_token),
                 400, "M_INVALID_PARAM")
    assert_error(await server.post(f"{V1}/users/{q('@nobody:test.local')}/login", {}, token=admin_token),
                 404, "M_NOT_FOUND")
    await server.post(f"{V1}/deactivate/{q(ALICE)}", {}, token=admin_token)
    assert_error(await server.post(f"{V1}/users/{q(ALICE)}/login", {}, token=admin_token), 400, "M_UNKNOWN")


# ---------------------------------------------------------- username check


async def test_username_available(server):
    admin_token, _ = await setup(server)
    path = f"{V1}/username_available"
    resp = await server.get(path, token=admin_token, params={"username": "zed"})
    assert resp.status == 200 and resp.body == {"available": True}
    assert_error(await server.get(path, token=admin_token, params={"username": "alice"}), 400, "M_USER_IN_USE")
    assert_error(await server.get(path, token=admin_token, params={"username": "Not Valid"}),
                 400, "M_INVALID_USERNAME")
    assert_error(await server.get(path, token=admin_token), 400, "M_MISSING_PARAM")


@with_config(enable_registration=False)
async def test_username_available_with_registration_closed(server):
    admin_token = (await server.register_user("admin", admin=True))["access_token"]
    resp = await server.get(f"{V1}/username_available", token=admin_token, params={"username": "zed"})
    assert resp.status == 200 and resp.body == {"available": True}


# ------------------------------------------------------------------ garbage


async def test_garbage_gets_matrix_errors_never_500s(server):
    from .test_http import (
        GARBAGE_VALUES,
        HUGE_INT,
        LONE_SURROGATE,
        NUL,
        WHOLE_BODIES,
        Probe,
    )

    admin_token, _ = await setup(server)
    await server.register_user("bob")
    probe = Probe(server)
    values = [*GARBAGE_VALUES, HUGE_INT, -HUGE_INT, NUL, f"a{NUL}b", LONE_SURROGATE, "mxc://" + NUL]
    bodies = {
        ("PUT", f"{V2}/users/{q(BOB)}"): [
            "password", "logout_devices", "displayname", "avatar_url", "admin", "deactivated",
            "user_type", "threepids", "external_ids", "locked",
        ],
        ("PUT", f"{V2}/users/{q('@new:test.local')}"): ["password", "displayname", "user_type", "admin"],
        ("POST", f"{V1}/deactivate/{q(BOB)}"): ["erase"],
        ("POST", f"{V1}/reset_password/{q(BOB)}"): ["new_password", "logout_devices"],
        ("PUT", f"{V1}/users/{q(BOB)}/admin"): ["admin"],
        ("POST", f"{V1}/users/{q(BOB)}/login"): ["valid_until_ms"],
        ("PUT", f"{V2}/users/{q(BOB)}/devices/X"): ["display_name"],
        ("POST", f"{V2}/users/{q(BOB)}/delete_devices"): ["devices"],
    }
    for (method, path), fields in bodies.items():
        await probe.many(method, path, WHOLE_BODIES, token=admin_token)
        for field in fields:
            await probe.many(method, path, [{field: v} for v in values], token=admin_token)
    for params in ({"name": NUL}, {"user_id": "%_\\"}, {"from": str(HUGE_INT)}, {"limit": "1e3"},
                   {"order_by": NUL}, {"not_user_type": "x" * 4000}, {"name": "x" * 4000}):
        await probe.send("GET", f"{V2}/users", token=admin_token, params=params)
    for uid in ("@", "@:", ":", "@a", "x" * 1000, "@" + "x" * 300 + ":test.local", "@%00:test.local",
                "%ED%A0%80", "@a:b:c"):
        for method, path in (("GET", f"{V2}/users/{uid}"), ("PUT", f"{V1}/users/{uid}/admin"),
                             ("GET", f"{V1}/whois/{uid}"), ("GET", f"{V1}/users/{uid}/joined_rooms"),
                             ("POST", f"{V1}/users/{uid}/login"), ("PUT", f"{V2}/users/{uid}")):
            await probe.send(method, path, {"admin": True}, token=admin_token)
    probe.check()
