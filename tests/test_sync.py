"""GET /sync over real HTTP on both engines.

What a client relies on: initial and incremental syncs; no event missed or
repeated while many senders write and many clients long-poll; limited
timelines with their state delta and a prev_batch that fills the gap;
lazy-loaded members; invites, knocks and leaves that appear once; newly
joined rooms with full state; full_state; long-polls that wake at once for
what concerns the user and not for anything else; monotone tokens; the
refusals of bad parameters; unread counts and typing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

from homeserver.sync.tokens import StreamToken

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
_txn_ids = itertools.count()
# Large enough that no timeline in these tests is limited unless a test wants it.
NO_LIMIT = json.dumps({"room": {"timeline": {"limit": 200}}})


# ---------------------------------------------------------------- helpers


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def uid(name: str) -> str:
    return f"@{name}:test.local"


async def tokens(server: TestServer, *names: str) -> dict[str, str]:
    return {name: (await server.register_user(name))["access_token"] for name in names}


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat", **body}, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def join(server: TestServer, token: str, room_id: str) -> None:
    resp = await server.post(f"{V3}/join/{q(room_id)}", {}, token=token)
    assert resp.status == 200, resp.body


async def membership(server: TestServer, token: str, room_id: str, action: str, **body: Any) -> None:
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/{action}", body, token=token)
    assert resp.status == 200, resp.body


async def send(server: TestServer, token: str, room_id: str, body: str = "hi", **content: Any) -> str:
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.room.message/t{next(_txn_ids)}",
        {"msgtype": "m.text", "body": body, **content},
        token=token,
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def put_state(
    server: TestServer, token: str, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
) -> str:
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}", content, token=token
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def sync_raw(server: TestServer, token: str, **params: Any) -> Response:
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}
    return await server.get(f"{V3}/sync", token=token, params=query)


async def sync(server: TestServer, token: str, **params: Any) -> dict[str, Any]:
    resp = await sync_raw(server, token, **params)
    assert resp.status == 200, resp.body
    return resp.body


def joined(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    return body["rooms"]["join"][room_id]


def timeline_ids(body: dict[str, Any], room_id: str) -> list[str]:
    section = body["rooms"]["join"].get(room_id)
    return [e["event_id"] for e in section["timeline"]["events"]] if section else []


def state_keys(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in events}


def state_of(section: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The state a client holds after applying a room section: state, then the timeline's state events."""
    result = {(e["type"], e["state_key"]): e for e in section["state"]["events"]}
    for event in section["timeline"]["events"]:
        if "state_key" in event:
            result[(event["type"], event["state_key"])] = event
    return result


async def current_state(server: TestServer, token: str, room_id: str) -> dict[tuple[str, str], str]:
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/state", token=token)
    assert resp.status == 200, resp.body
    return {(e["type"], e["state_key"]): e["event_id"] for e in resp.body}


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, (resp.body or {}).get("errcode")) == (status, errcode), resp.body


def assert_monotone(earlier: str, later: str) -> None:
    a, b = StreamToken.parse(earlier), StreamToken.parse(later)
    for name in StreamToken.stream_names():
        assert getattr(b, name) >= getattr(a, name), (earlier, later)


# ---------------------------------------------------------- basic shapes


async def test_initial_sync_has_every_room_with_its_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Lobby", topic="chat")
    await join(server, t["bob"], room_id)
    message = await send(server, t["alice"], room_id, "hello")

    body = await sync(server, t["bob"])
    assert body["next_batch"].startswith("s")
    assert set(body["rooms"]) >= {"join", "invite", "leave"}
    assert body["account_data"]["events"] == [] or isinstance(body["account_data"]["events"], list)
    room = joined(body, room_id)
    # Every key of a joined room section is there.
    assert set(room) >= {"timeline", "state", "ephemeral", "account_data", "unread_notifications", "summary"}
    assert room["timeline"]["events"][-1]["event_id"] == message
    assert "room_id" not in room["timeline"]["events"][-1]
    assert room["timeline"]["prev_batch"]
    # State plus the timeline's state events are the room's current state.
    held = state_of(room)
    current = await current_state(server, t["bob"], room_id)
    assert {k: e["event_id"] for k, e in held.items()} == current
    # State and timeline do not overlap.
    assert not {e["event_id"] for e in room["state"]["events"]} & set(timeline_ids(body, room_id))
    assert room["summary"] == {
        "m.heroes": [uid("alice")],
        "m.joined_member_count": 2,
        "m.invited_member_count": 0,
    }
    assert room["unread_notifications"] == {"notification_count": 0, "highlight_count": 0} or set(
        room["unread_notifications"]
    ) == {"notification_count", "highlight_count"}


async def test_initial_sync_timeline_is_limited_to_the_default_and_complete_state(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"])
    sent = [await send(server, t["alice"], room_id, f"m{i}") for i in range(12)]

    body = await sync(server, t["alice"])
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is True
    assert timeline_ids(body, room_id) == sent[-10:]  # the default limit is 10
    # The state block is the full state at the start of the timeline.
    assert {k: e["event_id"] for k, e in state_of(room).items()} == await current_state(
        server, t["alice"], room_id
    )
    # prev_batch continues backwards from the timeline's first event.
    resp = await server.get(
        f"{V3}/rooms/{q(room_id)}/messages",
        token=t["alice"],
        params={"from": room["timeline"]["prev_batch"], "dir": "b", "limit": "2"},
    )
    assert resp.status == 200, resp.body
    assert [e["event_id"] for e in resp.body["chunk"]] == [sent[1], sent[0]]


async def test_incremental_sync_returns_only_what_is_new(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    other_room = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    await join(server, t["bob"], other_room)
    first = await sync(server, t["bob"])

    # Nothing new: an empty answer at once (timeout 0), with a usable token.
    empty = await sync(server, t["bob"], since=first["next_batch"])
    assert empty["rooms"]["join"] == {}
    assert_monotone(first["next_batch"], empty["next_batch"])

    m1 = await send(server, t["alice"], room_id, "one")
    m2 = await send(server, t["alice"], room_id, "two")
    body = await sync(server, t["bob"], since=empty["next_batch"])
    assert list(body["rooms"]["join"]) == [room_id]  # the quiet room is left out
    room = joined(body, room_id)
    assert timeline_ids(body, room_id) == [m1, m2]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []
    assert_monotone(empty["next_batch"], body["next_batch"])

    again = await sync(server, t["bob"], since=body["next_batch"])
    assert again["rooms"]["join"] == {}


async def test_own_events_carry_their_transaction_id_for_the_sending_device_only(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["alice"]))["next_batch"]
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.room.message/my-txn", {"msgtype": "m.text", "body": "echo"}, token=t["alice"]
    )
    assert resp.status == 200, resp.body
    [event] = joined(await sync(server, t["alice"], since=since), room_id)["timeline"]["events"]
    assert event["unsigned"]["transaction_id"] == "my-txn"
    # Another device of the same user sees the event without it.
    other = (await server.login("alice"))["access_token"]
    [event] = joined(await sync(server, other, since=since), room_id)["timeline"]["events"]
    assert "transaction_id" not in event.get("unsigned", {})


# ------------------------------------------------- concurrency and order


async def test_concurrent_senders_and_long_polling_clients_miss_and_repeat_nothing(
    server: TestServer,
) -> None:
    """3 senders x 30 messages while 3 clients loop on /sync with a timeout.

    Two clients take everything through their timelines; the third uses a
    small timeline limit and fills every gap through /messages from the
    timeline's prev_batch, as a real client does. Each ends with exactly the
    sent events, once each, in the room's stream order.
    """
    senders, readers = ("s0", "s1", "s2"), ("r0", "r1", "r2")
    t = await tokens(server, "owner", *senders, *readers)
    room_id = await create_room(server, t["owner"])
    for name in (*senders, *readers):
        await join(server, t[name], room_id)
    small = json.dumps({"room": {"timeline": {"limit": 3, "types": ["m.room.message"]}}})
    large = json.dumps({"room": {"timeline": {"limit": 200, "types": ["m.room.message"]}}})
    filters = {"r0": large, "r1": large, "r2": small}
    starts = {name: (await sync(server, t[name], filter=filters[name]))["next_batch"] for name in readers}
    per_sender = 30
    expected_total = per_sender * len(senders)
    done_sending = asyncio.Event()

    async def sender(name: str) -> list[str]:
        return [await send(server, t[name], room_id, f"{name}-{i}") for i in range(per_sender)]

    async def reader(name: str) -> tuple[list[str], int]:
        seen: list[str] = []
        since, limited_count = starts[name], 0
        deadline = time.monotonic() + 60
        while len(seen) < expected_total and time.monotonic() < deadline:
            body = await sync(server, t[name], since=since, timeout=5000, filter=filters[name])
            assert_monotone(since, body["next_batch"])
            section = body["rooms"]["join"].get(room_id)
            if section is not None:
                timeline = section["timeline"]
                batch = [e["event_id"] for e in timeline["events"]]
                if timeline["limited"]:
                    assert name == "r2", "a timeline under the limit was limited"
                    limited_count += 1
                    batch = await fill_gap(name, timeline["prev_batch"], since) + batch
                seen.extend(batch)
            since = body["next_batch"]
            if name == "r2":
                await asyncio.sleep(0.05)  # a slow client: its next sync finds a gap
            if done_sending.is_set() and not section and len(seen) < expected_total:
                # Everything was sent: a sync that brings nothing means something was missed.
                break
        return seen, limited_count

    async def fill_gap(name: str, prev_batch: str, since: str) -> list[str]:
        """Paginate backwards from prev_batch down to the previous sync's token."""
        gap: list[str] = []
        token: str | None = prev_batch
        while token:
            resp = await server.get(
                f"{V3}/rooms/{q(room_id)}/messages",
                token=t[name],
                params={"from": token, "to": since, "dir": "b", "limit": "7"},
            )
            assert resp.status == 200, resp.body
            gap.extend(e["event_id"] for e in resp.body["chunk"] if e["type"] == "m.room.message")
            token = resp.body.get("end") if resp.body["chunk"] else None
        return list(reversed(gap))

    started = time.monotonic()
    reading = [asyncio.create_task(reader(name)) for name in readers]
    await asyncio.sleep(0.2)  # the readers are waiting in their long-polls
    sent = await asyncio.gather(*(sender(name) for name in senders))
    done_sending.set()
    results = await asyncio.gather(*reading)
    elapsed = time.monotonic() - started

    all_sent = {e for batch in sent for e in batch}
    assert len(all_sent) == expected_total
    resp = await server.get(
        f"{V3}/rooms/{q(room_id)}/messages",
        token=t["owner"],
        params={"dir": "b", "limit": "500", "filter": json.dumps({"types": ["m.room.message"]})},
    )
    stream_order = [e["event_id"] for e in reversed(resp.body["chunk"])]
    assert set(stream_order) == all_sent
    for name, (seen, _limited) in zip(readers, results):
        assert len(seen) == len(set(seen)), f"{name} saw duplicates"
        assert set(seen) == all_sent, f"{name} missed {len(all_sent - set(seen))} events"
        assert seen == stream_order, f"{name} saw events out of order"
        # Each sender's own messages arrive in the order they were sent.
        for batch in sent:
            assert [e for e in seen if e in set(batch)] == batch
    print(f"concurrent sync: {expected_total} messages, {len(readers)} readers in {elapsed:.2f}s;"
          f" small-limit reader was limited {results[2][1]} times")
    assert elapsed < 60


@pytest.mark.parametrize("on_read", [1, 2], ids=["first-read", "second-read"])
async def test_a_change_while_a_long_poll_reads_the_rooms_is_not_lost(server: TestServer, on_read: int) -> None:
    """An invite that commits while a long-poll is reading the user's rooms
    (on whichever read) reaches that sync at once, and is not skipped by the
    token it returns."""
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["bob"]))["next_batch"]
    events = server.hs.storage.events
    real = events.rooms_for_user
    reads = 0

    async def racing(user_id: str, memberships: Any = ("join",)) -> Any:
        nonlocal reads
        rows = await real(user_id, memberships)
        if user_id == uid("bob"):
            reads += 1
            if reads == on_read:
                await membership(server, t["alice"], room_id, "invite", user_id=uid("bob"))
        return rows

    class Forgetful(dict):  # every read goes to the database (and so races)
        def __setitem__(self, key: Any, value: Any) -> None:
            pass

    handler = server.hs.sync_handler
    cached, handler._membership_rows = handler._membership_rows, Forgetful()
    events.rooms_for_user = racing  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        body = await sync(server, t["bob"], since=since, timeout=3000)
        elapsed = time.monotonic() - started
    finally:
        del events.rooms_for_user
        handler._membership_rows = cached
    seen = room_id in body["rooms"]["invite"]
    if not seen:
        seen = room_id in (await sync(server, t["bob"], since=body["next_batch"]))["rooms"]["invite"]
    assert seen, "the invite was skipped"
    assert elapsed < 2, "the long-poll slept through the invite"


async def test_memberships_read_while_one_changes_are_not_cached(server: TestServer) -> None:
    """The rows of a user's rooms are cached between syncs; rows read while
    a membership of theirs changed are not kept (they may predate it)."""
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["bob"]))["next_batch"]  # bob's rows are cached now
    handler = server.hs.sync_handler
    assert uid("bob") in handler._membership_rows
    events = server.hs.storage.events
    real = events.rooms_for_user

    async def racing(user_id: str, memberships: Any = ("join",)) -> Any:
        rows = await real(user_id, memberships)  # read before the invite commits
        if user_id == uid("bob"):
            await membership(server, t["alice"], room_id, "invite", user_id=uid("bob"))
        return rows

    handler._membership_rows.clear()
    events.rooms_for_user = racing  # type: ignore[method-assign]
    try:
        stale = await handler._membership_rows_of(uid("bob"))
    finally:
        del events.rooms_for_user
    assert room_id not in {m.room_id for m in stale}
    assert uid("bob") not in handler._membership_rows  # not kept
    body = await sync(server, t["bob"], since=since)
    assert room_id in body["rooms"]["invite"]
    # A membership change of theirs drops what was cached.
    assert uid("bob") in handler._membership_rows
    await membership(server, t["bob"], room_id, "join")
    assert uid("bob") not in handler._membership_rows


async def test_a_leave_racing_the_token_does_not_lose_the_events_before_it(server: TestServer) -> None:
    """The rooms are read after the token is taken, so they may hold a leave
    past it: the sync then reports the room as it stood at its token, and
    the leave in the next one, so the messages before the leave show once."""
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]
    before = await send(server, t["alice"], room_id, "before the leave")
    await membership(server, t["bob"], room_id, "leave")
    position = (await server.hs.storage.events.get_positions([before]))[before][0].stream_ordering
    notifier = server.hs.notifier
    real_token = notifier.current_token
    # The token as it was when only `before` had committed.
    notifier.current_token = lambda: StreamToken(position)  # type: ignore[method-assign]
    try:
        first = await sync(server, t["bob"], since=since)
    finally:
        del notifier.current_token
    assert timeline_ids(first, room_id) == [before]
    assert first["rooms"]["leave"] == {}
    second = await sync(server, t["bob"], since=first["next_batch"])
    left = second["rooms"]["leave"][room_id]["timeline"]["events"]
    assert [e["content"].get("membership") for e in left] == ["leave"]
    assert real_token().events > position


async def test_a_join_racing_the_token_waits_for_the_next_sync(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["bob"]))["next_batch"]
    await join(server, t["bob"], room_id)
    notifier = server.hs.notifier
    notifier.current_token = lambda: StreamToken.parse(since)  # type: ignore[method-assign]
    try:
        first = await sync(server, t["bob"], since=since)
    finally:
        del notifier.current_token
    assert first["rooms"]["join"] == {}
    second = await sync(server, t["bob"], since=first["next_batch"])
    assert {k: e["event_id"] for k, e in state_of(joined(second, room_id)).items()} == await current_state(
        server, t["bob"], room_id
    )


# ------------------------------------------------------- limited timelines


async def test_limited_incremental_sync_has_the_state_delta_at_the_timeline_start(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob", "carol")
    room_id = await create_room(server, t["alice"], name="N0", topic="T0")
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]

    # The gap: state and messages the timeline will not hold.
    gap = [await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"})]
    gap += [await send(server, t["alice"], room_id, f"g{i}") for i in range(4)]
    await join(server, t["carol"], room_id)
    gap.append((await current_state(server, t["alice"], room_id))[("m.room.member", uid("carol"))])
    gap.append(await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"}))
    # The timeline: five events, a state change among them.
    timeline = [await send(server, t["alice"], room_id, "t0"), await send(server, t["carol"], room_id, "t1")]
    timeline.append(await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N2"}))
    timeline += [await send(server, t["alice"], room_id, f"t{i}") for i in (3, 4)]

    limit5 = json.dumps({"room": {"timeline": {"limit": 5}}})
    body = await sync(server, t["bob"], since=since, filter=limit5)
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is True
    assert timeline_ids(body, room_id) == timeline
    # The state at the START of the timeline, as a delta against `since`:
    # the name from the gap (not N2, which the timeline carries), the topic and carol.
    state = {(e["type"], e["state_key"]): e for e in room["state"]["events"]}
    assert set(state) == {("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", uid("carol"))}
    assert state[("m.room.name", "")]["content"] == {"name": "N1"}
    assert state[("m.room.topic", "")]["content"] == {"topic": "T1"}
    assert state[("m.room.member", uid("carol"))]["content"]["membership"] == "join"

    # prev_batch fetches exactly the gap, back to the previous sync's token.
    resp = await server.get(
        f"{V3}/rooms/{q(room_id)}/messages",
        token=t["bob"],
        params={"from": room["timeline"]["prev_batch"], "to": since, "dir": "b", "limit": "50"},
    )
    assert resp.status == 200, resp.body
    assert [e["event_id"] for e in reversed(resp.body["chunk"])] == gap


async def test_filtered_timeline_still_reports_state_changes(server: TestServer) -> None:
    """State changes the timeline filter leaves out reach the client through `state`."""
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    only_messages = json.dumps({"room": {"timeline": {"types": ["m.room.message"]}}})
    since = (await sync(server, t["bob"], filter=only_messages))["next_batch"]

    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "new"})
    message = await send(server, t["alice"], room_id, "after the topic")
    body = await sync(server, t["bob"], since=since, filter=only_messages)
    room = joined(body, room_id)
    assert timeline_ids(body, room_id) == [message]
    assert [(e["type"], e["content"]) for e in room["state"]["events"]] == [("m.room.topic", {"topic": "new"})]

    # Only state changed: the timeline is empty but the state is there.
    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "newer"})
    body2 = await sync(server, t["bob"], since=body["next_batch"], filter=only_messages)
    room = joined(body2, room_id)
    assert room["timeline"]["events"] == []
    assert [e["content"] for e in room["state"]["events"]] == [{"topic": "newer"}]


# ------------------------------------------------------ lazy-loaded members


LAZY = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 5}}})
# Seven: bob's summary names five heroes (alice, carol, dave, erin, frank), grace is none.
LAZY_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")


async def lazy_room(server: TestServer) -> tuple[dict[str, str], str]:
    """Tokens of LAZY_NAMES, all joined to alice's room, where alice then says six things."""
    t = await tokens(server, *LAZY_NAMES)
    room_id = await create_room(server, t["alice"])
    for name in LAZY_NAMES[1:]:
        await join(server, t[name], room_id)
    for i in range(6):
        await send(server, t["alice"], room_id, f"a{i}")
    return t, room_id


async def test_lazy_loading_sends_only_the_members_of_timeline_senders(server: TestServer) -> None:
    names = LAZY_NAMES
    t, room_id = await lazy_room(server)

    def members(body: dict[str, Any]) -> set[str]:
        return {
            e["state_key"] for e in joined(body, room_id)["state"]["events"] if e["type"] == "m.room.member"
        }

    # Without lazy loading: every member, in the state (or the timeline).
    full = joined(await sync(server, t["bob"], filter=json.dumps({"room": {"timeline": {"limit": 5}}})), room_id)
    assert members({"rooms": {"join": {room_id: full}}}) == {uid(n) for n in names}
    # Initial, lazy: the timeline's sender, the syncing user and the summary's
    # heroes (the spec: clients name the room after them).
    initial = await sync(server, t["bob"], filter=LAZY)
    assert [e["sender"] for e in joined(initial, room_id)["timeline"]["events"]] == [uid("alice")] * 5
    heroes = joined(initial, room_id)["summary"]["m.heroes"]
    assert heroes == [uid(n) for n in ("alice", "carol", "dave", "erin", "frank")]
    assert members(initial) == {uid("bob"), *heroes}
    # The other state is all there.
    assert ("m.room.create", "") in state_keys(joined(initial, room_id)["state"]["events"])

    # Incremental: carol speaks, so her member event comes along; dave's does not.
    await send(server, t["carol"], room_id, "hi from carol")
    body = await sync(server, t["bob"], since=initial["next_batch"], filter=LAZY)
    assert uid("carol") in members(body)
    assert uid("dave") not in members(body) and uid("erin") not in members(body)

    # Limited: dave's profile change in the gap MUST be sent, though dave says nothing
    # in the timeline; erin speaks in the timeline, so hers comes too.
    resp = await server.put(
        f"{V3}/profile/{q(uid('dave'))}/displayname", {"displayname": "Dave"}, token=t["dave"]
    )
    assert resp.status == 200, resp.body
    for i in range(6):
        await send(server, t["alice"], room_id, f"b{i}")
    await send(server, t["erin"], room_id, "hi from erin")
    limited = await sync(server, t["bob"], since=body["next_batch"], filter=LAZY)
    assert joined(limited, room_id)["timeline"]["limited"] is True
    got = members(limited)
    assert {uid("dave"), uid("erin"), uid("alice")} <= got
    assert uid("carol") not in got
    dave = next(
        e for e in joined(limited, room_id)["state"]["events"] if e.get("state_key") == uid("dave")
    )
    assert dave["content"]["displayname"] == "Dave"


# ------------------------------------------- invites, knocks and leaves


async def test_invite_appears_once_then_the_rejection_once_in_leave(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Secret", preset="private_chat")
    since = (await sync(server, t["bob"]))["next_batch"]

    await membership(server, t["alice"], room_id, "invite", user_id=uid("bob"))
    body = await sync(server, t["bob"], since=since)
    assert room_id not in body["rooms"]["join"]
    invite = body["rooms"]["invite"][room_id]
    stripped = {(e["type"], e["state_key"]): e for e in invite["invite_state"]["events"]}
    assert {("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", "")} <= set(stripped)
    me = stripped[("m.room.member", uid("bob"))]
    assert me["content"]["membership"] == "invite" and me["sender"] == uid("alice")
    for event in stripped.values():
        assert set(event) == {"type", "state_key", "content", "sender"}

    # Once only; an initial sync still shows it while it stands.
    later = await sync(server, t["bob"], since=body["next_batch"])
    assert later["rooms"]["invite"] == {}
    assert room_id in (await sync(server, t["bob"]))["rooms"]["invite"]

    # Rejecting: the room moves to `leave` once, then is gone.
    await membership(server, t["bob"], room_id, "leave")
    rejected = await sync(server, t["bob"], since=later["next_batch"])
    assert rejected["rooms"]["invite"] == {}
    left = rejected["rooms"]["leave"][room_id]
    assert left["timeline"]["events"][-1]["content"]["membership"] == "leave"
    assert (await sync(server, t["bob"], since=rejected["next_batch"]))["rooms"]["leave"] == {}
    # Initial syncs leave it out unless asked.
    assert room_id not in (await sync(server, t["bob"]))["rooms"]["leave"]


async def test_leave_section_has_the_timeline_up_to_the_leave(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]

    before = await send(server, t["alice"], room_id, "before")
    await membership(server, t["alice"], room_id, "kick", user_id=uid("bob"), reason="bye")
    await send(server, t["alice"], room_id, "after: not for bob")

    body = await sync(server, t["bob"], since=since)
    assert room_id not in body["rooms"]["join"]
    left = body["rooms"]["leave"][room_id]
    events = left["timeline"]["events"]
    assert events[0]["event_id"] == before
    assert events[-1]["type"] == "m.room.member" and events[-1]["state_key"] == uid("bob")
    assert events[-1]["content"]["membership"] == "leave"
    assert len(events) == 2
    assert "state" in left and "account_data" in left

    assert (await sync(server, t["bob"], since=body["next_batch"]))["rooms"]["leave"] == {}
    # include_leave brings left rooms into an initial sync, still ending at the leave.
    include = json.dumps({"room": {"include_leave": True}})
    initial = await sync(server, t["bob"], filter=include)
    assert initial["rooms"]["leave"][room_id]["timeline"]["events"][-1]["content"]["membership"] == "leave"
    assert room_id not in (await sync(server, t["bob"]))["rooms"]["leave"]


async def test_knock_appears_once_with_stripped_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "carol")
    room_id = await create_room(
        server, t["alice"], name="Knockable", preset="private_chat",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    since = (await sync(server, t["carol"]))["next_batch"]
    resp = await server.post(f"{V3}/knock/{q(room_id)}", {"reason": "let me in"}, token=t["carol"])
    assert resp.status == 200, resp.body

    body = await sync(server, t["carol"], since=since)
    knock = body["rooms"]["knock"][room_id]
    stripped = {(e["type"], e["state_key"]): e for e in knock["knock_state"]["events"]}
    assert stripped[("m.room.member", uid("carol"))]["content"]["membership"] == "knock"
    assert stripped[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
    assert stripped[("m.room.name", "")]["content"]["name"] == "Knockable"
    assert (await sync(server, t["carol"], since=body["next_batch"]))["rooms"]["knock"] == {}

    # Accepted: the invite replaces the knock.
    await membership(server, t["alice"], room_id, "invite", user_id=uid("carol"))
    accepted = await sync(server, t["carol"], since=body["next_batch"])
    assert room_id in accepted["rooms"]["invite"]
    assert accepted["rooms"]["knock"] == {}


async def test_newly_joined_room_comes_with_full_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Later", topic="joined later")
    history = [await send(server, t["alice"], room_id, f"h{i}") for i in range(3)]
    since = (await sync(server, t["bob"]))["next_batch"]
    await join(server, t["bob"], room_id)

    body = await sync(server, t["bob"], since=since, filter=NO_LIMIT)
    room = joined(body, room_id)
    held = state_of(room)
    assert {k: e["event_id"] for k, e in held.items()} == await current_state(server, t["bob"], room_id)
    events = room["timeline"]["events"]
    assert events[-1]["state_key"] == uid("bob") and events[-1]["content"]["membership"] == "join"
    # History before the join is there for a public room (shared visibility).
    assert set(history) <= {e["event_id"] for e in events}


async def test_profile_change_is_not_a_rejoin(server: TestServer) -> None:
    """A displayname change is a join -> join member event: an ordinary timeline event."""
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]
    resp = await server.put(f"{V3}/profile/{q(uid('bob'))}/displayname", {"displayname": "B"}, token=t["bob"])
    assert resp.status == 200, resp.body

    body = await sync(server, t["bob"], since=since)
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is False
    assert [(e["type"], e["content"].get("displayname")) for e in room["timeline"]["events"]] == [
        ("m.room.member", "B")
    ]
    assert room["state"]["events"] == []


async def test_full_state_returns_all_state_but_only_new_timeline(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Full")
    await join(server, t["bob"], room_id)
    await send(server, t["alice"], room_id, "old")
    since = (await sync(server, t["bob"]))["next_batch"]

    started = time.monotonic()
    body = await sync(server, t["bob"], since=since, full_state=True, timeout=5000)
    assert time.monotonic() - started < 2, "full_state must not wait"
    room = joined(body, room_id)
    assert room["timeline"]["events"] == []
    assert {(e["type"], e["state_key"]): e["event_id"] for e in room["state"]["events"]} == await current_state(
        server, t["bob"], room_id
    )

    new = await send(server, t["alice"], room_id, "new")
    body = await sync(server, t["bob"], since=body["next_batch"], full_state=True)
    room = joined(body, room_id)
    assert timeline_ids(body, room_id) == [new]
    assert state_keys(room["state"]["events"]) == set(await current_state(server, t["bob"], room_id))


async def test_leaving_and_rejoining_between_syncs_gives_full_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Again")
    await join(server, t["bob"], room_id)
    for i in range(12):
        await send(server, t["alice"], room_id, f"m{i}")
    since = (await sync(server, t["bob"]))["next_batch"]
    await membership(server, t["bob"], room_id, "leave")
    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "while bob was away"})
    await join(server, t["bob"], room_id)

    body = await sync(server, t["bob"], since=since, filter=NO_LIMIT)
    room = joined(body, room_id)
    assert body["rooms"]["leave"] == {}
    assert {k: e["event_id"] for k, e in state_of(room).items()} == await current_state(server, t["bob"], room_id)
    assert room["timeline"]["events"][-1]["content"]["membership"] == "join"


async def test_summary_heroes_in_join_order_then_those_who_left(server: TestServer) -> None:
    t = await tokens(server, "owner", "zed", "amy", "bob")
    room_id = await create_room(server, t["owner"])
    for name in ("zed", "amy", "bob"):
        await join(server, t[name], room_id)
    summary = joined(await sync(server, t["bob"]), room_id)["summary"]
    assert summary == {
        "m.heroes": [uid("owner"), uid("zed"), uid("amy")],
        "m.joined_member_count": 4,
        "m.invited_member_count": 0,
    }
    for name in ("owner", "zed", "amy"):
        await membership(server, t[name], room_id, "leave")
    summary = joined(await sync(server, t["bob"]), room_id)["summary"]
    assert summary["m.joined_member_count"] == 1
    assert set(summary["m.heroes"]) == {uid("owner"), uid("zed"), uid("amy")}


# ------------------------------------------------------------- long-poll


async def test_long_poll_wakes_at_once_for_a_message(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]

    polling = asyncio.create_task(sync(server, t["bob"], since=since, timeout=10000))
    await asyncio.sleep(0.3)
    assert not polling.done()
    event_id = await send(server, t["alice"], room_id, "wake up")
    sent_at = time.monotonic()
    body = await polling
    woke_after = time.monotonic() - sent_at
    print(f"long-poll answered {woke_after * 1000:.1f} ms after the send returned")
    assert timeline_ids(body, room_id) == [event_id]
    assert woke_after < 0.3, f"woke {woke_after * 1000:.0f} ms after the send"


async def test_long_poll_ignores_rooms_the_user_is_not_in(server: TestServer) -> None:
    t = await tokens(server, "alice", "carol")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["carol"]))["next_batch"]

    started = time.monotonic()
    polling = asyncio.create_task(sync(server, t["carol"], since=since, timeout=1000))
    await asyncio.sleep(0.1)
    for i in range(3):
        await send(server, t["alice"], room_id, f"not for carol {i}")
    body = await polling
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 3, elapsed
    assert body["rooms"]["join"] == {} and body["rooms"]["invite"] == {}
    assert_monotone(since, body["next_batch"])


async def test_long_poll_wakes_for_an_invite(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["bob"]))["next_batch"]

    polling = asyncio.create_task(sync(server, t["bob"], since=since, timeout=10000))
    await asyncio.sleep(0.2)
    await membership(server, t["alice"], room_id, "invite", user_id=uid("bob"))
    sent_at = time.monotonic()
    body = await polling
    assert room_id in body["rooms"]["invite"]
    assert time.monotonic() - sent_at < 0.5


async def test_timeout_returns_an_empty_answer_with_a_usable_token(server: TestServer) -> None:
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"])
    first = await sync(server, t["alice"])
    started = time.monotonic()
    body = await sync(server, t["alice"], since=first["next_batch"], timeout=300)
    assert time.monotonic() - started >= 0.28
    assert body["rooms"]["join"] == {}
    event_id = await send(server, t["alice"], room_id, "later")
    after = await sync(server, t["alice"], since=body["next_batch"])
    assert timeline_ids(after, room_id) == [event_id]


async def test_next_batch_tokens_are_monotone(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    body = await sync(server, t["bob"])
    tokens_seen = [body["next_batch"]]
    for i in range(5):
        await send(server, t["alice"], room_id, f"m{i}")
        await server.put(f"{V3}/user/{q(uid('bob'))}/account_data/x.test", {"i": i}, token=t["bob"])
        body = await sync(server, t["bob"], since=tokens_seen[-1])
        tokens_seen.append(body["next_batch"])
    for earlier, later in itertools.pairwise(tokens_seen):
        assert_monotone(earlier, later)
    assert StreamToken.parse(tokens_seen[-1]).events > StreamToken.parse(tokens_seen[0]).events


async def test_shutdown_ends_long_polls(server: TestServer) -> None:
    t = await tokens(server, "alice")
    since = (await sync(server, t["alice"]))["next_batch"]
    polling = asyncio.create_task(sync_raw(server, t["alice"], since=since, timeout=20000))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await server._runner.app.shutdown()  # what the runner does first when the server stops
    resp = await polling
    assert time.monotonic() - started < 2
    assert resp.status == 200 and resp.body["rooms"]["join"] == {}


SPEC_API = Path(__file__).resolve().parents[2] / "shared" / "matrix-spec" / "data" / "api" / "client-server"


def _resolved(node: Any, base: Path, depth: int = 0) -> Any:
    """An OpenAPI schema with its file `$ref`s inlined (examples dropped)."""
    if isinstance(node, list):
        return [_resolved(item, base, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        assert depth < 20, node["$ref"]
        path, _, fragment = node["$ref"].partition("#")
        target = (base / path).resolve()
        document = yaml.safe_load(target.read_text())
        for part in filter(None, fragment.split("/")):
            document = document[part]
        return _resolved(document, target.parent, depth + 1)
    return {k: _resolved(v, base, depth) for k, v in node.items() if k not in ("example", "examples")}


def sync_response_schema() -> dict[str, Any]:
    if not SPEC_API.is_dir():
        pytest.skip(f"the Matrix spec is not at {SPEC_API}")
    api = yaml.safe_load((SPEC_API / "sync.yaml").read_text())
    schema = api["paths"]["/sync"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return _resolved(schema, SPEC_API)


async def test_responses_match_the_spec_schema(server: TestServer) -> None:
    """Initial and incremental answers with every section filled validate
    against the response schema in the spec's OpenAPI (sync.yaml)."""
    schema = sync_response_schema()
    validator = jsonschema.Draft202012Validator(schema)
    t = await tokens(server, "alice", "bob", "carol")
    room_id = await create_room(server, t["alice"], name="Schema", topic="checked")
    await join(server, t["bob"], room_id)
    invite_room = await create_room(server, t["alice"], preset="private_chat")
    await membership(server, t["alice"], invite_room, "invite", user_id=uid("bob"))
    knock_room = await create_room(
        server, t["carol"], preset="private_chat",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    resp = await server.post(f"{V3}/knock/{q(knock_room)}", {}, token=t["bob"])
    assert resp.status == 200, resp.body
    left_room = await create_room(server, t["alice"])
    await join(server, t["bob"], left_room)
    await membership(server, t["bob"], left_room, "leave")
    message = await send(server, t["alice"], room_id, "hello")
    await server.post(f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {}, token=t["alice"])
    await server.put(f"{V3}/rooms/{q(room_id)}/typing/{q(uid('alice'))}", {"typing": True, "timeout": 30000},
                     token=t["alice"])
    await server.put(f"{V3}/user/{q(uid('bob'))}/account_data/x.global", {"a": 1}, token=t["bob"])
    await server.put(f"{V3}/user/{q(uid('bob'))}/rooms/{q(room_id)}/account_data/x.room", {"b": 2}, token=t["bob"])
    await server.put(f"{V3}/presence/{q(uid('alice'))}/status", {"presence": "online"}, token=t["alice"])

    initial = await sync(server, t["bob"], filter=json.dumps({"room": {"include_leave": True}}))
    assert set(initial["rooms"]["invite"]) == {invite_room}
    assert set(initial["rooms"]["knock"]) == {knock_room}
    assert set(initial["rooms"]["leave"]) == {left_room}
    validator.validate(initial)

    await send(server, t["alice"], room_id, "again")
    await membership(server, t["alice"], room_id, "invite", user_id=uid("carol"))
    incremental = await sync(server, t["bob"], since=initial["next_batch"])
    assert room_id in incremental["rooms"]["join"]
    validator.validate(incremental)
    lazy = await sync(server, t["bob"], filter=json.dumps({"room": {"state": {"lazy_load_members": True}}}))
    validator.validate(lazy)


# ------------------------------------------------------------- refusals


async def test_bad_parameters_are_refused(server: TestServer) -> None:
    t = await tokens(server, "alice")
    for since in ("garbage", "s", "s-1", "t1-2", "s1_2_3_4_5_6_7_8", "s99999999999999999999", ""):
        assert_error(await sync_raw(server, t["alice"], since=since), 400, "M_INVALID_PARAM")
    for timeout in ("abc", "-1", "1.5"):
        assert_error(await sync_raw(server, t["alice"], timeout=timeout), 400, "M_INVALID_PARAM")
    assert_error(await sync_raw(server, t["alice"], full_state="yes"), 400, "M_INVALID_PARAM")
    assert_error(await sync_raw(server, t["alice"], set_presence="away"), 400, "M_INVALID_PARAM")
    assert_error(await server.get(f"{V3}/sync"), 401, "M_MISSING_TOKEN")
    assert_error(await server.get(f"{V3}/sync", token="nope"), 401, "M_UNKNOWN_TOKEN")
    # Good values of each are accepted.
    ok = await sync(server, t["alice"], full_state=False, set_presence="offline", timeout=0)
    assert ok["next_batch"]


# --------------------------------------- the other streams: counts, typing


async def test_unread_counts_go_up_with_messages_and_down_with_a_receipt(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]

    await send(server, t["alice"], room_id, "one")
    last = await send(server, t["alice"], room_id, "two")
    body = await sync(server, t["bob"], since=since)
    assert joined(body, room_id)["unread_notifications"]["notification_count"] == 2

    resp = await server.post(f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(last)}", {}, token=t["bob"])
    assert resp.status == 200, resp.body
    body = await sync(server, t["bob"], since=body["next_batch"], timeout=2000)
    room = joined(body, room_id)
    assert room["unread_notifications"]["notification_count"] == 0
    receipts = [e for e in room["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert receipts and last in receipts[0]["content"]


async def test_typing_appears_in_ephemeral_and_goes_after_expiry(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"])
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"]))["next_batch"]

    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/typing/{q(uid('alice'))}", {"typing": True, "timeout": 500}, token=t["alice"]
    )
    assert resp.status == 200, resp.body
    body = await sync(server, t["bob"], since=since, timeout=2000)
    typing = [e for e in joined(body, room_id)["ephemeral"]["events"] if e["type"] == "m.typing"]
    assert typing == [{"type": "m.typing", "content": {"user_ids": [uid("alice")]}}]

    # The long-poll wakes when the typing expires.
    started = time.monotonic()
    body = await sync(server, t["bob"], since=body["next_batch"], timeout=5000)
    assert time.monotonic() - started < 3
    typing = [e for e in joined(body, room_id)["ephemeral"]["events"] if e["type"] == "m.typing"]
    assert typing == [{"type": "m.typing", "content": {"user_ids": []}}]


async def test_push_rules_arrive_as_account_data_and_follow_changes(server):
    token = (await server.register_user("alice"))["access_token"]
    initial = await server.get("/_matrix/client/v3/sync", token=token)
    rules = [e for e in initial.body["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert len(rules) == 1 and "override" in rules[0]["content"]["global"]
    since = initial.body["next_batch"]
    quiet = await server.get(f"/_matrix/client/v3/sync?since={since}", token=token)
    assert all(e["type"] != "m.push_rules" for e in quiet.body["account_data"]["events"])
    resp = await server.put(
        "/_matrix/client/v3/pushrules/global/content/lunch",
        {"pattern": "lunch", "actions": ["notify"]},
        token=token,
    )
    assert resp.status == 200, resp.body
    changed = await server.get(f"/_matrix/client/v3/sync?since={since}&timeout=5000", token=token)
    pushed = [e for e in changed.body["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert [r["rule_id"] for r in pushed[0]["content"]["global"]["content"]][:1] == ["lunch"]


async def test_deleting_a_device_removes_its_pushers(server):
    login = await server.register_user("alice")
    token = login["access_token"]
    pusher = {
        "kind": "http", "app_id": "com.example", "pushkey": "key1", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en",
        # (A public address: gateways on private ones are refused unless allowed.)
        "data": {"url": "http://push.example.com/_matrix/push/v1/notify"},
    }
    assert (await server.post("/_matrix/client/v3/pushers/set", pusher, token=token)).status == 200
    other = await server.login("alice")
    assert len((await server.get("/_matrix/client/v3/pushers", token=other["access_token"])).body["pushers"]) == 1
    await server.post("/_matrix/client/v3/logout", {}, token=token)
    assert (await server.get("/_matrix/client/v3/pushers", token=other["access_token"])).body["pushers"] == []


async def test_a_long_poll_ends_when_its_client_goes_away(server: TestServer) -> None:
    """aiohttp does not cancel handlers; the poll notices the closed connection."""
    t = await tokens(server, "alice")
    room_id = await create_room(server, t["alice"])
    since = (await sync(server, t["alice"]))["next_batch"]

    def waiting() -> float:
        return REGISTRY.get_sample_value("homeserver_sync_waiters") or 0.0

    async def until(condition: Any, within: float) -> float:
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < within, "timed out"
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    before = waiting()
    async with aiohttp.ClientSession() as session:
        poll = asyncio.create_task(
            session.get(
                f"{server.url}{V3}/sync",
                params={"since": since, "timeout": "30000"},
                headers={"Authorization": f"Bearer {t['alice']}"},
            )
        )
        await until(lambda: waiting() == before + 1, within=5)
        poll.cancel()  # drops the connection mid-response
        with pytest.raises(asyncio.CancelledError):
            await poll
    assert await until(lambda: waiting() == before, within=1) < 1
    # Other long-polls are untouched, and still wake for news.
    polling = asyncio.create_task(sync_raw(server, t["alice"], since=since, timeout=20000))
    await until(lambda: waiting() == before + 1, within=5)
    await asyncio.sleep(0.6)  # past a check for disconnected clients
    assert not polling.done()
    event_id = await send(server, t["alice"], room_id)
    resp = await polling
    assert resp.status == 200 and event_id in timeline_ids(resp.body, room_id)
