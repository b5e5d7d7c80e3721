"""Profiles: display name and avatar URL."""

from __future__ import annotations



from homeserver.api.admin import registration_mac

from .conftest import SHARED_SECRET, with_config

PROFILE = "/_matrix/client/v3/profile"
ALICE = "@alice:test.local"


async def test_default_displayname_is_localpart(server):
    await server.register_user("alice")
    resp = await server.get(f"{PROFILE}/{ALICE}")
    assert resp.status == 200
    assert resp.body == {"displayname": "alice"}


async def test_url_encoded_user_id(server):
    await server.register_user("alice")
    resp = await server.get(f"{PROFILE}/%40alice%3Atest.local/displayname")
    assert resp.status == 200
    assert resp.body == {"displayname": "alice"}


async def test_set_and_get_fields(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.put(
        f"{PROFILE}/{ALICE}/displayname", {"displayname": "Alice 🐇"}, token=token
    )
    assert resp.status == 200 and resp.body == {}
    resp = await server.put(
        f"{PROFILE}/{ALICE}/avatar_url", {"avatar_url": "mxc://test.local/abc"}, token=token
    )
    assert resp.status == 200 and resp.body == {}
    assert (await server.get(f"{PROFILE}/{ALICE}/displayname")).body == {"displayname": "Alice 🐇"}
    assert (await server.get(f"{PROFILE}/{ALICE}/avatar_url")).body == {
        "avatar_url": "mxc://test.local/abc"
    }
    assert (await server.get(f"{PROFILE}/{ALICE}")).body == {
        "displayname": "Alice 🐇",
        "avatar_url": "mxc://test.local/abc",
    }


async def test_r0_path(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.put(
        f"/_matrix/client/r0/profile/{ALICE}/displayname", {"displayname": "A"}, token=token
    )
    assert resp.status == 200
    assert (await server.get(f"/_matrix/client/r0/profile/{ALICE}")).body == {"displayname": "A"}


async def test_unset_avatar_is_404(server):
    await server.register_user("alice")
    resp = await server.get(f"{PROFILE}/{ALICE}/avatar_url")
    assert resp.status == 404
    assert resp.body["errcode"] == "M_NOT_FOUND"


async def test_clearing_a_field(server):
    token = (await server.register_user("alice"))["access_token"]
    for value in ["", None]:
        await server.put(f"{PROFILE}/{ALICE}/displayname", {"displayname": "Alice"}, token=token)
        resp = await server.put(
            f"{PROFILE}/{ALICE}/displayname", {"displayname": value}, token=token
        )
        assert resp.status == 200, value
        assert (await server.get(f"{PROFILE}/{ALICE}")).body == {}
        resp = await server.get(f"{PROFILE}/{ALICE}/displayname")
        assert resp.status == 404 and resp.body["errcode"] == "M_NOT_FOUND"


async def test_unknown_and_remote_users_are_404(server):
    for user_id in ["@nobody:test.local", "@alice:elsewhere.example"]:
        for suffix in ["", "/displayname", "/avatar_url"]:
            resp = await server.get(f"{PROFILE}/{user_id}{suffix}")
            assert resp.status == 404, (user_id, suffix)
            assert resp.body["errcode"] == "M_NOT_FOUND"


async def test_malformed_user_id_is_400(server):
    for user_id in ["alice", "@alice", "@:test.local", "alice:test.local"]:
        for suffix in ["", "/displayname", "/avatar_url"]:
            resp = await server.get(f"{PROFILE}/{user_id}{suffix}")
            assert resp.status == 400, (user_id, suffix)
            assert resp.body["errcode"] == "M_INVALID_PARAM"


async def test_cannot_change_another_users_profile(server):
    await server.register_user("alice")
    bob = (await server.register_user("bob"))["access_token"]
    for field, value in [("displayname", "Mallory"), ("avatar_url", "mxc://x/y")]:
        resp = await server.put(f"{PROFILE}/{ALICE}/{field}", {field: value}, token=bob)
        assert resp.status == 403
        assert resp.body["errcode"] == "M_FORBIDDEN"
    assert (await server.get(f"{PROFILE}/{ALICE}")).body == {"displayname": "alice"}


async def test_admin_may_change_another_users_profile(server):
    await server.register_user("alice")
    admin = (await server.register_user("admin", admin=True))["access_token"]
    resp = await server.put(
        f"{PROFILE}/{ALICE}/displayname", {"displayname": "Alice (Sales)"}, token=admin
    )
    assert resp.status == 200
    assert (await server.get(f"{PROFILE}/{ALICE}")).body == {"displayname": "Alice (Sales)"}


async def test_setting_requires_auth(server):
    await server.register_user("alice")
    resp = await server.put(f"{PROFILE}/{ALICE}/displayname", {"displayname": "x"})
    assert resp.status == 401
    assert resp.body["errcode"] == "M_MISSING_TOKEN"
    resp = await server.put(f"{PROFILE}/{ALICE}/displayname", {"displayname": "x"}, token="bogus")
    assert resp.status == 401
    assert resp.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_bad_profile_values(server):
    token = (await server.register_user("alice"))["access_token"]
    for field, body, errcode in [
        ("displayname", {"displayname": 5}, "M_BAD_JSON"),
        ("displayname", {"displayname": "a\x00b"}, "M_BAD_JSON"),
        ("avatar_url", {"avatar_url": "mxc://a/\x00"}, "M_BAD_JSON"),
        ("displayname", {"displayname": ["a"]}, "M_BAD_JSON"),
        ("avatar_url", {"avatar_url": {"url": "mxc://a/b"}}, "M_BAD_JSON"),
        ("displayname", {}, "M_MISSING_PARAM"),
        ("displayname", {"avatar_url": "mxc://a/b"}, "M_MISSING_PARAM"),
        ("displayname", {"displayname": "x" * 257}, "M_TOO_LARGE"),
        ("avatar_url", {"avatar_url": "mxc://a/" + "b" * 1000}, "M_TOO_LARGE"),
    ]:
        resp = await server.put(f"{PROFILE}/{ALICE}/{field}", body, token=token)
        assert resp.status == 400, (body, resp.body)
        assert resp.body["errcode"] == errcode, (body, resp.body)
    resp = await server.put(f"{PROFILE}/{ALICE}/displayname", data=b"Alice", token=token)
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    assert (await server.get(f"{PROFILE}/{ALICE}")).body == {"displayname": "alice"}


async def test_longest_allowed_displayname(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.put(
        f"{PROFILE}/{ALICE}/displayname", {"displayname": "x" * 256}, token=token
    )
    assert resp.status == 200


async def test_shared_secret_displayname(server):
    nonce = (await server.get("/_synapse/admin/v1/register")).body["nonce"]
    resp = await server.post(
        "/_synapse/admin/v1/register",
        {
            "nonce": nonce,
            "username": "carol",
            "password": "pw",
            "displayname": "Carol Danvers",
            "mac": registration_mac(SHARED_SECRET, nonce, "carol", "pw", False, None),
        },
    )
    assert resp.status == 200, resp.body
    assert (await server.get(f"{PROFILE}/@carol:test.local")).body == {
        "displayname": "Carol Danvers"
    }


@with_config(require_auth_for_profile_requests=True)
async def test_profile_lookup_may_require_auth(server):
    token = (await server.register_user("alice"))["access_token"]
    resp = await server.get(f"{PROFILE}/{ALICE}")
    assert resp.status == 401 and resp.body["errcode"] == "M_MISSING_TOKEN"
    resp = await server.get(f"{PROFILE}/{ALICE}", token=token)
    assert resp.status == 200 and resp.body == {"displayname": "alice"}
