"""MSC4222 (spec v1.16): `use_state_after` on GET /sync, over real HTTP on
both engines.

With the parameter (stable `use_state_after` or unstable
`org.matrix.msc4222.use_state_after`), joined and left rooms carry the state
at the END of their timeline under `state_after` (or
`org.matrix.msc4222.state_after`): in full for an initial sync, a newly
joined room or full_state, otherwise every entry that changed since `since`,
even when the timeline shows it too. `state` is then omitted. Without the
parameter nothing changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jsonschema

from .test_sync import (
    LAZY,
    NO_LIMIT,
    V3,
    assert_error,
    create_room,
    current_state,
    join,
    joined,
    lazy_room,
    membership,
    put_state,
    q,
    send,
    sync,
    sync_raw,
    sync_response_schema,
    timeline_ids,
    tokens,
    uid,
)

if TYPE_CHECKING:
    from .conftest import TestServer

UNSTABLE = "org.matrix.msc4222.state_after"
STABLE = "state_after"
# What Element Web (matrix-js-sdk) sends on every /sync.
USE_UNSTABLE = {"org.matrix.msc4222.use_state_after": True}
USE_STABLE = {"use_state_after": True}
ROOM_STATE_KEYS = ("state", STABLE, UNSTABLE)


def after(section: dict[str, Any], key: str = UNSTABLE) -> dict[tuple[str, str], dict[str, Any]]:
    """The room's `state_after`, by state key; the section has no other state key."""
    assert [k for k in ROOM_STATE_KEYS if k in section] == [key], list(section)
    return {(e["type"], e["state_key"]): e for e in section[key]["events"]}


def ids(state: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {k: e["event_id"] for k, e in state.items()}


def members(state: dict[tuple[str, str], dict[str, Any]]) -> set[str]:
    return {k[1] for k in state if k[0] == "m.room.member"}


async def set_displayname(server: TestServer, token: str, user: str, name: str) -> None:
    resp = await server.put(f"{V3}/profile/{q(uid(user))}/displayname", {"displayname": name}, token=token)
    assert resp.status == 200, resp.body


# ------------------------------------------------------------ discovery


async def test_versions_advertises_msc4222(server: TestServer) -> None:
    resp = await server.get("/_matrix/client/versions")
    assert resp.status == 200, resp.body
    assert resp.body["unstable_features"]["org.matrix.msc4222"] is True


# ------------------------------------------------------- initial syncs


async def test_initial_sync_carries_the_full_state_at_the_end_of_the_timeline(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="N0", topic="T0")
    await join(server, t["bob"], room_id)
    # The last state change is inside the timeline: state_after holds it too.
    await send(server, t["alice"], room_id, "hello")
    name = await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"})
    await send(server, t["alice"], room_id, "after the name")
    current = await current_state(server, t["bob"], room_id)

    for params, key in ((USE_UNSTABLE, UNSTABLE), (USE_STABLE, STABLE)):
        body = await sync(server, t["bob"], **params)
        room = joined(body, room_id)
        state = after(room, key)
        assert ids(state) == current
        assert state[("m.room.name", "")]["event_id"] == name
        assert name in timeline_ids(body, room_id)
        assert set(room) >= {"timeline", key, "ephemeral", "account_data", "unread_notifications", "summary"}

    # Both names at once: the stable one.
    body = await sync(server, t["bob"], **USE_UNSTABLE, **USE_STABLE)
    assert ids(after(joined(body, room_id), STABLE)) == current

    # A limited initial timeline: still the state at its end, in full.
    for i in range(12):
        await send(server, t["alice"], room_id, f"m{i}")
    topic = await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"})
    body = await sync(server, t["bob"], **USE_UNSTABLE)
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is True
    assert timeline_ids(body, room_id)[-1] == topic
    assert ids(after(room)) == await current_state(server, t["bob"], room_id)


async def test_without_the_parameter_nothing_changes(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="N0")
    await join(server, t["bob"], room_id)
    left_room = await create_room(server, t["alice"])
    await join(server, t["bob"], left_room)
    since = (await sync(server, t["bob"]))["next_batch"]
    await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"})
    await membership(server, t["bob"], left_room, "leave")

    plain = await sync(server, t["bob"], since=since)
    off = await sync(
        server, t["bob"], since=since, use_state_after=False, **{"org.matrix.msc4222.use_state_after": False}
    )
    for body in (plain, off):
        room = joined(body, room_id)
        assert STABLE not in room and UNSTABLE not in room
        # The name is in the timeline, so `state` (at its start) is empty.
        assert room["state"] == {"events": []}
        left = body["rooms"]["leave"][left_room]
        assert "state" in left and STABLE not in left and UNSTABLE not in left
    assert timeline_ids(plain, room_id) == timeline_ids(off, room_id)


async def test_bad_values_are_refused(server: TestServer) -> None:
    t = await tokens(server, "alice")
    for name in ("use_state_after", "org.matrix.msc4222.use_state_after"):
        for value in ("yes", "1", "True", ""):
            assert_error(await sync_raw(server, t["alice"], **{name: value}), 400, "M_INVALID_PARAM")
    # A bad unstable value is refused even next to a good stable one.
    assert_error(
        await sync_raw(server, t["alice"], use_state_after=True, **{"org.matrix.msc4222.use_state_after": "x"}),
        400,
        "M_INVALID_PARAM",
    )
    assert (await sync(server, t["alice"], use_state_after=False))["next_batch"]


# --------------------------------------------------- incremental syncs


async def test_incremental_sync_has_the_final_state_of_changes_inside_the_timeline(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="N0", topic="T0")
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"], **USE_UNSTABLE))["next_batch"]

    sent = [await send(server, t["alice"], room_id, "one")]
    sent.append(await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"}))
    sent.append(await send(server, t["alice"], room_id, "two"))
    sent.append(await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N2"}))
    sent.append(await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"}))
    sent.append(await send(server, t["alice"], room_id, "three"))

    body = await sync(server, t["bob"], since=since, **USE_UNSTABLE)
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is False
    assert timeline_ids(body, room_id) == sent
    # Exactly what changed since `since`, as it stands at the end: N2, not N1.
    state = after(room)
    assert set(state) == {("m.room.name", ""), ("m.room.topic", "")}
    assert state[("m.room.name", "")]["content"] == {"name": "N2"}
    assert state[("m.room.name", "")]["event_id"] == sent[3]
    assert state[("m.room.topic", "")]["event_id"] == sent[4]

    # Messages only: state_after is there, empty (the client MUST get it).
    message = await send(server, t["alice"], room_id, "just talk")
    body2 = await sync(server, t["bob"], since=body["next_batch"], **USE_UNSTABLE)
    room = joined(body2, room_id)
    assert timeline_ids(body2, room_id) == [message]
    assert after(room) == {}

    # Nothing at all: no room, as without the parameter.
    assert (await sync(server, t["bob"], since=body2["next_batch"], **USE_UNSTABLE))["rooms"]["join"] == {}

    # A change made and undone between two syncs leaves nothing to apply.
    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T2"})
    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"})
    body3 = await sync(server, t["bob"], since=body2["next_batch"], **USE_STABLE)
    state = after(joined(body3, room_id), STABLE)
    # The topic event differs (a new event with the old content): it is sent.
    assert set(state) == {("m.room.topic", "")}
    assert state[("m.room.topic", "")]["content"] == {"topic": "T1"}
    assert state[("m.room.topic", "")]["event_id"] == timeline_ids(body3, room_id)[-1]


async def test_limited_timeline_still_ends_at_the_end_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob", "carol")
    room_id = await create_room(server, t["alice"], name="N0", topic="T0")
    await join(server, t["bob"], room_id)
    first = await sync(server, t["bob"], **USE_UNSTABLE)
    since = first["next_batch"]

    # The gap: state and messages the timeline will not hold.
    await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"})
    for i in range(4):
        await send(server, t["alice"], room_id, f"g{i}")
    await join(server, t["carol"], room_id)
    topic = await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"})
    # The timeline: the name changes again inside it.
    timeline = [await send(server, t["alice"], room_id, "t0"), await send(server, t["carol"], room_id, "t1")]
    name = await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N2"})
    timeline += [name, await send(server, t["alice"], room_id, "t3"), await send(server, t["alice"], room_id, "t4")]

    limit5 = json.dumps({"room": {"timeline": {"limit": 5}}})
    body = await sync(server, t["bob"], since=since, filter=limit5, **USE_UNSTABLE)
    room = joined(body, room_id)
    assert room["timeline"]["limited"] is True
    assert timeline_ids(body, room_id) == timeline
    state = after(room)
    # At the END: N2 (though the timeline shows it), not the gap's N1.
    assert set(state) == {("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", uid("carol"))}
    assert state[("m.room.name", "")]["event_id"] == name
    assert state[("m.room.topic", "")]["event_id"] == topic
    assert state[("m.room.member", uid("carol"))]["content"]["membership"] == "join"
    # The client's state from the first sync, updated with state_after
    # alone, is the room's current state.
    held = ids(after(joined(first, room_id)))
    held.update(ids(state))
    assert held == await current_state(server, t["bob"], room_id)


async def test_full_state_sends_the_whole_end_state_with_only_the_new_timeline(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Full")
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"], **USE_UNSTABLE))["next_batch"]
    name = await put_state(server, t["alice"], room_id, "m.room.name", {"name": "Fuller"})

    body = await sync(server, t["bob"], since=since, full_state=True, **USE_STABLE)
    room = joined(body, room_id)
    assert timeline_ids(body, room_id) == [name]
    state = after(room, STABLE)
    assert ids(state) == await current_state(server, t["bob"], room_id)
    assert state[("m.room.name", "")]["event_id"] == name


# -------------------------------------------- newly joined and left rooms


async def test_newly_joined_room_has_its_full_end_state(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Later", topic="joined later")
    await send(server, t["alice"], room_id, "history")
    since = (await sync(server, t["bob"], **USE_UNSTABLE))["next_batch"]
    await join(server, t["bob"], room_id)
    topic = await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "welcome"})

    body = await sync(server, t["bob"], since=since, filter=NO_LIMIT, **USE_UNSTABLE)
    room = joined(body, room_id)
    state = after(room)
    assert ids(state) == await current_state(server, t["bob"], room_id)
    assert state[("m.room.member", uid("bob"))]["content"]["membership"] == "join"
    assert state[("m.room.topic", "")]["event_id"] == topic == timeline_ids(body, room_id)[-1]


async def test_left_room_has_the_state_at_the_leave(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="N0")
    await join(server, t["bob"], room_id)
    since = (await sync(server, t["bob"], **USE_UNSTABLE))["next_batch"]

    name = await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N1"})
    await membership(server, t["alice"], room_id, "kick", user_id=uid("bob"), reason="bye")
    at_leave = await current_state(server, t["alice"], room_id)
    # After the kick: not for bob, in the timeline or the state.
    await put_state(server, t["alice"], room_id, "m.room.name", {"name": "N2"})

    body = await sync(server, t["bob"], since=since, **USE_UNSTABLE)
    assert room_id not in body["rooms"]["join"]
    left = body["rooms"]["leave"][room_id]
    state = after(left)
    assert set(state) == {("m.room.name", ""), ("m.room.member", uid("bob"))}
    assert state[("m.room.name", "")]["event_id"] == name
    assert state[("m.room.member", uid("bob"))]["content"]["membership"] == "leave"
    assert left["timeline"]["events"][-1]["event_id"] == state[("m.room.member", uid("bob"))]["event_id"]
    assert "account_data" in left

    # include_leave on an initial sync: the whole state at the leave.
    include = json.dumps({"room": {"include_leave": True}})
    initial = await sync(server, t["bob"], filter=include, **USE_STABLE)
    assert ids(after(initial["rooms"]["leave"][room_id], STABLE)) == at_leave


# ------------------------------------------------- lazy-loaded members


async def test_lazy_loaded_members_with_state_after(server: TestServer) -> None:
    t, room_id = await lazy_room(server)

    # Initial: the timeline's sender, the syncing user, the heroes, and the rest of the state.
    initial = await sync(server, t["bob"], filter=LAZY, **USE_UNSTABLE)
    state = after(joined(initial, room_id))
    assert members(state) == {uid("bob"), *(uid(n) for n in ("alice", "carol", "dave", "erin", "frank"))}
    assert ("m.room.create", "") in state

    # Incremental: carol speaks, so her member event comes; dave's and erin's do not.
    await send(server, t["carol"], room_id, "hi from carol")
    body = await sync(server, t["bob"], since=initial["next_batch"], filter=LAZY, **USE_UNSTABLE)
    assert members(after(joined(body, room_id))) == {uid("carol")}

    # A member change inside a (not limited) timeline: the client must not
    # take it from the timeline, so it is in state_after, at its end value.
    await set_displayname(server, t["dave"], "dave", "Dave")
    await set_displayname(server, t["dave"], "dave", "David")
    body2 = await sync(server, t["bob"], since=body["next_batch"], filter=LAZY, **USE_UNSTABLE)
    room = joined(body2, room_id)
    assert room["timeline"]["limited"] is False
    state = after(room)
    assert members(state) == {uid("dave")}
    assert state[("m.room.member", uid("dave"))]["content"]["displayname"] == "David"

    # A sender who leaves within the timeline: their member event as it
    # stands at the end (the leave), not the join they spoke under.
    await send(server, t["erin"], room_id, "bye all")
    await membership(server, t["erin"], room_id, "leave")
    body3 = await sync(server, t["bob"], since=body2["next_batch"], filter=LAZY, **USE_UNSTABLE)
    state = after(joined(body3, room_id))
    assert members(state) == {uid("erin")}
    assert state[("m.room.member", uid("erin"))]["content"]["membership"] == "leave"

    # Limited: a member change in the gap comes, and the timeline's senders.
    await set_displayname(server, t["carol"], "carol", "Caroline")
    for i in range(6):
        await send(server, t["alice"], room_id, f"b{i}")
    limited = await sync(server, t["bob"], since=body3["next_batch"], filter=LAZY, **USE_UNSTABLE)
    room = joined(limited, room_id)
    assert room["timeline"]["limited"] is True
    state = after(room)
    assert members(state) == {uid("carol"), uid("alice")}
    assert state[("m.room.member", uid("carol"))]["content"]["displayname"] == "Caroline"


# --------------------------------------------------------------- filters


async def test_filters_apply_to_state_after(server: TestServer) -> None:
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="N0", topic="T0")
    await join(server, t["bob"], room_id)

    # A state filter: only the types it allows.
    names_only = json.dumps({"room": {"state": {"types": ["m.room.name"]}}})
    initial = await sync(server, t["bob"], filter=names_only, **USE_UNSTABLE)
    assert set(after(joined(initial, room_id))) == {("m.room.name", "")}

    # A timeline filter that hides state: the state change still arrives,
    # and the end state is the one after the hidden last event.
    only_messages = json.dumps({"room": {"timeline": {"types": ["m.room.message"]}}})
    since = (await sync(server, t["bob"], filter=only_messages, **USE_UNSTABLE))["next_batch"]
    message = await send(server, t["alice"], room_id, "before the topic")
    topic = await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T1"})
    body = await sync(server, t["bob"], since=since, filter=only_messages, **USE_UNSTABLE)
    room = joined(body, room_id)
    assert timeline_ids(body, room_id) == [message]
    assert ids(after(room)) == {("m.room.topic", ""): topic}

    # Only hidden state changed: an empty timeline, the change in state_after.
    newer = await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T2"})
    body2 = await sync(server, t["bob"], since=body["next_batch"], filter=only_messages, **USE_UNSTABLE)
    room = joined(body2, room_id)
    assert room["timeline"]["events"] == []
    assert ids(after(room)) == {("m.room.topic", ""): newer}

    # event_fields projects state_after's events like the others.
    fields = json.dumps({"event_fields": ["type", "content.topic"]})
    await put_state(server, t["alice"], room_id, "m.room.topic", {"topic": "T3"})
    body3 = await sync(server, t["bob"], since=body2["next_batch"], filter=fields, **USE_UNSTABLE)
    assert joined(body3, room_id)[UNSTABLE]["events"] == [{"type": "m.room.topic", "content": {"topic": "T3"}}]


# ------------------------------------------------------------ the schema


async def test_responses_with_state_after_match_the_spec_schema(server: TestServer) -> None:
    validator = jsonschema.Draft202012Validator(sync_response_schema())
    t = await tokens(server, "alice", "bob")
    room_id = await create_room(server, t["alice"], name="Schema")
    await join(server, t["bob"], room_id)
    left_room = await create_room(server, t["alice"])
    await join(server, t["bob"], left_room)
    await membership(server, t["bob"], left_room, "leave")
    include = json.dumps({"room": {"include_leave": True}})

    initial = await sync(server, t["bob"], filter=include, **USE_STABLE)
    assert STABLE in initial["rooms"]["leave"][left_room]
    validator.validate(initial)
    await put_state(server, t["alice"], room_id, "m.room.name", {"name": "Schema 2"})
    incremental = await sync(server, t["bob"], since=initial["next_batch"], **USE_STABLE)
    assert after(joined(incremental, room_id), STABLE)
    validator.validate(incremental)
