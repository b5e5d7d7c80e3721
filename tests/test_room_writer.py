"""The room write path on both engines: creating rooms, sending events
concurrently, idempotent transaction IDs, and the auth rules refusing."""

from __future__ import annotations

import asyncio

import pytest
from signedjson.key import generate_signing_key

from homeserver.errors import MatrixError
from homeserver.events.hashing import compute_event_id, verify_content_hash
from homeserver.rooms.creation import RoomCreator
from homeserver.rooms.writer import EventRequest, RoomWriter
from storage import Storage

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


@pytest.fixture
def rooms(db):
    storage = Storage(db)
    writer = RoomWriter(storage, "test.local", generate_signing_key("a_1"))
    return storage, writer, RoomCreator(storage, writer, "test.local")


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_create_room_then_join_and_chat(rooms, version):
    storage, writer, creator = rooms
    room_id, sent = await creator.create_room(
        ALICE,
        {"room_version": version, "name": "Sales", "topic": "Leads", "invite": [BOB], "preset": "public_chat"},
        {"displayname": "Alice"},
    )
    types = [s.event.type for s in sent]
    assert types[:3] == ["m.room.create", "m.room.member", "m.room.power_levels"]
    assert types[-1] == "m.room.member" and sent[-1].event.membership == "invite"
    if version == "12":
        assert room_id == "!" + sent[0].event.event_id[1:]
    # A chain: each event's only prev event is the one before it.
    for before, after in zip(sent, sent[1:]):
        assert after.event.prev_event_ids == [before.event.event_id]
        assert after.position.stream_ordering > before.position.stream_ordering
    for s in sent:
        assert compute_event_id(s.event.pdu, s.event.room_version) == s.event.event_id
        assert verify_content_hash(s.event.pdu)

    state = await storage.events.get_current_state_ids(room_id)
    assert {("m.room.name", ""), ("m.room.topic", ""), ("m.room.join_rules", "")} <= state.keys()

    await writer.write(room_id, [EventRequest("m.room.member", BOB, {"membership": "join"}, state_key=BOB)])
    members = await storage.events.members_of_room(room_id)
    assert {m.user_id for m in members} == {ALICE, BOB}


async def test_concurrent_senders_form_one_consistent_chain(rooms):
    storage, writer, creator = rooms
    room_ids = []
    for _ in range(3):
        room_id, _ = await creator.create_room(ALICE, {"preset": "public_chat"}, {})
        await writer.write(room_id, [EventRequest("m.room.member", BOB, {"membership": "join"}, state_key=BOB)])
        room_ids.append(room_id)

    async def send(room_id: str, sender: str, i: int):
        return await writer.write(
            room_id,
            [EventRequest("m.room.message", sender, {"msgtype": "m.text", "body": str(i)},
                          txn_id=f"{room_id}-{i}", device_id="DEV")],
        )

    results = await asyncio.gather(
        *[send(r, s, i) for r in room_ids for s in (ALICE, BOB) for i in range(15)]
    )
    sent = [r[0] for r in results]
    assert len({s.event.event_id for s in sent}) == len(sent)
    assert len({s.position.stream_ordering for s in sent}) == len(sent)
    for room_id in room_ids:
        rows = await storage.db.fetchall(
            "t", "SELECT event_id, topological_ordering, stream_ordering FROM events"
            " WHERE room_id = ? ORDER BY stream_ordering", (room_id,)
        )
        events = await storage.events.get_events([r[0] for r in rows])
        # Stream order and depth agree, and every prev event is the previous event.
        for (prev_id, prev_depth, _), (event_id, depth, _) in zip(rows, rows[1:]):
            assert depth == prev_depth + 1
            assert events[event_id].prev_event_ids == [prev_id]
        extremities = await storage.db.fetchall(
            "t", "SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,)
        )
        assert extremities == [(rows[-1][0],)]


async def test_retried_transaction_id_returns_the_same_event(rooms):
    _storage, writer, creator = rooms
    room_id, _ = await creator.create_room(ALICE, {}, {})
    request = EventRequest("m.room.message", ALICE, {"msgtype": "m.text", "body": "hi"},
                           txn_id="t1", device_id="DEV")
    first, retried = await asyncio.gather(writer.write(room_id, [request]), writer.write(room_id, [request]))
    assert first[0].event.event_id == retried[0].event.event_id
    assert first[0].deduplicated != retried[0].deduplicated


async def test_auth_rules_refuse_non_members_and_low_power(rooms):
    _storage, writer, creator = rooms
    room_id, _ = await creator.create_room(ALICE, {"preset": "public_chat"}, {})
    with pytest.raises(MatrixError) as err:
        await writer.write(room_id, [EventRequest("m.room.message", BOB, {"body": "x"})])
    assert err.value.errcode == "M_FORBIDDEN" and "not joined" in err.value.error
    await writer.write(room_id, [EventRequest("m.room.member", BOB, {"membership": "join"}, state_key=BOB)])
    with pytest.raises(MatrixError) as err:
        await writer.write(room_id, [EventRequest("m.room.name", BOB, {"name": "mine"}, state_key="")])
    assert err.value.errcode == "M_FORBIDDEN" and "auth rule" in err.value.error


async def test_unknown_room_and_unsupported_version(rooms):
    _storage, writer, creator = rooms
    with pytest.raises(MatrixError) as err:
        await writer.write("!nope:test.local", [EventRequest("m.room.message", ALICE, {})])
    assert err.value.status == 404 and err.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError) as err:
        await creator.create_room(ALICE, {"room_version": "9"}, {})
    assert err.value.errcode == "M_UNSUPPORTED_ROOM_VERSION"


async def test_identical_v12_rooms_created_at_once_get_their_own_ids(rooms):
    # A v12 room ID is the create event's hash: the same request twice in one
    # millisecond would collide; the second is made again with a later timestamp.
    _storage, _writer, creator = rooms
    created = await asyncio.gather(
        *[creator.create_room(ALICE, {"room_version": "12", "name": "Same"}, {}) for _ in range(4)]
    )
    assert len({room_id for room_id, _ in created}) == 4


async def test_state_groups_read_back_across_delta_chains_and_snapshots(rooms):
    # More state changes than a delta chain may hold: the state after every
    # event, read cold (uncached), equals what was current at that point.
    storage, writer, creator = rooms
    room_id, _ = await creator.create_room(ALICE, {}, {})
    expected: dict[int, dict] = {}
    for i in range(120):
        sent = await writer.write(
            room_id, [EventRequest("m.room.topic", ALICE, {"topic": str(i)}, state_key=f"k{i % 7}")]
        )
        stream = sent[0].position.stream_ordering
        expected[stream] = dict(await storage.events.get_current_state_ids(room_id))
    storage.events._state_groups.clear()
    positions = await storage.events.get_positions(
        [r[0] for r in await storage.db.fetchall("t", "SELECT event_id FROM events WHERE room_id = ?", (room_id,))]
    )
    by_stream = {pos.stream_ordering: group for pos, group in positions.values()}
    for stream, state in expected.items():
        assert await storage.events.get_state_group(by_stream[stream]) == state
