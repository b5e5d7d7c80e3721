"""The core room endpoints over real HTTP on both engines: createRoom, send,
state, single events, redactions; successes and every refusal the spec names.

Membership endpoints (join, invite, kick, ...) are in test_membership.py.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from signedjson.key import get_verify_key
from unpaddedbase64 import decode_base64

from homeserver.events.hashing import (
    compute_content_hash,
    compute_event_id,
    verify_event_signature,
)
from homeserver.events.model import ROOM_VERSIONS

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"


# ---------------------------------------------------------------- helpers


def q(identifier: str) -> str:
    """A room ID, event ID, type or state key as one URL path segment."""
    return quote(identifier, safe="")


async def users(server: TestServer, *names: str) -> list[str]:
    """Register users; returns their access tokens."""
    return [(await server.register_user(name))["access_token"] for name in names]


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    resp = await server.post(f"{V3}/createRoom", body, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def send(
    server: TestServer, token: str, room_id: str, content: Any, *, txn: str, event_type: str = "m.room.message"
) -> Response:
    return await server.put(
        f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn)}", content, token=token
    )


async def put_state(
    server: TestServer, token: str, room_id: str, event_type: str, content: Any, state_key: str = ""
) -> Response:
    return await server.put(
        f"{V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}", content, token=token
    )


async def get_state(
    server: TestServer, token: str, room_id: str, event_type: str, state_key: str = "", **params: str
) -> Response:
    return await server.get(
        f"{V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}", token=token, params=params or None
    )


async def join(server: TestServer, token: str, room_id: str) -> None:
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/join", {}, token=token)
    assert resp.status == 200, resp.body


async def room_event_types(server: TestServer, room_id: str) -> list[tuple[str, str | None]]:
    """(type, state_key) of every event of the room, in stream order."""
    rows = await server.hs.storage.db.fetchall(
        "test", "SELECT event_id FROM events WHERE room_id = ? ORDER BY stream_ordering", (room_id,)
    )
    found = await server.hs.storage.events.get_events([r[0] for r in rows])
    return [(found[r[0]].type, found[r[0]].state_key) for r in rows]


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body.get("errcode")) == (status, errcode), resp.body


# ------------------------------------------------------------- createRoom


@pytest.mark.parametrize(
    ("preset", "join_rule", "history", "guests"),
    [
        ("private_chat", "invite", "shared", "can_join"),
        ("trusted_private_chat", "invite", "shared", "can_join"),
        ("public_chat", "public", "shared", "forbidden"),
    ],
)
async def test_create_room_presets(server, preset, join_rule, history, guests):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice, preset=preset)
    assert (await get_state(server, alice, room_id, "m.room.join_rules")).body == {"join_rule": join_rule}
    assert (await get_state(server, alice, room_id, "m.room.history_visibility")).body == {
        "history_visibility": history
    }
    assert (await get_state(server, alice, room_id, "m.room.guest_access")).body == {"guest_access": guests}


@pytest.mark.parametrize(("visibility", "join_rule", "public"), [("public", "public", True), ("private", "invite", False)])
async def test_create_room_visibility_picks_the_preset(server, visibility, join_rule, public):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice, visibility=visibility)
    assert (await get_state(server, alice, room_id, "m.room.join_rules")).body["join_rule"] == join_rule
    is_public = await server.hs.storage.db.fetchval(
        "test", "SELECT is_public FROM rooms WHERE room_id = ?", (room_id,)
    )
    assert bool(is_public) is public


async def test_create_room_name_topic_and_creator_membership(server):
    (alice,) = await users(server, "alice")
    await server.put(f"{V3}/profile/{ALICE}/displayname", {"displayname": "Alice A."}, token=alice)
    room_id = await create_room(server, alice, name="Sales", topic="Leads and deals")
    assert (await get_state(server, alice, room_id, "m.room.name")).body == {"name": "Sales"}
    topic = (await get_state(server, alice, room_id, "m.room.topic")).body
    assert topic["topic"] == "Leads and deals"
    # The v1.15 content block: an object holding the m.text representations.
    assert topic["m.topic"] == {"m.text": [{"body": "Leads and deals", "mimetype": "text/plain"}]}
    member = (await get_state(server, alice, room_id, "m.room.member", ALICE)).body
    assert member == {"membership": "join", "displayname": "Alice A."}
    joined = await server.get(f"{V3}/joined_rooms", token=alice)
    assert joined.body == {"joined_rooms": [room_id]}


async def test_create_room_invite_is_direct(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="trusted_private_chat", invite=[BOB], is_direct=True)
    invite = (await get_state(server, alice, room_id, "m.room.member", BOB)).body
    assert invite["membership"] == "invite" and invite["is_direct"] is True
    # An invitee is not in the room yet: no state for them, no joined room.
    assert_error(await server.get(f"{V3}/rooms/{q(room_id)}/state", token=bob), 403, "M_FORBIDDEN")
    assert (await server.get(f"{V3}/joined_rooms", token=bob)).body == {"joined_rooms": []}
    # trusted_private_chat: in v12 invitees become additional creators (infinite power).
    create = (await get_state(server, alice, room_id, "m.room.create")).body
    assert create["additional_creators"] == [BOB]
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    assert levels["users"] == {}
    await join(server, bob, room_id)
    assert (await put_state(server, bob, room_id, "m.room.name", {"name": "Ours"})).status == 200


@pytest.mark.parametrize("version", ["10", "11"])
async def test_trusted_private_chat_before_v12_gives_invitees_the_creators_level(server, version):
    alice, _bob = await users(server, "alice", "bob")
    room_id = await create_room(
        server, alice, preset="trusted_private_chat", invite=[BOB], room_version=version
    )
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    assert levels["users"] == {ALICE: 100, BOB: 100}
    invite = (await get_state(server, alice, room_id, "m.room.member", BOB)).body
    assert "is_direct" not in invite


async def test_create_room_initial_state(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(
        server,
        alice,
        preset="public_chat",
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}},
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "com.example.team", "state_key": "sales/emea", "content": {"lead": ALICE}},
        ],
    )
    # initial_state wins over the preset: one history visibility event, from initial_state.
    assert (await get_state(server, alice, room_id, "m.room.history_visibility")).body == {
        "history_visibility": "joined"
    }
    assert (await get_state(server, alice, room_id, "m.room.encryption")).body["algorithm"] == "m.megolm.v1.aes-sha2"
    assert (await get_state(server, alice, room_id, "com.example.team", "sales/emea")).body == {"lead": ALICE}
    types = [t for t, _k in await room_event_types(server, room_id)]
    assert types.count("m.room.history_visibility") == 1


async def test_create_room_power_level_content_override(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(
        server, alice, preset="public_chat", power_level_content_override={"events_default": 10, "invite": 50}
    )
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    assert levels["events_default"] == 10 and levels["invite"] == 50
    assert levels["state_default"] == 50  # the rest are the defaults
    await join(server, bob, room_id)
    refused = await send(server, bob, room_id, {"msgtype": "m.text", "body": "hi"}, txn="t1")
    assert_error(refused, 403, "M_FORBIDDEN")
    assert (await send(server, alice, room_id, {"msgtype": "m.text", "body": "hi"}, txn="t1")).status == 200


async def test_create_room_that_forbids_its_own_state_is_invalid(server):
    (alice,) = await users(server, "alice")
    resp = await server.post(
        f"{V3}/createRoom",
        {"room_version": "11", "name": "x", "power_level_content_override": {"users": {ALICE: 0}}},
        token=alice,
    )
    assert_error(resp, 400, "M_INVALID_ROOM_STATE")
    assert (await server.get(f"{V3}/joined_rooms", token=alice)).body == {"joined_rooms": []}


async def test_create_space(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(
        server, alice, name="Sales", creation_content={"type": "m.space", "m.federate": False}
    )
    create = (await get_state(server, alice, room_id, "m.room.create")).body
    assert create == {"type": "m.space", "m.federate": False, "room_version": "12"}


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_create_room_versions(server, version):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice, room_version=version)
    create = (await get_state(server, alice, room_id, "m.room.create", format="event")).body
    assert create["content"]["room_version"] == version
    assert create["sender"] == ALICE and create["room_id"] == room_id
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    if version == "10":
        assert create["content"]["creator"] == ALICE
    else:
        assert "creator" not in create["content"]
    if version == "12":
        # The room ID is the create event's reference hash; no server part.
        assert room_id == "!" + create["event_id"][1:] and ":" not in room_id
        assert levels["users"] == {}
        assert levels["events"]["m.room.tombstone"] == 150
    else:
        assert room_id.endswith(":test.local")
        assert levels["users"] == {ALICE: 100}


async def test_default_room_version_is_12(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    assert (await get_state(server, alice, room_id, "m.room.create")).body["room_version"] == "12"


@pytest.mark.parametrize("version", ["1", "9", "13", "org.example.custom", ""])
async def test_create_room_unsupported_version(server, version):
    (alice,) = await users(server, "alice")
    resp = await server.post(f"{V3}/createRoom", {"room_version": version}, token=alice)
    assert_error(resp, 400, "M_UNSUPPORTED_ROOM_VERSION")


@pytest.mark.parametrize(
    "body",
    [
        {"room_version": 12},
        {"name": 5},
        {"topic": ["a"]},
        {"invite": "@bob:test.local"},
        {"invite": [5]},
        {"is_direct": "yes"},
        {"initial_state": {}},
        {"initial_state": [{"content": {}}]},
        {"initial_state": [{"type": "m.room.topic", "state_key": 5, "content": {}}]},
        {"initial_state": [{"type": "m.room.topic", "state_key": [], "content": {}}]},
        {"initial_state": [{"type": "m.room.topic", "content": "x"}]},
        {"creation_content": []},
        {"power_level_content_override": "x"},
        {"preset": 5},
        {"preset": {}},
        {"visibility": ["public"]},
        {"creation_content": {"x": 1.5}},
        {"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "everyone"}}]},
    ],
)
async def test_create_room_bad_json(server, body):
    (alice,) = await users(server, "alice")
    resp = await server.post(f"{V3}/createRoom", body, token=alice)
    assert_error(resp, 400, "M_BAD_JSON")
    assert (await server.get(f"{V3}/joined_rooms", token=alice)).body == {"joined_rooms": []}


@pytest.mark.parametrize("body", [{"preset": "secret_chat"}, {"visibility": "hidden"}, {"invite": ["bob"]}])
async def test_create_room_invalid_values(server, body):
    (alice,) = await users(server, "alice")
    assert_error(await server.post(f"{V3}/createRoom", body, token=alice), 400, "M_INVALID_PARAM")


async def test_create_room_refusals(server):
    (alice,) = await users(server, "alice")
    assert_error(await server.post(f"{V3}/createRoom", {}), 401, "M_MISSING_TOKEN")
    assert_error(await server.post(f"{V3}/createRoom", data=b"{nope", token=alice), 400, "M_NOT_JSON")
    assert_error(await server.post(f"{V3}/createRoom", [1], token=alice), 400, "M_BAD_JSON")
    # Inviting a user who does not exist creates nothing.
    resp = await server.post(f"{V3}/createRoom", {"invite": ["@ghost:test.local"]}, token=alice)
    assert_error(resp, 404, "M_NOT_FOUND")
    assert (await server.get(f"{V3}/joined_rooms", token=alice)).body == {"joined_rooms": []}
    # An empty body is a room with every default.
    resp = await server.post(f"{V3}/createRoom", data=b"", token=alice)
    assert resp.status == 200, resp.body


@pytest.mark.parametrize("version", ["11", "12"])
async def test_create_room_initial_events_in_spec_order(server, version):
    alice, _bob, _carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(
        server,
        alice,
        room_version=version,
        preset="private_chat",
        name="Sales",
        topic="Deals",
        invite=[BOB, "@carol:test.local"],
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "com.example.b", "state_key": "2", "content": {}},
            {"type": "com.example.a", "state_key": "1", "content": {}},
        ],
    )
    assert await room_event_types(server, room_id) == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.guest_access", ""),
        ("m.room.encryption", ""),
        ("com.example.b", "2"),
        ("com.example.a", "1"),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.member", BOB),
        ("m.room.member", "@carol:test.local"),
    ]


# ------------------------------------------------------------------- send


async def test_send_is_idempotent_per_transaction_id(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    message = {"msgtype": "m.text", "body": "hello"}
    first = await send(server, alice, room_id, message, txn="m1")
    assert first.status == 200, first.body
    again = await send(server, alice, room_id, message, txn="m1")
    assert again.status == 200 and again.body["event_id"] == first.body["event_id"]
    other = await send(server, alice, room_id, message, txn="m2")
    assert other.status == 200 and other.body["event_id"] != first.body["event_id"]
    # Transaction IDs are scoped to the device: another device's m1 is a new event.
    second_device = (await server.login("alice"))["access_token"]
    elsewhere = await send(server, second_device, room_id, message, txn="m1")
    assert elsewhere.status == 200 and elsewhere.body["event_id"] != first.body["event_id"]
    types = [t for t, _k in await room_event_types(server, room_id)]
    assert types.count("m.room.message") == 3

    # The sending device sees its transaction ID; another device does not.
    path = f"{V3}/rooms/{q(room_id)}/event/{q(first.body['event_id'])}"
    own = await server.get(path, token=alice)
    assert own.body["unsigned"]["transaction_id"] == "m1"
    assert own.body["content"] == message and own.body["sender"] == ALICE
    assert "transaction_id" not in (await server.get(path, token=second_device)).body["unsigned"]


async def test_send_refuses_bad_content(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/t1"
    assert_error(await server.put(path, data=b"not json", token=alice), 400, "M_NOT_JSON")
    assert_error(await server.put(path, data=b"", token=alice), 400, "M_NOT_JSON")
    assert_error(await server.put(path, [1, 2], token=alice), 400, "M_BAD_JSON")
    assert_error(await server.put(path, data=b'"text"', token=alice), 400, "M_BAD_JSON")
    assert_error(await server.put(path, data=b'{"body": 1.5}', token=alice), 400, "M_BAD_JSON")
    assert_error(await server.put(path, {"n": 2**60}, token=alice), 400, "M_BAD_JSON")
    # Sending a redaction through /send would skip the redaction checks.
    assert_error(
        await send(server, alice, room_id, {"redacts": "$x"}, txn="t2", event_type="m.room.redaction"),
        400,
        "M_INVALID_PARAM",
    )


async def test_send_event_over_64k_is_too_large(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    resp = await send(server, alice, room_id, {"msgtype": "m.text", "body": "x" * 65536}, txn="big")
    assert_error(resp, 413, "M_TOO_LARGE")
    # Just under the limit (the PDU adds its own fields and signature) is fine.
    resp = await send(server, alice, room_id, {"msgtype": "m.text", "body": "x" * 60000}, txn="ok")
    assert resp.status == 200, resp.body


async def test_send_refusals(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice)
    message = {"msgtype": "m.text", "body": "hi"}
    assert_error(await send(server, bob, room_id, message, txn="t"), 403, "M_FORBIDDEN")
    assert_error(await send(server, alice, "!unknown:test.local", message, txn="t"), 404, "M_NOT_FOUND")
    assert_error(await send(server, alice, "not-a-room", message, txn="t"), 400, "M_INVALID_PARAM")
    assert_error(await send(server, alice, room_id, message, txn="x" * 256), 400, "M_INVALID_PARAM")
    assert_error(
        await send(server, alice, room_id, message, txn="t", event_type="x" * 256), 400, "M_INVALID_PARAM"
    )
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/send/m.room.message/t", message)
    assert_error(resp, 401, "M_MISSING_TOKEN")
    # A user who left can no longer send.
    public = await create_room(server, alice, preset="public_chat")
    await join(server, bob, public)
    assert (await server.post(f"{V3}/rooms/{q(public)}/leave", {}, token=bob)).status == 200
    assert_error(await send(server, bob, public, message, txn="t"), 403, "M_FORBIDDEN")


# ------------------------------------------------------------------ state


async def test_state_with_empty_key(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    # With and without the trailing slash, the state key is "".
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.name", {"name": "One"}, token=alice)
    assert resp.status == 200, resp.body
    assert (await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.name", token=alice)).body == {"name": "One"}
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.name/", {"name": "Two"}, token=alice)
    assert resp.status == 200, resp.body
    assert (await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.name/", token=alice)).body == {"name": "Two"}
    event = (await get_state(server, alice, room_id, "m.room.name", format="event")).body
    assert event["state_key"] == "" and event["event_id"] == resp.body["event_id"]
    assert event["unsigned"]["prev_content"] == {"name": "One"}
    assert event["type"] == "m.room.name" and event["room_id"] == room_id
    assert_error(await get_state(server, alice, room_id, "m.room.name", format="xml"), 400, "M_INVALID_PARAM")


async def test_state_keys_with_slashes(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    # Encoded and literal slashes both belong to the state key.
    resp = await put_state(server, alice, room_id, "com.example.doc", {"v": 1}, "a/b/c")
    assert resp.status == 200, resp.body
    literal = await server.get(f"{V3}/rooms/{q(room_id)}/state/com.example.doc/a/b/c", token=alice)
    assert literal.body == {"v": 1}
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/com.example.doc/x/y", {"v": 2}, token=alice)
    assert resp.status == 200, resp.body
    assert (await get_state(server, alice, room_id, "com.example.doc", "x/y")).body == {"v": 2}
    state = (await server.get(f"{V3}/rooms/{q(room_id)}/state", token=alice)).body
    keys = {e["state_key"] for e in state if e["type"] == "com.example.doc"}
    assert keys == {"a/b/c", "x/y"}
    assert_error(await get_state(server, alice, room_id, "com.example.doc", "a/b"), 404, "M_NOT_FOUND")


async def test_user_id_state_keys_belong_to_their_user(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    await join(server, bob, room_id)
    own = await put_state(server, alice, room_id, "com.example.status", {"s": "busy"}, ALICE)
    assert own.status == 200, own.body
    # Even the room's creator may not write a state key that is another user's ID.
    other = await put_state(server, alice, room_id, "com.example.status", {"s": "away"}, BOB)
    assert_error(other, 403, "M_FORBIDDEN")
    assert "auth rule" in other.body["error"]
    assert_error(await get_state(server, alice, room_id, "com.example.status", BOB), 404, "M_NOT_FOUND")


async def test_state_needs_power(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    await join(server, bob, room_id)
    refused = await put_state(server, bob, room_id, "m.room.name", {"name": "Bob's"})
    assert_error(refused, 403, "M_FORBIDDEN")
    assert "auth rule" in refused.body["error"] and "power" in refused.body["error"]
    assert_error(await put_state(server, bob, room_id, "m.room.power_levels", {"users": {BOB: 100}}), 403, "M_FORBIDDEN")
    # Non-members may not set state at all.
    (carol,) = await users(server, "carol")
    assert_error(await put_state(server, carol, room_id, "m.room.topic", {"topic": "x"}), 403, "M_FORBIDDEN")
    # Raise bob's level and he may.
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    levels["users"][BOB] = 50
    assert (await put_state(server, alice, room_id, "m.room.power_levels", levels)).status == 200
    assert (await put_state(server, bob, room_id, "m.room.name", {"name": "Bob's"})).status == 200


async def test_put_state_refusals(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    assert_error(await put_state(server, alice, room_id, "m.room.topic", [1]), 400, "M_BAD_JSON")
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.topic/", data=b"{", token=alice)
    assert_error(resp, 400, "M_NOT_JSON")
    assert_error(await put_state(server, alice, room_id, "m.room.topic", {}, "k" * 256), 400, "M_INVALID_PARAM")
    assert_error(await put_state(server, alice, "!nope:test.local", "m.room.topic", {}), 404, "M_NOT_FOUND")
    assert_error(await put_state(server, alice, "nope", "m.room.topic", {}), 400, "M_INVALID_PARAM")
    # There is only one create event.
    assert_error(await put_state(server, alice, room_id, "m.room.create", {}), 403, "M_FORBIDDEN")
    # Join rules, history visibility and guest access outside the spec's values
    # would lock people out of the room: refused.
    for event_type, content in [
        ("m.room.join_rules", {"join_rule": 5}),
        ("m.room.join_rules", {"join_rule": "invite-only"}),
        ("m.room.join_rules", {}),
        ("m.room.history_visibility", {"history_visibility": "everyone"}),
        ("m.room.guest_access", {"guest_access": True}),
    ]:
        assert_error(await put_state(server, alice, room_id, event_type, content), 400, "M_BAD_JSON")
    assert (await get_state(server, alice, room_id, "m.room.join_rules")).body == {"join_rule": "invite"}


async def test_get_state_by_membership(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat", name="Before")
    await join(server, bob, room_id)
    state = (await server.get(f"{V3}/rooms/{q(room_id)}/state", token=bob)).body
    by_key = {(e["type"], e["state_key"]): e for e in state}
    assert {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.name", ""),
            ("m.room.member", ALICE), ("m.room.member", BOB)} <= by_key.keys()
    assert all(e["room_id"] == room_id and "event_id" in e for e in state)
    assert len(state) == len(by_key)

    # A user who left sees the state as it was when they left.
    assert (await server.post(f"{V3}/rooms/{q(room_id)}/leave", {}, token=bob)).status == 200
    assert (await put_state(server, alice, room_id, "m.room.name", {"name": "After"})).status == 200
    assert (await put_state(server, alice, room_id, "m.room.topic", {"topic": "New"})).status == 200
    state = (await server.get(f"{V3}/rooms/{q(room_id)}/state", token=bob)).body
    by_key = {(e["type"], e["state_key"]): e for e in state}
    assert by_key[("m.room.name", "")]["content"] == {"name": "Before"}
    assert by_key[("m.room.member", BOB)]["content"]["membership"] == "leave"
    assert ("m.room.topic", "") not in by_key
    assert (await get_state(server, bob, room_id, "m.room.name")).body == {"name": "Before"}
    assert_error(await get_state(server, bob, room_id, "m.room.topic"), 404, "M_NOT_FOUND")
    assert (await get_state(server, alice, room_id, "m.room.name")).body == {"name": "After"}

    # Someone never in the room sees nothing.
    assert_error(await server.get(f"{V3}/rooms/{q(room_id)}/state", token=carol), 403, "M_FORBIDDEN")
    assert_error(await get_state(server, carol, room_id, "m.room.name"), 403, "M_FORBIDDEN")
    assert_error(await server.get(f"{V3}/rooms/{q('!nope:test.local')}/state", token=carol), 404, "M_NOT_FOUND")
    assert_error(await server.get(f"{V3}/rooms/nope/state", token=carol), 400, "M_INVALID_PARAM")


async def test_world_readable_state_is_readable_by_anyone(server):
    alice, carol = await users(server, "alice", "carol")
    room_id = await create_room(
        server,
        alice,
        name="Announcements",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}],
    )
    assert (await get_state(server, carol, room_id, "m.room.name")).body == {"name": "Announcements"}
    assert (await server.get(f"{V3}/rooms/{q(room_id)}/state", token=carol)).status == 200


# ------------------------------------------------------------ single event


async def test_get_event_visibility(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(
        server,
        alice,
        preset="public_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    before = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "before"}, txn="1")).body["event_id"]
    await join(server, bob, room_id)
    after = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "after"}, txn="2")).body["event_id"]

    def path(event_id: str) -> str:
        return f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}"

    assert (await server.get(path(after), token=bob)).body["content"]["body"] == "after"
    # history_visibility "joined": bob cannot see what was said before he joined.
    assert_error(await server.get(path(before), token=bob), 404, "M_NOT_FOUND")
    assert (await server.get(path(before), token=alice)).status == 200
    # A non-member learns nothing; an unknown event is simply not there.
    assert_error(await server.get(path(after), token=carol), 404, "M_NOT_FOUND")
    assert_error(await server.get(path("$" + "A" * 43), token=alice), 404, "M_NOT_FOUND")
    # An event of another room is not found through this one.
    other = await create_room(server, alice)
    other_event = (await send(server, alice, other, {"msgtype": "m.text", "body": "x"}, txn="3")).body["event_id"]
    assert_error(await server.get(path(other_event), token=alice), 404, "M_NOT_FOUND")
    assert_error(await server.get(f"{V3}/rooms/nope/event/{q(after)}", token=alice), 400, "M_INVALID_PARAM")
    # Once bob leaves, what he saw stays visible and what follows does not.
    assert (await server.post(f"{V3}/rooms/{q(room_id)}/leave", {}, token=bob)).status == 200
    later = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "later"}, txn="4")).body["event_id"]
    assert (await server.get(path(after), token=bob)).status == 200
    assert_error(await server.get(path(later), token=bob), 404, "M_NOT_FOUND")


# -------------------------------------------------------------- redaction


async def redact(server: TestServer, token: str, room_id: str, event_id: str, txn: str, **body: Any) -> Response:
    return await server.put(f"{V3}/rooms/{q(room_id)}/redact/{q(event_id)}/{q(txn)}", body, token=token)


@pytest.mark.parametrize("version", ["10", "12"])
async def test_redact_own_event(server, version):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat", room_version=version)
    await join(server, bob, room_id)
    sent = await send(server, bob, room_id, {"msgtype": "m.text", "body": "oops"}, txn="1")
    event_id = sent.body["event_id"]
    resp = await redact(server, bob, room_id, event_id, "r1", reason="typo")
    assert resp.status == 200, resp.body
    # Idempotent per transaction ID, like /send.
    assert (await redact(server, bob, room_id, event_id, "r1", reason="typo")).body == resp.body

    seen = (await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}", token=alice)).body
    assert seen["content"] == {}
    because = seen["unsigned"]["redacted_because"]
    assert because["event_id"] == resp.body["event_id"]
    assert because["type"] == "m.room.redaction" and because["sender"] == BOB
    assert because["redacts"] == event_id
    assert because["content"]["reason"] == "typo"
    if version == "12":
        assert because["content"]["redacts"] == event_id
    redaction = (await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(resp.body['event_id'])}", token=alice)).body
    assert redaction["redacts"] == event_id


async def test_redact_others_events_needs_power(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat")
    await join(server, bob, room_id)
    await join(server, carol, room_id)
    alice_msg = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "a"}, txn="1")).body["event_id"]
    bob_msg = (await send(server, bob, room_id, {"msgtype": "m.text", "body": "b"}, txn="1")).body["event_id"]
    refused = await redact(server, carol, room_id, bob_msg, "r1")
    assert_error(refused, 403, "M_FORBIDDEN")
    assert "power level 50" in refused.body["error"]
    assert_error(await redact(server, bob, room_id, alice_msg, "r1"), 403, "M_FORBIDDEN")
    # The creator (a moderator) may redact anyone's.
    assert (await redact(server, alice, room_id, bob_msg, "r1")).status == 200
    seen = (await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(bob_msg)}", token=carol)).body
    assert seen["content"] == {} and seen["unsigned"]["redacted_because"]["sender"] == ALICE
    # Redacting a state event keeps the keys the redaction algorithm keeps.
    name_id = (await put_state(server, alice, room_id, "m.room.join_rules", {"join_rule": "public", "x": 1})).body[
        "event_id"
    ]
    assert (await redact(server, alice, room_id, name_id, "r2")).status == 200
    assert (await get_state(server, alice, room_id, "m.room.join_rules")).body == {"join_rule": "public"}


async def test_redact_refusals(server):
    alice, carol = await users(server, "alice", "carol")
    room_id = await create_room(server, alice)
    create_id = (await get_state(server, alice, room_id, "m.room.create", format="event")).body["event_id"]
    assert_error(await redact(server, alice, room_id, create_id, "r1"), 403, "M_FORBIDDEN")
    assert_error(await redact(server, alice, room_id, "$" + "B" * 43, "r2"), 404, "M_NOT_FOUND")
    msg = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "a"}, txn="1")).body["event_id"]
    # Non-members may not redact, even events they could name.
    assert_error(await redact(server, carol, room_id, msg, "r3"), 403, "M_FORBIDDEN")
    # An event of another room is unknown in this one.
    other = await create_room(server, alice)
    assert_error(await redact(server, alice, other, msg, "r4"), 404, "M_NOT_FOUND")
    assert_error(await redact(server, alice, "!nope:test.local", msg, "r5"), 404, "M_NOT_FOUND")
    assert_error(await redact(server, alice, room_id, msg, "r6", reason=5), 400, "M_BAD_JSON")


# --------------------------------------------------------- signing, hashes


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_events_are_hashed_and_signed(server, version):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, room_version=version, name="Signed", preset="public_chat")
    await join(server, bob, room_id)
    sent = await send(server, bob, room_id, {"msgtype": "m.text", "body": "signed \u2603"}, txn="1")
    redaction = await redact(server, alice, room_id, sent.body["event_id"], "r1")
    rows = await server.hs.storage.db.fetchall("test", "SELECT event_id FROM events WHERE room_id = ?", (room_id,))
    event_ids = [r[0] for r in rows]
    assert sent.body["event_id"] in event_ids and redaction.body["event_id"] in event_ids
    verify_key = get_verify_key(server.hs.signing_key)
    room_version = ROOM_VERSIONS[version]
    for event_id in event_ids:
        event = await server.hs.storage.events.get_event(event_id)
        assert event is not None
        pdu = json.loads(json.dumps(event.pdu))  # as stored and sent over federation
        # The stored PDU is the full event (a redaction is applied when serving it).
        assert decode_base64(pdu["hashes"]["sha256"]) == compute_content_hash(pdu)
        verify_event_signature(pdu, room_version, "test.local", verify_key)
        assert compute_event_id(pdu, room_version) == event_id
        assert "event_id" not in pdu
        assert list(pdu["signatures"]) == ["test.local"]


# ------------------------------------------------------------ power levels


async def test_v12_creators_have_unlimited_power(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(
        server,
        alice,
        preset="public_chat",
        creation_content={"additional_creators": [BOB]},
        power_level_content_override={"users": {"@carol:test.local": 100}},
    )
    await join(server, bob, room_id)
    await join(server, carol, room_id)
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    assert levels["users"] == {"@carol:test.local": 100}
    # Creators are not listed in the power levels, and cannot be.
    levels["users"][ALICE] = 100
    refused = await put_state(server, alice, room_id, "m.room.power_levels", levels)
    assert_error(refused, 403, "M_FORBIDDEN")
    # Even a level-100 admin cannot kick or ban a creator.
    kick = await server.post(f"{V3}/rooms/{q(room_id)}/kick", {"user_id": BOB}, token=carol)
    assert_error(kick, 403, "M_FORBIDDEN")
    # A creator outranks everyone: bob (additional creator) may demote carol.
    levels["users"] = {}
    assert (await put_state(server, bob, room_id, "m.room.power_levels", levels)).status == 200
    # Listing a creator in power_level_content_override makes an invalid room.
    resp = await server.post(
        f"{V3}/createRoom", {"power_level_content_override": {"users": {ALICE: 100}}}, token=alice
    )
    assert_error(resp, 400, "M_INVALID_ROOM_STATE")


async def test_v11_creators_have_level_100(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat", room_version="11")
    await join(server, bob, room_id)
    levels = (await get_state(server, alice, room_id, "m.room.power_levels")).body
    # In v11 the creator is an ordinary admin: she may step down, and be kicked.
    levels["users"] = {ALICE: 50, BOB: 100}
    assert (await put_state(server, alice, room_id, "m.room.power_levels", levels)).status == 200
    assert (await server.post(f"{V3}/rooms/{q(room_id)}/kick", {"user_id": ALICE}, token=bob)).status == 200


async def test_transaction_ids_are_scoped_by_event_type(server):
    # As Synapse scopes them by request path: the same transaction ID on
    # /send/m.room.message, /send/m.reaction and /redact names three requests.
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    first = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "a"}, txn="t1")).body["event_id"]
    second = (await send(server, alice, room_id, {"msgtype": "m.text", "body": "b"}, txn="t2")).body["event_id"]
    reaction = await send(
        server, alice, room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": second, "key": "x"}},
        txn="t1", event_type="m.reaction",
    )
    assert reaction.status == 200 and reaction.body["event_id"] != first
    redaction = await redact(server, alice, room_id, first, "t1")
    assert redaction.status == 200 and redaction.body["event_id"] not in (first, reaction.body["event_id"])
    assert (await redact(server, alice, room_id, first, "t1")).body == redaction.body
    # Redacting another event under a used ID would report a redaction that never happened.
    assert_error(await redact(server, alice, room_id, second, "t1"), 400, "M_INVALID_PARAM")


async def test_nul_in_event_content_is_kept_and_never_a_server_error(server):
    """Content may hold NUL (JSON escapes it); the columns extracted from it
    (search text, member names, relations) cannot, on PostgreSQL."""
    alice = await server.register_user("alice")
    t = alice["access_token"]
    room = (await server.post(f"{V3}/createRoom", {"preset": "public_chat"}, token=t)).body["room_id"]
    q = quote(room, safe="")
    sends = [
        ("send/m.room.message/n0", {"msgtype": "m.text", "body": "needle\u0000b"}),
        ("state/m.room.topic/", {"topic": "a\u0000"}),
        ("state/m.room.name/", {"name": "a\u0000"}),
        (f"state/m.room.member/{quote(alice['user_id'])}", {"membership": "join", "displayname": "Al\u0000ice"}),
        ("send/m.room.message/n1", {"msgtype": "m.text", "body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": "$a\u0000"}}),
    ]
    ids = []
    for path, content in sends:
        resp = await server.put(f"{V3}/rooms/{q}/{path}", content, token=t)
        assert resp.status == 200, (path, resp.body)
        ids.append(resp.body["event_id"])
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": ids[0], "key": "k\u0000"}}
    resp = await server.put(f"{V3}/rooms/{q}/send/m.reaction/n2", reaction, token=t)
    assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM", resp.body
    got = await server.get(f"{V3}/rooms/{q}/event/{quote(ids[0])}", token=t)
    assert got.body["content"]["body"] == "needle\u0000b"
    assert (await server.get(f"{V3}/sync", token=t)).status == 200
    found = await server.post(f"{V3}/search", {"search_categories": {"room_events": {"search_term": "needle"}}}, token=t)
    assert found.status == 200 and found.body["search_categories"]["room_events"]["count"] == 1
    members = await server.get(f"{V3}/rooms/{q}/joined_members", token=t)
    assert members.body["joined"][alice["user_id"]]["display_name"] == "Alice"
