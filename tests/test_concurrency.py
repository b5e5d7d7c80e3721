"""Many senders at once, over HTTP: every acknowledged event is stored once,
with valid prev and auth events, and stream and topological orders agree."""

from __future__ import annotations

import asyncio

from homeserver.events.hashing import compute_event_id, verify_content_hash
from homeserver.rooms.auth import auth_types_for_event

USERS = 6
ROOMS = 3
MESSAGES_PER_USER = 8


async def test_concurrent_senders_in_one_room_and_across_rooms(server):
    tokens = []
    for i in range(USERS):
        tokens.append((await server.register_user(f"user{i}"))["access_token"])
    room_ids = []
    for _ in range(ROOMS):
        created = await server.post(
            "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=tokens[0]
        )
        assert created.status == 200, created.body
        room_ids.append(created.body["room_id"])
    joins = [
        server.post(f"/_matrix/client/v3/join/{room}", {}, token=token)
        for room in room_ids
        for token in tokens[1:]
    ]
    assert all(r.status == 200 for r in await asyncio.gather(*joins))

    async def send(token: str, room: str, n: int) -> tuple[str, str]:
        txn = f"{room}-{n}"
        resp = await server.put(
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": txn},
            token=token,
        )
        assert resp.status == 200, resp.body
        return room, resp.body["event_id"]

    sends = [
        send(token, room, n)
        for token in tokens
        for room in room_ids
        for n in range(MESSAGES_PER_USER)
    ]
    # Half of them again, as retries with the same transaction IDs.
    acknowledged = await asyncio.gather(*sends, *sends[: len(sends) // 2])
    unique = dict.fromkeys(acknowledged)
    assert len(unique) == USERS * ROOMS * MESSAGES_PER_USER

    store = server.hs.storage.events
    for room in room_ids:
        rows = await server.hs.storage.db.fetchall(
            "test",
            "SELECT event_id, topological_ordering, stream_ordering FROM events"
            " WHERE room_id = ? ORDER BY stream_ordering",
            (room,),
        )
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids))
        acked_here = {event_id for r, event_id in unique if r == room}
        assert acked_here <= set(ids)
        events = await store.get_events(ids)
        seen: set[str] = set()
        for (event_id, depth, _stream), previous in zip(rows, [None, *rows]):
            event = events[event_id]
            assert compute_event_id(event.pdu, event.room_version) == event_id
            assert verify_content_hash(event.pdu)
            # prev and auth events exist and came earlier in the stream.
            assert set(event.prev_event_ids) <= seen or not event.prev_event_ids
            assert set(event.auth_event_ids) <= seen
            if previous is not None:
                assert event.prev_event_ids == [previous[0]]
                assert depth == previous[1] + 1
            # auth events are exactly the selection for this event's state.
            auth_keys = set(
                auth_types_for_event(
                    event.room_version, event.type, event.sender, event.state_key, event.content
                )
            )
            for auth_id in event.auth_event_ids:
                auth_event = events[auth_id]
                assert auth_event.state_tuple in auth_keys | {("m.room.create", "")}
            seen.add(event_id)
        extremities = await server.hs.storage.db.fetchall(
            "test", "SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room,)
        )
        assert extremities == [(ids[-1],)]
