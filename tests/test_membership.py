"""Membership over real HTTP on both engines: join, invite, leave, kick, ban,
unban, knock, restricted joins through a space, forget, joined_rooms, and
profile changes carried into rooms; each with the refusals the spec names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .conftest import with_config
from .test_rooms_api import (
    V3,
    assert_error,
    create_room,
    get_state,
    put_state,
    q,
    send,
    users,
)

if TYPE_CHECKING:
    from .conftest import Response, TestServer

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"


async def member(server: TestServer, token: str, room_id: str, action: str, **body: Any) -> Response:
    """POST /rooms/{roomId}/{action} (join, leave, invite, kick, ban, unban, forget)."""
    return await server.post(f"{V3}/rooms/{q(room_id)}/{action}", body, token=token)


async def membership_of(server: TestServer, token: str, room_id: str, user_id: str) -> dict[str, Any]:
    resp = await get_state(server, token, room_id, "m.room.member", user_id)
    assert resp.status == 200, resp.body
    return resp.body


async def joined_rooms(server: TestServer, token: str) -> list[str]:
    resp = await server.get(f"{V3}/joined_rooms", token=token)
    assert resp.status == 200, resp.body
    return resp.body["joined_rooms"]


def ok(resp: Response) -> None:
    assert resp.status == 200, resp.body


# ------------------------------------------------------------------- join


async def test_join_public_room(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    resp = await member(server, bob, room_id, "join", reason="hello")
    assert resp.body == {"room_id": room_id}
    content = await membership_of(server, alice, room_id, BOB)
    assert content == {"membership": "join", "displayname": "bob", "reason": "hello"}
    # Joining again changes nothing and succeeds.
    before = (await get_state(server, alice, room_id, "m.room.member", BOB, format="event")).body["event_id"]
    ok(await member(server, bob, room_id, "join"))
    after = (await get_state(server, alice, room_id, "m.room.member", BOB, format="event")).body["event_id"]
    assert before == after
    # POST /join/{roomIdOrAlias} with a room ID works the same.
    other = await create_room(server, alice, preset="public_chat")
    resp = await server.post(f"{V3}/join/{q(other)}", {}, token=bob)
    assert resp.body == {"room_id": other}
    assert sorted(await joined_rooms(server, bob)) == sorted([room_id, other])


async def test_join_refusals(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="private_chat")
    refused = await member(server, bob, room_id, "join")
    assert_error(refused, 403, "M_FORBIDDEN")
    assert await joined_rooms(server, bob) == []
    assert_error(await member(server, bob, "!unknown:test.local", "join"), 404, "M_NOT_FOUND")
    assert_error(await member(server, bob, "nope", "join"), 400, "M_INVALID_PARAM")
    assert_error(await server.post(f"{V3}/join/nope", {}, token=bob), 400, "M_INVALID_PARAM")
    assert_error(await server.post(f"{V3}/rooms/{q(room_id)}/join", {}), 401, "M_MISSING_TOKEN")
    assert_error(await member(server, bob, room_id, "join", reason=5), 400, "M_BAD_JSON")


# ---------------------------------------------------------------- invite


async def test_invite_then_join(server):
    alice, bob = await users(server, "alice", "bob")
    await server.put(f"{V3}/profile/{BOB}/displayname", {"displayname": "Bob B."}, token=bob)
    room_id = await create_room(server, alice, preset="private_chat")
    ok(await member(server, alice, room_id, "invite", user_id=BOB, reason="welcome"))
    invite = await membership_of(server, alice, room_id, BOB)
    # The invite carries the invitee's profile, so clients can show who it is.
    assert invite == {"membership": "invite", "displayname": "Bob B.", "reason": "welcome"}
    invite_event = (await get_state(server, alice, room_id, "m.room.member", BOB, format="event")).body
    assert invite_event["sender"] == ALICE
    ok(await member(server, bob, room_id, "join"))
    assert await joined_rooms(server, bob) == [room_id]
    assert (await membership_of(server, alice, room_id, BOB))["membership"] == "join"


async def test_invite_refusals(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="private_chat")
    assert_error(await member(server, alice, room_id, "invite", user_id="@ghost:test.local"), 404, "M_NOT_FOUND")
    assert_error(await member(server, alice, room_id, "invite", user_id="bob"), 400, "M_INVALID_PARAM")
    assert_error(await member(server, alice, room_id, "invite", user_id=5), 400, "M_BAD_JSON")
    assert_error(await member(server, alice, room_id, "invite"), 400, "M_MISSING_PARAM")
    assert_error(await member(server, alice, room_id, "invite", user_id="@bob:elsewhere.example"), 403, "M_FORBIDDEN")
    assert_error(await member(server, alice, "!unknown:test.local", "invite", user_id=BOB), 404, "M_NOT_FOUND")
    # Only members may invite.
    assert_error(await member(server, carol, room_id, "invite", user_id=BOB), 403, "M_FORBIDDEN")
    # A joined member cannot be invited again.
    ok(await member(server, alice, room_id, "invite", user_id=BOB))
    ok(await member(server, bob, room_id, "join"))
    assert_error(await member(server, alice, room_id, "invite", user_id=BOB), 403, "M_FORBIDDEN")
    # With "invite": 50, ordinary members may not invite.
    strict = await create_room(server, alice, power_level_content_override={"invite": 50}, invite=[BOB])
    ok(await member(server, bob, strict, "join"))
    refused = await member(server, bob, strict, "invite", user_id=CAROL)
    assert_error(refused, 403, "M_FORBIDDEN")
    assert "auth rule" in refused.body["error"]


async def test_reject_invite_by_leaving(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, invite=[BOB])
    ok(await member(server, bob, room_id, "leave", reason="not now"))
    assert await membership_of(server, alice, room_id, BOB) == {"membership": "leave", "reason": "not now"}
    # The invite is gone: joining an invite-only room is refused again.
    assert_error(await member(server, bob, room_id, "join"), 403, "M_FORBIDDEN")
    # The inviter may withdraw an invite by kicking.
    ok(await member(server, alice, room_id, "invite", user_id=BOB))
    ok(await member(server, alice, room_id, "kick", user_id=BOB))
    assert (await membership_of(server, alice, room_id, BOB))["membership"] == "leave"


# ----------------------------------------------------------------- leave


async def test_leave(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, room_id, "join"))
    ok(await member(server, bob, room_id, "leave"))
    assert await joined_rooms(server, bob) == []
    assert (await membership_of(server, alice, room_id, BOB)) == {"membership": "leave"}
    # Leaving twice is harmless; leaving a room never joined is refused.
    ok(await member(server, bob, room_id, "leave"))
    assert_error(await member(server, carol, room_id, "leave"), 403, "M_FORBIDDEN")
    assert_error(await member(server, carol, "!unknown:test.local", "leave"), 404, "M_NOT_FOUND")
    assert_error(await member(server, carol, "nope", "leave"), 400, "M_INVALID_PARAM")


# ------------------------------------------------------------------ kick


async def test_kick(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, room_id, "join"))
    ok(await member(server, carol, room_id, "join"))
    # Kicking needs the kick level (50); bob has 0.
    assert_error(await member(server, bob, room_id, "kick", user_id=CAROL), 403, "M_FORBIDDEN")
    ok(await member(server, alice, room_id, "kick", user_id=CAROL, reason="spam"))
    event = (await get_state(server, alice, room_id, "m.room.member", CAROL, format="event")).body
    assert event["content"] == {"membership": "leave", "reason": "spam"}
    assert event["sender"] == ALICE
    assert await joined_rooms(server, carol) == []
    # The target must be in the room (joined, invited or knocking).
    assert_error(await member(server, alice, room_id, "kick", user_id=CAROL), 403, "M_FORBIDDEN")
    assert_error(await member(server, alice, room_id, "kick", user_id="@dave:test.local"), 403, "M_FORBIDDEN")
    # Nobody may kick someone of higher power, whatever their own.
    assert_error(await member(server, bob, room_id, "kick", user_id=ALICE), 403, "M_FORBIDDEN")
    # A kick is not a ban: carol may come back to a public room.
    ok(await member(server, carol, room_id, "join"))


# ------------------------------------------------------------ ban, unban


async def test_ban_and_unban(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, room_id, "join"))
    ok(await member(server, carol, room_id, "join"))
    assert_error(await member(server, bob, room_id, "ban", user_id=CAROL), 403, "M_FORBIDDEN")
    ok(await member(server, alice, room_id, "ban", user_id=CAROL, reason="abuse"))
    assert await membership_of(server, alice, room_id, CAROL) == {"membership": "ban", "reason": "abuse"}
    assert await joined_rooms(server, carol) == []
    # A banned user cannot come back, knock, or leave the ban behind.
    assert_error(await member(server, carol, room_id, "join"), 403, "M_FORBIDDEN")
    assert_error(await member(server, carol, room_id, "leave"), 403, "M_FORBIDDEN")
    # A ban also works on someone who was never in the room.
    ok(await member(server, alice, room_id, "ban", user_id="@dave:test.local"))
    # Unban: only banned users, only with the ban level.
    assert_error(await member(server, alice, room_id, "unban", user_id=BOB), 403, "M_FORBIDDEN")
    assert_error(await member(server, bob, room_id, "unban", user_id=CAROL), 403, "M_FORBIDDEN")
    ok(await member(server, alice, room_id, "unban", user_id=CAROL))
    assert await membership_of(server, alice, room_id, CAROL) == {"membership": "leave"}
    ok(await member(server, carol, room_id, "join"))
    assert_error(await member(server, alice, room_id, "ban", user_id="carol"), 400, "M_INVALID_PARAM")


async def test_banned_user_cannot_be_invited(server):
    alice, _bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice)
    ok(await member(server, alice, room_id, "ban", user_id=BOB))
    assert_error(await member(server, alice, room_id, "invite", user_id=BOB), 403, "M_FORBIDDEN")


# ------------------------------------------------------------------ knock


async def knock(server: TestServer, token: str, room_id: str, **body: Any) -> Response:
    return await server.post(f"{V3}/knock/{q(room_id)}", body, token=token)


async def test_knock_then_invite(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(
        server, alice, initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    )
    resp = await knock(server, bob, room_id, reason="I'm on the sales team")
    assert resp.body == {"room_id": room_id}
    knocked = await membership_of(server, alice, room_id, BOB)
    assert knocked == {"membership": "knock", "displayname": "bob", "reason": "I'm on the sales team"}
    # A knock is a request, not a join.
    assert_error(await member(server, bob, room_id, "join"), 403, "M_FORBIDDEN")
    assert_error(await send(server, bob, room_id, {"msgtype": "m.text", "body": "hi"}, txn="1"), 403, "M_FORBIDDEN")
    assert await joined_rooms(server, bob) == []
    # The room accepts by inviting; then the knocker joins.
    ok(await member(server, alice, room_id, "invite", user_id=BOB))
    assert (await membership_of(server, alice, room_id, BOB))["membership"] == "invite"
    ok(await member(server, bob, room_id, "join"))
    assert await joined_rooms(server, bob) == [room_id]
    # ...or declines by kicking the knocker.
    ok(await knock(server, carol, room_id))
    ok(await member(server, alice, room_id, "kick", user_id=CAROL))
    assert (await membership_of(server, alice, room_id, CAROL))["membership"] == "leave"
    # A knocker may withdraw the knock by leaving.
    ok(await knock(server, carol, room_id))
    ok(await member(server, carol, room_id, "leave"))
    assert (await membership_of(server, alice, room_id, CAROL)) == {"membership": "leave"}


async def test_knock_refusals(server):
    alice, bob = await users(server, "alice", "bob")
    invite_only = await create_room(server, alice, preset="private_chat")
    assert_error(await knock(server, bob, invite_only), 403, "M_FORBIDDEN")
    public = await create_room(server, alice, preset="public_chat")
    assert_error(await knock(server, bob, public), 403, "M_FORBIDDEN")
    knockable = await create_room(
        server, alice, initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    )
    # Members do not knock; banned users may not.
    assert_error(await knock(server, alice, knockable), 403, "M_FORBIDDEN")
    ok(await member(server, alice, knockable, "ban", user_id=BOB))
    assert_error(await knock(server, bob, knockable), 403, "M_FORBIDDEN")
    assert_error(await knock(server, bob, "!unknown:test.local"), 404, "M_NOT_FOUND")
    assert_error(await knock(server, bob, "nope"), 400, "M_INVALID_PARAM")


# ------------------------------------------------- restricted join via a space


async def _department(server: TestServer, alice: str, join_rule: str = "restricted") -> tuple[str, str]:
    """A space and a channel restricted to the space's members."""
    space = await create_room(
        server, alice, name="Sales", preset="private_chat", creation_content={"type": "m.space"}
    )
    channel = await create_room(
        server,
        alice,
        name="Sales: deals",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {"join_rule": join_rule, "allow": [{"type": "m.room_membership", "room_id": space}]},
            }
        ],
    )
    return space, channel


@pytest.mark.parametrize("version", ["10", "12"])
async def test_restricted_join_through_a_space(server, version):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    space = await create_room(
        server, alice, preset="private_chat", room_version=version, creation_content={"type": "m.space"}
    )
    channel = await create_room(
        server,
        alice,
        room_version=version,
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
            }
        ],
    )
    ok(await member(server, alice, space, "invite", user_id=BOB))
    ok(await member(server, bob, space, "join"))
    # A member of the space joins; the join names who authorised it.
    ok(await member(server, bob, channel, "join"))
    joined = await membership_of(server, alice, channel, BOB)
    assert joined["membership"] == "join"
    assert joined["join_authorised_via_users_server"] == ALICE
    # An outsider may not.
    refused = await member(server, carol, channel, "join")
    assert_error(refused, 403, "M_FORBIDDEN")
    assert await joined_rooms(server, carol) == []
    # Leaving the space takes the right away for the next join.
    ok(await member(server, bob, channel, "leave"))
    ok(await member(server, bob, space, "leave"))
    assert_error(await member(server, bob, channel, "join"), 403, "M_FORBIDDEN")
    # An invite works without the space, and needs no authoriser.
    ok(await member(server, alice, channel, "invite", user_id=CAROL))
    ok(await member(server, carol, channel, "join"))
    assert "join_authorised_via_users_server" not in await membership_of(server, alice, channel, CAROL)


async def test_knock_restricted(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    space, channel = await _department(server, alice, "knock_restricted")
    ok(await member(server, alice, space, "invite", user_id=BOB))
    ok(await member(server, bob, space, "join"))
    ok(await member(server, bob, channel, "join"))
    # Outsiders may ask to join instead.
    assert_error(await member(server, carol, channel, "join"), 403, "M_FORBIDDEN")
    ok(await knock(server, carol, channel))
    assert (await membership_of(server, alice, channel, CAROL))["membership"] == "knock"


async def test_restricted_join_needs_someone_who_can_invite(server):
    alice, bob = await users(server, "alice", "bob")
    space = await create_room(server, alice, preset="public_chat", creation_content={"type": "m.space"})
    # Nobody in the channel may invite: there is no one to authorise a join.
    channel = await create_room(
        server,
        alice,
        room_version="11",
        power_level_content_override={"invite": 101},
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
            }
        ],
    )
    ok(await member(server, bob, space, "join"))
    assert_error(await member(server, bob, channel, "join"), 403, "M_FORBIDDEN")


# ----------------------------------------------------------------- forget


async def test_forget(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, room_id, "join"))
    resp = await member(server, bob, room_id, "forget")
    assert resp.status == 400, resp.body
    ok(await member(server, bob, room_id, "leave"))
    ok(await member(server, bob, room_id, "forget"))
    forgotten = await server.hs.storage.db.fetchval(
        "test", "SELECT forgotten FROM room_memberships WHERE room_id = ? AND user_id = ?", (room_id, BOB)
    )
    assert bool(forgotten) is True
    # Joining again un-forgets.
    ok(await member(server, bob, room_id, "join"))
    assert await joined_rooms(server, bob) == [room_id]
    # An invitee must reject the invite first.
    invited = await create_room(server, alice, invite=[BOB])
    assert (await member(server, bob, invited, "forget")).status == 400
    assert_error(await member(server, bob, "!unknown:test.local", "forget"), 404, "M_NOT_FOUND")


# ------------------------------------------------------------ joined_rooms


async def test_joined_rooms(server):
    alice, bob = await users(server, "alice", "bob")
    assert await joined_rooms(server, alice) == []
    rooms = [await create_room(server, alice, preset="public_chat") for _ in range(3)]
    invited = await create_room(server, alice, invite=[BOB])
    assert sorted(await joined_rooms(server, alice)) == sorted([*rooms, invited])
    ok(await member(server, bob, rooms[0], "join"))
    ok(await member(server, bob, rooms[1], "join"))
    ok(await member(server, bob, rooms[1], "leave"))
    # Invites and rooms left are not joined rooms.
    assert await joined_rooms(server, bob) == [rooms[0]]
    assert_error(await server.get(f"{V3}/joined_rooms"), 401, "M_MISSING_TOKEN")


# ------------------------------------------------------------------ profile


async def test_profile_change_updates_member_events(server):
    alice, bob = await users(server, "alice", "bob")
    rooms = [await create_room(server, bob, preset="public_chat") for _ in range(2)]
    left = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, left, "join"))
    ok(await member(server, bob, left, "leave"))
    ok(await server.put(f"{V3}/profile/{BOB}/displayname", {"displayname": "Bob Builder"}, token=bob))
    ok(await server.put(f"{V3}/profile/{BOB}/avatar_url", {"avatar_url": "mxc://test.local/bob"}, token=bob))
    for room_id in rooms:
        content = await membership_of(server, bob, room_id, BOB)
        assert content == {"membership": "join", "displayname": "Bob Builder", "avatar_url": "mxc://test.local/bob"}
        state = (await server.get(f"{V3}/rooms/{q(room_id)}/state", token=bob)).body
        event = next(e for e in state if e["type"] == "m.room.member" and e["state_key"] == BOB)
        assert event["content"]["displayname"] == "Bob Builder"
        assert event["unsigned"]["prev_content"]["displayname"] == "Bob Builder"  # avatar was the latest
    # A room bob left is not touched.
    assert await membership_of(server, alice, left, BOB) == {"membership": "leave"}


async def test_per_room_display_name_through_state(server):
    # Element's /myroomnick: PUT the member event with a room-specific name.
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    ok(await member(server, bob, room_id, "join"))
    resp = await put_state(
        server, bob, room_id, "m.room.member", {"membership": "join", "displayname": "Bob (sales)"}, BOB
    )
    assert resp.status == 200, resp.body
    assert await membership_of(server, alice, room_id, BOB) == {"membership": "join", "displayname": "Bob (sales)"}
    # It still goes through the membership rules.
    assert_error(
        await put_state(server, bob, room_id, "m.room.member", {"membership": "join", "displayname": "A"}, ALICE),
        403,
        "M_FORBIDDEN",
    )
    assert_error(await put_state(server, bob, room_id, "m.room.member", {"membership": "boss"}, BOB), 400, "M_INVALID_PARAM")
    assert_error(await put_state(server, bob, room_id, "m.room.member", {}, BOB), 400, "M_MISSING_PARAM")
    ok(await put_state(server, bob, room_id, "m.room.member", {"membership": "leave"}, BOB))
    assert await joined_rooms(server, bob) == []


# ------------------------------------------------------------------ guests


@with_config(allow_guest_access=True)
async def test_guests_join_only_rooms_that_let_them(server):
    (alice,) = await users(server, "alice")
    guest = (await server.post(f"{V3}/register", {}, params={"kind": "guest"})).body["access_token"]
    # public_chat forbids guests; private_chat's "can_join" lets an invited guest in.
    public = await create_room(server, alice, preset="public_chat")
    assert_error(await member(server, guest, public, "join"), 403, "M_GUEST_ACCESS_FORBIDDEN")
    assert_error(await server.post(f"{V3}/join/{q(public)}", {}, token=guest), 403, "M_GUEST_ACCESS_FORBIDDEN")
    open_to_guests = await create_room(
        server,
        alice,
        preset="public_chat",
        initial_state=[{"type": "m.room.guest_access", "content": {"guest_access": "can_join"}}],
    )
    ok(await member(server, guest, open_to_guests, "join"))
    ok(await send(server, guest, open_to_guests, {"msgtype": "m.text", "body": "hi"}, txn="1"))
    # Guests may not invite, knock, kick or set state.
    assert_error(await member(server, guest, open_to_guests, "invite", user_id=ALICE), 403, "M_GUEST_ACCESS_FORBIDDEN")
    assert_error(await put_state(server, guest, open_to_guests, "m.room.topic", {"topic": "x"}), 403, "M_GUEST_ACCESS_FORBIDDEN")
    ok(await member(server, guest, open_to_guests, "leave"))
