"""Simplified Sliding Sync (MSC4186) over real HTTP, on both engines.

Both dialects: the MSC's (`POST /_matrix/client/v4/sync`, everything in the
body, `range`, required_state as include/exclude, `stripped_state`) and the
one clients use today (`/unstable/org.matrix.simplified_msc3575/sync`, `pos`
and `timeout` in the query, `ranges`, [type, state_key] pairs with "*" and
"$LAZY", `invite_state`, notification counts).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .test_sync import V3, create_room, join, membership, put_state, q, send, tokens, uid

if TYPE_CHECKING:
    from .conftest import Response, TestServer

UNSTABLE = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V4 = "/_matrix/client/v4/sync"
ALL_STATE = [["*", "*"]]


def room_list(
    ranges: list[list[int]] | None = None, *, limit: int = 1, state: Any = None, **filters: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"timeline_limit": limit, "required_state": state if state is not None else []}
    if ranges is not None:
        spec["ranges"] = ranges
    if filters:
        spec["filters"] = filters
    return spec


async def ss_raw(server: TestServer, token: str, body: dict[str, Any], *, pos: str | None = None,
                 timeout: int | None = None, v4: bool = False) -> Response:
    if v4:
        body = {**body, **({"pos": pos} if pos else {}), **({"timeout": timeout} if timeout is not None else {})}
        return await server.post(V4, body, token=token)
    params = {}
    if pos is not None:
        params["pos"] = pos
    if timeout is not None:
        params["timeout"] = str(timeout)
    return await server.post(UNSTABLE, body, token=token, params=params)


async def ss(server: TestServer, token: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = await ss_raw(server, token, body, **kw)
    assert resp.status == 200, resp.body
    assert isinstance(resp.body["pos"], str)
    return resp.body


def bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"].get("body") for e in room.get("timeline", []) if e["type"] == "m.room.message"]


def state_keys(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in room.get("required_state", [])}


async def rooms_in_order(server: TestServer, n: int) -> tuple[dict[str, str], list[str]]:
    """alice and bob in n named rooms, room i last active i-th (so the last is newest)."""
    t = await tokens(server, "alice", "bob")
    rooms = []
    for i in range(n):
        room_id = await create_room(server, t["alice"], name=f"room {i}")
        await join(server, t["bob"], room_id)
        rooms.append(room_id)
    for i, room_id in enumerate(rooms):
        await send(server, t["alice"], room_id, f"message {i}")
    return t, rooms


# ------------------------------------------------------------------ discovery


async def test_versions_advertises_simplified_sliding_sync(server: TestServer) -> None:
    resp = await server.get("/_matrix/client/versions")
    assert resp.body["unstable_features"]["org.matrix.simplified_msc3575"] is True


# ---------------------------------------------------------------- room lists


async def test_list_orders_rooms_by_activity_and_counts_them(server: TestServer) -> None:
    t, rooms = await rooms_in_order(server, 5)
    body = await ss(server, t["bob"], {"lists": {"all": room_list([[0, 2]], limit=1)}})
    assert body["lists"]["all"]["count"] == 5
    # The newest three, each initial, with the latest message and the list it matched.
    assert set(body["rooms"]) == set(rooms[2:])
    for i in (2, 3, 4):
        room = body["rooms"][rooms[i]]
        assert room["initial"] is True
        assert room["name"] == f"room {i}"
        assert bodies(room) == [f"message {i}"]
        assert room["lists"] == ["all"]
        assert room["membership"] == "join"
        assert room["joined_count"] == 2 and room["invited_count"] == 0
        assert room["limited"] is True  # more history than one event
        assert room["num_live"] == 0
    stamps = [body["rooms"][rooms[i]]["bump_stamp"] for i in (2, 3, 4)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3

    # Widening the window sends only the rooms not sent yet.
    again = await ss(server, t["bob"], {"lists": {"all": room_list([[0, 4]], limit=1)}}, pos=body["pos"])
    assert set(again["rooms"]) == set(rooms[:2])
    # A message bubbles its room to the top, and only that room comes.
    await send(server, t["alice"], rooms[0], "bump")
    third = await ss(server, t["bob"], {"lists": {"all": room_list([[0, 0]], limit=1)}}, pos=again["pos"])
    assert list(third["rooms"]) == [rooms[0]]
    room = third["rooms"][rooms[0]]
    assert "initial" not in room
    assert bodies(room) == ["bump"]
    assert room["num_live"] == 1
    assert "name" not in room  # unchanged
    assert room["bump_stamp"] > stamps[-1]


async def test_v4_dialect_uses_the_msc_request_and_response_shapes(server: TestServer) -> None:
    t, rooms = await rooms_in_order(server, 3)
    body = await ss(
        server, t["bob"],
        {"lists": {"all": {"range": [0, 9], "timeline_limit": 2,
                           "required_state": {"include": [{}], "exclude": [{"type": "m.room.create"}]}}}},
        v4=True,
    )
    assert body["lists"]["all"]["count"] == 3
    room = body["rooms"][rooms[1]]
    keys = state_keys(room)
    assert ("m.room.name", "") in keys and ("m.room.member", uid("bob")) in keys
    assert ("m.room.create", "") not in keys
    assert "notification_count" not in room
    # The position continues the connection, given in the body.
    await send(server, t["alice"], rooms[0], "new")
    again = await ss(server, t["bob"], {"lists": {"all": {"range": [0, 9], "timeline_limit": 2,
                                                          "required_state": {}}}}, pos=body["pos"], v4=True)
    assert list(again["rooms"]) == [rooms[0]] and bodies(again["rooms"][rooms[0]]) == ["new"]


async def test_required_state_wildcards_lazy_members_and_me(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob", "carol", "dave")
    room_id = await create_room(server, t["alice"], name="Lazy", topic="topic")
    for who in ("bob", "carol", "dave"):
        await join(server, t[who], room_id)
    await send(server, t["carol"], room_id, "from carol")
    body = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=1, state=[
        ["m.room.topic", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"]])}})
    room = body["rooms"][room_id]
    assert state_keys(room) == {
        ("m.room.topic", ""), ("m.room.member", uid("carol")), ("m.room.member", uid("bob")),
    }
    # Every state event, but no members: type wildcard with exclude (v4).
    body = await ss(server, t["bob"], {"lists": {"l": {"range": [0, 0], "timeline_limit": 0, "required_state": {
        "include": [{}], "exclude": [{"type": "m.room.member"}]}}}}, v4=True)
    keys = state_keys(body["rooms"][room_id])
    assert ("m.room.create", "") in keys and ("m.room.topic", "") in keys
    assert not any(k[0] == "m.room.member" for k in keys)
    assert "timeline" in body["rooms"][room_id] and body["rooms"][room_id]["timeline"] == []


async def test_incremental_state_changes_and_removed_state_stub(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Before")
    await join(server, t["bob"], room_id)
    body = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=1, state=ALL_STATE)}})
    await put_state(server, t["alice"], room_id, "m.room.name", {"name": "After"})
    await put_state(server, t["alice"], room_id, "m.room.avatar", {"url": "mxc://test.local/abc"})
    again = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=1, state=ALL_STATE)}},
                     pos=body["pos"])
    room = again["rooms"][room_id]
    assert room["name"] == "After" and room["avatar"] == "mxc://test.local/abc"
    assert state_keys(room) == {("m.room.name", ""), ("m.room.avatar", "")}
    assert room["limited"] is True and room["num_live"] == 1
    # Removing the avatar (empty content) reports avatar null.
    await put_state(server, t["alice"], room_id, "m.room.avatar", {})
    third = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=1, state=ALL_STATE)}},
                     pos=again["pos"])
    assert third["rooms"][room_id]["avatar"] is None


async def test_heroes_name_an_unnamed_room_and_dm_flags(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    resp = await server.put(f"{V3}/profile/{q(uid('alice'))}/displayname", {"displayname": "Alice A"},
                            token=t["alice"])
    assert resp.status == 200
    dm = await create_room(server, t["alice"], preset="trusted_private_chat", invite=[uid("bob")], is_direct=True)
    group = await create_room(server, t["alice"], name="Group", invite=[uid("bob")])
    body = await ss(server, t["bob"], {"lists": {"dms": room_list(None, limit=0, is_dm=True),
                                                 "invites": room_list(None, limit=0, is_invite=True)}})
    assert body["lists"]["dms"]["count"] == 1 and body["lists"]["invites"]["count"] == 2
    invite = body["rooms"][dm]
    assert invite["membership"] == "invite" and invite["is_dm"] is True and invite["initial"] is True
    assert {(e["type"], e["state_key"]) for e in invite["invite_state"]} >= {("m.room.create", ""),
                                                                             ("m.room.member", uid("bob"))}
    assert sorted(invite["lists"]) == ["dms", "invites"]
    assert body["rooms"][group]["lists"] == ["invites"]
    await join(server, t["bob"], dm)
    resp = await server.put(f"{V3}/user/{q(uid('bob'))}/account_data/m.direct", {uid("alice"): [dm]},
                            token=t["bob"])
    assert resp.status == 200
    again = await ss(server, t["bob"], {"lists": {"dms": room_list(None, limit=5, is_dm=True)}}, pos=body["pos"])
    room = again["rooms"][dm]
    # Joined after an invite: the room is new to the connection.
    assert room["initial"] is True and room["membership"] == "join" and room["is_dm"] is True
    assert "name" not in room
    assert room["heroes"] == [{"user_id": uid("alice"), "displayname": "Alice A"}]
    assert group not in again["rooms"]


async def test_filters_encrypted_room_types_tags_and_spaces(server: TestServer) -> None:
    t = await tokens(server, "alice")
    plain = await create_room(server, t["alice"], name="plain")
    secret = await create_room(server, t["alice"], name="secret", initial_state=[
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    space = await create_room(server, t["alice"], name="space", creation_content={"type": "m.space"})
    await put_state(server, t["alice"], space, "m.space.child", {"via": ["test.local"]}, plain)
    resp = await server.put(f"{V3}/user/{q(uid('alice'))}/rooms/{q(secret)}/tags/u.work", {}, token=t["alice"])
    assert resp.status == 200

    async def listed(**filters: Any) -> set[str]:
        body = await ss(server, t["alice"], {"lists": {"l": room_list(None, limit=0, **filters)}})
        assert body["lists"]["l"]["count"] == len(body["rooms"])
        return set(body["rooms"])

    assert await listed(is_encrypted=True) == {secret}
    assert await listed(is_encrypted=False) == {plain, space}
    assert await listed(room_types=["m.space"]) == {space}
    assert await listed(not_room_types=["m.space"]) == {plain, secret}
    assert await listed(room_types=[None]) == {plain, secret}
    assert await listed(tags=["u.work"]) == {secret}
    assert await listed(not_tags=["u.work"]) == {plain, space}
    assert await listed(spaces=[space]) == {plain}
    assert await listed(spaces=["!unknown:test.local"]) == set()


# ------------------------------------------------------------- subscriptions


async def test_subscriptions_only_for_rooms_the_user_may_see(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    mine = await create_room(server, t["bob"], name="mine")
    theirs = await create_room(server, t["alice"], name="theirs")
    await send(server, t["alice"], theirs, "private")
    body = await ss(server, t["bob"], {"room_subscriptions": {
        mine: {"timeline_limit": 5, "required_state": ALL_STATE},
        theirs: {"timeline_limit": 5, "required_state": ALL_STATE},
        "!nonexistent:test.local": {"timeline_limit": 5, "required_state": []},
    }})
    assert set(body["rooms"]) == {mine}
    assert "lists" not in body["rooms"][mine]
    # Subscriptions stay until unsubscribed: a new message comes through.
    await send(server, t["bob"], mine, "later")
    again = await ss(server, t["bob"], {}, pos=body["pos"])
    assert bodies(again["rooms"][mine]) == ["later"]
    third = await ss(server, t["bob"], {"unsubscribe_rooms": [mine]}, pos=again["pos"])
    await send(server, t["bob"], mine, "unseen")
    fourth = await ss(server, t["bob"], {}, pos=third["pos"])
    assert mine not in fourth["rooms"]


async def test_a_room_back_in_the_window_gets_what_it_missed(server: TestServer) -> None:
    t, rooms = await rooms_in_order(server, 3)
    top = {"lists": {"l": room_list([[0, 0]], limit=10)}}
    body = await ss(server, t["bob"], top)
    assert list(body["rooms"]) == [rooms[2]]
    # rooms[2] drops out of the window while it receives messages...
    await send(server, t["alice"], rooms[1], "bump 1")
    body = await ss(server, t["bob"], top, pos=body["pos"])
    assert list(body["rooms"]) == [rooms[1]]
    await send(server, t["alice"], rooms[2], "missed")
    await send(server, t["alice"], rooms[1], "bump 1 again")
    body = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=10)}}, pos=body["pos"])
    assert list(body["rooms"]) == [rooms[1]]
    # ...and brings them when it comes back (not as new, not repeating the old).
    await send(server, t["alice"], rooms[2], "back")
    body = await ss(server, t["bob"], top, pos=body["pos"])
    assert list(body["rooms"]) == [rooms[2]]
    assert bodies(body["rooms"][rooms[2]]) == ["missed", "back"]
    assert "initial" not in body["rooms"][rooms[2]]


async def test_raising_the_timeline_limit_expands_the_timeline_at_once(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"], name="history")
    for i in range(5):
        await send(server, t["alice"], room_id, f"m{i}")
    body = await ss(server, t["alice"], {"lists": {"l": room_list([[0, 0]], limit=1)}})
    assert bodies(body["rooms"][room_id]) == ["m4"]
    again = await ss(server, t["alice"], {"lists": {"l": room_list([[0, 0]], limit=3)}}, pos=body["pos"], timeout=5000)
    room = again["rooms"][room_id]
    assert bodies(room) == ["m2", "m3", "m4"]
    assert room["unstable_expanded_timeline"] is True and room["limited"] is True
    assert room["num_live"] == 0
    # The prev_batch continues in /messages.
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/messages", token=t["alice"],
                            params={"dir": "b", "from": room["prev_batch"], "limit": "1"})
    assert resp.status == 200 and [e["content"].get("body") for e in resp.body["chunk"]] == ["m1"]


# ---------------------------------------------------------------- long-poll


async def test_long_poll_waits_then_wakes_for_a_message(server: TestServer) -> None:
    t, rooms = await rooms_in_order(server, 2)
    request = {"lists": {"l": room_list([[0, 9]], limit=5)}}
    body = await ss(server, t["bob"], request)
    started = time.monotonic()
    empty = await ss(server, t["bob"], request, pos=body["pos"], timeout=300)
    assert time.monotonic() - started >= 0.25
    assert empty["rooms"] == {}
    poll = asyncio.create_task(ss(server, t["bob"], request, pos=empty["pos"], timeout=20000))
    await asyncio.sleep(0.2)
    assert not poll.done()
    started = time.monotonic()
    await send(server, t["alice"], rooms[0], "wake up")
    woken = await asyncio.wait_for(poll, 10)
    assert time.monotonic() - started < 5
    assert bodies(woken["rooms"][rooms[0]]) == ["wake up"]
    assert woken["rooms"][rooms[0]]["num_live"] == 1


async def test_pos_belongs_to_its_user_device_and_connection(server: TestServer) -> None:
    t, _rooms = await rooms_in_order(server, 1)
    body = await ss(server, t["bob"], {"conn_id": "main", "lists": {"l": room_list([[0, 0]])}})
    for token, conn, pos in (
        (t["alice"], "main", body["pos"]),       # another user
        (t["bob"], "other", body["pos"]),        # another connection
        (t["bob"], "main", "999999." + body["pos"].split(".", 1)[1]),  # never issued
        (t["bob"], "main", "garbage"),
    ):
        resp = await ss_raw(server, token, {"conn_id": conn}, pos=pos)
        assert resp.status == 400 and resp.body["errcode"] == "M_UNKNOWN_POS", resp.body
    # A second login of bob (another device) cannot use it either.
    login = await server.post(f"{V3}/login", {"type": "m.login.password", "identifier": {
        "type": "m.id.user", "user": "bob"}, "password": "correct horse battery"})
    assert login.status == 200
    resp = await ss_raw(server, login.body["access_token"], {"conn_id": "main"}, pos=body["pos"])
    assert resp.body["errcode"] == "M_UNKNOWN_POS"
    # The same position may be retried (a client that lost the response).
    await ss(server, t["bob"], {"conn_id": "main"}, pos=body["pos"])
    await ss(server, t["bob"], {"conn_id": "main"}, pos=body["pos"])


async def test_bad_requests_get_clear_errors(server: TestServer) -> None:
    t = await tokens(server, "alice")
    resp = await server.post(UNSTABLE, {})
    assert resp.status == 401
    cases: list[tuple[Any, dict[str, str]]] = [
        ({"lists": {"l": {"ranges": [[5, 1]], "timeline_limit": 1, "required_state": []}}}, {}),
        ({"lists": {"l": {"ranges": "all", "timeline_limit": 1, "required_state": []}}}, {}),
        ({"lists": {"l": {"timeline_limit": -1, "required_state": []}}}, {}),
        ({"lists": {"l": {"timeline_limit": 1, "required_state": [["only-type"]]}}}, {}),
        ({"lists": {"l": {"timeline_limit": 1, "required_state": [], "filters": {"is_dm": "yes"}}}}, {}),
        ({"lists": {f"l{i}": {"timeline_limit": 1, "required_state": []} for i in range(101)}}, {}),
        ({"room_subscriptions": {f"!r{i}:x": {"timeline_limit": 1} for i in range(101)}}, {}),
        ({"extensions": {"e2ee": []}}, {}),
        ({"conn_id": 5}, {}),
        ({}, {"timeout": "soon"}),
        ({}, {"set_presence": "away"}),
    ]
    for body, params in cases:
        resp = await server.post(UNSTABLE, body, token=t["alice"], params=params)
        assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM", (body, resp.body)
    resp = await server.post(UNSTABLE, data="{not json", token=t["alice"], headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.body["errcode"] == "M_NOT_JSON"
    resp = await server.post(UNSTABLE, [1, 2], token=t["alice"])
    assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON"


# ---------------------------------------------------------------- extensions


async def test_extensions_to_device_e2ee_account_data_receipts_typing(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="ext")
    await join(server, t["bob"], room_id)
    event_id = await send(server, t["alice"], room_id, "read me")
    whoami = await server.get(f"{V3}/account/whoami", token=t["bob"])
    bob_device = whoami.body["device_id"]
    request = {
        "lists": {"l": room_list([[0, 0]], limit=1)},
        "extensions": {name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")},
    }
    body = await ss(server, t["bob"], request)
    ext = body["extensions"]
    assert any(e["type"] == "m.push_rules" for e in ext["account_data"]["global"])
    assert ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert ext["to_device"]["events"] == []

    # Sticky: later requests need not repeat the extensions.
    resp = await server.put(f"{V3}/sendToDevice/m.test/txn1", {"messages": {uid("bob"): {bob_device: {"n": 1}}}},
                            token=t["alice"])
    assert resp.status == 200
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/typing/{q(uid('alice'))}", {"typing": True, "timeout": 30000},
                            token=t["alice"])
    assert resp.status == 200
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {}, token=t["alice"])
    assert resp.status == 200
    resp = await server.put(f"{V3}/user/{q(uid('bob'))}/rooms/{q(room_id)}/account_data/m.fully_read.test",
                            {"x": 1}, token=t["bob"])
    assert resp.status == 200
    again = await ss(server, t["bob"], {"lists": {"l": room_list([[0, 0]], limit=1)}}, pos=body["pos"], timeout=5000)
    ext = again["extensions"]
    assert [m["content"] for m in ext["to_device"]["events"]] == [{"n": 1}]
    assert ext["to_device"]["events"][0]["sender"] == uid("alice")
    assert ext["typing"]["rooms"][room_id]["content"]["user_ids"] == [uid("alice")]
    assert uid("alice") in ext["receipts"]["rooms"][room_id]["content"][event_id]["m.read"]
    assert ext["account_data"]["rooms"][room_id] == [{"type": "m.fully_read.test", "content": {"x": 1}}]
    # Acknowledged by continuing from next_batch: not delivered twice.
    third = await ss(server, t["bob"], {"extensions": {"to_device": {"since": ext["to_device"]["next_batch"]}}},
                     pos=again["pos"])
    assert third["extensions"]["to_device"]["events"] == []


async def test_own_receipt_updates_notification_counts(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="counts")
    await join(server, t["bob"], room_id)
    request = {"lists": {"l": room_list([[0, 0]], limit=1)}}
    body = await ss(server, t["bob"], request)
    last = await send(server, t["alice"], room_id, "one")
    body = await ss(server, t["bob"], request, pos=body["pos"])
    assert body["rooms"][room_id]["notification_count"] == 1
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(last)}", {}, token=t["bob"])
    assert resp.status == 200
    body = await ss(server, t["bob"], request, pos=body["pos"], timeout=5000)
    assert body["rooms"][room_id]["notification_count"] == 0
    assert body["rooms"][room_id]["timeline"] == []


async def test_left_and_kicked_rooms(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    left = await create_room(server, t["alice"], name="left")
    kicked = await create_room(server, t["alice"], name="kicked")
    for room_id in (left, kicked):
        await join(server, t["bob"], room_id)
    request = {"lists": {"l": room_list([[0, 9]], limit=5)}}
    body = await ss(server, t["bob"], request)
    assert set(body["rooms"]) == {left, kicked}
    await membership(server, t["bob"], left, "leave")
    await membership(server, t["alice"], kicked, "kick", user_id=uid("bob"))
    await send(server, t["alice"], kicked, "after the kick")
    body = await ss(server, t["bob"], request, pos=body["pos"])
    assert body["rooms"][left]["membership"] == "leave"
    assert body["rooms"][kicked]["membership"] == "leave"
    assert "after the kick" not in bodies(body["rooms"][kicked])
    # A new connection shows the kick, but not the room bob left himself.
    fresh = await ss(server, t["bob"], request)
    assert set(fresh["rooms"]) == {kicked}
    assert fresh["lists"]["l"]["count"] == 1


async def test_messages_accepts_a_pos(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"], name="pos")
    await send(server, t["alice"], room_id, "before")
    body = await ss(server, t["alice"], {"lists": {"l": room_list([[0, 0]], limit=0)}})
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/messages", token=t["alice"],
                            params={"dir": "b", "from": body["pos"], "limit": "1"})
    assert resp.status == 200, resp.body
    assert [e["content"].get("body") for e in resp.body["chunk"]] == ["before"]


async def test_concurrent_sends_while_long_polling_miss_and_repeat_nothing(server: TestServer) -> None:
    """Senders in three rooms while a client long-polls a window of one
    (rooms move in and out of it) plus a subscription: every message
    arrives exactly once, in order, when its room is in view."""
    t, rooms = await rooms_in_order(server, 3)
    request = {"lists": {"top": room_list([[0, 0]], limit=50)},
               "room_subscriptions": {rooms[0]: {"timeline_limit": 50, "required_state": []}}}
    body = await ss(server, t["bob"], request)
    seen: dict[str, list[str]] = {r: bodies(body["rooms"].get(r, {})) for r in rooms}
    per_room = 15

    async def sender(room_id: str, token: str) -> None:
        for i in range(per_room):
            await send(server, token, room_id, f"{room_id} {i}")

    senders = asyncio.gather(*(sender(r, t["alice"]) for r in rooms))
    pos = body["pos"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = await ss(server, t["bob"], {**request, "room_subscriptions": {}}, pos=pos, timeout=1000)
        pos = body["pos"]
        for room_id, room in body["rooms"].items():
            assert not room.get("limited"), room  # the limit is never reached
            seen[room_id].extend(bodies(room))
        if senders.done() and all(len([b for b in seen[r] if b.startswith(r)]) == per_room for r in rooms):
            break
    await senders
    # A last look at every room (widening the window) brings what was out of view.
    body = await ss(server, t["bob"], {"lists": {"top": room_list([[0, 2]], limit=50)}}, pos=pos)
    for room_id, room in body["rooms"].items():
        seen[room_id].extend(bodies(room))
    for room_id in rooms:
        mine = [b for b in seen[room_id] if b.startswith(room_id)]
        assert mine == [f"{room_id} {i}" for i in range(per_room)], (room_id, seen[room_id])


async def test_a_config_the_sent_state_already_covers_sends_nothing_new(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"], name="covered", topic="t")
    sub = {room_id: {"timeline_limit": 3, "required_state": ALL_STATE}}
    body = await ss(server, t["alice"], {"room_subscriptions": sub})
    assert ("m.room.topic", "") in state_keys(body["rooms"][room_id])
    # The room also enters a list asking for a subset: nothing to send.
    narrower = room_list([[0, 0]], limit=1, state=[["m.room.topic", ""], ["m.room.member", "$LAZY"]])
    again = await ss(server, t["alice"], {"lists": {"l": narrower}}, pos=body["pos"])
    assert again["rooms"] == {}
    # Asking for more than was sent (the subscription gone, then back wider) sends the new state.
    third = await ss(server, t["alice"], {"unsubscribe_rooms": [room_id],
                                          "lists": {"l": room_list([[0, 0]], limit=1, state=[["m.room.name", ""]])}},
                     pos=again["pos"])
    assert third["rooms"] == {}
    fourth = await ss(server, t["alice"], {"lists": {"l": room_list([[0, 0]], limit=1, state=[
        ["m.room.name", ""], ["m.room.topic", ""]])}}, pos=third["pos"])
    assert state_keys(fourth["rooms"][room_id]) == {("m.room.topic", "")}


async def test_two_connections_of_one_device_are_independent(server: TestServer) -> None:
    """Element X keeps a room-list connection and an encryption one (extensions only)."""
    t, rooms = await rooms_in_order(server, 2)
    whoami = await server.get(f"{V3}/account/whoami", token=t["bob"])
    device = whoami.body["device_id"]
    room_list_conn = await ss(server, t["bob"], {"conn_id": "room-list", "lists": {"l": room_list([[0, 9]])}})
    encryption = await ss(server, t["bob"], {"conn_id": "encryption", "extensions": {
        "to_device": {"enabled": True}, "e2ee": {"enabled": True}}})
    assert encryption["rooms"] == {} and encryption["lists"] == {}
    resp = await server.put(f"{V3}/sendToDevice/m.test/t2", {"messages": {uid("bob"): {device: {"k": 2}}}},
                            token=t["alice"])
    assert resp.status == 200
    await send(server, t["alice"], rooms[0], "for the room list")
    encryption = await ss(server, t["bob"], {"conn_id": "encryption"}, pos=encryption["pos"], timeout=5000)
    assert [e["content"] for e in encryption["extensions"]["to_device"]["events"]] == [{"k": 2}]
    assert encryption["rooms"] == {}
    room_list_conn = await ss(server, t["bob"], {"conn_id": "room-list", "lists": {"l": room_list([[0, 9]])}},
                              pos=room_list_conn["pos"], timeout=5000)
    assert bodies(room_list_conn["rooms"][rooms[0]]) == ["for the room list"]
    assert "to_device" not in room_list_conn["extensions"]
    # Each position belongs to its own connection only.
    resp = await ss_raw(server, t["bob"], {"conn_id": "room-list"}, pos=encryption["pos"])
    assert resp.body["errcode"] == "M_UNKNOWN_POS"
