"""/sync end to end with matrix-nio, an independent client, on both engines.

Two people run nio's own sync loop (`AsyncClient.sync(timeout=...)`, which
parses every answer with nio's schemas and feeds its room objects and event
callbacks) while they chat. Each must see every message once, in the
server's order, and nio's picture of the room built from /sync alone (its
members, invitees, name, topic, and the name it computes for an unnamed
room from the summary's heroes) must be right.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nio
import pytest
from nio import AsyncClient, AsyncClientConfig, MatrixRoom

if TYPE_CHECKING:
    from ..conftest import TestServer

PASSWORD = "a long enough password"
ALICE, BOB, CAROL = "@alice:test.local", "@bob:test.local", "@carol:test.local"


@dataclass
class Syncing:
    """A signed-in nio client whose sync loop runs in the background."""

    client: AsyncClient
    messages: list[tuple[str, str, str, str]] = field(default_factory=list)  # room, sender, body, event ID
    responses: int = 0
    task: asyncio.Task[None] | None = None
    stopped: bool = False

    def on_message(self, room: MatrixRoom, event: nio.RoomMessageText) -> None:
        self.messages.append((room.room_id, event.sender, event.body, event.event_id))

    async def loop(self) -> None:
        while not self.stopped:
            resp = await self.client.sync(timeout=1000)
            assert isinstance(resp, nio.SyncResponse), resp
            self.responses += 1

    def in_room(self, room_id: str) -> list[tuple[str, str, str]]:
        return [(s, b, e) for r, s, b, e in self.messages if r == room_id]


async def _syncing(server: TestServer, name: str, displayname: str) -> Syncing:
    await server.register_user(name, PASSWORD)
    client = AsyncClient(server.url, name, config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False))
    assert isinstance(await client.login(PASSWORD, device_name=f"{name}'s nio"), nio.LoginResponse)
    assert isinstance(await client.set_displayname(displayname), nio.ProfileSetDisplayNameResponse)
    syncing = Syncing(client)
    client.add_event_callback(syncing.on_message, nio.RoomMessageText)
    first = await client.sync(timeout=0)  # the initial sync, as a client starts
    assert isinstance(first, nio.SyncResponse), first
    syncing.task = asyncio.create_task(syncing.loop())
    return syncing


@pytest.fixture
async def people(server: TestServer) -> AsyncIterator[dict[str, Syncing]]:
    people = {
        "alice": await _syncing(server, "alice", "Alice"),
        "bob": await _syncing(server, "bob", "Bob"),
    }
    try:
        yield people
    finally:
        for person in people.values():
            person.stopped = True
        for person in people.values():
            assert person.task is not None
            try:
                await asyncio.wait_for(person.task, 5)
            finally:
                await person.client.close()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait for the sync loops to bring `check` about."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _ok(resp: Any, expected: type) -> Any:
    assert isinstance(resp, expected), resp
    return resp


async def test_two_people_chat_through_their_sync_loops(server: TestServer, people: dict[str, Syncing]) -> None:
    alice, bob = people["alice"], people["bob"]
    created = _ok(
        await alice.client.room_create(name="Sales", topic="Leads and deals", preset=nio.RoomPreset.private_chat),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    _ok(await alice.client.room_invite(room_id, BOB), nio.RoomInviteResponse)

    # Bob learns of the invite from his sync, with the room's name in the stripped state.
    await eventually(lambda: room_id in bob.client.invited_rooms, "bob's invite")
    assert bob.client.invited_rooms[room_id].name == "Sales"
    _ok(await bob.client.join(room_id), nio.JoinResponse)
    await eventually(lambda: room_id in bob.client.rooms, "bob's join")
    await eventually(lambda: BOB in alice.client.rooms[room_id].users, "alice seeing bob join")
    assert room_id not in bob.client.invited_rooms

    # Both talk at once, each sending in order.
    per_person = 10

    async def talk(person: Syncing, name: str) -> list[str]:
        sent = []
        for i in range(per_person):
            resp = _ok(
                await person.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"{name} {i}"}),
                nio.RoomSendResponse,
            )
            sent.append(resp.event_id)
        return sent

    started = time.monotonic()
    sent_by_alice, sent_by_bob = await asyncio.gather(talk(alice, "alice"), talk(bob, "bob"))
    total = 2 * per_person
    await eventually(lambda: len(alice.in_room(room_id)) >= total and len(bob.in_room(room_id)) >= total, "all messages")
    elapsed = time.monotonic() - started

    history = _ok(await alice.client.room_messages(room_id, limit=100), nio.RoomMessagesResponse)
    server_order = [e.event_id for e in reversed(history.chunk) if isinstance(e, nio.RoomMessageText)]
    assert sorted(server_order) == sorted(sent_by_alice + sent_by_bob)
    for person in (alice, bob):
        seen = [e for _s, _b, e in person.in_room(room_id)]
        assert seen == server_order, "a client saw messages missing, repeated or out of order"
        for sent in (sent_by_alice, sent_by_bob):
            assert [e for e in seen if e in set(sent)] == sent
    bodies = {e: (s, b) for s, b, e in bob.in_room(room_id)}
    assert bodies[sent_by_alice[0]] == (ALICE, "alice 0")
    assert elapsed < 15, f"{total} messages took {elapsed:.1f}s to reach both clients"

    # nio's room, built from /sync only.
    for person in (alice, bob):
        room = person.client.rooms[room_id]
        assert room.display_name == "Sales" and room.topic == "Leads and deals"
        assert set(room.users) == {ALICE, BOB}
        assert room.joined_count == 2 and room.member_count == 2
        assert room.user_name(ALICE) == "Alice" and room.user_name(BOB) == "Bob"

    # An invitee shows up as invited for both; a leave takes bob out of alice's member list.
    await server.register_user("carol", PASSWORD)
    _ok(await alice.client.room_invite(room_id, CAROL), nio.RoomInviteResponse)
    for person in (alice, bob):
        await eventually(lambda p=person: CAROL in p.client.rooms[room_id].invited_users, "carol's invite")
        assert person.client.rooms[room_id].invited_count == 1
    _ok(await bob.client.room_leave(room_id), nio.RoomLeaveResponse)
    await eventually(lambda: BOB not in alice.client.rooms[room_id].users, "bob's leave reaching alice")
    assert set(alice.client.rooms[room_id].users) == {ALICE, CAROL}


async def test_an_unnamed_room_is_named_after_the_other_person(server: TestServer, people: dict[str, Syncing]) -> None:
    alice, bob = people["alice"], people["bob"]
    created = _ok(
        await bob.client.room_create(is_direct=True, invite=[ALICE], preset=nio.RoomPreset.trusted_private_chat),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    await eventually(lambda: room_id in alice.client.invited_rooms, "alice's invite")
    _ok(await alice.client.join(room_id), nio.JoinResponse)
    await eventually(lambda: room_id in alice.client.rooms and BOB in alice.client.rooms[room_id].users, "the DM")
    await eventually(lambda: ALICE in bob.client.rooms[room_id].users, "bob seeing alice join")

    # No name, no alias: nio names the room from the heroes and their display names.
    assert alice.client.rooms[room_id].name is None
    assert alice.client.rooms[room_id].display_name == "Bob"
    assert bob.client.rooms[room_id].display_name == "Alice"
    summary = alice.client.rooms[room_id].summary
    assert summary is not None and summary.heroes == [BOB] and summary.joined_member_count == 2

    # A message each way, through the loops.
    sent = _ok(
        await alice.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi Bob"}),
        nio.RoomSendResponse,
    )
    await eventually(lambda: any(e == sent.event_id for _s, _b, e in bob.in_room(room_id)), "alice's message")
