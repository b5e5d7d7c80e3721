"""Filters (spec: Filtering): the filter API, and what each part of a
filter does to /sync, over real HTTP on both engines; plus the parsing and
field projection as pure functions.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

from homeserver.errors import MatrixError
from homeserver.sync.filters import Filter, RoomEventFilter, only_fields

from .test_sync import (
    V3,
    assert_error,
    create_room,
    join,
    joined,
    put_state,
    q,
    send,
    sync,
    sync_raw,
    tokens,
    uid,
)

if TYPE_CHECKING:
    from .conftest import TestServer


async def upload(server: TestServer, token: str, user_id: str, body: Any) -> str:
    resp = await server.post(f"{V3}/user/{q(user_id)}/filter", body, token=token)
    assert resp.status == 200, resp.body
    assert isinstance(resp.body["filter_id"], str) and not resp.body["filter_id"].startswith("{")
    return resp.body["filter_id"]


# ------------------------------------------------------------ pure parsing


BAD_FILTERS: list[Any] = [
    [],
    "filter",
    {"room": []},
    {"room": {"timeline": {"limit": 0}}},
    {"room": {"timeline": {"limit": -3}}},
    {"room": {"timeline": {"limit": "5"}}},
    {"room": {"timeline": {"limit": 2.5}}},
    {"room": {"timeline": {"limit": True}}},
    {"room": {"timeline": {"types": "m.room.message"}}},
    {"room": {"timeline": {"types": [1]}}},
    {"room": {"timeline": {"senders": [None]}}},
    {"room": {"state": {"lazy_load_members": "yes"}}},
    {"room": {"include_leave": 1}},
    {"room": {"rooms": "!a:b"}},
    {"room": {"timeline": []}},
    {"presence": {"types": {}}},
    {"account_data": {"limit": 0}},
    {"event_fields": "type"},
    {"event_fields": [1]},
    {"event_format": "xml"},
]


@pytest.mark.parametrize("body", BAD_FILTERS, ids=[json.dumps(b) for b in BAD_FILTERS])
def test_bad_filters_are_bad_json(body: Any) -> None:
    with pytest.raises(MatrixError) as raised:
        Filter.from_json(body)
    assert (raised.value.status, raised.value.errcode) == (400, "M_BAD_JSON")


def test_filter_defaults_and_unknown_keys() -> None:
    parsed = Filter.from_json({"room": {"timeline": {"limit": 5000}}, "x.unknown": 1, "event_fields": None})
    assert parsed.room.timeline.limit == 1000  # capped
    assert parsed.event_fields is None and parsed.event_format == "client"
    assert Filter.from_json({}) == Filter()


def test_room_event_filter_matching() -> None:
    f = RoomEventFilter.from_json(
        {"types": ["m.room.*"], "not_types": ["m.room.member"], "not_senders": ["@spam:x"], "not_rooms": ["!no"]}
    )
    assert f.allows_room("!yes") and not f.allows_room("!no")
    assert f.matches_json("!yes", {"type": "m.room.message", "sender": "@a:x"})
    assert not f.matches_json("!yes", {"type": "m.room.member", "sender": "@a:x"})
    assert not f.matches_json("!yes", {"type": "m.room.message", "sender": "@spam:x"})
    assert not f.matches_json("!yes", {"type": "m.reaction", "sender": "@a:x"})
    assert not f.matches_json("!no", {"type": "m.room.message", "sender": "@a:x"})
    # `*` is the only wildcard: other characters are literal.
    dots = RoomEventFilter.from_json({"types": ["m.room.mess?ge", "a.*.c"]})
    assert not dots.matches_json("!r", {"type": "m.room.message"})
    assert dots.matches_json("!r", {"type": "a.b.x.c"})


def test_only_fields_projects_dotted_paths() -> None:
    event = {"type": "t", "content": {"body": "b", "m.x": {"y": 1}, "other": 2}, "sender": "@a:x", "unsigned": {}}
    assert only_fields(event, ["type", "content.body"]) == {"type": "t", "content": {"body": "b"}}
    assert only_fields(event, ["content.m\\.x.y"]) == {"content": {"m.x": {"y": 1}}}
    assert only_fields(event, ["content.missing", "nope"]) == {}
    assert only_fields(event, ["type.deeper"]) == {}


# ---------------------------------------------------------- the filter API


async def test_upload_and_download_filters_per_user(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    body = {"room": {"timeline": {"limit": 7, "types": ["m.room.message"]}}, "event_fields": ["type"]}
    a0 = await upload(server, t["alice"], uid("alice"), body)
    a1 = await upload(server, t["alice"], uid("alice"), {})
    b0 = await upload(server, t["bob"], uid("bob"), {"presence": {"not_types": ["*"]}})
    assert a0 != a1

    resp = await server.get(f"{V3}/user/{q(uid('alice'))}/filter/{a0}", token=t["alice"])
    assert resp.status == 200 and resp.body == body
    resp = await server.get(f"{V3}/user/{q(uid('alice'))}/filter/{a1}", token=t["alice"])
    assert resp.status == 200 and resp.body == {}
    # IDs are per user: bob's filter ID names nothing of alice's, and the reverse.
    resp = await server.get(f"{V3}/user/{q(uid('bob'))}/filter/{b0}", token=t["bob"])
    assert resp.body == {"presence": {"not_types": ["*"]}}
    if b0 != a0:
        assert_error(await server.get(f"{V3}/user/{q(uid('alice'))}/filter/{b0}", token=t["alice"]), 404, "M_NOT_FOUND")


async def test_filter_api_refusals(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    alice_filter = await upload(server, t["alice"], uid("alice"), {})
    base = f"{V3}/user/{q(uid('alice'))}/filter"
    # Someone else's filters: neither readable nor writable.
    assert_error(await server.get(f"{base}/{alice_filter}", token=t["bob"]), 403, "M_FORBIDDEN")
    assert_error(await server.post(base, {}, token=t["bob"]), 403, "M_FORBIDDEN")
    # Unknown and malformed IDs.
    for filter_id in ("999", "abc", "-1", "1.0", "99999999999999999999999"):
        assert_error(await server.get(f"{base}/{filter_id}", token=t["alice"]), 404, "M_NOT_FOUND")
    # Not a filter.
    assert_error(await server.post(base, {"room": {"timeline": {"limit": 0}}}, token=t["alice"]), 400, "M_BAD_JSON")
    assert_error(await server.post(base, {"event_format": "xml"}, token=t["alice"]), 400, "M_BAD_JSON")
    assert_error(await server.post(base, [1, 2], token=t["alice"]), 400, "M_BAD_JSON")
    assert_error(await server.post(base, data="{not json", token=t["alice"]), 400, "M_NOT_JSON")
    assert_error(await server.post(base, {}), 401, "M_MISSING_TOKEN")


async def test_concurrent_uploads_get_distinct_ids(server: TestServer) -> None:
    t = await tokens(server, "alice")
    ids = await asyncio.gather(
        *(upload(server, t["alice"], uid("alice"), {"room": {"timeline": {"limit": i + 1}}}) for i in range(8))
    )
    assert len(set(ids)) == 8
    for i, filter_id in enumerate(ids):
        resp = await server.get(f"{V3}/user/{q(uid('alice'))}/filter/{filter_id}", token=t["alice"])
        assert resp.body == {"room": {"timeline": {"limit": i + 1}}}


async def test_sync_filter_parameter_refusals(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    bob_filter = await upload(server, t["bob"], uid("bob"), {})
    assert_error(await sync_raw(server, t["alice"], filter="12345"), 400, "M_INVALID_PARAM")
    assert_error(await sync_raw(server, t["alice"], filter="not-an-id"), 400, "M_INVALID_PARAM")
    assert_error(await sync_raw(server, t["alice"], filter="{nope"), 400, "M_NOT_JSON")
    assert_error(
        await sync_raw(server, t["alice"], filter=json.dumps({"room": {"timeline": {"limit": "x"}}})), 400, "M_BAD_JSON"
    )
    # Another user's filter ID is not alice's (unless alice has one of her own with that ID).
    if bob_filter != "0":
        assert_error(await sync_raw(server, t["alice"], filter=bob_filter), 400, "M_INVALID_PARAM")
    # Both forms work.
    assert (await sync(server, t["bob"], filter=bob_filter))["next_batch"]
    assert (await sync(server, t["bob"], filter=" {}"))["next_batch"]


# ----------------------------------------------- what filters do to /sync


async def two_rooms(server: TestServer) -> tuple[dict[str, str], str, str]:
    t = await tokens(server, "alice", "bob")
    first = await create_room(server, t["alice"], name="First")
    second = await create_room(server, t["alice"], name="Second")
    for room_id in (first, second):
        await join(server, t["bob"], room_id)
    return t, first, second


async def test_stored_filter_limits_the_timeline(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    sent = [await send(server, t["alice"], first, f"m{i}") for i in range(4)]
    filter_id = await upload(server, t["bob"], uid("bob"), {"room": {"timeline": {"limit": 3}}})
    room = joined(await sync(server, t["bob"], filter=filter_id), first)
    assert [e["event_id"] for e in room["timeline"]["events"]] == sent[-3:]
    assert room["timeline"]["limited"] is True


async def test_rooms_and_not_rooms(server: TestServer) -> None:
    t, first, second = await two_rooms(server)
    only_first = await sync(server, t["bob"], filter=json.dumps({"room": {"rooms": [first]}}))
    assert list(only_first["rooms"]["join"]) == [first]
    not_first = await sync(server, t["bob"], filter=json.dumps({"room": {"not_rooms": [first]}}))
    assert list(not_first["rooms"]["join"]) == [second]
    # not_rooms wins over rooms.
    both = await sync(server, t["bob"], filter=json.dumps({"room": {"rooms": [first], "not_rooms": [first]}}))
    assert both["rooms"]["join"] == {}
    # Incremental: a message in the excluded room does not show (nor wake the sync).
    since = only_first["next_batch"]
    await send(server, t["alice"], second, "elsewhere")
    body = await sync(server, t["bob"], since=since, filter=json.dumps({"room": {"rooms": [first]}}))
    assert body["rooms"]["join"] == {}
    # The timeline filter's own rooms list empties that room's timeline only.
    body = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"not_rooms": [second]}}}))
    assert joined(body, second)["timeline"]["events"] == []
    assert joined(body, first)["timeline"]["events"]


async def test_timeline_types_not_types_and_senders(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    from_alice = await send(server, t["alice"], first, "from alice")
    from_bob = await send(server, t["bob"], first, "from bob")
    reaction = await server.put(
        f"{V3}/rooms/{q(first)}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": from_alice, "key": "+1"}},
        token=t["bob"],
    )
    assert reaction.status == 200, reaction.body

    def timeline(body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(e["type"], e["sender"]) for e in joined(body, first)["timeline"]["events"]]

    limit = {"limit": 50}
    messages = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"types": ["m.room.message"], **limit}}}))
    assert timeline(messages) == [("m.room.message", uid("alice")), ("m.room.message", uid("bob"))]
    wildcard = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"types": ["m.room.*"], "not_types": ["m.room.member", "m.room.message"], **limit}}}))
    assert {k for k, _s in timeline(wildcard)} >= {"m.room.create", "m.room.power_levels"}
    assert not {k for k, _s in timeline(wildcard)} & {"m.room.member", "m.room.message", "m.reaction"}
    by_bob = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"senders": [uid("bob")], "types": ["m.room.message", "m.reaction"]}}}))
    assert [e["event_id"] for e in joined(by_bob, first)["timeline"]["events"]] == [from_bob, reaction.body["event_id"]]
    not_bob = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"not_senders": [uid("bob")], "types": ["m.room.message"]}}}))
    assert [e["event_id"] for e in joined(not_bob, first)["timeline"]["events"]] == [from_alice]
    # An empty types list matches nothing.
    nothing = await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"types": []}}}))
    assert joined(nothing, first)["timeline"]["events"] == []


async def test_state_filter(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    await put_state(server, t["alice"], first, "m.room.topic", {"topic": "x"})
    for i in range(12):
        await send(server, t["alice"], first, f"push the state out of the timeline {i}")
    body = await sync(server, t["bob"], filter=json.dumps({"room": {"state": {"types": ["m.room.name", "m.room.topic"]}}}))
    state = joined(body, first)["state"]["events"]
    assert sorted(e["type"] for e in state) == ["m.room.name", "m.room.topic"]
    body = await sync(server, t["bob"], filter=json.dumps({"room": {"state": {"not_types": ["*"]}}}))
    assert joined(body, first)["state"]["events"] == []


async def test_event_fields_projection(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    await send(server, t["alice"], first, "projected")
    body = await sync(
        server, t["bob"],
        filter=json.dumps({"event_fields": ["type", "content.body", "sender"], "room": {"timeline": {"types": ["m.room.message"]}}}),
    )
    assert joined(body, first)["timeline"]["events"] == [
        {"type": "m.room.message", "content": {"body": "projected"}, "sender": uid("alice")}
    ]
    for event in joined(body, first)["state"]["events"]:
        assert set(event) <= {"type", "content", "sender"}


async def test_event_format_federation(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    event_id = await send(server, t["alice"], first, "as a PDU")
    body = await sync(server, t["bob"], filter=json.dumps({"event_format": "federation", "room": {"timeline": {"limit": 1}}}))
    [pdu] = joined(body, first)["timeline"]["events"]
    assert pdu["event_id"] == event_id
    assert {"auth_events", "prev_events", "depth", "hashes", "signatures", "origin_server_ts"} <= set(pdu)
    assert pdu["content"]["body"] == "as a PDU"
    assert "unsigned" not in pdu or "transaction_id" not in pdu.get("unsigned", {})
    # The client format carries none of that.
    client = joined(await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"limit": 1}}})), first)
    assert not {"auth_events", "prev_events", "hashes", "signatures"} & set(client["timeline"]["events"][0])


async def test_account_data_ephemeral_and_presence_filters(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    for kind in ("x.keep", "x.drop"):
        resp = await server.put(f"{V3}/user/{q(uid('bob'))}/account_data/{kind}", {"k": kind}, token=t["bob"])
        assert resp.status == 200, resp.body
        resp = await server.put(
            f"{V3}/user/{q(uid('bob'))}/rooms/{q(first)}/account_data/{kind}", {"k": kind}, token=t["bob"]
        )
        assert resp.status == 200, resp.body
    resp = await server.put(
        f"{V3}/rooms/{q(first)}/typing/{q(uid('alice'))}", {"typing": True, "timeout": 30000}, token=t["alice"]
    )
    assert resp.status == 200, resp.body

    unfiltered = await sync(server, t["bob"])
    assert {e["type"] for e in unfiltered["account_data"]["events"]} >= {"x.keep", "x.drop"}
    assert {e["type"] for e in joined(unfiltered, first)["account_data"]["events"]} >= {"x.keep", "x.drop"}
    assert "m.typing" in {e["type"] for e in joined(unfiltered, first)["ephemeral"]["events"]}

    body = await sync(
        server, t["bob"],
        filter=json.dumps({
            "account_data": {"not_types": ["x.drop"]},
            "room": {"account_data": {"types": ["x.keep"]}, "ephemeral": {"not_types": ["m.typing"]}},
            "presence": {"types": []},
        }),
    )
    assert "x.drop" not in {e["type"] for e in body["account_data"]["events"]}
    assert "x.keep" in {e["type"] for e in body["account_data"]["events"]}
    assert [e["type"] for e in joined(body, first)["account_data"]["events"]] == ["x.keep"]
    assert "m.typing" not in {e["type"] for e in joined(body, first)["ephemeral"]["events"]}
    assert body["presence"]["events"] == []


async def test_events_a_filter_leaves_out_do_not_end_a_long_poll(server: TestServer) -> None:
    t, first, _second = await two_rooms(server)
    only_messages = json.dumps({"room": {"timeline": {"types": ["m.room.message"]}}})
    since = (await sync(server, t["bob"], filter=only_messages))["next_batch"]
    message = await send(server, t["alice"], first, "target")
    since = (await sync(server, t["bob"], since=since, filter=only_messages))["next_batch"]

    started = asyncio.get_running_loop().time()
    polling = asyncio.create_task(sync(server, t["bob"], since=since, timeout=800, filter=only_messages))
    await asyncio.sleep(0.1)
    resp = await server.put(
        f"{V3}/rooms/{q(first)}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "+1"}},
        token=t["alice"],
    )
    assert resp.status == 200, resp.body
    body = await polling
    assert asyncio.get_running_loop().time() - started >= 0.75
    assert body["rooms"]["join"] == {}
