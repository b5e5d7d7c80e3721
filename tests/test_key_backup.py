"""Server-side key backups over real HTTP on both engines: the lifecycle of
versions and keys, the spec's rule for which of two keys of a session is
kept, etags and counts, refusals of wrong, deleted and other users'
versions, every malformed body, concurrent writers, and the responses
checked against the schemas of key_backup.yaml.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jsonschema
import pytest
import yaml

from .test_sync import SPEC_API, _resolved

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
AUTH_DATA = {"public_key": "abcdefg", "signatures": {"@alice:test.local": {"ed25519:DEV": "sig"}}}
ROOM = "!room:test.local"
OTHER_ROOM = "!other:test.local"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def key(
    index: int = 0, forwarded: int = 0, verified: bool = False, marker: str = "k"
) -> dict[str, Any]:
    return {
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": "e", "ciphertext": marker, "mac": "m"},
    }


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert resp.status == status, resp.body
    assert resp.body["errcode"] == errcode, resp.body
    assert isinstance(resp.body["error"], str)


async def token_of(server: TestServer, name: str) -> str:
    return (await server.register_user(name))["access_token"]


async def create_version(server: TestServer, token: str, auth_data: Any = None) -> str:
    resp = await server.post(
        f"{V3}/room_keys/version",
        {"algorithm": ALGORITHM, "auth_data": auth_data or AUTH_DATA},
        token=token,
    )
    assert resp.status == 200, resp.body
    return resp.body["version"]


def keys_path(room_id: str | None = None, session_id: str | None = None) -> str:
    path = f"{V3}/room_keys/keys"
    if room_id is not None:
        path += f"/{q(room_id)}"
        if session_id is not None:
            path += f"/{q(session_id)}"
    return path


async def put_key(
    server: TestServer, token: str, version: str, session_id: str, body: dict[str, Any],
    room_id: str = ROOM,
) -> Response:
    return await server.put(
        keys_path(room_id, session_id), body, token=token, params={"version": version}
    )


async def get_keys(
    server: TestServer, token: str, version: str, room_id: str | None = None,
    session_id: str | None = None,
) -> Response:
    return await server.get(
        keys_path(room_id, session_id), token=token, params={"version": version}
    )


async def version_info(server: TestServer, token: str, version: str | None = None) -> Response:
    path = f"{V3}/room_keys/version" + (f"/{version}" if version is not None else "")
    return await server.get(path, token=token)


# -------------------------------------------------------------- lifecycle


async def test_full_lifecycle(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    resp = await version_info(server, alice)
    assert_error(resp, 404, "M_NOT_FOUND")
    assert resp.body["error"] == "No current backup version"

    assert await create_version(server, alice) == "1"
    resp = await version_info(server, alice)
    assert resp.status == 200, resp.body
    assert resp.body == {
        "algorithm": ALGORITHM, "auth_data": AUTH_DATA, "count": 0,
        "etag": resp.body["etag"], "version": "1",
    }
    assert isinstance(resp.body["etag"], str)
    assert (await version_info(server, alice, "1")).body == resp.body

    # Keys in, one session, one room and the whole backup at a time.
    resp = await put_key(server, alice, "1", "s1", key(marker="one"))
    assert resp.status == 200, resp.body
    assert resp.body["count"] == 1
    resp = await server.put(
        keys_path(ROOM), {"sessions": {"s2": key(marker="two")}}, token=alice,
        params={"version": "1"},
    )
    assert resp.body["count"] == 2, resp.body
    resp = await server.put(
        keys_path(), {"rooms": {OTHER_ROOM: {"sessions": {"s3": key(marker="three")}}}},
        token=alice, params={"version": "1"},
    )
    assert resp.body["count"] == 3, resp.body

    assert (await get_keys(server, alice, "1", ROOM, "s1")).body == key(marker="one")
    assert (await get_keys(server, alice, "1", ROOM)).body == {
        "sessions": {"s1": key(marker="one"), "s2": key(marker="two")}
    }
    assert (await get_keys(server, alice, "1")).body == {
        "rooms": {
            ROOM: {"sessions": {"s1": key(marker="one"), "s2": key(marker="two")}},
            OTHER_ROOM: {"sessions": {"s3": key(marker="three")}},
        }
    }
    info = (await version_info(server, alice)).body
    assert info["count"] == 3 and info["etag"] == resp.body["etag"]

    # Update the auth data.
    new_auth = {"public_key": "hijklmn"}
    resp = await server.put(
        f"{V3}/room_keys/version/1",
        {"algorithm": ALGORITHM, "auth_data": new_auth, "version": "1"}, token=alice,
    )
    assert resp.status == 200 and resp.body == {}, resp.body
    assert (await version_info(server, alice, "1")).body["auth_data"] == new_auth

    # A new version becomes the current one; the old one only reads.
    assert await create_version(server, alice) == "2"
    assert (await version_info(server, alice)).body["version"] == "2"
    resp = await put_key(server, alice, "1", "s4", key())
    assert_error(resp, 403, "M_WRONG_ROOM_KEYS_VERSION")
    assert resp.body["current_version"] == "2"
    assert (await get_keys(server, alice, "1", ROOM, "s1")).body == key(marker="one")
    assert (await get_keys(server, alice, "2")).body == {"rooms": {}}
    assert (await put_key(server, alice, "2", "s9", key())).body["count"] == 1

    # Deleting the current version makes the previous one current again.
    resp = await server.delete(f"{V3}/room_keys/version/2", token=alice)
    assert resp.status == 200 and resp.body == {}, resp.body
    assert (await version_info(server, alice)).body["version"] == "1"
    assert_error(await version_info(server, alice, "2"), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, alice, "2"), 404, "M_NOT_FOUND")
    # Deleting it again succeeds (spec); its number is never reused.
    assert (await server.delete(f"{V3}/room_keys/version/2", token=alice)).status == 200
    assert await create_version(server, alice) == "3"
    assert (await get_keys(server, alice, "3")).body == {"rooms": {}}

    # Deleting a version deletes its keys.
    assert (await server.delete(f"{V3}/room_keys/version/1", token=alice)).status == 200
    assert_error(await get_keys(server, alice, "1"), 404, "M_NOT_FOUND")
    assert await server.hs.db.fetchval(
        "t", "SELECT COUNT(*) FROM e2e_room_keys WHERE version = 1"
    ) == 0
    assert await server.hs.db.fetchval(
        "t", "SELECT COUNT(*) FROM e2e_room_keys WHERE version = 2"
    ) == 0


async def test_reads_of_absent_keys(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    assert (await get_keys(server, alice, version)).body == {"rooms": {}}
    assert (await get_keys(server, alice, version, ROOM)).body == {"sessions": {}}
    resp = await get_keys(server, alice, version, ROOM, "nope")
    assert_error(resp, 404, "M_NOT_FOUND")
    await put_key(server, alice, version, "s1", key())
    assert_error(await get_keys(server, alice, version, OTHER_ROOM, "s1"), 404, "M_NOT_FOUND")
    assert (await get_keys(server, alice, version, OTHER_ROOM)).body == {"sessions": {}}


# -------------------------------------------------------- replacement rule


@pytest.mark.parametrize(
    ("stored", "uploaded", "replaced"),
    [
        # is_verified first: a verified key beats any unverified one...
        (key(5, 5, True), key(0, 0, False), False),
        (key(0, 0, False), key(5, 5, True), True),
        # ...then the lower first_message_index, whatever the forwarded_count...
        (key(5, 0, True), key(3, 9, True), True),
        (key(3, 0, False), key(5, 0, False), False),
        (key(3, 0, False), key(4, 0, False), False),
        # ...then the lower forwarded_count.
        (key(3, 2, False), key(3, 1, False), True),
        (key(3, 1, True), key(3, 2, True), False),
        # All equal: the stored key stays.
        (key(3, 1, True), key(3, 1, True), False),
    ],
    ids=[
        "verified-kept", "verified-wins", "lower-index-wins", "higher-index-loses",
        "higher-index-loses-by-one", "lower-forwarded-wins", "higher-forwarded-loses", "tie-keeps",
    ],
)
async def test_replacement_rule(
    server: TestServer, stored: dict[str, Any], uploaded: dict[str, Any], replaced: bool
) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    stored = {**stored, "session_data": {"which": "stored"}}
    uploaded = {**uploaded, "session_data": {"which": "uploaded"}}
    first = await put_key(server, alice, version, "s", stored)
    assert first.status == 200, first.body
    # Each of the three endpoints applies the rule.
    for body, path in (
        (uploaded, keys_path(ROOM, "s")),
        ({"sessions": {"s": uploaded}}, keys_path(ROOM)),
        ({"rooms": {ROOM: {"sessions": {"s": uploaded}}}}, keys_path()),
    ):
        second = await server.put(path, body, token=alice, params={"version": version})
        assert second.status == 200, second.body
        assert second.body["count"] == 1
        assert (second.body["etag"] != first.body["etag"]) == replaced
        assert (await get_keys(server, alice, version, ROOM, "s")).body == (
            uploaded if replaced else stored
        )
        if replaced:  # put the stored key back for the next endpoint
            await server.delete(keys_path(ROOM, "s"), token=alice, params={"version": version})
            first = await put_key(server, alice, version, "s", stored)


async def test_one_upload_replaces_some_keys_and_keeps_others(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    await server.put(
        keys_path(ROOM), {"sessions": {"a": key(5, marker="a1"), "b": key(1, marker="b1")}},
        token=alice, params={"version": version},
    )
    resp = await server.put(
        keys_path(ROOM),
        {"sessions": {"a": key(2, marker="a2"), "b": key(4, marker="b2"), "c": key(marker="c")}},
        token=alice, params={"version": version},
    )
    assert resp.body["count"] == 3, resp.body
    sessions = (await get_keys(server, alice, version, ROOM)).body["sessions"]
    assert {s: k["session_data"]["ciphertext"] for s, k in sessions.items()} == {
        "a": "a2", "b": "b1", "c": "c"
    }


# ---------------------------------------------------------- etag and count


async def test_etag_and_count_follow_every_change(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    params = {"version": version}
    etags = [(await version_info(server, alice)).body["etag"]]

    def changed(resp: Response, count: int) -> None:
        assert resp.status == 200, resp.body
        assert resp.body["count"] == count
        assert resp.body["etag"] not in etags, (resp.body, etags)
        etags.append(resp.body["etag"])

    def unchanged(resp: Response, count: int) -> None:
        assert resp.status == 200, resp.body
        assert resp.body == {"etag": etags[-1], "count": count}

    changed(await put_key(server, alice, version, "s1", key(3)), 1)
    changed(
        await server.put(
            keys_path(),
            {"rooms": {ROOM: {"sessions": {"s2": key()}}, OTHER_ROOM: {"sessions": {"s3": key()}}}},
            token=alice, params=params,
        ),
        3,
    )
    unchanged(await put_key(server, alice, version, "s1", key(3)), 3)  # same key again
    unchanged(await put_key(server, alice, version, "s1", key(4)), 3)  # a worse key
    unchanged(await server.put(keys_path(), {"rooms": {}}, token=alice, params=params), 3)
    changed(await put_key(server, alice, version, "s1", key(2)), 3)  # a better key
    info = (await version_info(server, alice)).body
    assert (info["etag"], info["count"]) == (etags[-1], 3)

    unchanged(await server.delete(keys_path(ROOM, "nope"), token=alice, params=params), 3)
    unchanged(await server.delete(keys_path("!empty:test.local"), token=alice, params=params), 3)
    changed(await server.delete(keys_path(ROOM, "s1"), token=alice, params=params), 2)
    changed(await server.delete(keys_path(ROOM), token=alice, params=params), 1)
    assert (await get_keys(server, alice, version)).body["rooms"].keys() == {OTHER_ROOM}
    changed(await server.delete(keys_path(), token=alice, params=params), 0)
    unchanged(await server.delete(keys_path(), token=alice, params=params), 0)
    info = (await version_info(server, alice)).body
    assert (info["etag"], info["count"]) == (etags[-1], 0)


async def test_counts_are_per_version(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    first = await create_version(server, alice)
    await put_key(server, alice, first, "s1", key())
    await put_key(server, alice, first, "s2", key())
    second = await create_version(server, alice)
    assert (await put_key(server, alice, second, "s1", key())).body["count"] == 1
    assert (await version_info(server, alice, first)).body["count"] == 2
    assert (await version_info(server, alice, second)).body["count"] == 1
    # Keys of a version that is not current may still be deleted.
    resp = await server.delete(keys_path(), token=alice, params={"version": first})
    assert resp.status == 200 and resp.body["count"] == 0, resp.body
    assert (await version_info(server, alice, second)).body["count"] == 1


# --------------------------------------------------------- wrong versions


async def test_no_backup_at_all(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    assert_error(await put_key(server, alice, "1", "s", key()), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, alice, "1"), 404, "M_NOT_FOUND")
    assert_error(
        await server.delete(keys_path(), token=alice, params={"version": "1"}), 404, "M_NOT_FOUND"
    )
    assert_error(await version_info(server, alice, "1"), 404, "M_NOT_FOUND")
    assert_error(await server.delete(f"{V3}/room_keys/version/1", token=alice), 404, "M_NOT_FOUND")
    resp = await server.put(
        f"{V3}/room_keys/version/1", {"algorithm": ALGORITHM, "auth_data": AUTH_DATA}, token=alice
    )
    assert_error(resp, 404, "M_NOT_FOUND")


@pytest.mark.parametrize("version", ["7", "x", "1.0", "-1", "+1", " 1", "١", "99999999999999999999", ""])
async def test_unknown_or_malformed_versions_are_not_found(server: TestServer, version: str) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    assert_error(await put_key(server, alice, version, "s", key()), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, alice, version), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, alice, version, ROOM), 404, "M_NOT_FOUND")
    assert_error(
        await server.delete(keys_path(ROOM, "s"), token=alice, params={"version": version}),
        404, "M_NOT_FOUND",
    )
    if version:  # (an empty path segment is another route)
        path = f"{V3}/room_keys/version/{q(version)}"
        assert_error(await server.get(path, token=alice), 404, "M_NOT_FOUND")
        assert_error(await server.delete(path, token=alice), 404, "M_NOT_FOUND")
        body = {"algorithm": ALGORITHM, "auth_data": AUTH_DATA}
        assert_error(await server.put(path, body, token=alice), 404, "M_NOT_FOUND")


async def test_deleted_version_refuses_everything(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    await create_version(server, alice)
    await put_key(server, alice, "2", "s", key())
    assert (await server.delete(f"{V3}/room_keys/version/2", token=alice)).status == 200
    # Version 1 is current again, so writing to 2 is "not found", not "wrong".
    assert_error(await put_key(server, alice, "2", "s", key()), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, alice, "2", ROOM, "s"), 404, "M_NOT_FOUND")
    assert_error(
        await server.delete(keys_path(), token=alice, params={"version": "2"}), 404, "M_NOT_FOUND"
    )
    resp = await server.put(
        f"{V3}/room_keys/version/2", {"algorithm": ALGORITHM, "auth_data": AUTH_DATA}, token=alice
    )
    assert_error(resp, 404, "M_NOT_FOUND")
    # With every version deleted there is no current one.
    assert (await server.delete(f"{V3}/room_keys/version/1", token=alice)).status == 200
    assert_error(await version_info(server, alice), 404, "M_NOT_FOUND")
    assert_error(await put_key(server, alice, "1", "s", key()), 404, "M_NOT_FOUND")


async def test_missing_version_parameter(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    for path in (keys_path(), keys_path(ROOM), keys_path(ROOM, "s")):
        assert_error(await server.get(path, token=alice), 400, "M_MISSING_PARAM")
        assert_error(await server.delete(path, token=alice), 400, "M_MISSING_PARAM")
        assert_error(await server.put(path, key(), token=alice), 400, "M_MISSING_PARAM")


async def test_update_version_refusals(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    path = f"{V3}/room_keys/version/1"
    resp = await server.put(
        path, {"algorithm": "org.example.other", "auth_data": {"x": 1}}, token=alice
    )
    assert_error(resp, 400, "M_INVALID_PARAM")
    for body_version in ("2", 1, None):
        resp = await server.put(
            path, {"algorithm": ALGORITHM, "auth_data": AUTH_DATA, "version": body_version},
            token=alice,
        )
        assert_error(resp, 400, "M_INVALID_PARAM")
    assert (await version_info(server, alice)).body["auth_data"] == AUTH_DATA
    resp = await server.put(
        path, {"algorithm": ALGORITHM, "auth_data": {"public_key": "new"}}, token=alice
    )
    assert resp.status == 200 and resp.body == {}, resp.body
    assert (await version_info(server, alice)).body["auth_data"] == {"public_key": "new"}


# ------------------------------------------------------------ other users


async def test_other_users_backups_are_invisible(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    bob = await token_of(server, "bob")
    await create_version(server, alice)
    await put_key(server, alice, "1", "s", key(marker="alice's"))

    assert_error(await version_info(server, bob), 404, "M_NOT_FOUND")
    assert_error(await version_info(server, bob, "1"), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, bob, "1"), 404, "M_NOT_FOUND")
    assert_error(await get_keys(server, bob, "1", ROOM, "s"), 404, "M_NOT_FOUND")
    assert_error(await put_key(server, bob, "1", "s", key(verified=True)), 404, "M_NOT_FOUND")
    assert_error(
        await server.delete(keys_path(), token=bob, params={"version": "1"}), 404, "M_NOT_FOUND"
    )
    resp = await server.put(
        f"{V3}/room_keys/version/1", {"algorithm": ALGORITHM, "auth_data": {"public_key": "b"}},
        token=bob,
    )
    assert_error(resp, 404, "M_NOT_FOUND")
    assert_error(await server.delete(f"{V3}/room_keys/version/1", token=bob), 404, "M_NOT_FOUND")

    # Bob's own backup is numbered on its own and holds only his keys.
    assert await create_version(server, bob, {"public_key": "bob"}) == "1"
    assert (await get_keys(server, bob, "1")).body == {"rooms": {}}
    await put_key(server, bob, "1", "s", key(verified=True, marker="bob's"))
    await server.delete(keys_path(), token=bob, params={"version": "1"})
    assert (await server.delete(f"{V3}/room_keys/version/1", token=bob)).status == 200

    info = (await version_info(server, alice)).body
    assert info["auth_data"] == AUTH_DATA and info["count"] == 1
    assert (await get_keys(server, alice, "1", ROOM, "s")).body == key(marker="alice's")


async def test_requires_an_access_token(server: TestServer) -> None:
    for method, path in (
        ("POST", f"{V3}/room_keys/version"),
        ("GET", f"{V3}/room_keys/version"),
        ("GET", f"{V3}/room_keys/version/1"),
        ("PUT", f"{V3}/room_keys/version/1"),
        ("DELETE", f"{V3}/room_keys/version/1"),
        ("GET", keys_path()),
        ("PUT", keys_path(ROOM)),
        ("DELETE", keys_path(ROOM, "s")),
    ):
        resp = await server.request(method, path, {}, params={"version": "1"})
        assert_error(resp, 401, "M_MISSING_TOKEN")


# -------------------------------------------------------- malformed bodies


BAD_VERSION_BODIES = [
    ({}, "M_MISSING_PARAM"),
    ({"auth_data": AUTH_DATA}, "M_MISSING_PARAM"),
    ({"algorithm": ALGORITHM}, "M_MISSING_PARAM"),
    ({"algorithm": 5, "auth_data": AUTH_DATA}, "M_BAD_JSON"),
    ({"algorithm": None, "auth_data": AUTH_DATA}, "M_BAD_JSON"),
    ({"algorithm": "", "auth_data": AUTH_DATA}, "M_INVALID_PARAM"),
    ({"algorithm": "a" * 256, "auth_data": AUTH_DATA}, "M_BAD_JSON"),
    ({"algorithm": "a\x00b", "auth_data": AUTH_DATA}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": "opaque"}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": ["x"]}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": {}}, "M_MISSING_PARAM"),
    ({"algorithm": ALGORITHM, "auth_data": {"public_key": 1}}, "M_BAD_JSON"),
    ({"algorithm": ALGORITHM, "auth_data": {"public_key": "k", "signatures": "s"}}, "M_BAD_JSON"),
]


@pytest.mark.parametrize(("body", "errcode"), BAD_VERSION_BODIES)
async def test_malformed_version_bodies(server: TestServer, body: Any, errcode: str) -> None:
    alice = await token_of(server, "alice")
    assert_error(await server.post(f"{V3}/room_keys/version", body, token=alice), 400, errcode)
    assert_error(await version_info(server, alice), 404, "M_NOT_FOUND")
    await create_version(server, alice)
    assert_error(await server.put(f"{V3}/room_keys/version/1", body, token=alice), 400, errcode)
    assert (await version_info(server, alice)).body["auth_data"] == AUTH_DATA


async def test_version_bodies_that_are_not_json_objects(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    for method, path in (("POST", f"{V3}/room_keys/version"), ("PUT", f"{V3}/room_keys/version/1")):
        assert_error(await server.request(method, path, data="{nope", token=alice), 400, "M_NOT_JSON")
        assert_error(await server.request(method, path, data="", token=alice), 400, "M_NOT_JSON")
        assert_error(await server.request(method, path, [1], token=alice), 400, "M_BAD_JSON")


async def test_other_algorithms_are_stored_opaquely(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    resp = await server.post(
        f"{V3}/room_keys/version", {"algorithm": "org.example.v2", "auth_data": {"any": [1]}},
        token=alice,
    )
    assert resp.status == 200, resp.body
    info = (await version_info(server, alice)).body
    assert (info["algorithm"], info["auth_data"]) == ("org.example.v2", {"any": [1]})


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in key().items() if k != field}


BAD_KEYS = [
    ("not-an-object", "M_BAD_JSON"),
    (without("first_message_index"), "M_MISSING_PARAM"),
    (without("forwarded_count"), "M_MISSING_PARAM"),
    (without("is_verified"), "M_MISSING_PARAM"),
    (without("session_data"), "M_MISSING_PARAM"),
    ({**key(), "first_message_index": "1"}, "M_BAD_JSON"),
    ({**key(), "first_message_index": 1.5}, "M_BAD_JSON"),
    ({**key(), "first_message_index": True}, "M_BAD_JSON"),
    ({**key(), "first_message_index": -1}, "M_BAD_JSON"),
    ({**key(), "first_message_index": 2**53}, "M_BAD_JSON"),
    ({**key(), "first_message_index": 10**30}, "M_BAD_JSON"),
    ({**key(), "first_message_index": None}, "M_BAD_JSON"),
    ({**key(), "forwarded_count": "0"}, "M_BAD_JSON"),
    ({**key(), "forwarded_count": -5}, "M_BAD_JSON"),
    ({**key(), "forwarded_count": False}, "M_BAD_JSON"),
    ({**key(), "is_verified": "true"}, "M_BAD_JSON"),
    ({**key(), "is_verified": 1}, "M_BAD_JSON"),
    ({**key(), "is_verified": None}, "M_BAD_JSON"),
    ({**key(), "session_data": "opaque"}, "M_BAD_JSON"),
    ({**key(), "session_data": None}, "M_BAD_JSON"),
    ({**key(), "session_data": [1]}, "M_BAD_JSON"),
]


@pytest.mark.parametrize(("bad", "errcode"), BAD_KEYS)
async def test_malformed_keys_are_refused_by_every_endpoint(
    server: TestServer, bad: Any, errcode: str
) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    params = {"version": version}
    good = key()
    for path, body in (
        (keys_path(ROOM, "s"), bad),
        (keys_path(ROOM), {"sessions": {"ok": good, "s": bad}}),
        (keys_path(), {"rooms": {OTHER_ROOM: {"sessions": {"ok": good}}, ROOM: {"sessions": {"s": bad}}}}),
    ):
        if not isinstance(body, dict):
            resp = await server.request("PUT", path, data=f'"{body}"', token=alice, params=params)
        else:
            resp = await server.put(path, body, token=alice, params=params)
        assert_error(resp, 400, errcode)
    # Nothing of a refused upload is stored, not even its good keys.
    assert (await version_info(server, alice)).body["count"] == 0


BAD_CONTAINERS = [
    # (path, body, errcode)
    ("room", {}, "M_MISSING_PARAM"),
    ("room", {"sessions": None}, "M_MISSING_PARAM"),
    ("room", {"sessions": []}, "M_BAD_JSON"),
    ("room", {"sessions": "x"}, "M_BAD_JSON"),
    ("room", {"sessions": {"": key()}}, "M_INVALID_PARAM"),
    ("room", {"sessions": {"s" * 256: key()}}, "M_INVALID_PARAM"),
    ("room", {"sessions": {"a\x00b": key()}}, "M_BAD_JSON"),  # NUL in an object key: refused with the body
    ("all", {}, "M_MISSING_PARAM"),
    ("all", {"rooms": []}, "M_BAD_JSON"),
    ("all", {"rooms": {ROOM: "x"}}, "M_BAD_JSON"),
    ("all", {"rooms": {ROOM: []}}, "M_BAD_JSON"),
    ("all", {"rooms": {ROOM: {}}}, "M_MISSING_PARAM"),
    ("all", {"rooms": {ROOM: {"sessions": [key()]}}}, "M_BAD_JSON"),
    ("all", {"rooms": {"not-a-room": {"sessions": {"s": key()}}}}, "M_INVALID_PARAM"),
    ("all", {"rooms": {"": {"sessions": {"s": key()}}}}, "M_INVALID_PARAM"),
    ("all", {"rooms": {"!a\x00b:x": {"sessions": {"s": key()}}}}, "M_BAD_JSON"),  # NUL in an object key: refused with the body
    ("all", {"rooms": {"!" + "r" * 255: {"sessions": {"s": key()}}}}, "M_INVALID_PARAM"),
    ("all", {"rooms": {ROOM: {"sessions": {"\x00": key()}}}}, "M_BAD_JSON"),  # NUL in an object key: refused with the body
]


@pytest.mark.parametrize(("where", "body", "errcode"), BAD_CONTAINERS)
async def test_malformed_room_and_backup_bodies(
    server: TestServer, where: str, body: Any, errcode: str
) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    path = keys_path(ROOM) if where == "room" else keys_path()
    resp = await server.put(path, body, token=alice, params={"version": version})
    assert_error(resp, 400, errcode)
    assert (await version_info(server, alice)).body["count"] == 0


async def test_malformed_ids_in_paths(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    params = {"version": version}
    for room_id, session_id in (("no-bang", "s"), ("!" + "r" * 300, "s"), (ROOM, "s" * 300)):
        path = keys_path(room_id, session_id)
        assert_error(await server.put(path, key(), token=alice, params=params), 400, "M_INVALID_PARAM")
        assert_error(await server.get(path, token=alice, params=params), 400, "M_INVALID_PARAM")
        assert_error(await server.delete(path, token=alice, params=params), 400, "M_INVALID_PARAM")
    resp = await server.put(
        keys_path("no-bang"), {"sessions": {"s": key()}}, token=alice, params=params
    )
    assert_error(resp, 400, "M_INVALID_PARAM")
    for bad in (f"{keys_path(ROOM)}/%00", f"{V3}/room_keys/version/1%00"):
        assert_error(await server.get(bad, token=alice, params=params), 400, "M_INVALID_PARAM")
    resp = await server.get(keys_path(ROOM), token=alice, params={"version": "1\x00"})
    assert_error(resp, 400, "M_INVALID_PARAM")


async def test_malformed_key_bodies_that_are_not_json(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    for path in (keys_path(), keys_path(ROOM), keys_path(ROOM, "s")):
        for data, errcode in (("{nope", "M_NOT_JSON"), ("", "M_NOT_JSON"), ("[1]", "M_BAD_JSON"),
                              ('{"a": NaN}', "M_NOT_JSON"), ('{"a": "\\ud800"}', "M_BAD_JSON")):
            resp = await server.request("PUT", path, data=data, token=alice, params={"version": version})
            assert_error(resp, 400, errcode)


# ------------------------------------------------------------- concurrency


async def test_concurrent_creations_get_distinct_versions(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    versions = await asyncio.gather(*(create_version(server, alice) for _ in range(8)))
    assert sorted(versions, key=int) == [str(n) for n in range(1, 9)]
    assert (await version_info(server, alice)).body["version"] == "8"


async def test_concurrent_uploads_lose_nothing(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    etag = (await version_info(server, alice)).body["etag"]
    results = await asyncio.gather(
        *(put_key(server, alice, version, f"s{i}", key()) for i in range(12)),
        *(put_key(server, alice, version, "shared", key(index)) for index in (9, 3, 7, 5, 8, 4)),
    )
    assert all(r.status == 200 for r in results), [r.body for r in results]
    info = (await version_info(server, alice)).body
    assert info["count"] == 13
    assert info["etag"] != etag
    # Whatever the order, the best of the keys is the one kept.
    resp = await get_keys(server, alice, version, ROOM, "shared")
    assert resp.body["first_message_index"] == 3
    # Each new session was a change with an etag of its own.
    assert len({r.body["etag"] for r in results[:12]} | {etag}) == 13
    assert info["etag"] in {r.body["etag"] for r in results}


async def test_concurrent_upload_and_deletion_of_the_version(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    await create_version(server, alice)
    results = await asyncio.gather(
        *(put_key(server, alice, "1", f"s{i}", key()) for i in range(6)),
        server.delete(f"{V3}/room_keys/version/1", token=alice),
        *(put_key(server, alice, "1", f"t{i}", key()) for i in range(6)),
    )
    assert {r.status for r in results} <= {200, 404}, [r.body for r in results]
    # No key outlives its version.
    assert await server.hs.db.fetchval("t", "SELECT COUNT(*) FROM e2e_room_keys") == 0


# ------------------------------------------------------------------- schema


def _inline_components(node: Any, api: dict[str, Any]) -> Any:
    """`node` with the document-local `#/components/...` refs replaced by their targets."""
    if isinstance(node, list):
        return [_inline_components(item, api) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = api
        for part in ref[2:].split("/"):
            target = target[part]
        return _inline_components(target, api)
    return {k: _inline_components(v, api) for k, v in node.items()}


def response_validator(path: str, method: str) -> jsonschema.Draft202012Validator:
    if not SPEC_API.is_dir():
        pytest.skip(f"the Matrix spec is not at {SPEC_API}")
    api = yaml.safe_load((SPEC_API / "key_backup.yaml").read_text())
    schema = api["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator(_resolved(_inline_components(schema, api), SPEC_API))


async def test_responses_match_the_spec_schemas(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    params = {"version": "1"}

    def check(path: str, method: str, resp: Response) -> None:
        assert resp.status == 200, resp.body
        response_validator(path, method).validate(resp.body)

    check("/room_keys/version", "post", await server.post(
        f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": AUTH_DATA}, token=alice
    ))
    check("/room_keys/version", "get", await version_info(server, alice))
    check("/room_keys/version/{version}", "get", await version_info(server, alice, "1"))
    check("/room_keys/version/{version}", "put", await server.put(
        f"{V3}/room_keys/version/1", {"algorithm": ALGORITHM, "auth_data": AUTH_DATA}, token=alice
    ))
    check("/room_keys/keys/{roomId}/{sessionId}", "put",
          await put_key(server, alice, "1", "s1", key(1, 2, True)))
    check("/room_keys/keys/{roomId}", "put", await server.put(
        keys_path(ROOM), {"sessions": {"s2": key()}}, token=alice, params=params
    ))
    check("/room_keys/keys", "put", await server.put(
        keys_path(), {"rooms": {OTHER_ROOM: {"sessions": {"s3": key()}}}}, token=alice, params=params
    ))
    check("/room_keys/keys/{roomId}/{sessionId}", "get", await get_keys(server, alice, "1", ROOM, "s1"))
    check("/room_keys/keys/{roomId}", "get", await get_keys(server, alice, "1", ROOM))
    check("/room_keys/keys/{roomId}", "get", await get_keys(server, alice, "1", "!none:test.local"))
    check("/room_keys/keys", "get", await get_keys(server, alice, "1"))
    check("/room_keys/keys/{roomId}/{sessionId}", "delete",
          await server.delete(keys_path(ROOM, "s1"), token=alice, params=params))
    check("/room_keys/keys/{roomId}", "delete",
          await server.delete(keys_path(ROOM), token=alice, params=params))
    check("/room_keys/keys", "delete", await server.delete(keys_path(), token=alice, params=params))
    check("/room_keys/keys", "get", await get_keys(server, alice, "1"))
    check("/room_keys/version/{version}", "delete",
          await server.delete(f"{V3}/room_keys/version/1", token=alice))


async def test_deactivation_deletes_the_backups(server: TestServer) -> None:
    alice = await token_of(server, "alice")
    version = await create_version(server, alice)
    assert (await put_key(server, alice, version, "s1", key())).status == 200
    await server.hs.accounts.deactivate("@alice:test.local")
    count = await server.hs.storage.db.fetchval(
        "count", "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ?", ("@alice:test.local",)
    )
    assert count == 0
    live = await server.hs.storage.db.fetchval(
        "live", "SELECT COUNT(*) FROM e2e_room_keys_versions WHERE user_id = ? AND NOT deleted", ("@alice:test.local",)
    )
    assert live == 0
