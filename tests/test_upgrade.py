"""POST /rooms/{roomId}/upgrade over real HTTP on both engines: the replacement
room, what is carried over, the tombstone and the retired old room, and refusals."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from homeserver.rooms import upgrade as upgrade_module

from .conftest import start_server, stop_server

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ALICE, BOB, CAROL, DAVE = (f"@{n}:test.local" for n in ("alice", "bob", "carol", "dave"))
ALIAS = "#sales:test.local"
ALT_ALIAS = "#leads:test.local"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body.get("errcode")) == (status, errcode), resp.body


async def ok(resp_coro: Any) -> Any:
    resp = await resp_coro
    assert resp.status == 200, resp.body
    return resp.body


async def state(
    server: TestServer, token: str, room_id: str, event_type: str, key: str = ""
) -> Any:
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(key)}", token=token)
    return resp.body if resp.status == 200 else None


async def upgrade(server: TestServer, token: str, room_id: str, body: Any) -> Response:
    return await server.post(f"{V3}/rooms/{q(room_id)}/upgrade", body, token=token)


COPIED = {
    "m.room.name": {"name": "Sales"},
    "m.room.topic": {
        "topic": "Leads",
        "m.topic": {"m.text": [{"body": "Leads", "mimetype": "text/plain"}]},
    },
    "m.room.avatar": {"url": "mxc://test.local/avatar"},
    "m.room.guest_access": {"guest_access": "forbidden"},
    "m.room.history_visibility": {"history_visibility": "joined"},
    "m.room.join_rules": {"join_rule": "public"},
    "m.room.encryption": {"algorithm": "m.megolm.v1.aes-sha2"},
    "m.room.server_acl": {"allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": False},
}


@pytest.fixture
async def people(server: TestServer) -> dict[str, str]:
    return {
        name: (await server.register_user(name))["access_token"]
        for name in ("alice", "bob", "carol", "dave")
    }


async def make_room(server: TestServer, people: dict[str, str], version: str, **extra: Any) -> str:
    """A published room with every transferable state event, aliases, a moderator and a ban."""
    alice = people["alice"]
    body = {
        "room_version": version,
        "preset": "public_chat",
        "visibility": "public",
        "name": "Sales",
        "topic": "Leads",
        "initial_state": [
            {"type": t, "state_key": "", "content": c}
            for t, c in COPIED.items()
            if t not in ("m.room.name", "m.room.topic")
        ],
        **extra,
    }
    room_id = (await ok(server.post(f"{V3}/createRoom", body, token=alice)))["room_id"]
    for name in ("bob", "carol", "dave"):
        await ok(server.post(f"{V3}/rooms/{q(room_id)}/join", {}, token=people[name]))
    levels = await state(server, alice, room_id, "m.room.power_levels")
    levels["users"][BOB] = 50
    await ok(server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.power_levels/", levels, token=alice))
    await ok(
        server.post(
            f"{V3}/rooms/{q(room_id)}/ban", {"user_id": CAROL, "reason": "spam"}, token=alice
        )
    )
    for alias in (ALIAS, ALT_ALIAS):
        await ok(server.put(f"{V3}/directory/room/{q(alias)}", {"room_id": room_id}, token=alice))
    await ok(
        server.put(
            f"{V3}/rooms/{q(room_id)}/state/m.room.canonical_alias/",
            {"alias": ALIAS, "alt_aliases": [ALT_ALIAS]},
            token=alice,
        )
    )
    return room_id


async def members(server: TestServer, room_id: str, membership: str) -> set[str]:
    found = await server.hs.storage.events.members_of_room(room_id, (membership,))
    return {m.user_id for m in found}


@pytest.mark.parametrize(
    ("old_version", "new_version"), [("10", "12"), ("11", "12"), ("12", "12"), ("10", "11")]
)
async def test_upgrade_carries_the_room_over(server, people, old_version, new_version):
    alice = people["alice"]
    old = await make_room(server, people, old_version)
    old_levels = await state(server, alice, old, "m.room.power_levels")

    body = await ok(upgrade(server, alice, old, {"new_version": new_version}))
    new = body["replacement_room"]
    assert new != old and new.startswith("!")

    # The new room names its predecessor; its last event was in the old room.
    create = await state(server, alice, new, "m.room.create")
    assert create["room_version"] == new_version
    assert create["predecessor"]["room_id"] == old
    predecessor_event = await server.get(
        f"{V3}/rooms/{q(old)}/event/{q(create['predecessor']['event_id'])}", token=alice
    )
    assert predecessor_event.status == 200
    assert "type" not in create

    for event_type, content in COPIED.items():
        assert await state(server, alice, new, event_type) == content, event_type

    levels = await state(server, alice, new, "m.room.power_levels")
    assert levels["users"][BOB] == 50
    for key in (
        "ban",
        "kick",
        "redact",
        "invite",
        "events_default",
        "state_default",
        "users_default",
    ):
        assert levels[key] == old_levels[key], key
    if new_version == "12":
        assert ALICE not in levels["users"]  # the creator: infinitely powerful
        assert levels["events"]["m.room.tombstone"] == 150
    else:
        assert levels["users"][ALICE] == 100
        assert levels["events"] == old_levels["events"]

    # Only the upgrader is in the new room; bans follow.
    assert await members(server, new, "join") == {ALICE}
    assert await members(server, new, "ban") == {CAROL}
    ban = await state(server, alice, new, "m.room.member", CAROL)
    assert ban == {"membership": "ban", "reason": "spam"}

    # Aliases moved, and the directory listing with them.
    for alias in (ALIAS, ALT_ALIAS):
        resolved = await ok(server.get(f"{V3}/directory/room/{q(alias)}"))
        assert resolved["room_id"] == new
    assert await state(server, alice, new, "m.room.canonical_alias") == {
        "alias": ALIAS,
        "alt_aliases": [ALT_ALIAS],
    }
    assert await state(server, alice, old, "m.room.canonical_alias") == {}
    assert (await ok(server.get(f"{V3}/directory/list/room/{q(new)}")))["visibility"] == "public"
    assert (await ok(server.get(f"{V3}/directory/list/room/{q(old)}")))["visibility"] == "private"

    # The old room is tombstoned and ordinary members are silenced.
    tombstone = await state(server, alice, old, "m.room.tombstone")
    assert tombstone == {"body": "This room has been replaced", "replacement_room": new}
    restricted = await state(server, alice, old, "m.room.power_levels")
    assert restricted["events_default"] == 50 and restricted["invite"] == 50
    resp = await server.put(
        f"{V3}/rooms/{q(old)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "hi"},
        token=people["dave"],
    )
    assert_error(resp, 403, "M_FORBIDDEN")
    # A moderator still can.
    await ok(
        server.put(
            f"{V3}/rooms/{q(old)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "moved"},
            token=people["bob"],
        )
    )

    # Members follow the tombstone.
    await ok(server.post(f"{V3}/rooms/{q(new)}/join", {}, token=people["dave"]))
    assert_error(
        await server.post(f"{V3}/rooms/{q(new)}/join", {}, token=people["carol"]),
        403,
        "M_FORBIDDEN",
    )


async def test_upgrading_a_space_keeps_its_type_and_children(server, people):
    alice = people["alice"]
    space = (
        await ok(
            server.post(
                f"{V3}/createRoom",
                {"room_version": "11", "creation_content": {"type": "m.space"}},
                token=alice,
            )
        )
    )["room_id"]
    child = (await ok(server.post(f"{V3}/createRoom", {}, token=alice)))["room_id"]
    link = {"via": ["test.local"], "suggested": True}
    await ok(server.put(f"{V3}/rooms/{q(space)}/state/m.space.child/{q(child)}", link, token=alice))
    new = (await ok(upgrade(server, alice, space, {"new_version": "12"})))["replacement_room"]
    assert (await state(server, alice, new, "m.room.create"))["type"] == "m.space"
    assert await state(server, alice, new, "m.space.child", child) == link
    hierarchy = await ok(server.get(f"/_matrix/client/v1/rooms/{q(new)}/hierarchy", token=alice))
    assert [r["room_id"] for r in hierarchy["rooms"]] == [new, child]


async def test_upgrader_gets_power_for_the_copy_then_their_old_level(server, people):
    alice, bob = people["alice"], people["bob"]
    overrides = {
        "users": {ALICE: 100, BOB: 60},
        "events": {"m.room.server_acl": 100, "m.room.tombstone": 60},
    }
    room = (
        await ok(
            server.post(
                f"{V3}/createRoom",
                {
                    "room_version": "10",
                    "preset": "public_chat",
                    "power_level_content_override": overrides,
                    "initial_state": [{"type": "m.room.server_acl", "content": {"allow": ["*"]}}],
                },
                token=alice,
            )
        )
    )["room_id"]
    await ok(server.post(f"{V3}/rooms/{q(room)}/join", {}, token=bob))
    new = (await ok(upgrade(server, bob, room, {"new_version": "11"})))["replacement_room"]
    # Bob could copy the ACL with 100, and is back at 60.
    assert await state(server, bob, new, "m.room.server_acl") == {"allow": ["*"]}
    resp = await server.get(
        f"{V3}/rooms/{q(new)}/state/m.room.power_levels/", token=bob, params={"format": "event"}
    )
    assert resp.body["content"]["users"] == {ALICE: 100, BOB: 60}
    assert resp.body["content"]["events"] == overrides["events"]
    assert resp.body["unsigned"]["prev_content"]["users"] == {ALICE: 100, BOB: 100}


async def test_v12_upgrade_with_additional_creators(server, people):
    alice = people["alice"]
    room = await make_room(server, people, "12")
    new = (
        await ok(
            upgrade(server, alice, room, {"new_version": "12", "additional_creators": [BOB, ALICE]})
        )
    )["replacement_room"]
    create = await state(server, alice, new, "m.room.create")
    assert create["additional_creators"] == [BOB]
    levels = await state(server, alice, new, "m.room.power_levels")
    assert BOB not in levels["users"] and ALICE not in levels["users"]


async def test_downgrade_from_v12_keeps_the_creator_on_top(server, people):
    alice = people["alice"]
    room = (await ok(server.post(f"{V3}/createRoom", {"room_version": "12"}, token=alice)))[
        "room_id"
    ]
    new = (await ok(upgrade(server, alice, room, {"new_version": "11"})))["replacement_room"]
    levels = await state(server, alice, new, "m.room.power_levels")
    assert levels["users"][ALICE] == 150  # the v12 tombstone level, the highest needed


# ------------------------------------------------------------------ refusals


async def test_only_users_with_tombstone_power_may_upgrade(server, people):
    old = await make_room(server, people, "11")
    assert_error(
        await upgrade(server, people["bob"], old, {"new_version": "12"}), 403, "M_FORBIDDEN"
    )
    assert_error(
        await upgrade(server, people["dave"], old, {"new_version": "12"}), 403, "M_FORBIDDEN"
    )
    assert await state(server, people["alice"], old, "m.room.tombstone") is None


async def test_non_members_may_not_upgrade(server, people):
    old = (
        await ok(server.post(f"{V3}/createRoom", {"preset": "public_chat"}, token=people["alice"]))
    )["room_id"]
    assert_error(
        await upgrade(server, people["bob"], old, {"new_version": "12"}), 403, "M_FORBIDDEN"
    )


async def test_v12_admins_are_not_creators(server, people):
    old = await make_room(server, people, "12")
    levels = await state(server, people["alice"], old, "m.room.power_levels")
    levels["users"][BOB] = 100
    await ok(
        server.put(f"{V3}/rooms/{q(old)}/state/m.room.power_levels/", levels, token=people["alice"])
    )
    assert_error(
        await upgrade(server, people["bob"], old, {"new_version": "12"}), 403, "M_FORBIDDEN"
    )


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [
        ({"new_version": "99"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
        ({"new_version": "1"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
        ({"new_version": 12}, 400, "M_BAD_JSON"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"new_version": "12", "additional_creators": "@bob:test.local"}, 400, "M_BAD_JSON"),
        ({"new_version": "12", "additional_creators": [1]}, 400, "M_BAD_JSON"),
        ({"new_version": "12", "additional_creators": ["bob"]}, 400, "M_INVALID_PARAM"),
    ],
)
async def test_bad_requests(server, people, body, status, errcode):
    old = (await ok(server.post(f"{V3}/createRoom", {}, token=people["alice"])))["room_id"]
    assert_error(await upgrade(server, people["alice"], old, body), status, errcode)


async def test_unknown_room_and_bad_bodies(server, people):
    alice = people["alice"]
    assert_error(
        await upgrade(server, alice, "!nowhere:test.local", {"new_version": "12"}),
        404,
        "M_NOT_FOUND",
    )
    assert_error(
        await upgrade(server, alice, "nowhere", {"new_version": "12"}), 400, "M_INVALID_PARAM"
    )
    old = (await ok(server.post(f"{V3}/createRoom", {}, token=alice)))["room_id"]
    resp = await server.post(f"{V3}/rooms/{q(old)}/upgrade", data="{nope", token=alice)
    assert_error(resp, 400, "M_NOT_JSON")
    assert_error(
        await server.post(f"{V3}/rooms/{q(old)}/upgrade", {"new_version": "12"}),
        401,
        "M_MISSING_TOKEN",
    )


# ------------------------------------------------------------- concurrency


async def room_count(server: TestServer) -> int:
    return await server.hs.db.fetchval("test", "SELECT COUNT(*) FROM rooms")


async def test_concurrent_upgrades_make_one_room(server, people):
    alice = people["alice"]
    old = await make_room(server, people, "11")
    levels = await state(server, alice, old, "m.room.power_levels")
    levels["users"][DAVE] = 100
    await ok(server.put(f"{V3}/rooms/{q(old)}/state/m.room.power_levels/", levels, token=alice))
    rooms_before = await room_count(server)
    results = await asyncio.gather(
        *(upgrade(server, alice, old, {"new_version": "12"}) for _ in range(3)),
        upgrade(server, people["dave"], old, {"new_version": "11"}),
    )
    # One upgrader wins: their repeats are answered with their one upgrade,
    # the other is refused (whoever came first, which the engine decides).
    assert await room_count(server) == rooms_before + 1
    new = (await state(server, alice, old, "m.room.tombstone"))["replacement_room"]
    statuses = [r.status for r in results]
    assert statuses in ([200, 200, 200, 400], [400, 400, 400, 200]), [r.body for r in results]
    for resp in results:
        if resp.status == 200:
            assert resp.body == {"replacement_room": new}
        else:
            assert_error(resp, 400, "M_UNKNOWN")
    # Later repeats by the winner get the same answer, for a while; others a refusal.
    winner, loser = (alice, people["dave"]) if statuses[0] == 200 else (people["dave"], alice)
    assert await ok(upgrade(server, winner, old, {"new_version": "12"})) == {"replacement_room": new}
    assert_error(await upgrade(server, loser, old, {"new_version": "12"}), 400, "M_UNKNOWN")
    assert await room_count(server) == rooms_before + 1


async def test_an_upgrade_under_way_elsewhere_refuses_another(server, people):
    """A claim in room_upgrades, as another process holds it mid-upgrade, refuses
    every other upgrade of the room until it ends, or is so old its process died."""
    alice = people["alice"]
    old = await make_room(server, people, "10")
    events = server.hs.storage.events
    now = int(time.time() * 1000)
    window = upgrade_module.UPGRADE_WINDOW_MS
    assert await events.claim_room_upgrade(old, DAVE, now, now - window) is None
    rooms_before = await room_count(server)
    for token in (alice, people["dave"]):
        assert_error(await upgrade(server, token, old, {"new_version": "12"}), 400, "M_UNKNOWN")
    assert await room_count(server) == rooms_before
    assert await state(server, alice, old, "m.room.tombstone") is None

    # A failed upgrade leaves no claim behind.
    await events.end_room_upgrade(old, DAVE, now, None, now)
    assert_error(await upgrade(server, people["dave"], old, {"new_version": "12"}), 403, "M_FORBIDDEN")
    # A claim never finished, older than the window, is taken over.
    stale = now - window - 1
    assert await events.claim_room_upgrade(old, DAVE, stale, stale - window) is None
    new = (await ok(upgrade(server, alice, old, {"new_version": "12"})))["replacement_room"]
    assert (await state(server, alice, old, "m.room.tombstone"))["replacement_room"] == new
    assert await room_count(server) == rooms_before + 1


async def test_concurrent_upgrades_in_two_processes_make_one_room(server, people):
    if server.hs.config.database.name != "psycopg":
        pytest.skip("several processes share a database on PostgreSQL")
    alice = people["alice"]
    old = await make_room(server, people, "11")
    rooms_before = await room_count(server)
    other = await start_server(server.hs.config)
    try:
        results = await asyncio.gather(
            *(upgrade(s, alice, old, {"new_version": "12"}) for s in (server, other, server, other))
        )
    finally:
        await stop_server(other)
    # Each is the one upgrade, a repeat answered with it, or refused while it ran elsewhere.
    new = (await state(server, alice, old, "m.room.tombstone"))["replacement_room"]
    for resp in results:
        if resp.status == 200:
            assert resp.body == {"replacement_room": new}
        else:
            assert_error(resp, 400, "M_UNKNOWN")
    assert any(resp.status == 200 for resp in results)
    assert await room_count(server) == rooms_before + 1
