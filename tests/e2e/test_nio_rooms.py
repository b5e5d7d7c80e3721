"""Rooms end to end with matrix-nio, an independent client, on both engines.

Two people chat the way a client does: create a room, invite, join, send,
read history back, redact, edit, react, reply in a thread, leave. nio parses
every answer with its own schemas, so a response our tests would accept but
real clients choke on fails here. Rooms are named by ID and nothing here
needs nio's synced room objects; sync loops are tested in test_nio_sync.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nio
import pytest
from nio import AsyncClient, AsyncClientConfig

if TYPE_CHECKING:
    from ..conftest import TestServer

PASSWORD = "a long enough password"


def _client(server: TestServer) -> AsyncClient:
    config = AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    return AsyncClient(server.url, config=config)


@pytest.fixture
async def alice(server: TestServer) -> AsyncIterator[AsyncClient]:
    c = _client(server)
    try:
        assert isinstance(await c.register("alice", PASSWORD, device_name="alice's laptop"), nio.RegisterResponse)
        assert isinstance(await c.set_displayname("Alice"), nio.ProfileSetDisplayNameResponse)
        yield c
    finally:
        await c.close()


@pytest.fixture
async def bob(server: TestServer) -> AsyncIterator[AsyncClient]:
    # Registered by the server, then signed in with a password, as a person would.
    await server.register_user("bob", PASSWORD)
    c = _client(server)
    c.user = "bob"
    try:
        assert isinstance(await c.login(PASSWORD, device_name="bob's phone"), nio.LoginResponse)
        yield c
    finally:
        await c.close()


def _ok(resp: Any, expected: type) -> Any:
    assert isinstance(resp, expected), resp
    return resp


async def _history(client: AsyncClient, room_id: str) -> list[nio.Event]:
    """The room's timeline, oldest first, as the client parses it."""
    resp = _ok(await client.room_messages(room_id, limit=100), nio.RoomMessagesResponse)
    assert resp.room_id == room_id
    return list(reversed(resp.chunk))


def _text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


async def test_two_people_chat(server: TestServer, alice: AsyncClient, bob: AsyncClient) -> None:
    created = _ok(
        await alice.room_create(name="Sales", topic="Leads and deals", preset=nio.RoomPreset.private_chat),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    _ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
    joined = _ok(await bob.join(room_id), nio.JoinResponse)
    assert joined.room_id == room_id
    rooms = _ok(await bob.joined_rooms(), nio.JoinedRoomsResponse)
    assert rooms.rooms == [room_id]
    members = _ok(await alice.joined_members(room_id), nio.JoinedMembersResponse)
    assert {m.user_id: m.display_name for m in members.members} == {alice.user_id: "Alice", bob.user_id: "bob"}

    hello = _ok(await alice.room_send(room_id, "m.room.message", _text("Hello Bob")), nio.RoomSendResponse)
    reply = _ok(await bob.room_send(room_id, "m.room.message", _text("Hi Alice"), tx_id="bob-1"), nio.RoomSendResponse)
    # A retried send (same transaction ID) is the same event.
    again = _ok(await bob.room_send(room_id, "m.room.message", _text("Hi Alice"), tx_id="bob-1"), nio.RoomSendResponse)
    assert again.event_id == reply.event_id
    oops = _ok(await bob.room_send(room_id, "m.room.message", _text("wrong room, sorry")), nio.RoomSendResponse)

    # An edit (m.replace), a reaction (m.annotation), a reply in a thread (m.thread).
    edit = _ok(
        await alice.room_send(
            room_id,
            "m.room.message",
            _text(
                "* Hello Bob!",
                **{
                    "m.new_content": _text("Hello Bob!"),
                    "m.relates_to": {"rel_type": "m.replace", "event_id": hello.event_id},
                },
            ),
        ),
        nio.RoomSendResponse,
    )
    reaction = _ok(
        await bob.room_send(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": hello.event_id, "key": "\U0001f44d"}},
        ),
        nio.RoomSendResponse,
    )
    thread = _ok(
        await bob.room_send(
            room_id,
            "m.room.message",
            _text(
                "About the Q3 numbers...",
                **{
                    "m.relates_to": {
                        "rel_type": "m.thread",
                        "event_id": hello.event_id,
                        "is_falling_back": True,
                        "m.in_reply_to": {"event_id": hello.event_id},
                    }
                },
            ),
        ),
        nio.RoomSendResponse,
    )
    redaction = _ok(await bob.room_redact(room_id, oops.event_id, reason="wrong room"), nio.RoomRedactResponse)

    # Both read the same history back, in order, parsed into nio's event types.
    for client in (alice, bob):
        timeline = await _history(client, room_id)
        by_id = {e.event_id: e for e in timeline}
        assert [e.event_id for e in timeline if e.event_id in {
            hello.event_id, reply.event_id, oops.event_id, edit.event_id,
            reaction.event_id, thread.event_id, redaction.event_id,
        }] == [
            hello.event_id, reply.event_id, oops.event_id, edit.event_id,
            reaction.event_id, thread.event_id, redaction.event_id,
        ]
        first = timeline[0]
        assert isinstance(first, nio.RoomCreateEvent), first
        assert isinstance(by_id[hello.event_id], nio.RoomMessageText)
        assert by_id[hello.event_id].body == "Hello Bob" and by_id[hello.event_id].sender == alice.user_id
        assert by_id[reply.event_id].body == "Hi Alice"
        edited = by_id[edit.event_id]
        assert isinstance(edited, nio.RoomMessageText)
        assert edited.source["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": hello.event_id}
        assert edited.source["content"]["m.new_content"]["body"] == "Hello Bob!"
        reacted = by_id[reaction.event_id]
        assert isinstance(reacted, nio.ReactionEvent), reacted
        assert (reacted.reacts_to, reacted.key) == (hello.event_id, "\U0001f44d")
        threaded = by_id[thread.event_id]
        assert threaded.source["content"]["m.relates_to"]["rel_type"] == "m.thread"
        gone = by_id[oops.event_id]
        assert isinstance(gone, nio.RedactedEvent), gone
        assert gone.redacter == bob.user_id and gone.reason == "wrong room"
        assert isinstance(by_id[redaction.event_id], nio.RedactionEvent)
        assert by_id[redaction.event_id].redacts == oops.event_id
        # The membership story is in the timeline too.
        memberships = [
            (e.state_key, e.membership) for e in timeline if isinstance(e, nio.RoomMemberEvent)
        ]
        assert memberships == [(alice.user_id, "join"), (bob.user_id, "invite"), (bob.user_id, "join")]

    # A single event, as nio fetches it.
    fetched = _ok(await bob.room_get_event(room_id, hello.event_id), nio.RoomGetEventResponse)
    assert isinstance(fetched.event, nio.RoomMessageText) and fetched.event.body == "Hello Bob"
    fetched = _ok(await alice.room_get_event(room_id, oops.event_id), nio.RoomGetEventResponse)
    assert isinstance(fetched.event, nio.RedactedEvent)

    # Bob leaves: he is no longer in the room, and can no longer send.
    _ok(await bob.room_leave(room_id), nio.RoomLeaveResponse)
    rooms = _ok(await bob.joined_rooms(), nio.JoinedRoomsResponse)
    assert rooms.rooms == []
    refused = _ok(await bob.room_send(room_id, "m.room.message", _text("still here?")), nio.RoomSendError)
    assert refused.status_code == "M_FORBIDDEN"
    members = _ok(await alice.joined_members(room_id), nio.JoinedMembersResponse)
    assert [m.user_id for m in members.members] == [alice.user_id]
    _ok(await bob.room_forget(room_id), nio.RoomForgetResponse)


async def test_room_state_through_nio(server: TestServer, alice: AsyncClient, bob: AsyncClient) -> None:
    created = _ok(
        await alice.room_create(
            name="Engineering",
            room_version="11",
            visibility=nio.RoomVisibility.public,
            initial_state=[{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}],
        ),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    _ok(await alice.room_put_state(room_id, "m.room.topic", {"topic": "Builds and deploys"}), nio.RoomPutStateResponse)
    topic = _ok(await alice.room_get_state_event(room_id, "m.room.topic"), nio.RoomGetStateEventResponse)
    assert topic.content["topic"] == "Builds and deploys"
    state = _ok(await alice.room_get_state(room_id), nio.RoomGetStateResponse)
    by_type = {(e["type"], e["state_key"]): e for e in state.events}
    assert by_type[("m.room.create", "")]["content"]["room_version"] == "11"
    assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    assert by_type[("m.room.history_visibility", "")]["content"]["history_visibility"] == "joined"
    assert by_type[("m.room.name", "")]["content"]["name"] == "Engineering"

    # Bob, not a member, is refused the state; he may join a public room.
    refused = _ok(await bob.room_get_state(room_id), nio.RoomGetStateError)
    assert refused.status_code == "M_FORBIDDEN"
    _ok(await bob.join(room_id), nio.JoinResponse)
    refused = _ok(await bob.room_put_state(room_id, "m.room.topic", {"topic": "mine"}), nio.RoomPutStateError)
    assert refused.status_code == "M_FORBIDDEN"

    # Moderation: kick, ban, unban.
    _ok(await alice.room_kick(room_id, bob.user_id, reason="testing"), nio.RoomKickResponse)
    _ok(await bob.join(room_id), nio.JoinResponse)
    _ok(await alice.room_ban(room_id, bob.user_id, reason="really"), nio.RoomBanResponse)
    refused = _ok(await bob.join(room_id), nio.JoinError)
    assert refused.status_code == "M_FORBIDDEN"
    _ok(await alice.room_unban(room_id, bob.user_id), nio.RoomUnbanResponse)
    _ok(await bob.join(room_id), nio.JoinResponse)


async def test_knock_through_nio(server: TestServer, alice: AsyncClient, bob: AsyncClient) -> None:
    created = _ok(
        await alice.room_create(
            name="Leadership",
            initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        ),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    knocked = _ok(await bob.room_knock(room_id, reason="May I?"), nio.RoomKnockResponse)
    assert knocked.room_id == room_id
    _ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
    _ok(await bob.join(room_id), nio.JoinResponse)
    member = _ok(await alice.room_get_state_event(room_id, "m.room.member", bob.user_id), nio.RoomGetStateEventResponse)
    assert member.content["membership"] == "join"


async def test_space_and_direct_message(server: TestServer, alice: AsyncClient, bob: AsyncClient) -> None:
    space = _ok(await alice.room_create(name="Sales", space=True, invite=[bob.user_id]), nio.RoomCreateResponse)
    create = _ok(await alice.room_get_state_event(space.room_id, "m.room.create"), nio.RoomGetStateEventResponse)
    assert create.content["type"] == "m.space"
    dm = _ok(
        await alice.room_create(is_direct=True, invite=[bob.user_id], preset=nio.RoomPreset.trusted_private_chat),
        nio.RoomCreateResponse,
    )
    invite = _ok(await alice.room_get_state_event(dm.room_id, "m.room.member", bob.user_id), nio.RoomGetStateEventResponse)
    assert invite.content["is_direct"] is True
    _ok(await bob.join(dm.room_id), nio.JoinResponse)
    # In a trusted private chat both people are in charge.
    _ok(await bob.room_put_state(dm.room_id, "m.room.name", {"name": "Alice & Bob"}), nio.RoomPutStateResponse)
    bad = _ok(await alice.room_create(room_version="9"), nio.RoomCreateError)
    assert bad.status_code == "M_UNSUPPORTED_ROOM_VERSION"
