"""To-device messages and device-list changes: /sendToDevice, /keys/changes
and the to_device / device_lists sections of /sync."""

from __future__ import annotations

import asyncio
import itertools
import time

from tests.conftest import with_config
from tests.e2ee_helpers import V3, new_device, upload
from tests.test_sync import create_room, join, membership, sync

_txns = itertools.count()


async def send_to_device(server, device, messages, event_type="m.test", txn=None):
    txn = txn or f"t{next(_txns)}"
    resp = await server.put(f"{V3}/sendToDevice/{event_type}/{txn}", {"messages": messages}, token=device.token)
    assert resp.status == 200, resp.body
    return txn


def contents(body):
    return [e["content"] for e in body["to_device"]["events"]]


# -------------------------------------------------------------- to-device


async def test_delivered_in_order_until_acknowledged(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    first = await sync(server, bob.token)
    for i in range(3):
        await send_to_device(server, alice, {bob.user_id: {"B1": {"n": i}}})
    body = await sync(server, bob.token, since=first["next_batch"])
    assert contents(body) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(e["sender"] == alice.user_id and e["type"] == "m.test" for e in body["to_device"]["events"])
    # Not acknowledged yet: the same request gets them again.
    again = await sync(server, bob.token, since=first["next_batch"])
    assert contents(again) == contents(body)
    # Syncing from the next token acknowledges them: gone for good.
    after = await sync(server, bob.token, since=body["next_batch"])
    assert contents(after) == []
    assert contents(await sync(server, bob.token, since=first["next_batch"])) == []
    # An initial sync gets whatever is still queued.
    await send_to_device(server, alice, {bob.user_id: {"B1": {"n": 3}}})
    assert contents(await sync(server, bob.token)) == [{"n": 3}]


async def test_star_reaches_every_device_once_and_txn_ids_are_idempotent(server):
    alice = await new_device(server, "alice", "A1")
    bob1 = await new_device(server, "bob", "B1")
    bob2 = await new_device(server, "bob", "B2", register=False)
    txn = await send_to_device(server, alice, {bob1.user_id: {"*": {"all": True}, "B1": {"all": True}}})
    await send_to_device(server, alice, {bob1.user_id: {"*": {"all": True}}}, txn=txn)  # retried: not again
    await send_to_device(server, alice, {bob1.user_id: {"NOPE": {"x": 1}}, "@ghost:test": {"*": {}}, "@x:far.away": {"*": {}}})
    for device in (bob1, bob2):
        assert contents(await sync(server, device.token)) == [{"all": True}]
    # The same txn ID with another event type is another request.
    await send_to_device(server, alice, {bob1.user_id: {"B1": {"other": 1}}}, event_type="m.other", txn=txn)
    assert contents(await sync(server, bob1.token))[-1] == {"other": 1}


async def test_bounded_per_sync_and_the_rest_follows(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    for i in range(130):
        await send_to_device(server, alice, {bob.user_id: {"B1": {"n": i}}})
    first = await sync(server, bob.token)
    assert contents(first) == [{"n": i} for i in range(100)]
    second = await sync(server, bob.token, since=first["next_batch"])
    assert contents(second) == [{"n": i} for i in range(100, 130)]
    assert contents(await sync(server, bob.token, since=second["next_batch"])) == []


async def test_a_long_poll_wakes_for_a_message(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    since = (await sync(server, bob.token))["next_batch"]
    started = time.monotonic()
    poll = asyncio.create_task(sync(server, bob.token, since=since, timeout=10_000))
    await asyncio.sleep(0.2)
    await send_to_device(server, alice, {bob.user_id: {"B1": {"wake": "up"}}})
    body = await poll
    assert contents(body) == [{"wake": "up"}]
    assert time.monotonic() - started < 5


async def test_messages_are_removed_with_the_device(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    await send_to_device(server, alice, {bob.user_id: {"B1": {"secret": 1}}})
    assert (await server.post(f"{V3}/logout", {}, token=bob.token)).status == 200
    again = await new_device(server, "bob", "B1", register=False)  # the same device ID, signed in anew
    assert contents(await sync(server, again.token)) == []


async def test_bad_to_device_requests(server):
    alice = await new_device(server, "alice", "A1")
    for body in ({"messages": "x"}, {"messages": {alice.user_id: "x"}}, {"messages": {alice.user_id: {"A1": 5}}}, {}):
        resp = await server.put(f"{V3}/sendToDevice/m.test/bad{next(_txns)}", body, token=alice.token)
        assert resp.status == 400 and resp.body["errcode"] == "M_BAD_JSON", body
    resp = await server.put(f"{V3}/sendToDevice/m.test/x", {"messages": {}})
    assert resp.status == 401


# ------------------------------------------------------------ device lists


async def test_device_list_changes_reach_room_members_only(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    carol = await new_device(server, "carol", "C1")
    room = await create_room(server, alice.token)
    await join(server, bob.token, room)
    bob_since = (await sync(server, bob.token))["next_batch"]
    carol_since = (await sync(server, carol.token))["next_batch"]
    await upload(server, alice, {"device_keys": alice.device_keys()})
    body = await sync(server, bob.token, since=bob_since)
    assert body["device_lists"] == {"changed": [alice.user_id], "left": []}
    assert (await sync(server, carol.token, since=carol_since))["device_lists"] == {"changed": [], "left": []}
    resp = await server.get(f"{V3}/keys/changes", token=bob.token, params={"from": bob_since, "to": body["next_batch"]})
    assert resp.status == 200 and resp.body == {"changed": [alice.user_id], "left": []}
    # Uploading one-time keys is not a device-list change: no flood.
    again = await sync(server, bob.token, since=body["next_batch"])
    await upload(server, alice, {"one_time_keys": alice.one_time_keys(5)})
    assert (await sync(server, bob.token, since=again["next_batch"]))["device_lists"]["changed"] == []


async def test_joining_and_leaving_a_shared_room(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    room = await create_room(server, alice.token)
    since = (await sync(server, alice.token))["next_batch"]
    await join(server, bob.token, room)
    body = await sync(server, alice.token, since=since)
    assert body["device_lists"]["changed"] == [bob.user_id]
    bob_since = (await sync(server, bob.token))["next_batch"]
    await membership(server, bob.token, room, "leave")
    body2 = await sync(server, alice.token, since=body["next_batch"])
    assert body2["device_lists"] == {"changed": [], "left": [bob.user_id]}
    assert (await sync(server, bob.token, since=bob_since))["device_lists"]["left"] == [alice.user_id]


async def test_logout_tells_contacts_and_removes_keys(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    room = await create_room(server, alice.token)
    await join(server, bob.token, room)
    await upload(server, alice, {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(2)})
    since = (await sync(server, bob.token))["next_batch"]
    poll = asyncio.create_task(sync(server, bob.token, since=since, timeout=10_000))
    await asyncio.sleep(0.2)
    assert (await server.post(f"{V3}/logout", {}, token=alice.token)).status == 200
    body = await poll
    assert body["device_lists"]["changed"] == [alice.user_id]
    resp = await server.post(f"{V3}/keys/query", {"device_keys": {alice.user_id: []}}, token=bob.token)
    assert resp.body["device_keys"][alice.user_id] == {}
    resp = await server.post(
        f"{V3}/keys/claim", {"one_time_keys": {alice.user_id: {"A1": "signed_curve25519"}}}, token=bob.token
    )
    assert resp.body["one_time_keys"] == {}


async def test_keys_changes_needs_tokens(server):
    bob = await new_device(server, "bob", "B1")
    for params in ({}, {"from": "x", "to": "s1"}, {"from": "s1"}):
        resp = await server.get(f"{V3}/keys/changes", token=bob.token, params=params)
        assert resp.status == 400 and resp.body["errcode"] == "M_INVALID_PARAM", params


async def test_message_size_and_the_bytes_per_sync_are_bounded(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    resp = await server.put(
        f"{V3}/sendToDevice/m.test/huge", {"messages": {bob.user_id: {"B1": {"pad": "x" * 70_000}}}}, token=alice.token
    )
    assert resp.status == 413 and resp.body["errcode"] == "M_TOO_LARGE"
    for i in range(40):  # 40 x 60 KB: more than one sync's worth of bytes
        await send_to_device(server, alice, {bob.user_id: {"B1": {"n": i, "pad": "x" * 60_000}}})
    seen, since = [], None
    for _ in range(5):
        body = await sync(server, bob.token, since=since) if since else await sync(server, bob.token)
        batch = [c["n"] for c in contents(body)]
        assert len(batch) < 40
        seen += batch
        since = body["next_batch"]
        if len(seen) == 40:
            break
    assert seen == list(range(40))


@with_config(rc_key_requests={"per_second": 0.1, "burst_count": 3})
async def test_to_device_and_claims_are_rate_limited(server):
    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    for _ in range(3):
        await send_to_device(server, alice, {bob.user_id: {"B1": {}}})
    resp = await server.put(f"{V3}/sendToDevice/m.test/over", {"messages": {bob.user_id: {"B1": {}}}}, token=alice.token)
    assert resp.status == 429 and resp.body["errcode"] == "M_LIMIT_EXCEEDED" and resp.body["retry_after_ms"] > 0
    resp = await server.post(f"{V3}/keys/claim", {"one_time_keys": {}}, token=alice.token)
    assert resp.status == 429
    # Another user has a bucket of their own.
    resp = await server.post(f"{V3}/keys/claim", {"one_time_keys": {}}, token=bob.token)
    assert resp.status == 200


async def test_nul_in_ids_is_refused_not_a_server_error(server):
    alice = await new_device(server, "alice", "A1")
    for path, body in (
        ("/keys/upload", {"one_time_keys": {"signed_curve25519:A\u0000B": "abc"}}),
        ("/keys/upload", {"fallback_keys": {"signed_curve25519:A\u0000B": {"key": "abc"}}}),
        ("/keys/claim", {"one_time_keys": {alice.user_id: {"D\u0000": "signed_curve25519"}}}),
        ("/keys/query", {"device_keys": {"@al\u0000ice:test": []}}),
        ("/keys/signatures/upload", {alice.user_id: {"D\u0000": {}}}),
    ):
        resp = await server.post(f"{V3}{path}", body, token=alice.token)
        assert resp.status == 400 and resp.body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), (path, resp.body)
    resp = await server.put(f"{V3}/sendToDevice/m.test/t%00x", {"messages": {}}, token=alice.token)
    assert resp.status == 400, resp.body


async def test_signing_someone_else_tells_only_the_signer(server):
    from tests.e2ee_helpers import CrossSigning

    alice = await new_device(server, "alice", "A1")
    bob = await new_device(server, "bob", "B1")
    carol = await new_device(server, "carol", "C1")
    room = await create_room(server, alice.token)
    for other in (bob, carol):
        await join(server, other.token, room)
    keys = {}
    for device in (alice, bob):
        keys[device.user_id] = CrossSigning(device.user_id)
        resp = await server.post(f"{V3}/keys/device_signing/upload", keys[device.user_id].upload_body(), token=device.token)
        assert resp.status == 200, resp.body
    since = {d.user_id: (await sync(server, d.token))["next_batch"] for d in (alice, bob, carol)}
    alice_master = keys[alice.user_id].key("master")
    signed = keys[bob.user_id].sign_with("user_signing", alice_master)
    resp = await server.post(
        f"{V3}/keys/signatures/upload", {alice.user_id: {keys[alice.user_id].public("master"): signed}}, token=bob.token
    )
    assert resp.status == 200 and resp.body["failures"] == {}, resp.body
    # Bob's clients re-read alice's keys (they carry his signature now); nobody else has news.
    assert (await sync(server, bob.token, since=since[bob.user_id]))["device_lists"]["changed"] == [alice.user_id]
    for device in (alice, carol):
        body = await sync(server, device.token, since=since[device.user_id])
        assert body["device_lists"] == {"changed": [], "left": []}, device.user_id
    resp = await server.get(f"{V3}/keys/changes", token=bob.token, params={"from": since[bob.user_id], "to": body["next_batch"]})
    assert resp.body["changed"] == [alice.user_id]
