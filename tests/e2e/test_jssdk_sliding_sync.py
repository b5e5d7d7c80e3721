"""Simplified Sliding Sync (MSC4186) end to end with matrix-js-sdk's own sliding sync client.

alice (plain HTTP from here) makes six rooms with bob in them: named ones, an
encrypted one, one with more history than the timeline limit, and an unnamed
DM which bob's m.direct marks as one. Her messages give them a known order of
activity. Then tests/e2e/js/sliding_sync.mjs signs bob in with js-sdk
(`SlidingSync` + `startClient({slidingSync})`, Rust crypto on) and checks
what his Room objects say: the first window of two rooms, a room
subscription, the widened window, filtered lists, names (the DM's from its
heroes), timelines, scrollback from prev_batch, bump_stamp order; then, while
his loop runs, a live message, an invite (named by invite_state) that he
joins, typing, a read receipt, to-device messages, account data and a room
tag, and last, E2EE: bob learns of alice's new laptop through the e2ee
extension and the laptop decrypts his message with the room key its own
to_device extension brought.

The `node` fixture (tests/e2e/conftest.py) provides Node 22 and js-sdk.
"""

from __future__ import annotations

import json
from itertools import count
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .conftest import run_node_script, unexpected_refusals

if TYPE_CHECKING:
    from pathlib import Path

    from ..conftest import TestServer

V3 = "/_matrix/client/v3"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
PASSWORD = "a long enough password"
TIMELINE_LIMIT = 3
FIRST_WINDOW = 2
HISTORY = 8
# Live deliveries wake bob's long poll (which waits POLL_TIMEOUT_MS): each must come well before it ends.
POLL_TIMEOUT_MS = 15000
PROMPT_MS = 5000


async def test_jssdk_sliding_sync(server: TestServer, node: Path, tmp_path: Path) -> None:
    alice = await server.register_user("alice", PASSWORD)
    bob = await server.register_user("bob", PASSWORD)
    a, b = alice["access_token"], bob["access_token"]
    alice_id, bob_id = alice["user_id"], bob["user_id"]
    for who, name in ((alice, "Alice"), (bob, "Bob")):
        resp = await server.put(
            f"{V3}/profile/{quote(who['user_id'])}/displayname", {"displayname": name}, token=who["access_token"]
        )
        assert resp.status == 200, resp.body

    async def room_with_bob(body: dict[str, Any]) -> str:
        resp = await server.post(f"{V3}/createRoom", {**body, "invite": [bob_id]}, token=a)
        assert resp.status == 200, resp.body
        room_id = resp.body["room_id"]
        resp = await server.post(f"{V3}/join/{quote(room_id)}", {}, token=b)
        assert resp.status == 200, resp.body
        return room_id

    txn = count()

    async def say(room_id: str, body: str) -> str:
        resp = await server.put(
            f"{V3}/rooms/{quote(room_id)}/send/m.room.message/t{next(txn)}",
            {"msgtype": "m.text", "body": body},
            token=a,
        )
        assert resp.status == 200, resp.body
        return resp.body["event_id"]

    encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    rooms = {
        "secret": await room_with_bob({"name": "Secret", "preset": "private_chat", "initial_state": [encryption]}),
        "history": await room_with_bob({"name": "History", "preset": "public_chat"}),
        "alpha": await room_with_bob({"name": "Alpha", "preset": "public_chat"}),
        "beta": await room_with_bob({"name": "Beta", "preset": "public_chat"}),
        "gamma": await room_with_bob({"name": "Gamma", "preset": "public_chat"}),
        "dm": await room_with_bob({"preset": "trusted_private_chat", "is_direct": True}),
    }
    resp = await server.put(
        f"{V3}/user/{quote(bob_id)}/account_data/m.direct", {alice_id: [rooms["dm"]]}, token=b
    )
    assert resp.status == 200, resp.body

    # The order of activity: the room whose last message is latest comes first.
    await say(rooms["secret"], "before anyone had keys")
    for i in range(HISTORY):
        await say(rooms["history"], f"history {i}")
    last_words = {"alpha": "alpha last", "beta": "beta last", "dm": "hello bob", "gamma": "gamma last"}
    for label, body in last_words.items():
        await say(rooms[label], body)
    order = ["gamma", "dm", "beta", "alpha", "history", "secret"]
    names = {"secret": "Secret", "history": "History", "alpha": "Alpha", "beta": "Beta", "gamma": "Gamma", "dm": "Alice"}
    # What each timeline must hold: the room's last TIMELINE_LIMIT events, oldest first.
    latest = {}
    for label, room_id in rooms.items():
        resp = await server.get(
            f"{V3}/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": str(TIMELINE_LIMIT)}, token=b
        )
        assert resp.status == 200, resp.body
        latest[label] = [e["event_id"] for e in reversed(resp.body["chunk"])]
        assert len(latest[label]) == TIMELINE_LIMIT

    dump = tmp_path / "sliding_sync_exchanges.json"
    result = await run_node_script(
        node,
        "sliding_sync.mjs",
        {
            "baseUrl": server.url,
            "password": PASSWORD,
            "bob": "bob",
            "alice": {"user": "alice", "userId": alice_id, "accessToken": a, "deviceId": alice["device_id"]},
            "rooms": rooms,
            "timelineLimit": TIMELINE_LIMIT,
            "firstWindow": FIRST_WINDOW,
            "pollTimeoutMs": POLL_TIMEOUT_MS,
            "timeoutMs": 45000,
            "dumpPath": str(dump),
        },
    )
    exchanges = json.dumps(result["exchanges"]["bob"][-12:], indent=1)
    assert "error" not in result, (
        f"failed at step {result['step']!r}: {result['error']}\n"
        f"bob's last exchanges (all of them in full: {dump}):\n{exchanges}"
    )
    label_of = {room_id: label for label, room_id in rooms.items()}

    # The first window holds the FIRST_WINDOW most recent rooms, and nothing else; the count is every room.
    first = result["firstWindow"]
    assert sorted(label_of.get(r, r) for r in first["rawRooms"]) == sorted(order[:FIRST_WINDOW]), exchanges
    assert sorted(label_of.get(r, r) for r in first["clientRooms"]) == sorted(order[:FIRST_WINDOW])
    assert first["rawCount"] == len(rooms) and first["count"] == len(rooms)
    assert "PREPARED" in first["syncStates"]

    # The subscription brings the History room alone, with the subscription's config: all state,
    # its last TIMELINE_LIMIT events, and a prev_batch to scroll back from.
    sub = result["subscription"]
    assert sorted(label_of.get(r, r) for r in sub["clientRooms"]) == sorted([*order[:FIRST_WINDOW], "history"])
    view, raw = sub["view"], sub["raw"]
    assert view["name"] == "History" and view["membership"] == "join"
    assert view["timeline"] == latest["history"]
    assert view["messages"] == [f"history {i}" for i in range(HISTORY - TIMELINE_LIMIT, HISTORY)]
    assert raw.get("initial") is True and raw.get("limited") is True and raw["prev_batch"], raw
    assert view["paginationToken"]
    assert view["state"]["joinRules"] and view["state"]["create"]  # ["*", "*"]
    assert view["state"]["members"] == sorted([alice_id, bob_id])
    assert "all" not in (raw.get("lists") or []), raw  # outside the window: there for the subscription only

    # The widened window: every room, named, with its latest events; the DM named after alice by its heroes.
    widened = result["widened"]
    assert widened["count"] == len(rooms)
    for label in rooms:
        view, raw = widened["views"][label], widened["raw"][label]
        assert view["name"] == names[label], (label, view)
        assert view["membership"] == "join" and raw.get("membership") == "join", (label, raw)
        assert view["timeline"] == latest[label], (label, view["timeline"], latest[label])
        assert view["joinedCount"] == 2 and raw.get("joined_count") == 2 and view["invitedCount"] == 0, (label, raw)
        assert raw.get("initial") is True, (label, raw)
        assert isinstance(raw.get("bump_stamp"), int), (label, raw)
        assert view["state"]["create"] and view["state"]["myMembership"] == "join", (label, view["state"])
        if label != "history":  # required_state of the list: no join rules
            assert not view["state"]["joinRules"], (label, view["state"])
            assert raw.get("lists") == ["all"], (label, raw)
    for label in ("alpha", "beta", "gamma", "dm"):
        assert widened["views"][label]["messages"][-1] == last_words[label]
    # $LAZY: alice's membership comes with her messages.
    assert alice_id in widened["views"]["gamma"]["state"]["members"]
    assert widened["views"]["secret"]["state"]["encryption"]
    dm = widened["raw"]["dm"]
    assert dm.get("name") is None and dm.get("is_dm") is True, dm
    assert [(h["user_id"], h.get("displayname")) for h in dm.get("heroes") or [] if h["user_id"] != bob_id] == [
        (alice_id, "Alice")
    ], dm
    assert widened["views"]["dm"]["heroes"] == [{"userId": alice_id, "displayName": "Alice"}]
    for label in ("alpha", "beta", "gamma", "history", "secret"):
        assert not widened["raw"][label].get("is_dm"), widened["raw"][label]
    # bump_stamp orders the rooms by their last message.
    stamps = {label: widened["views"][label]["bumpStamp"] for label in rooms}
    assert sorted(rooms, key=lambda label: stamps[label], reverse=True) == order, stamps
    assert len(set(stamps.values())) == len(rooms), stamps

    # Scrolling back from prev_batch fetched the rest of the history, in order.
    assert result["scrollback"] == [f"history {i}" for i in range(HISTORY)]

    # Lists added to the running connection, with their filters.
    assert result["filteredLists"] == {"dms": 1, "groups": len(rooms) - 1, "encrypted": 1, "unencrypted": len(rooms) - 1}

    # The live message arrived once, promptly, and bumped Alpha to the top.
    live = result["live"]
    assert [e["body"] for e in live["received"]] == ["live message"]
    assert live["received"][0]["sender"] == alice_id
    assert live["ms"] < PROMPT_MS, live
    assert live["messages"][-1] == "live message"
    assert max(live["bumpStamps"], key=lambda label: live["bumpStamps"][label]) == "alpha", live["bumpStamps"]
    assert result["liveIds"].count(live["id"]) == 1

    # The invite: named from invite_state; once joined, the room's messages reach bob.
    invite = result["invite"]
    assert invite["membership"] == "invite" and invite["name"] == "Invitation", invite
    assert invite["inviter"] == alice_id
    assert ["m.room.member", bob_id] in invite["raw"]["invite_state"], invite["raw"]
    assert ["m.room.name", ""] in invite["raw"]["invite_state"], invite["raw"]
    assert invite["ms"] < PROMPT_MS and invite["welcomeMs"] < PROMPT_MS, invite
    joined = invite["joined"]
    assert joined["membership"] == "join" and joined["name"] == "Invitation"
    assert joined["messages"][-1] == "welcome" and joined["timeline"][-1] == invite["welcomeId"]
    assert joined["joinedCount"] == 2
    assert result["finalCount"] == len(rooms) + 1
    assert invite["roomId"] in result["finalRooms"]

    # Typing: on, then off.
    typing = result["typing"]
    assert [alice_id] in typing["events"] and typing["events"][-1] == [], typing
    assert typing["onMs"] < PROMPT_MS and typing["offMs"] < PROMPT_MS, typing

    # alice's read receipt on bob's message.
    receipt = result["receipt"]
    assert receipt["readUpTo"] == receipt["eventId"]
    assert {"userId": alice_id, "type": "m.read"} in receipt["receipts"]
    assert receipt["ms"] < PROMPT_MS

    # To-device messages: each once, in order, from alice (so to_device's `since` acknowledged them).
    assert result["toDeviceReceived"] == [{"sender": alice_id, "nonce": n} for n in result["toDevice"]["sent"]]
    assert result["toDevice"]["ms"] < PROMPT_MS

    # Account data comes back through the account_data extension, global and per room.
    data = result["accountData"]
    assert data["stored"] == data["sent"]
    assert data["ms"] < PROMPT_MS and data["tagMs"] < PROMPT_MS, data
    assert data["tags"] == {"m.favourite": {"order": 0.5}}
    assert result["tagLists"] == {"favourites": 1, "others": len(rooms)}  # the invitation room counts too

    # E2EE: bob learnt of alice's laptop from device_lists, and the laptop decrypted his message.
    e2ee = result["e2ee"]
    assert e2ee["laptopDeviceId"] not in e2ee["aliceDevicesBefore"]
    assert e2ee["laptopDeviceId"] in e2ee["aliceDevicesAfter"]
    assert alice_id in e2ee["deviceListsChanged"], e2ee
    assert e2ee["queriesAfter"] > e2ee["queriesBefore"], e2ee  # bob's crypto asked again, because of it
    assert e2ee["laptopWireType"] == "m.room.encrypted"
    assert e2ee["decrypted"] == "for the laptop"
    assert any(m["type"] == "m.room_key" and m["encrypted"] for m in e2ee["laptopToDevice"]), e2ee["laptopToDevice"]
    assert e2ee["seenMs"] < PROMPT_MS, e2ee

    # Every sliding sync request was answered (aborted ones aside), and the loops never failed.
    for device in ("bob", "laptop"):
        *answered, last = result["exchanges"][device]
        for e in answered:
            assert e.get("status") == 200 or ("status" not in e and e.get("failed") == "AbortError"), (device, e)
        assert last.get("status") == 200 or last["pending"], (device, last)
    assert "ERROR" not in result["syncStates"]["bob"] and "SYNCING" in result["syncStates"]["bob"]
    assert "ERROR" not in result["syncStates"]["laptop"]
    assert unexpected_refusals(result, must_work=(SLIDING_SYNC,)) == []
