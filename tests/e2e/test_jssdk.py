"""/sync end to end with matrix-js-sdk (Element's client library), on both engines.

tests/e2e/js/sync_chat.mjs runs two js-sdk clients against the test server
(`startClient` with a small `initialSyncLimit`): it scrolls back through a
room whose history the initial sync cut short, then alice creates a room and
invites bob, bob joins, alice sends messages and bob receives them through
his sync loop as live timeline events. It prints what each client saw.

The `node` fixture (tests/e2e/conftest.py) provides Node 22 and js-sdk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from .conftest import run_node_script

if TYPE_CHECKING:
    from pathlib import Path

    from ..conftest import TestServer

V3 = "/_matrix/client/v3"
PASSWORD = "a long enough password"
MESSAGES = 15
INITIAL_SYNC_LIMIT = 3
HISTORY = 8


async def test_jssdk_clients_chat_through_sync(server: TestServer, node: Path) -> None:
    alice = await server.register_user("alice", PASSWORD)
    bob = await server.register_user("bob", PASSWORD)
    for who, name in ((alice, "Alice"), (bob, "Bob")):
        resp = await server.put(
            f"{V3}/profile/{quote(who['user_id'])}/displayname", {"displayname": name}, token=who["access_token"]
        )
        assert resp.status == 200, resp.body
    # A room with more history than the initial sync will carry.
    resp = await server.post(
        f"{V3}/createRoom", {"name": "History", "preset": "public_chat"}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    history_room = resp.body["room_id"]
    resp = await server.post(f"{V3}/join/{quote(history_room)}", {}, token=bob["access_token"])
    assert resp.status == 200, resp.body
    for i in range(HISTORY):
        resp = await server.put(
            f"{V3}/rooms/{quote(history_room)}/send/m.room.message/h{i}",
            {"msgtype": "m.text", "body": f"old {i}"},
            token=alice["access_token"],
        )
        assert resp.status == 200, resp.body

    result = await run_node_script(
        node,
        "sync_chat.mjs",
        {
            "baseUrl": server.url,
            "alice": {"user": "alice", "password": PASSWORD},
            "bob": {"user": "bob", "password": PASSWORD},
            "historyRoom": history_room,
            "messages": MESSAGES,
            "initialSyncLimit": INITIAL_SYNC_LIMIT,
            "timeoutMs": 25000,
        },
    )

    # The initial sync held the last few events; scrolling back fetched the rest, in order.
    assert result["history"]["name"] == "History"
    assert result["history"]["initialTimeline"] == [f"old {i}" for i in range(HISTORY - INITIAL_SYNC_LIMIT, HISTORY)]
    assert result["history"]["afterScrollback"] == [f"old {i}" for i in range(HISTORY)]

    # Every message reached bob once, in order, through his sync.
    received = result["received"]
    assert [e["id"] for e in received] == result["sent"]
    assert [e["body"] for e in received] == [f"message {i}" for i in range(MESSAGES)]
    assert {e["sender"] for e in received} == {alice["user_id"]}
    view = result["bobView"]
    assert view["name"] == "JS chat" and view["membership"] == "join"
    assert view["joined"] == sorted([alice["user_id"], bob["user_id"]])
    assert view["aliceName"] == "Alice"
    live = view["liveTimelineIds"]
    assert len(live) == len(set(live)), "duplicate events in bob's timeline"
    assert [i for i in live if i in set(result["sent"])] == result["sent"]
    assert live[-1] == result["replyId"]
    assert "PREPARED" in result["syncStates"]["bob"] and "ERROR" not in result["syncStates"]["bob"]
    assert "ERROR" not in result["syncStates"]["alice"]
    assert result["deliveryMs"] < 15000
