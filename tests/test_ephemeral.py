"""Typing, receipts and read markers, account data, tags and presence, over
real HTTP on both engines: every endpoint's successes and refusals, and the
`get_updates` interfaces /sync reads, called directly, with the notifier
waking the syncs a change concerns.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from homeserver.api import ephemeral as ephemeral_api
from homeserver.ephemeral import presence as presence_module
from homeserver.sync.notifier import Waiter

from .conftest import start_server, stop_server, with_config

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"

_txn_ids = itertools.count()


# ---------------------------------------------------------------- helpers


def q(identifier: str) -> str:
    return quote(identifier, safe="")


class Room:
    """A room alice created and bob joined; carol is registered but outside it."""

    def __init__(self, server: TestServer, room_id: str, tokens: dict[str, str]) -> None:
        self.server = server
        self.id = room_id
        self.tokens = tokens

    async def send(self, who: str = "alice", body: str = "hi", **content: Any) -> str:
        resp = await self.server.put(
            f"{V3}/rooms/{q(self.id)}/send/m.room.message/t{next(_txn_ids)}",
            {"msgtype": "m.text", "body": body, **content},
            token=self.tokens[who],
        )
        assert resp.status == 200, resp.body
        return resp.body["event_id"]


async def setup_room(server: TestServer) -> Room:
    tokens = {
        name: (await server.register_user(name))["access_token"] for name in ("alice", "bob", "carol")
    }
    resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat"}, token=tokens["alice"])
    assert resp.status == 200, resp.body
    room_id = resp.body["room_id"]
    resp = await server.post(f"{V3}/join/{q(room_id)}", {}, token=tokens["bob"])
    assert resp.status == 200, resp.body
    return Room(server, room_id, tokens)


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body.get("errcode")) == (status, errcode), resp.body


def position(server: TestServer, stream: str) -> int:
    return server.hs.notifier.positions.get(stream, 0)


async def typing(room: Room, who: str, body: Any, user_id: str | None = None) -> Response:
    user_id = user_id or f"@{who}:test.local"
    return await room.server.put(
        f"{V3}/rooms/{q(room.id)}/typing/{q(user_id)}", body, token=room.tokens[who]
    )


async def receipt(
    room: Room, who: str, receipt_type: str, event_id: str, body: Any = None
) -> Response:
    return await room.server.post(
        f"{V3}/rooms/{q(room.id)}/receipt/{q(receipt_type)}/{q(event_id)}",
        {} if body is None else body,
        token=room.tokens[who],
    )


def registered_waiter(server: TestServer, user_id: str, room_ids: list[str]) -> Waiter:
    waiter = Waiter(user_id, room_ids)
    server.hs.notifier.register(waiter)
    return waiter


# ------------------------------------------------------------------ typing


async def test_typing_start_and_stop_reach_room_members(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    before = position(server, "typing")
    waiter = registered_waiter(server, BOB, [room.id])
    try:
        resp = await typing(room, "alice", {"typing": True, "timeout": 30000})
        assert (resp.status, resp.body) == (200, {})
        assert await waiter.wait(2), "bob's sync was not woken by alice typing"
    finally:
        hs.notifier.unregister(waiter)
    started = position(server, "typing")
    assert started > before
    expected = {room.id: {"type": "m.typing", "content": {"user_ids": [ALICE]}}}
    assert await hs.typing.get_updates([room.id], 0, started) == expected
    assert await hs.typing.get_updates([room.id], before, started) == expected
    assert await hs.typing.get_updates([room.id], started, started) == {}

    # Renewing while still typing changes nobody's view: no new position.
    assert (await typing(room, "alice", {"typing": True, "timeout": 30000})).status == 200
    assert position(server, "typing") == started

    assert (await typing(room, "bob", {"typing": True})).status == 200
    both = await hs.typing.get_updates([room.id], started, position(server, "typing"))
    assert sorted(both[room.id]["content"]["user_ids"]) == [ALICE, BOB]

    mark = position(server, "typing")
    assert (await typing(room, "alice", {"typing": False})).status == 200
    stopped = position(server, "typing")
    assert stopped > mark
    assert await hs.typing.get_updates([room.id], mark, stopped) == {
        room.id: {"type": "m.typing", "content": {"user_ids": [BOB]}}
    }
    # Stopping again changes nothing.
    assert (await typing(room, "alice", {"typing": False})).status == 200
    assert position(server, "typing") == stopped
    # Rooms the syncing user is not asking about are left out.
    assert await hs.typing.get_updates(["!other"], 0, stopped) == {}


async def test_typing_expires_and_syncs_see_the_stop(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    assert (await typing(room, "alice", {"typing": True, "timeout": 300})).status == 200
    started = position(server, "typing")
    waiter = registered_waiter(server, BOB, [room.id])
    try:
        assert await waiter.wait(5), "the expiry did not wake bob's sync"
    finally:
        hs.notifier.unregister(waiter)
    expired = position(server, "typing")
    assert expired > started
    assert await hs.typing.get_updates([room.id], started, expired) == {
        room.id: {"type": "m.typing", "content": {"user_ids": []}}
    }
    assert await hs.typing.get_updates([room.id], 0, expired) == {}


async def test_typing_timeout_is_capped(server: TestServer) -> None:
    room = await setup_room(server)
    assert (await typing(room, "alice", {"typing": True, "timeout": 10**12})).status == 200
    expires = await server.hs.db.fetchval(
        "test", "SELECT expires_ts FROM typing WHERE user_id = ?", (ALICE,)
    )
    assert expires <= time.time() * 1000 + 120_000 + 1000
    # Without a timeout, the default (30 s) applies.
    assert (await typing(room, "bob", {"typing": True})).status == 200
    expires = await server.hs.db.fetchval(
        "test", "SELECT expires_ts FROM typing WHERE user_id = ?", (BOB,)
    )
    assert 25_000 < expires - time.time() * 1000 <= 30_000 + 1000


async def test_typing_refusals(server: TestServer) -> None:
    room = await setup_room(server)
    assert_error(await typing(room, "alice", {"typing": True}, user_id=BOB), 403, "M_FORBIDDEN")
    assert_error(await typing(room, "carol", {"typing": True}), 403, "M_FORBIDDEN")
    assert_error(await typing(room, "alice", {}), 400, "M_MISSING_PARAM")
    assert_error(await typing(room, "alice", {"typing": "yes"}), 400, "M_BAD_JSON")
    for timeout in ("30000", -1, 1.5, True):
        assert_error(
            await typing(room, "alice", {"typing": True, "timeout": timeout}), 400, "M_BAD_JSON"
        )
    resp = await server.put(
        f"{V3}/rooms/{q(room.id)}/typing/{q(ALICE)}", data="nope", token=room.tokens["alice"]
    )
    assert_error(resp, 400, "M_NOT_JSON")
    resp = await server.put(
        f"{V3}/rooms/{q('!unknown:test.local')}/typing/{q(ALICE)}",
        {"typing": True},
        token=room.tokens["alice"],
    )
    assert_error(resp, 403, "M_FORBIDDEN")
    resp = await server.put(
        f"{V3}/rooms/not-a-room/typing/{q(ALICE)}", {"typing": True}, token=room.tokens["alice"]
    )
    assert_error(resp, 400, "M_INVALID_PARAM")
    resp = await server.put(f"{V3}/rooms/{q(room.id)}/typing/{q(ALICE)}", {"typing": True})
    assert_error(resp, 401, "M_MISSING_TOKEN")
    assert position(server, "typing") == 0


# ---------------------------------------------------------------- receipts


async def test_receipts_reach_room_members_and_only_move_forward(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    first = await room.send("bob", "one")
    second = await room.send("bob", "two")
    before = position(server, "receipts")
    waiter = registered_waiter(server, BOB, [room.id])
    try:
        resp = await receipt(room, "alice", "m.read", second)
        assert (resp.status, resp.body) == (200, {})
        assert await waiter.wait(2), "bob's sync was not woken by alice's receipt"
    finally:
        hs.notifier.unregister(waiter)
    now = position(server, "receipts")
    updates = await hs.receipts.get_updates([room.id], BOB, before, now)
    edu = updates[room.id]
    assert edu["type"] == "m.receipt"
    entry = edu["content"][second]["m.read"][ALICE]
    assert isinstance(entry["ts"], int) and "thread_id" not in entry

    # An older event does not move the receipt back, nor take a position.
    assert (await receipt(room, "alice", "m.read", first)).status == 200
    assert (await receipt(room, "alice", "m.read", second)).status == 200
    assert position(server, "receipts") == now
    initial = await hs.receipts.get_updates([room.id], BOB, 0, now)
    assert list(initial[room.id]["content"]) == [second]
    assert await hs.receipts.get_updates([room.id], BOB, now, now) == {}

    # A later one does.
    third = await room.send("bob", "three")
    assert (await receipt(room, "alice", "m.read", third, {})).status == 200
    later = await hs.receipts.get_updates([room.id], BOB, now, position(server, "receipts"))
    assert list(later[room.id]["content"]) == [third]


async def test_private_receipts_are_seen_by_their_sender_only(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    event_id = await room.send("bob")
    assert (await receipt(room, "alice", "m.read.private", event_id)).status == 200
    now = position(server, "receipts")
    mine = await hs.receipts.get_updates([room.id], ALICE, 0, now)
    assert ALICE in mine[room.id]["content"][event_id]["m.read.private"]
    assert await hs.receipts.get_updates([room.id], BOB, 0, now) == {}
    assert await hs.receipts.get_updates([room.id], BOB, now - 1, now) == {}
    # A public receipt from bob on the same event: alice sees both, bob only his.
    assert (await receipt(room, "bob", "m.read", event_id)).status == 200
    now = position(server, "receipts")
    content = (await hs.receipts.get_updates([room.id], BOB, 0, now))[room.id]["content"]
    assert content == {event_id: {"m.read": {BOB: content[event_id]["m.read"][BOB]}}}
    content = (await hs.receipts.get_updates([room.id], ALICE, 0, now))[room.id]["content"]
    assert set(content[event_id]) == {"m.read", "m.read.private"}


async def test_threaded_receipts_are_kept_apart(server: TestServer) -> None:
    room = await setup_room(server)
    root = await room.send("bob", "root")
    reply = await room.send(
        "bob", "reply", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    assert (await receipt(room, "alice", "m.read", reply, {"thread_id": root})).status == 200
    assert (await receipt(room, "alice", "m.read", root, {"thread_id": "main"})).status == 200
    # Unthreaded, on the earlier root: a separate receipt, so not "older".
    assert (await receipt(room, "alice", "m.read", root)).status == 200
    content = (
        await server.hs.receipts.get_updates([room.id], BOB, 0, position(server, "receipts"))
    )[room.id]["content"]
    assert content[reply]["m.read"][ALICE]["thread_id"] == root
    # One entry per event, type and user: the unthreaded receipt covers the main one.
    assert "thread_id" not in content[root]["m.read"][ALICE]
    rows = await server.hs.db.fetchall(
        "test", "SELECT thread_id, event_id FROM receipts WHERE user_id = ?", (ALICE,)
    )
    assert sorted(rows) == sorted([("", root), ("main", root), (root, reply)])


async def test_receipt_refusals(server: TestServer) -> None:
    room = await setup_room(server)
    root = await room.send("bob", "root")
    reply = await room.send(
        "bob", "reply", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    assert_error(await receipt(room, "alice", "m.unknown", root), 400, "M_INVALID_PARAM")
    for thread_id in ("", 5, "elsewhere"):
        assert_error(
            await receipt(room, "alice", "m.read", root, {"thread_id": thread_id}),
            400,
            "M_INVALID_PARAM",
        )
    # The reply is in the thread of `root`, not the main timeline.
    assert_error(
        await receipt(room, "alice", "m.read", reply, {"thread_id": "main"}), 400, "M_INVALID_PARAM"
    )
    assert_error(
        await receipt(room, "alice", "m.fully_read", root, {"thread_id": "main"}),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(await receipt(room, "carol", "m.read", root), 403, "M_FORBIDDEN")
    assert_error(await receipt(room, "alice", "m.read", "$nope"), 404, "M_NOT_FOUND")
    # An event of another room is not found in this one.
    resp = await server.post(f"{V3}/createRoom", {}, token=room.tokens["alice"])
    other = Room(server, resp.body["room_id"], room.tokens)
    elsewhere = await other.send()
    assert_error(await receipt(room, "alice", "m.read", elsewhere), 404, "M_NOT_FOUND")
    assert_error(await receipt(room, "alice", "m.read", root, [1]), 400, "M_BAD_JSON")
    assert position(server, "receipts") == 0


async def test_fully_read_through_the_receipt_endpoint(server: TestServer) -> None:
    room = await setup_room(server)
    first = await room.send("bob", "one")
    second = await room.send("bob", "two")
    path = f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/account_data/m.fully_read"
    assert_error(await server.get(path, token=room.tokens["alice"]), 404, "M_NOT_FOUND")
    assert (await receipt(room, "alice", "m.fully_read", second)).status == 200
    resp = await server.get(path, token=room.tokens["alice"])
    assert (resp.status, resp.body) == (200, {"event_id": second})
    # It is not a receipt.
    assert position(server, "receipts") == 0
    # And it does not move back.
    mark = position(server, "account_data")
    assert (await receipt(room, "alice", "m.fully_read", first)).status == 200
    assert (await server.get(path, token=room.tokens["alice"])).body == {"event_id": second}
    assert position(server, "account_data") == mark


async def test_read_markers(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    first = await room.send("bob", "one")
    second = await room.send("bob", "two")
    path = f"{V3}/rooms/{q(room.id)}/read_markers"
    token = room.tokens["alice"]
    resp = await server.post(
        path, {"m.fully_read": first, "m.read": second, "m.read.private": second}, token=token
    )
    assert (resp.status, resp.body) == (200, {})
    content = (await hs.receipts.get_updates([room.id], ALICE, 0, position(server, "receipts")))[
        room.id
    ]["content"]
    assert set(content[second]) == {"m.read", "m.read.private"}
    global_data, rooms = await hs.account_data.get_updates(ALICE, 0, position(server, "account_data"))
    assert global_data == []
    assert rooms == {room.id: [{"type": "m.fully_read", "content": {"event_id": first}}]}

    # Each part is optional; the marker moves forward only.
    assert (await server.post(path, {}, token=token)).status == 200
    assert (await server.post(path, {"m.fully_read": second}, token=token)).status == 200
    assert (await server.post(path, {"m.fully_read": first}, token=token)).status == 200
    assert (await hs.account_data.get(ALICE, room.id, "m.fully_read")) == {"event_id": second}

    assert_error(await server.post(path, {"m.read": 5}, token=token), 400, "M_INVALID_PARAM")
    assert_error(await server.post(path, {"m.fully_read": "$nope"}, token=token), 404, "M_NOT_FOUND")
    assert_error(
        await server.post(path, {"m.fully_read": first}, token=room.tokens["carol"]), 403, "M_FORBIDDEN"
    )
    assert_error(await server.post(path, data="[", token=token), 400, "M_NOT_JSON")
    # A refused request moves nothing, even the parts that were valid.
    third = await room.send("bob", "three")
    mark = position(server, "receipts")
    resp = await server.post(path, {"m.read": third, "m.fully_read": "$nope"}, token=token)
    assert_error(resp, 404, "M_NOT_FOUND")
    assert position(server, "receipts") == mark


# ------------------------------------------------------------ account data


async def test_account_data_round_trip_global_and_per_room(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    token = room.tokens["alice"]
    global_path = f"{V3}/user/{q(ALICE)}/account_data/org.example.config"
    room_path = f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/account_data/org.example.config"
    assert_error(await server.get(global_path, token=token), 404, "M_NOT_FOUND")

    waiter = registered_waiter(server, ALICE, [])
    try:
        resp = await server.put(global_path, {"theme": "dark", "n": [1, 2]}, token=token)
        assert (resp.status, resp.body) == (200, {})
        assert await waiter.wait(2), "alice's sync was not woken by her account data"
    finally:
        hs.notifier.unregister(waiter)
    first = position(server, "account_data")
    assert (await server.get(global_path, token=token)).body == {"theme": "dark", "n": [1, 2]}
    # No fallback from room to global data.
    assert_error(await server.get(room_path, token=token), 404, "M_NOT_FOUND")
    assert (await server.put(room_path, {"pinned": True}, token=token)).status == 200
    assert (await server.get(room_path, token=token)).body == {"pinned": True}
    assert (await server.put(global_path, {"theme": "light"}, token=token)).status == 200
    assert (await server.get(global_path, token=token)).body == {"theme": "light"}

    now = position(server, "account_data")
    assert await hs.account_data.get_updates(ALICE, 0, now) == (
        [{"type": "org.example.config", "content": {"theme": "light"}}],
        {room.id: [{"type": "org.example.config", "content": {"pinned": True}}]},
    )
    # Incremental: only what changed after `first`... and nothing for bob.
    global_data, rooms = await hs.account_data.get_updates(ALICE, first, now)
    assert global_data == [{"type": "org.example.config", "content": {"theme": "light"}}]
    assert rooms == {room.id: [{"type": "org.example.config", "content": {"pinned": True}}]}
    assert await hs.account_data.get_updates(ALICE, now, now) == ([], {})
    assert await hs.account_data.get_updates(BOB, 0, now) == ([], {})


async def test_account_data_refusals(server: TestServer) -> None:
    room = await setup_room(server)
    token = room.tokens["alice"]
    for prefix in (f"/user/{q(ALICE)}", f"/user/{q(ALICE)}/rooms/{q(room.id)}"):
        for managed in ("m.fully_read", "m.push_rules"):
            resp = await server.put(f"{V3}{prefix}/account_data/{managed}", {}, token=token)
            assert_error(resp, 405, "M_BAD_JSON")
        path = f"{V3}{prefix}/account_data/org.example"
        assert_error(await server.put(path, {"a": 1}, token=room.tokens["bob"]), 403, "M_FORBIDDEN")
        assert_error(await server.get(path, token=room.tokens["bob"]), 403, "M_FORBIDDEN")
        assert_error(await server.put(path, [1], token=token), 400, "M_BAD_JSON")
        assert_error(await server.put(path, data="{", token=token), 400, "M_NOT_JSON")
        assert_error(await server.get(path), 401, "M_MISSING_TOKEN")
    bad_room = f"{V3}/user/{q(ALICE)}/rooms/not-a-room/account_data/org.example"
    assert_error(await server.put(bad_room, {}, token=token), 400, "M_INVALID_PARAM")
    assert_error(await server.get(bad_room, token=token), 400, "M_INVALID_PARAM")
    assert position(server, "account_data") == 0


async def test_push_rules_are_read_as_account_data(server: TestServer) -> None:
    """m.push_rules may not be set through account data, but reads as it (spec)."""
    room = await setup_room(server)
    token = room.tokens["alice"]
    resp = await server.get(f"{V3}/user/{q(ALICE)}/account_data/m.push_rules", token=token)
    assert resp.status == 200, resp.body
    assert isinstance(resp.body["global"]["override"], list)
    assert resp.body == {"global": (await server.get(f"{V3}/pushrules/", token=token)).body["global"]}


# -------------------------------------------------------------------- tags


async def test_tags(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    token = room.tokens["alice"]
    tags = f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/tags"
    assert (await server.get(tags, token=token)).body == {"tags": {}}
    resp = await server.put(f"{tags}/m.favourite", {"order": 0.25}, token=token)
    assert (resp.status, resp.body) == (200, {})
    assert (await server.put(f"{tags}/u.Work", {}, token=token)).status == 200
    assert (await server.put(f"{tags}/u.Edge", {"order": 1}, token=token)).status == 200
    resp = await server.get(tags, token=token)
    assert resp.body == {"tags": {"m.favourite": {"order": 0.25}, "u.Work": {}, "u.Edge": {"order": 1}}}
    # Tags are the room account data event m.tag, and reach sync as one.
    resp = await server.get(f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/account_data/m.tag", token=token)
    assert resp.body == {"tags": {"m.favourite": {"order": 0.25}, "u.Work": {}, "u.Edge": {"order": 1}}}

    mark = position(server, "account_data")
    resp = await server.delete(f"{tags}/u.Work", token=token)
    assert (resp.status, resp.body) == (200, {})
    assert (await server.get(tags, token=token)).body == {
        "tags": {"m.favourite": {"order": 0.25}, "u.Edge": {"order": 1}}
    }
    _global, rooms = await hs.account_data.get_updates(ALICE, mark, position(server, "account_data"))
    assert rooms == {
        room.id: [
            {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}, "u.Edge": {"order": 1}}}}
        ]
    }
    # Removing a tag the room does not have is fine, and changes nothing.
    mark = position(server, "account_data")
    assert (await server.delete(f"{tags}/u.Never", token=token)).status == 200
    assert position(server, "account_data") == mark
    # Bob's tags are his own.
    bob_tags = f"{V3}/user/{q(BOB)}/rooms/{q(room.id)}/tags"
    assert (await server.get(bob_tags, token=room.tokens["bob"])).body == {"tags": {}}


async def test_tag_refusals(server: TestServer) -> None:
    room = await setup_room(server)
    token = room.tokens["alice"]
    tags = f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/tags"
    for order in (2, -0.1, "0.5", True):
        assert_error(await server.put(f"{tags}/u.x", {"order": order}, token=token), 400, "M_INVALID_PARAM")
    assert_error(await server.put(f"{tags}/{'x' * 256}", {}, token=token), 400, "M_INVALID_PARAM")
    assert (await server.put(f"{tags}/{'x' * 255}", {}, token=token)).status == 200
    assert_error(await server.put(f"{tags}/u.x", [1], token=token), 400, "M_BAD_JSON")
    bob = room.tokens["bob"]
    assert_error(await server.get(tags, token=bob), 403, "M_FORBIDDEN")
    assert_error(await server.put(f"{tags}/u.x", {}, token=bob), 403, "M_FORBIDDEN")
    assert_error(await server.delete(f"{tags}/u.x", token=bob), 403, "M_FORBIDDEN")
    bad = f"{V3}/user/{q(ALICE)}/rooms/not-a-room/tags"
    assert_error(await server.get(bad, token=token), 400, "M_INVALID_PARAM")
    assert_error(await server.put(f"{bad}/u.x", {}, token=token), 400, "M_INVALID_PARAM")


# ---------------------------------------------------------------- presence


async def presence_put(server: TestServer, token: str, user_id: str, body: Any) -> Response:
    return await server.put(f"{V3}/presence/{q(user_id)}/status", body, token=token)


async def presence_get(server: TestServer, token: str, user_id: str) -> Response:
    return await server.get(f"{V3}/presence/{q(user_id)}/status", token=token)


async def test_presence_round_trip_with_a_busy_status(server: TestServer) -> None:
    room = await setup_room(server)
    token = room.tokens["alice"]
    resp = await presence_get(server, token, ALICE)
    assert (resp.status, resp.body) == (200, {"presence": "offline"})
    resp = await presence_put(server, token, ALICE, {"presence": "online", "status_msg": "busy"})
    assert (resp.status, resp.body) == (200, {})
    body = (await presence_get(server, token, ALICE)).body
    assert body["presence"] == "online" and body["status_msg"] == "busy"
    assert body["currently_active"] is True and 0 <= body["last_active_ago"] < 10_000
    # Bob shares a room with alice: he may look; carol may not.
    assert (await presence_get(server, room.tokens["bob"], ALICE)).body["status_msg"] == "busy"
    assert_error(await presence_get(server, room.tokens["carol"], ALICE), 403, "M_FORBIDDEN")
    assert_error(await presence_get(server, token, "@nobody:test.local"), 403, "M_FORBIDDEN")
    # A new state without a status message clears it.
    assert (await presence_put(server, token, ALICE, {"presence": "unavailable"})).status == 200
    body = (await presence_get(server, room.tokens["bob"], ALICE)).body
    assert body["presence"] == "unavailable" and "status_msg" not in body
    assert "currently_active" not in body  # only said of online users
    assert 0 <= body["last_active_ago"] < 10_000  # when she was last online


async def test_presence_refusals(server: TestServer) -> None:
    room = await setup_room(server)
    token = room.tokens["alice"]
    assert_error(await presence_put(server, token, BOB, {"presence": "online"}), 403, "M_FORBIDDEN")
    assert_error(await presence_put(server, token, ALICE, {"presence": "busy"}), 400, "M_INVALID_PARAM")
    assert_error(await presence_put(server, token, ALICE, {}), 400, "M_MISSING_PARAM")
    assert_error(
        await presence_put(server, token, ALICE, {"presence": "online", "status_msg": 5}),
        400,
        "M_BAD_JSON",
    )
    assert_error(await presence_get(server, token, "not-a-user"), 400, "M_INVALID_PARAM")
    assert_error(await server.get(f"{V3}/presence/{q(ALICE)}/status"), 401, "M_MISSING_TOKEN")
    assert position(server, "presence") == 0


async def test_presence_updates_reach_room_mates_only(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    before = position(server, "presence")
    bob_waiter = registered_waiter(server, BOB, [room.id])
    carol_waiter = registered_waiter(server, CAROL, [])
    try:
        resp = await presence_put(
            server, room.tokens["alice"], ALICE, {"presence": "online", "status_msg": "busy"}
        )
        assert resp.status == 200
        assert await bob_waiter.wait(2), "bob's sync was not woken by alice's presence"
        assert not await carol_waiter.wait(0.2), "carol shares no room with alice"
    finally:
        hs.notifier.unregister(bob_waiter)
        hs.notifier.unregister(carol_waiter)
    now = position(server, "presence")
    (event,) = await hs.presence.get_updates(BOB, before, now)
    assert event["type"] == "m.presence" and event["sender"] == ALICE
    assert event["content"]["presence"] == "online"
    assert event["content"]["status_msg"] == "busy"
    assert event["content"]["currently_active"] is True
    assert [e["sender"] for e in await hs.presence.get_updates(ALICE, before, now)] == [ALICE]
    assert await hs.presence.get_updates(CAROL, before, now) == []
    assert await hs.presence.get_updates(BOB, now, now) == []

    # Initial sync leaves offline users out; incremental sync tells of going offline.
    assert (await presence_put(server, room.tokens["alice"], ALICE, {"presence": "offline"})).status == 200
    later = position(server, "presence")
    assert await hs.presence.get_updates(BOB, 0, later) == []
    (event,) = await hs.presence.get_updates(BOB, now, later)
    assert event["content"]["presence"] == "offline"


async def test_presence_from_sync(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    await hs.presence.set_from_sync(ALICE, None)  # None: online, per the spec
    online = position(server, "presence")
    assert online > 0
    assert (await presence_get(server, room.tokens["bob"], ALICE)).body["presence"] == "online"
    # Syncing again changes nothing: no write, no position.
    await hs.presence.set_from_sync(ALICE, None)
    await hs.presence.set_from_sync(ALICE, "online")
    assert position(server, "presence") == online
    # offline: the sync does not mark the user online (nor anything else).
    await hs.presence.set_from_sync(ALICE, "offline")
    assert position(server, "presence") == online
    await hs.presence.set_from_sync(ALICE, "unavailable")
    assert position(server, "presence") > online
    body = (await presence_get(server, room.tokens["bob"], ALICE)).body
    assert body["presence"] == "unavailable" and "currently_active" not in body
    # A status message survives syncs.
    await presence_put(server, room.tokens["alice"], ALICE, {"presence": "online", "status_msg": "busy"})
    await hs.presence.set_from_sync(ALICE, "unavailable")
    assert (await presence_get(server, room.tokens["alice"], ALICE)).body["status_msg"] == "busy"


async def test_presence_times_out_to_offline(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    await hs.presence.set_from_sync(ALICE, None)
    await hs.presence.time_out()  # just seen: stays online
    assert (await presence_get(server, room.tokens["bob"], ALICE)).body["presence"] == "online"
    before = position(server, "presence")
    stale = int(time.time() * 1000) - presence_module.OFFLINE_AFTER_MS - 1000
    await hs.db.execute("test", "UPDATE presence SET last_seen_ts = ?", (stale,))
    waiter = registered_waiter(server, BOB, [room.id])
    try:
        await hs.presence.time_out()
        assert await waiter.wait(2)
    finally:
        hs.notifier.unregister(waiter)
    (event,) = await hs.presence.get_updates(BOB, before, position(server, "presence"))
    assert event["content"]["presence"] == "offline"
    assert "currently_active" not in event["content"]
    # Back online, and currently active again, once the user syncs.
    await hs.presence.set_from_sync(ALICE, None)
    body = (await presence_get(server, room.tokens["bob"], ALICE)).body
    assert body["presence"] == "online" and body["currently_active"] is True


@with_config(presence={"enabled": False})
async def test_presence_disabled(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    token = room.tokens["alice"]
    resp = await presence_put(server, token, ALICE, {"presence": "online", "status_msg": "busy"})
    assert (resp.status, resp.body) == (200, {})
    assert (await presence_get(server, token, ALICE)).body == {"presence": "offline"}
    assert_error(await presence_get(server, room.tokens["carol"], ALICE), 403, "M_FORBIDDEN")
    await hs.presence.set_from_sync(ALICE, None)
    assert position(server, "presence") == 0
    assert await hs.presence.get_updates(ALICE, 0, 10) == []


# ----------------------------------------------------- across the streams


async def test_changes_racing_each_other_keep_positions_ordered(server: TestServer) -> None:
    """Concurrent writers to one stream get distinct positions and lose no update."""
    room = await setup_room(server)
    token = room.tokens["alice"]
    tags = f"{V3}/user/{q(ALICE)}/rooms/{q(room.id)}/tags"
    results = await asyncio.gather(
        *(server.put(f"{tags}/u.t{i}", {"order": i / 10}, token=token) for i in range(8))
    )
    assert all(r.status == 200 for r in results)
    body = (await server.get(tags, token=token)).body
    assert sorted(body["tags"]) == [f"u.t{i}" for i in range(8)]
    assert position(server, "account_data") == 8



async def test_typing_is_shared_by_processes_on_one_database(server: TestServer) -> None:
    """Typing lives in the database: another process sees it, and hears of its end."""
    if server.hs.config.database.name != "psycopg":
        pytest.skip("several processes share a database on PostgreSQL")
    room = await setup_room(server)
    other = await start_server(server.hs.config)
    try:
        waiter = registered_waiter(other, BOB, [room.id])
        try:
            assert (await typing(room, "alice", {"typing": True, "timeout": 300})).status == 200
            assert await waiter.wait(5), "the other process was not told of alice typing"
            started = position(other, "typing")
            assert await other.hs.typing.get_updates([room.id], 0, started) == {
                room.id: {"type": "m.typing", "content": {"user_ids": [ALICE]}}
            }
            waiter.clear()
            assert await waiter.wait(5), "the other process was not told the typing expired"
        finally:
            other.hs.notifier.unregister(waiter)
        ended = position(other, "typing")
        assert ended > started
        assert await other.hs.typing.get_updates([room.id], started, ended) == {
            room.id: {"type": "m.typing", "content": {"user_ids": []}}
        }
    finally:
        await stop_server(other)


# ------------------------------------------------------- rate limits


async def until_limited(send: Any, most: int = 100) -> tuple[int, Response]:
    """How many sends succeed before the first refusal, and that refusal."""
    for done in range(most):
        resp = await send()
        if resp.status != 200:
            return done, resp
    raise AssertionError(f"{most} requests in a row were all accepted")


async def test_typing_and_receipts_are_rate_limited_per_user(server: TestServer) -> None:
    room = await setup_room(server)
    event_id = await room.send("bob")
    burst = int(ephemeral_api.EPHEMERAL_RATE.burst_count)

    accepted, refused = await until_limited(lambda: typing(room, "alice", {"typing": True, "timeout": 1000}))
    assert accepted >= burst
    assert_error(refused, 429, "M_LIMIT_EXCEEDED")
    assert 0 < refused.body["retry_after_ms"] <= 1000
    # Per user, and per kind: bob may type, alice may still send receipts.
    assert (await typing(room, "bob", {"typing": True, "timeout": 1000})).status == 200
    assert (await receipt(room, "alice", "m.read", event_id)).status == 200

    # Receipts and read markers share their own bucket.
    accepted, refused = await until_limited(lambda: receipt(room, "bob", "m.read", event_id))
    assert accepted >= burst
    assert_error(refused, 429, "M_LIMIT_EXCEEDED")
    markers = await server.post(
        f"{V3}/rooms/{q(room.id)}/read_markers", {"m.read": event_id}, token=room.tokens["bob"]
    )
    assert_error(markers, 429, "M_LIMIT_EXCEEDED")
    # The bucket refills.
    await asyncio.sleep(refused.body["retry_after_ms"] / 1000 + 0.05)
    assert (await receipt(room, "bob", "m.read", event_id)).status == 200


# ------------------------------------------------- activity sets presence


async def test_sending_and_receipts_bring_a_user_online(server: TestServer) -> None:
    room = await setup_room(server)
    token = room.tokens["alice"]
    event_id = await room.send("bob")
    for state, act in (
        ("offline", lambda: room.send("alice")),
        ("unavailable", lambda: room.send("alice")),
        ("offline", lambda: receipt(room, "alice", "m.read", event_id)),
        (
            "unavailable",
            lambda: server.post(f"{V3}/rooms/{q(room.id)}/read_markers", {"m.fully_read": event_id}, token=token),
        ),
    ):
        assert (await presence_put(server, token, ALICE, {"presence": state, "status_msg": "away"})).status == 200
        # Long ago, as far as the database knows.
        await server.hs.db.execute("test", "UPDATE presence SET last_active_ts = 1000 WHERE user_id = ?", (ALICE,))
        before = position(server, "presence")
        result = await act()
        assert getattr(result, "status", 200) == 200, result  # (room.send checks its own)
        body = (await presence_get(server, room.tokens["bob"], ALICE)).body
        assert body["presence"] == "online" and body["currently_active"] is True, (state, body)
        assert 0 <= body["last_active_ago"] < 10_000
        assert body["status_msg"] == "away"  # kept
        assert position(server, "presence") > before


async def test_activity_of_an_online_user_costs_no_query(server: TestServer) -> None:
    room = await setup_room(server)
    hs = server.hs
    event_id = await room.send("alice")  # alice is online, and this process knows it
    calls = 0
    real = hs.presence.store.update

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    hs.presence.store.update = counting  # type: ignore[method-assign]
    try:
        before = position(server, "presence")
        await room.send("alice")
        assert (await receipt(room, "alice", "m.read", event_id)).status == 200
        assert calls == 0 and position(server, "presence") == before
        # Bob was never seen: his first message is one write.
        await room.send("bob")
        assert calls == 1
    finally:
        del hs.presence.store.update


async def test_creating_rooms_and_joining_are_not_activity(server: TestServer) -> None:
    room = await setup_room(server)  # alice created it, bob joined it
    assert position(server, "presence") == 0
    assert (await presence_get(server, room.tokens["bob"], ALICE)).body == {"presence": "offline"}


@with_config(presence={"enabled": False})
async def test_activity_with_presence_disabled(server: TestServer) -> None:
    room = await setup_room(server)
    event_id = await room.send("alice")
    assert (await receipt(room, "alice", "m.read", event_id)).status == 200
    assert position(server, "presence") == 0
    assert (await presence_get(server, room.tokens["bob"], ALICE)).body == {"presence": "offline"}
