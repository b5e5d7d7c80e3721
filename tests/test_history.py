"""Room history read paths over real HTTP on both engines: /messages,
/context, /members, /joined_members and /timestamp_to_event, with history
visibility, departed users, filters, tokens and every refusal.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from homeserver.events.model import Event
from homeserver.sync.filters import RoomEventFilter
from homeserver.sync.tokens import (
    InvalidToken,
    StreamToken,
    TopologicalToken,
    parse_pagination_token,
)

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"
DAVE = "@dave:test.local"


# ---------------------------------------------------------------- helpers


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, (resp.body or {}).get("errcode")) == (status, errcode), resp.body


async def users(server: TestServer, *names: str) -> list[str]:
    return [(await server.register_user(name))["access_token"] for name in names]


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    resp = await server.post(f"{V3}/createRoom", body, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def send(
    server: TestServer, token: str, room_id: str, body: str, *, msgtype: str = "m.text", **extra: Any
) -> str:
    send.counter += 1  # type: ignore[attr-defined]
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.room.message/txn{send.counter}",  # type: ignore[attr-defined]
        {"msgtype": msgtype, "body": body, **extra},
        token=token,
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


send.counter = 0  # type: ignore[attr-defined]


async def membership(server: TestServer, token: str, room_id: str, action: str, **body: Any) -> None:
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/{action}", body, token=token)
    assert resp.status == 200, resp.body


async def messages(server: TestServer, token: str, room_id: str, **params: Any) -> Response:
    params = {
        k: json.dumps(v) if k == "filter" and not isinstance(v, str) else str(v)
        for k, v in params.items()
    }
    return await server.get(f"{V3}/rooms/{q(room_id)}/messages", params=params, token=token)


async def page_all(
    server: TestServer, token: str, room_id: str, *, limit: int, **params: Any
) -> tuple[list[dict[str, Any]], list[Response]]:
    """Follow `end` until it is omitted; checks each page starts where the last ended."""
    events: list[dict[str, Any]] = []
    pages: list[Response] = []
    while True:
        resp = await messages(server, token, room_id, limit=limit, **params)
        assert resp.status == 200, resp.body
        if "from" in params:
            assert resp.body["start"] == params["from"]
        pages.append(resp)
        events += resp.body["chunk"]
        if "end" not in resp.body:
            return events, pages
        params["from"] = resp.body["end"]
        assert len(pages) < 200, "pagination does not terminate"


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


async def stream_ordering(server: TestServer, event_id: str) -> int:
    return await server.hs.db.fetchval(
        "test", "SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,)
    )


async def two_user_room(server: TestServer, count: int) -> tuple[str, str, str, list[str]]:
    """alice's public room that bob joined, with `count` messages m0.. from both."""
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    await membership(server, bob, room_id, "join")
    sent = [await send(server, (alice, bob)[i % 2], room_id, f"m{i}") for i in range(count)]
    return alice, bob, room_id, sent


# ------------------------------------------------------------------ tokens


def test_tokens_round_trip_and_refuse_garbage():
    assert str(StreamToken(42)) == "s42"
    assert StreamToken.parse("s42") == StreamToken(42)
    assert str(TopologicalToken(3, 17)) == "t3-17"
    assert parse_pagination_token("t3-17") == TopologicalToken(3, 17)
    assert parse_pagination_token("s0") == StreamToken(0)
    assert TopologicalToken(2, 9) < TopologicalToken(3, 1)
    assert StreamToken.parse("s1_2") == StreamToken(1, receipts=2)
    for bad in ["", "s", "t", "x5", "s-1", "s1_2_3_4_5_6_7_8", "s1__2", "s 1", "s+1", "s１", "t1", "t1-", "t-1", "t1-2-3",
                "ta-1", "s99999999999999999999", f"s{2**63}", "t1_2"]:
        with pytest.raises(InvalidToken):
            parse_pagination_token(bad)
    assert StreamToken.parse(f"s{2**63 - 1}").events == 2**63 - 1


def _event(event_type: str, sender: str, content: dict[str, Any]) -> Event:
    from homeserver.events.model import ROOM_VERSIONS

    pdu = {"type": event_type, "sender": sender, "room_id": "!r", "content": content}
    return Event("$e", ROOM_VERSIONS["12"], pdu)


def test_room_event_filter_matches_like_the_sql():
    f = RoomEventFilter.from_json(
        {"types": ["m.room.*", "org.x"], "not_types": ["m.room.member"], "not_senders": [BOB]}
    )
    assert f.matches(_event("m.room.message", ALICE, {}))
    assert f.matches(_event("org.x", ALICE, {}))
    assert not f.matches(_event("org.xy", ALICE, {}))
    assert not f.matches(_event("m.room.member", ALICE, {}))
    assert not f.matches(_event("m.room.message", BOB, {}))
    assert not f.matches(_event("M.ROOM.MESSAGE", ALICE, {}))
    urls = RoomEventFilter.from_json({"contains_url": True})
    assert urls.matches(_event("m.room.message", ALICE, {"url": "mxc://a/b"}))
    assert not urls.matches(_event("m.room.message", ALICE, {"url": 5}))
    assert not RoomEventFilter.from_json({"not_rooms": ["!r"]}).matches(_event("x", ALICE, {}))


# -------------------------------------------------------------- /messages


async def test_paginate_whole_history_both_ways(server):
    alice, _bob, room_id, sent = await two_user_room(server, 30)

    backwards, pages = await page_all(server, alice, room_id, dir="b", limit=7)
    assert bodies(backwards) == [f"m{i}" for i in reversed(range(30))]
    assert len(set(ids(backwards))) == len(backwards)
    assert all(len(p.body["chunk"]) == 7 for p in pages[:-1])
    assert backwards[-1]["type"] == "m.room.create"
    in_db = await server.hs.db.fetchval(
        "test", "SELECT COUNT(*) FROM events WHERE room_id = ?", (room_id,)
    )
    assert len(backwards) == in_db  # no gaps
    assert {e["sender"] for e in backwards if e["type"] == "m.room.message"} == {ALICE, BOB}
    assert all(e["room_id"] == room_id for e in backwards)

    forwards, fpages = await page_all(server, alice, room_id, dir="f", limit=7)
    assert ids(forwards) == ids(backwards)[::-1]
    assert all(len(p.body["chunk"]) == 7 for p in fpages[:-1])

    # `to` bounds the range, exclusive of events beyond it in either direction.
    first_end, second_end = pages[0].body["end"], pages[1].body["end"]
    resp = await messages(server, alice, room_id, dir="b", to=second_end, limit=100)
    assert ids(resp.body["chunk"]) == ids(backwards)[:14] and "end" not in resp.body
    resp = await messages(server, alice, room_id, dir="f", **{"from": second_end}, to=first_end, limit=100)
    assert ids(resp.body["chunk"]) == ids(backwards)[7:14][::-1] and "end" not in resp.body
    resp = await messages(server, alice, room_id, dir="b", **{"from": first_end}, to=first_end)
    assert resp.body["chunk"] == [] and "end" not in resp.body

    # Stream tokens (what /sync hands out) work as `from` and `to`.
    latest = await server.hs.db.fetchval("test", "SELECT MAX(stream_ordering) FROM events")
    resp = await messages(server, alice, room_id, dir="b", **{"from": f"s{latest}"}, limit=5)
    assert ids(resp.body["chunk"]) == ids(backwards)[:5] and resp.body["start"] == f"s{latest}"
    resp = await messages(server, alice, room_id, dir="f", **{"from": "s0"}, limit=5)
    assert ids(resp.body["chunk"]) == ids(forwards)[:5]
    m9 = await stream_ordering(server, sent[9])
    resp = await messages(server, alice, room_id, dir="f", to=f"s{m9}", limit=1000)
    assert resp.body["chunk"][-1]["event_id"] == sent[9] and "end" not in resp.body
    resp = await messages(server, alice, room_id, dir="b", **{"from": f"s{m9}"}, limit=1)
    assert ids(resp.body["chunk"]) == [sent[9]]

    # limit=0 reads nothing but keeps the place; the default limit is 10.
    resp = await messages(server, alice, room_id, dir="b", limit=0)
    assert resp.body["chunk"] == [] and resp.body["end"] == resp.body["start"]
    resp = await messages(server, alice, room_id, dir="b")
    assert len(resp.body["chunk"]) == 10


async def test_messages_shows_redacted_events_redacted_and_never_rejected_ones(server):
    alice, bob, room_id, sent = await two_user_room(server, 4)
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/redact/{q(sent[1])}/r1", {}, token=bob)
    assert resp.status == 200, resp.body
    # A rejected event (as federation may store) stays out of every read.
    await server.hs.db.execute("test", "UPDATE events SET rejected = TRUE WHERE event_id = ?", (sent[2],))
    server.hs.storage.events.invalidate_event(sent[2])
    resp = await messages(server, alice, room_id, dir="b", limit=5)
    chunk = {e["event_id"]: e for e in resp.body["chunk"]}
    assert sent[2] not in chunk and sent[3] in chunk
    assert chunk[sent[1]]["content"] == {}
    assert "redacted_because" in chunk[sent[1]]["unsigned"]
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(sent[2])}", token=alice)
    assert_error(resp, 404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(sent[3])}", token=alice)
    assert sent[2] not in ids(resp.body["events_before"])


async def test_messages_filters(server):
    alice, bob, room_id, _sent = await two_user_room(server, 6)
    image = await send(server, bob, room_id, "pic", msgtype="m.image", url="mxc://test.local/abc")
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/org.example.custom/c1", {"x": 1}, token=alice
    )
    custom = resp.body["event_id"]

    async def chunk(event_filter: Any, **params: Any) -> list[dict[str, Any]]:
        resp = await messages(server, alice, room_id, dir="b", limit=100, filter=event_filter, **params)
        assert resp.status == 200, resp.body
        return resp.body["chunk"]

    assert {e["type"] for e in await chunk({"types": ["m.room.message"]})} == {"m.room.message"}
    assert ids(await chunk({"types": ["org.example.*"]})) == [custom]
    assert ids(await chunk({"types": ["org.example.CUSTOM"]})) == []
    assert ids(await chunk({"types": ["org%"]})) == [] and ids(await chunk({"types": ["org_example*"]})) == []
    assert ids(await chunk({"types": []})) == []
    assert "m.room.member" not in {e["type"] for e in await chunk({"not_types": ["m.room.mem*"]})}
    bob_only = await chunk({"senders": [BOB], "types": ["m.room.message"]})
    assert bodies(bob_only) == ["pic", "m5", "m3", "m1"]
    assert BOB not in {e["sender"] for e in await chunk({"not_senders": [BOB]})}
    assert ids(await chunk({"contains_url": True})) == [image]
    assert image not in ids(await chunk({"contains_url": False}))
    assert ids(await chunk({"not_rooms": [room_id]})) == []
    assert len(await chunk({"rooms": [room_id], "types": ["m.room.message"]})) == 7
    # The filter's limit applies when the query has none; the query's wins.
    resp = await messages(server, alice, room_id, dir="b", filter={"limit": 2})
    assert len(resp.body["chunk"]) == 2 and "end" in resp.body
    resp = await messages(server, alice, room_id, dir="b", limit=3, filter={"limit": 2})
    assert len(resp.body["chunk"]) == 3
    # A filtered page is full, and continues where it stopped.
    alices = {"senders": [ALICE], "types": ["m.room.message"]}
    resp = await messages(server, alice, room_id, dir="b", limit=2, filter=alices)
    assert bodies(resp.body["chunk"]) == ["m4", "m2"]
    resp = await messages(
        server, alice, room_id, dir="b", limit=2, filter=alices, **{"from": resp.body["end"]}
    )
    assert bodies(resp.body["chunk"]) == ["m0"] and "end" not in resp.body
    # A filter URL-encoded twice is understood too.
    twice = quote(json.dumps({"types": ["org.example.*"]}))
    resp = await messages(server, alice, room_id, dir="b", filter=twice)
    assert ids(resp.body["chunk"]) == [custom]

    # Lazy loading: `state` holds exactly the chunk senders' member events.
    resp = await messages(
        server, alice, room_id, dir="b", limit=3,
        filter={"lazy_load_members": True, "types": ["m.room.message"]},
    )
    assert {e["sender"] for e in resp.body["chunk"]} == {BOB, ALICE}
    state = resp.body["state"]
    assert {(e["type"], e["state_key"]) for e in state} == {("m.room.member", ALICE), ("m.room.member", BOB)}
    assert all(e["content"]["membership"] == "join" for e in state)
    resp = await messages(
        server, alice, room_id, dir="b", limit=1,
        filter={"lazy_load_members": True, "include_redundant_members": True, "senders": [BOB]},
    )
    assert [e["state_key"] for e in resp.body["state"]] == [BOB]
    resp = await messages(server, alice, room_id, dir="b", limit=3)
    assert "state" not in resp.body


@pytest.mark.parametrize(
    ("visibility", "visible"),
    [
        ("world_readable", ["before", "invited", "joined"]),
        ("shared", ["before", "invited", "joined"]),
        ("invited", ["invited", "joined"]),
        ("joined", ["joined"]),
    ],
)
async def test_later_joiner_sees_what_history_visibility_allows(server, visibility, visible):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(
        server, alice, preset="private_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}],
    )
    for i in range(3):
        await send(server, alice, room_id, f"before{i}")
    await membership(server, alice, room_id, "invite", user_id=BOB)
    for i in range(3):
        await send(server, alice, room_id, f"invited{i}")
    await membership(server, bob, room_id, "join")
    for i in range(3):
        await send(server, alice, room_id, f"joined{i}")

    phases = ("before", "invited", "joined")
    expected = [f"{phase}{i}" for phase in phases if phase in visible for i in range(3)]
    events, _pages = await page_all(server, bob, room_id, dir="b", limit=4)
    assert bodies(events)[::-1] == expected
    # His own join is always his to see.
    assert any(
        e["type"] == "m.room.member" and e["state_key"] == BOB and e["content"]["membership"] == "join"
        for e in events
    )
    forwards, _pages = await page_all(server, bob, room_id, dir="f", limit=4)
    assert ids(forwards) == ids(events)[::-1]

    resp = await messages(server, carol, room_id, dir="b", limit=50)
    if visibility == "world_readable":
        assert resp.status == 200 and bodies(resp.body["chunk"])[::-1] == expected
    else:
        assert_error(resp, 403, "M_FORBIDDEN")


async def test_departed_user_cannot_page_past_their_leave(server):
    alice, bob, room_id, sent = await two_user_room(server, 4)
    await membership(server, bob, room_id, "leave")
    after = [await send(server, alice, room_id, f"after{i}") for i in range(3)]
    carol, = await users(server, "carol")
    await membership(server, carol, room_id, "join")

    resp = await messages(server, bob, room_id, dir="b", limit=2)
    assert resp.status == 200, resp.body
    assert resp.body["chunk"][0]["state_key"] == BOB
    assert resp.body["chunk"][0]["content"]["membership"] == "leave"
    # A token from later in the room is clamped to the leave.
    latest = (await messages(server, alice, room_id, dir="b", limit=1)).body["start"]
    resp = await messages(server, bob, room_id, dir="b", limit=2, **{"from": latest})
    assert resp.body["chunk"][0]["content"]["membership"] == "leave"
    assert resp.body["start"] != latest
    events, _ = await page_all(server, bob, room_id, dir="f", limit=3)
    assert events[-1]["state_key"] == BOB and events[-1]["content"]["membership"] == "leave"
    assert not set(after) & set(ids(events)) and set(sent) <= set(ids(events))
    # Nothing after the leave through /context or /timestamp_to_event either.
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(after[0])}", token=bob)
    assert_error(resp, 404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(sent[3])}", token=bob)
    assert resp.status == 200
    assert not set(after) & set(ids(resp.body["events_after"]))
    # Members as they were when bob left: carol is not there yet.
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/members", token=bob)
    assert {e["state_key"]: e["content"]["membership"] for e in resp.body["chunk"]} == {
        ALICE: "join", BOB: "leave"
    }
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/joined_members", token=bob)
    assert_error(resp, 403, "M_FORBIDDEN")


async def test_non_members_are_refused(server):
    _alice, _bob, room_id, sent = await two_user_room(server, 1)
    carol, = await users(server, "carol")
    paths = [
        f"{V3}/rooms/{q(room_id)}/messages?dir=b",
        f"{V3}/rooms/{q(room_id)}/context/{q(sent[0])}",
        f"{V3}/rooms/{q(room_id)}/members",
        f"{V3}/rooms/{q(room_id)}/joined_members",
        f"{V1}/rooms/{q(room_id)}/timestamp_to_event?ts=0&dir=f",
    ]
    for path in paths:
        assert_error(await server.get(path, token=carol), 403, "M_FORBIDDEN")
        assert_error(await server.get(path), 401, "M_MISSING_TOKEN")
    resp = await server.get(f"{V3}/rooms/not-a-room/messages?dir=b", token=carol)
    assert_error(resp, 400, "M_INVALID_PARAM")


async def test_bad_parameters(server):
    alice, _bob, room_id, sent = await two_user_room(server, 1)
    base = f"{V3}/rooms/{q(room_id)}"

    async def get(path: str, **params: str) -> Response:
        return await server.get(path, params=params, token=alice)

    assert_error(await get(f"{base}/messages"), 400, "M_MISSING_PARAM")
    for bad in ["x", "", "B", "forwards"]:
        assert_error(await get(f"{base}/messages", dir=bad), 400, "M_INVALID_PARAM")
    for key in ("from", "to"):
        for bad in ["", "bogus", "t1", "s-1", "s1_2_3_4_5_6_7_8", f"s{2**64}", "t1-99999999999999999999"]:
            assert_error(await get(f"{base}/messages", dir="b", **{key: bad}), 400, "M_INVALID_PARAM")
    for bad in ["-1", "abc", "1.5", ""]:
        assert_error(await get(f"{base}/messages", dir="b", limit=bad), 400, "M_INVALID_PARAM")
    resp = await get(f"{base}/messages", dir="b", limit=str(10**30))
    assert resp.status == 200, resp.body
    assert_error(await get(f"{base}/messages", dir="b", filter="{"), 400, "M_NOT_JSON")
    for bad in ["[]", '"x"', '{"types": "m.room.message"}', '{"types": [1]}', '{"limit": 0}',
                '{"limit": true}', '{"limit": "5"}', '{"contains_url": "yes"}', '{"lazy_load_members": 1}',
                '{"senders": null, "not_senders": {}}']:
        assert_error(await get(f"{base}/messages", dir="b", filter=bad), 400, "M_BAD_JSON")

    assert_error(await get(f"{base}/context/{q(sent[0])}", limit="-1"), 400, "M_INVALID_PARAM")
    assert_error(await get(f"{base}/context/{q(sent[0])}", filter="nope"), 400, "M_NOT_JSON")
    assert_error(await get(f"{base}/members", membership="joined"), 400, "M_INVALID_PARAM")
    assert_error(await get(f"{base}/members", not_membership="x"), 400, "M_INVALID_PARAM")
    assert_error(await get(f"{base}/members", at="garbage"), 400, "M_INVALID_PARAM")

    ts_path = f"{V1}/rooms/{q(room_id)}/timestamp_to_event"
    assert_error(await get(ts_path, dir="f"), 400, "M_MISSING_PARAM")
    assert_error(await get(ts_path, ts="0"), 400, "M_MISSING_PARAM")
    assert_error(await get(ts_path, ts="abc", dir="f"), 400, "M_INVALID_PARAM")
    assert_error(await get(ts_path, ts=str(2**64), dir="f"), 400, "M_INVALID_PARAM")
    assert_error(await get(ts_path, ts="0", dir="x"), 400, "M_INVALID_PARAM")


# --------------------------------------------------------------- /context


async def test_context_around_an_event(server):
    alice, _bob, room_id, sent = await two_user_room(server, 30)
    base = f"{V3}/rooms/{q(room_id)}/context"

    resp = await server.get(f"{base}/{q(sent[15])}", params={"limit": "6"}, token=alice)
    assert resp.status == 200, resp.body
    ctx = resp.body
    assert ctx["event"]["event_id"] == sent[15]
    assert ids(ctx["events_before"]) == [sent[14], sent[13], sent[12]]
    assert ids(ctx["events_after"]) == [sent[16], sent[17], sent[18]]
    state_keys = {(e["type"], e["state_key"]) for e in ctx["state"]}
    assert {("m.room.create", ""), ("m.room.member", ALICE), ("m.room.member", BOB)} <= state_keys
    # start/end continue the timeline with /messages, without gaps or overlap.
    resp = await messages(server, alice, room_id, dir="b", limit=2, **{"from": ctx["start"]})
    assert ids(resp.body["chunk"]) == [sent[11], sent[10]]
    resp = await messages(server, alice, room_id, dir="f", limit=2, **{"from": ctx["end"]})
    assert ids(resp.body["chunk"]) == [sent[19], sent[20]]

    # The filter applies to before/after/state, never to the event itself.
    resp = await server.get(
        f"{base}/{q(sent[15])}",
        params={"limit": "4", "filter": json.dumps({"senders": [BOB], "lazy_load_members": True})},
        token=alice,
    )
    ctx = resp.body
    assert ctx["event"]["sender"] == BOB and ids(ctx["events_before"]) == [sent[13], sent[11]]
    assert ids(ctx["events_after"]) == [sent[17], sent[19]]
    assert {e["sender"] for e in ctx["state"]} <= {BOB}
    resp = await server.get(
        f"{base}/{q(sent[15])}", params={"filter": json.dumps({"types": ["m.room.message"]})}, token=alice
    )
    assert resp.body["state"] == []
    members_only = await server.get(
        f"{base}/{q(sent[16])}",
        params={"limit": "0", "filter": json.dumps({"lazy_load_members": True})},
        token=alice,
    )
    assert members_only.body["events_before"] == members_only.body["events_after"] == []
    member_keys = {e["state_key"] for e in members_only.body["state"] if e["type"] == "m.room.member"}
    assert member_keys == {ALICE}
    assert any(e["type"] == "m.room.create" for e in members_only.body["state"])

    # Near the edges of the room.
    resp = await server.get(f"{base}/{q(sent[29])}", params={"limit": "4"}, token=alice)
    assert resp.body["events_after"] == [] and len(resp.body["events_before"]) == 2
    resp = await messages(server, alice, room_id, dir="f", **{"from": resp.body["end"]})
    assert resp.body["chunk"] == [] and "end" not in resp.body

    for missing in ["$nope", "notanid"]:
        assert_error(await server.get(f"{base}/{q(missing)}", token=alice), 404, "M_NOT_FOUND")
    other = await create_room(server, alice)
    other_event = await send(server, alice, other, "elsewhere")
    assert_error(await server.get(f"{base}/{q(other_event)}", token=alice), 404, "M_NOT_FOUND")


async def test_context_hides_events_the_user_cannot_see(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(
        server, alice, preset="public_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    hidden = await send(server, alice, room_id, "before bob")
    await membership(server, bob, room_id, "join")
    seen = await send(server, alice, room_id, "after bob")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(hidden)}", token=bob)
    assert_error(resp, 404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/context/{q(seen)}", token=bob)
    assert resp.status == 200
    assert hidden not in ids(resp.body["events_before"])
    assert resp.body["events_before"][0]["state_key"] == BOB


# --------------------------------------------------------------- /members


async def test_members_now_and_at_a_past_token(server):
    alice, bob, carol, dave = await users(server, "alice", "bob", "carol", "dave")
    room_id = await create_room(server, alice, preset="public_chat")
    base = f"{V3}/rooms/{q(room_id)}"
    before_bob = (await messages(server, alice, room_id, dir="b", limit=1)).body["start"]
    stream_before_bob = await server.hs.db.fetchval("test", "SELECT MAX(stream_ordering) FROM events")
    await membership(server, bob, room_id, "join")
    await membership(server, carol, room_id, "join")
    await membership(server, carol, room_id, "leave")
    await membership(server, alice, room_id, "invite", user_id=DAVE)

    async def members(**params: str) -> dict[str, str]:
        resp = await server.get(f"{base}/members", params=params, token=alice)
        assert resp.status == 200, resp.body
        assert all(e["type"] == "m.room.member" for e in resp.body["chunk"])
        return {e["state_key"]: e["content"]["membership"] for e in resp.body["chunk"]}

    assert await members() == {ALICE: "join", BOB: "join", CAROL: "leave", DAVE: "invite"}
    assert await members(at=before_bob) == {ALICE: "join"}
    assert await members(at=f"s{stream_before_bob}") == {ALICE: "join"}
    assert await members(at="s0") == {}
    assert await members(membership="join") == {ALICE: "join", BOB: "join"}
    assert await members(not_membership="leave") == {ALICE: "join", BOB: "join", DAVE: "invite"}
    # Both given: either condition (the spec's "or").
    assert await members(membership="invite", not_membership="join") == {CAROL: "leave", DAVE: "invite"}
    assert await members(membership="leave", at=before_bob) == {}

    resp = await server.get(f"{base}/joined_members", token=bob)
    assert resp.status == 200, resp.body
    assert resp.body == {"joined": {ALICE: {"display_name": "alice"}, BOB: {"display_name": "bob"}}}
    for outsider in (dave, carol):
        assert_error(await server.get(f"{base}/joined_members", token=outsider), 403, "M_FORBIDDEN")
    # The invitee cannot list members; carol (who left) sees them as of her leave.
    assert_error(await server.get(f"{base}/members", token=dave), 403, "M_FORBIDDEN")
    resp = await server.get(f"{base}/members", token=carol)
    assert {e["state_key"] for e in resp.body["chunk"]} == {ALICE, BOB, CAROL}


# ---------------------------------------------------- /timestamp_to_event


async def test_timestamp_to_event(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(
        server, alice, preset="public_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    await asyncio.sleep(0.005)  # the messages are strictly later than the room's creation
    sent = [await send(server, alice, room_id, f"m{i}") for i in range(5)]
    events, _ = await page_all(server, alice, room_id, dir="f", limit=50)
    stamps = sorted(e["origin_server_ts"] for e in events)
    path = f"{V1}/rooms/{q(room_id)}/timestamp_to_event"

    async def lookup(token: str, ts: int, direction: str) -> Response:
        return await server.get(path, params={"ts": str(ts), "dir": direction}, token=token)

    middle = events[len(events) // 2]
    for direction in ("f", "b"):
        resp = await lookup(alice, middle["origin_server_ts"], direction)
        assert resp.status == 200, resp.body
        assert resp.body["origin_server_ts"] == middle["origin_server_ts"]
        assert resp.body["event_id"] in ids(events)
    resp = await lookup(alice, 0, "f")
    assert resp.body["origin_server_ts"] == stamps[0]
    resp = await lookup(alice, stamps[-1] + 10_000, "b")
    assert resp.body["origin_server_ts"] == stamps[-1]
    assert_error(await lookup(alice, stamps[-1] + 10_000, "f"), 404, "M_NOT_FOUND")
    assert_error(await lookup(alice, stamps[0] - 1, "b"), 404, "M_NOT_FOUND")

    # bob joins a "joined" room: the messages before his join do not exist
    # for him (the room's first events, sent under the default "shared", do).
    await asyncio.sleep(0.005)  # his join is strictly later than every message
    await membership(server, bob, room_id, "join")
    first, last = (e for e in events if e["event_id"] in (sent[0], sent[-1]))
    resp = await lookup(bob, first["origin_server_ts"], "f")
    assert resp.status == 200
    found = (await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(resp.body['event_id'])}", token=bob)).body
    assert found["type"] == "m.room.member" and found["state_key"] == BOB
    resp = await lookup(bob, last["origin_server_ts"], "b")
    assert resp.status == 200 and resp.body["event_id"] not in sent
    assert resp.body["origin_server_ts"] < first["origin_server_ts"]
