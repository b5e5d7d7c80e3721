"""The room and media admin API (/_synapse/admin) over real HTTP on both
engines: listing and inspecting rooms, make_room_admin, blocking, deleting
and purging rooms, and media administration (listing, deleting, quarantine)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from PIL import Image

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
SERVER = "test.local"
ADMIN, ALICE, BOB, CAROL = (f"@{n}:{SERVER}" for n in ("admin", "alice", "bob", "carol"))


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (
        resp.status,
        resp.body.get("errcode") if isinstance(resp.body, dict) else resp.body,
    ) == (
        status,
        errcode,
    ), resp.body
    assert isinstance(resp.body.get("error"), str)


async def ok(resp_coro: Any) -> Any:
    resp = await resp_coro
    assert resp.status == 200, resp.body
    return resp.body


class Users:
    def __init__(self, admin: str, alice: str, bob: str, carol: str) -> None:
        self.admin, self.alice, self.bob, self.carol = admin, alice, bob, carol


@pytest.fixture
async def users(server: TestServer) -> Users:
    admin = (await server.register_user("admin", admin=True))["access_token"]
    alice, bob, carol = [
        (await server.register_user(n))["access_token"] for n in ("alice", "bob", "carol")
    ]
    return Users(admin, alice, bob, carol)


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    return (await ok(server.post(f"{V3}/createRoom", body, token=token)))["room_id"]


async def join(server: TestServer, token: str, room: str) -> Response:
    return await server.post(f"{V3}/join/{q(room)}", {}, token=token)


async def send(server: TestServer, token: str, room: str, body: str, txn: str) -> str:
    resp = await ok(
        server.put(
            f"{V3}/rooms/{q(room)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
            token=token,
        )
    )
    return resp["event_id"]


# ------------------------------------------------------------------ access


async def test_every_endpoint_is_for_admins_only(server, users):
    room = await create_room(server, users.alice)
    calls = [
        ("GET", f"{V1}/rooms"),
        ("GET", f"{V1}/rooms/{q(room)}"),
        ("GET", f"{V1}/rooms/{q(room)}/members"),
        ("GET", f"{V1}/rooms/{q(room)}/state"),
        ("GET", f"{V1}/rooms/{q(room)}/messages"),
        ("POST", f"{V1}/rooms/{q(room)}/make_room_admin"),
        ("GET", f"{V1}/rooms/{q(room)}/block"),
        ("PUT", f"{V1}/rooms/{q(room)}/block"),
        ("DELETE", f"{V1}/rooms/{q(room)}"),
        ("DELETE", f"{V2}/rooms/{q(room)}"),
        ("GET", f"{V2}/rooms/{q(room)}/delete_status"),
        ("GET", f"{V2}/rooms/delete_status/abc"),
        ("GET", f"{V1}/users/{q(ALICE)}/media"),
        ("DELETE", f"{V1}/users/{q(ALICE)}/media"),
        ("GET", f"{V1}/media/{SERVER}/abc"),
        ("DELETE", f"{V1}/media/{SERVER}/abc"),
        ("POST", f"{V1}/media/quarantine/{SERVER}/abc"),
        ("POST", f"{V1}/media/unquarantine/{SERVER}/abc"),
        ("POST", f"{V1}/purge_media_cache?before_ts=1"),
    ]
    for method, path in calls:
        assert_error(
            await server.request(method, path, {"block": True}, token=users.alice),
            403,
            "M_FORBIDDEN",
        )
        assert_error(await server.request(method, path, {"block": True}), 401, "M_MISSING_TOKEN")
    # Nothing happened.
    assert (await ok(server.get(f"{V1}/rooms/{q(room)}/block", token=users.admin))) == {
        "block": False
    }
    assert (await ok(server.get(f"{V1}/rooms/{q(room)}/members", token=users.admin)))["total"] == 1


# --------------------------------------------------------------- room list


async def test_room_list_fields(server, users):
    room = await create_room(
        server,
        users.alice,
        preset="public_chat",
        name="Sales",
        room_alias_name="sales",
        visibility="public",
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    await ok(join(server, users.bob, room))
    space = await create_room(
        server, users.carol, creation_content={"type": "m.space", "m.federate": False}
    )
    body = await ok(server.get(f"{V1}/rooms", token=users.admin))
    assert body["offset"] == 0 and body["total_rooms"] == 2
    assert "next_batch" not in body and "prev_batch" not in body
    by_id = {r["room_id"]: r for r in body["rooms"]}
    sales = by_id[room]
    assert sales == {
        "room_id": room,
        "name": "Sales",
        "canonical_alias": f"#sales:{SERVER}",
        "joined_members": 2,
        "joined_local_members": 2,
        "version": sales["version"],
        "creator": ALICE,
        "encryption": "m.megolm.v1.aes-sha2",
        "federatable": True,
        "public": True,
        "join_rules": "public",
        "guest_access": sales["guest_access"],
        "history_visibility": "shared",
        "state_events": sales["state_events"],
        "room_type": None,
    }
    assert isinstance(sales["version"], str) and sales["state_events"] >= 7
    other = by_id[space]
    assert other["room_type"] == "m.space" and other["federatable"] is False
    assert other["name"] is None and other["public"] is False and other["joined_members"] == 1
    # Sorted by name by default, rooms without one last.
    assert [r["room_id"] for r in body["rooms"]] == [room, space]


async def test_room_list_ordering_search_and_pages(server, users):
    names = ["Delta", "alpha", "Charlie", "bravo"]
    rooms = {}
    for i, name in enumerate(names):
        rooms[name] = await create_room(server, users.alice, name=name, preset="public_chat")
        # Room i gets i extra members.
        for token in (users.bob, users.carol, users.admin)[:i]:
            await ok(join(server, token, rooms[name]))

    async def listing(**params: str) -> dict[str, Any]:
        return await ok(server.get(f"{V1}/rooms", params=params, token=users.admin))

    def names_of(body: dict[str, Any]) -> list[str]:
        return [r["name"] for r in body["rooms"]]

    assert names_of(await listing(order_by="name")) == ["Charlie", "Delta", "alpha", "bravo"]
    assert names_of(await listing(order_by="name", dir="b")) == [
        "bravo",
        "alpha",
        "Delta",
        "Charlie",
    ]
    assert names_of(await listing(order_by="joined_members")) == [
        "bravo",
        "Charlie",
        "alpha",
        "Delta",
    ]
    assert names_of(await listing(order_by="size", dir="b")) == [
        "Delta",
        "alpha",
        "Charlie",
        "bravo",
    ]
    assert names_of(await listing(order_by="joined_local_members"))[0] == "bravo"
    for order in (
        "canonical_alias",
        "version",
        "creator",
        "encryption",
        "federatable",
        "public",
        "join_rules",
        "guest_access",
        "history_visibility",
        "state_events",
        "alphabetical",
    ):
        assert (await listing(order_by=order))["total_rooms"] == 4

    first = await listing(order_by="name", limit="3")
    assert names_of(first) == ["Charlie", "Delta", "alpha"]
    assert first["next_batch"] == 3 and "prev_batch" not in first and first["total_rooms"] == 4
    second = await listing(order_by="name", limit="3", **{"from": "3"})
    assert names_of(second) == ["bravo"] and second["offset"] == 3
    assert second["prev_batch"] == 0 and "next_batch" not in second
    far = await listing(**{"from": "100"})
    assert far["rooms"] == [] and far["total_rooms"] == 4

    # Case-insensitive in names, case-sensitive in room IDs.
    assert names_of(await listing(search_term="ALPH")) == ["alpha"]
    found = await listing(search_term=rooms["Delta"][1:6])
    assert rooms["Delta"] in [r["room_id"] for r in found["rooms"]]
    assert (await listing(search_term="nothing-like-this"))["total_rooms"] == 0
    assert (await listing(empty_rooms="false"))["total_rooms"] == 4
    assert (await listing(public_rooms="true"))["total_rooms"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"from": "-1"},
        {"limit": "-5"},
        {"limit": "ten"},
        {"order_by": "bogus"},
        {"dir": "x"},
        {"search_term": ""},
        {"public_rooms": "maybe"},
    ],
)
async def test_room_list_bad_parameters(server, users, params):
    assert_error(
        await server.get(f"{V1}/rooms", params=params, token=users.admin), 400, "M_INVALID_PARAM"
    )


async def test_room_list_survives_odd_state(server, users):
    """Non-string and NUL-holding names never break the list (PostgreSQL cannot read \\u0000 as text)."""
    weird = await create_room(server, users.alice, name="x")
    await ok(server.put(f"{V3}/rooms/{q(weird)}/state/m.room.name", {"name": 5}, token=users.alice))
    nul = await create_room(server, users.alice)
    await ok(
        server.put(
            f"{V3}/rooms/{q(nul)}/state/m.room.name", {"name": "a\u0000b"}, token=users.alice
        )
    )
    body = await ok(server.get(f"{V1}/rooms", token=users.admin))
    by_id = {r["room_id"]: r for r in body["rooms"]}
    assert by_id[weird]["name"] is None
    # (SQLite reads up to the NUL, PostgreSQL not at all.)
    assert by_id[nul]["name"] in (None, "a", "a\u0000b")
    await ok(server.get(f"{V1}/rooms/{q(nul)}", token=users.admin))


# ------------------------------------------------------- one room's details


async def test_room_details_members_and_state(server, users):
    room = await create_room(
        server, users.alice, name="Ops", topic="Keep it running", preset="private_chat"
    )
    await ok(server.post(f"{V3}/rooms/{q(room)}/invite", {"user_id": BOB}, token=users.alice))
    await ok(join(server, users.bob, room))
    details = await ok(server.get(f"{V1}/rooms/{q(room)}", token=users.admin))
    assert (
        details["room_id"] == room
        and details["name"] == "Ops"
        and details["topic"] == "Keep it running"
    )
    assert details["joined_members"] == 2 and details["joined_local_members"] == 2
    assert details["joined_local_devices"] == 2 and details["forgotten"] is False
    assert details["join_rules"] == "invite" and details["avatar"] is None

    members = await ok(server.get(f"{V1}/rooms/{q(room)}/members", token=users.admin))
    assert members == {"members": [ALICE, BOB], "total": 2}

    state = (await ok(server.get(f"{V1}/rooms/{q(room)}/state", token=users.admin)))["state"]
    assert {(e["type"], e["state_key"]) for e in state} >= {
        ("m.room.create", ""),
        ("m.room.name", ""),
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
    }
    only = await ok(
        server.get(
            f"{V1}/rooms/{q(room)}/state", params={"type": "m.room.member"}, token=users.admin
        )
    )
    assert sorted(e["state_key"] for e in only["state"]) == [ALICE, BOB]

    # Both leave and forget: the room is forgotten by every local user.
    for token in (users.alice, users.bob):
        await ok(server.post(f"{V3}/rooms/{q(room)}/leave", {}, token=token))
        await ok(server.post(f"{V3}/rooms/{q(room)}/forget", {}, token=token))
    details = await ok(server.get(f"{V1}/rooms/{q(room)}", token=users.admin))
    assert details["forgotten"] is True and details["joined_members"] == 0


async def test_unknown_remote_and_malformed_rooms(server, users):
    for suffix in ("", "/members", "/state", "/messages"):
        assert_error(
            await server.get(f"{V1}/rooms/{q('!nope:' + SERVER)}{suffix}", token=users.admin),
            404,
            "M_NOT_FOUND",
        )
        assert_error(
            await server.get(
                f"{V1}/rooms/{q('!elsewhere:remote.example')}{suffix}", token=users.admin
            ),
            404,
            "M_NOT_FOUND",
        )
        assert_error(
            await server.get(f"{V1}/rooms/not-a-room{suffix}", token=users.admin),
            400,
            "M_INVALID_PARAM",
        )
    assert_error(
        await server.get(f"{V1}/rooms/not-a-room/block", token=users.admin), 400, "M_INVALID_PARAM"
    )
    assert_error(
        await server.post(
            f"{V1}/rooms/{q('#nope:' + SERVER)}/make_room_admin", {}, token=users.admin
        ),
        404,
        "M_NOT_FOUND",
    )


async def test_admin_reads_messages_without_being_a_member(server, users):
    room = await create_room(
        server,
        users.alice,
        preset="private_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    sent = [await send(server, users.alice, room, f"m{i}", f"t{i}") for i in range(5)]
    # The admin is no member: the client API refuses...
    assert_error(
        await server.get(f"{V3}/rooms/{q(room)}/messages", params={"dir": "b"}, token=users.admin),
        403,
        "M_FORBIDDEN",
    )
    # ...the admin API does not.
    page = await ok(
        server.get(
            f"{V1}/rooms/{q(room)}/messages", params={"dir": "b", "limit": "3"}, token=users.admin
        )
    )
    assert [e["event_id"] for e in page["chunk"]] == sent[::-1][:3]
    rest = await ok(
        server.get(
            f"{V1}/rooms/{q(room)}/messages",
            params={"dir": "b", "from": page["end"], "limit": "10"},
            token=users.admin,
        )
    )
    assert [e["event_id"] for e in rest["chunk"]][:2] == sent[1::-1]
    # Forwards by default, from the start.
    forward = await ok(
        server.get(f"{V1}/rooms/{q(room)}/messages", params={"limit": "1"}, token=users.admin)
    )
    assert forward["chunk"][0]["type"] == "m.room.create"
    assert_error(
        await server.get(
            f"{V1}/rooms/{q(room)}/messages", params={"dir": "sideways"}, token=users.admin
        ),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(
        await server.get(
            f"{V1}/rooms/{q(room)}/messages", params={"from": "garbage"}, token=users.admin
        ),
        400,
        "M_INVALID_PARAM",
    )


# --------------------------------------------------------- make_room_admin


@pytest.mark.parametrize("version", ["10", "12"])
async def test_make_room_admin_invites_into_a_private_room(server, users, version):
    room = await create_room(server, users.alice, preset="private_chat", room_version=version)
    await ok(server.post(f"{V1}/rooms/{q(room)}/make_room_admin", {}, token=users.admin))
    levels = await ok(
        server.get(f"{V3}/rooms/{q(room)}/state/m.room.power_levels", token=users.alice)
    )
    assert levels["users"][ADMIN] == 100
    # v12 creators have unbounded power and no entry; before, the creator's 100 is copied.
    assert levels["users"].get(ALICE) == (None if version == "12" else 100)
    # Invited, so the admin can join and act.
    await ok(join(server, users.admin, room))
    await ok(
        server.put(
            f"{V3}/rooms/{q(room)}/state/m.room.topic", {"topic": "taken over"}, token=users.admin
        )
    )


async def test_make_room_admin_for_another_user_by_alias(server, users):
    room = await create_room(server, users.alice, preset="public_chat", room_alias_name="town")
    await ok(join(server, users.bob, room))
    await ok(
        server.post(
            f"{V1}/rooms/{q('#town:' + SERVER)}/make_room_admin",
            {"user_id": BOB},
            token=users.admin,
        )
    )
    levels = await ok(
        server.get(f"{V3}/rooms/{q(room)}/state/m.room.power_levels", token=users.bob)
    )
    assert levels["users"][BOB] == 100
    # Public and not joined: nobody is invited.
    await ok(
        server.post(f"{V1}/rooms/{q(room)}/make_room_admin", {"user_id": CAROL}, token=users.admin)
    )
    members = await ok(server.get(f"{V3}/rooms/{q(room)}/members", token=users.bob))
    assert CAROL not in {e["state_key"] for e in members["chunk"]}


async def test_make_room_admin_refusals(server, users):
    room = await create_room(server, users.alice, preset="public_chat")
    assert_error(
        await server.post(
            f"{V1}/rooms/{q(room)}/make_room_admin",
            {"user_id": "@x:remote.example"},
            token=users.admin,
        ),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(
        await server.post(
            f"{V1}/rooms/{q(room)}/make_room_admin", {"user_id": 5}, token=users.admin
        ),
        400,
        "M_BAD_JSON",
    )
    # Nobody local with power is left in the room.
    await ok(join(server, users.bob, room))
    await ok(server.post(f"{V3}/rooms/{q(room)}/leave", {}, token=users.alice))
    assert_error(
        await server.post(f"{V1}/rooms/{q(room)}/make_room_admin", {}, token=users.admin),
        400,
        "M_UNKNOWN",
    )


# ----------------------------------------------------------------- blocking


async def test_blocked_room_refuses_joins_and_invites(server, users):
    room = await create_room(server, users.alice, preset="public_chat")
    assert (await ok(server.get(f"{V1}/rooms/{q(room)}/block", token=users.admin))) == {
        "block": False
    }
    assert (
        await ok(server.put(f"{V1}/rooms/{q(room)}/block", {"block": True}, token=users.admin))
    ) == {"block": True}
    assert (await ok(server.get(f"{V1}/rooms/{q(room)}/block", token=users.admin))) == {
        "block": True,
        "user_id": ADMIN,
    }
    assert_error(await join(server, users.bob, room), 403, "M_FORBIDDEN")
    assert_error(
        await server.post(f"{V3}/rooms/{q(room)}/invite", {"user_id": BOB}, token=users.alice),
        403,
        "M_FORBIDDEN",
    )
    assert_error(await join(server, users.admin, room), 403, "M_FORBIDDEN")
    # Members still in it may talk and leave.
    await send(server, users.alice, room, "still here", "t1")
    await ok(server.put(f"{V1}/rooms/{q(room)}/block", {"block": False}, token=users.admin))
    await ok(join(server, users.bob, room))
    # A room not known yet can be blocked ahead of time.
    unknown = f"!future:{SERVER}"
    await ok(server.put(f"{V1}/rooms/{q(unknown)}/block", {"block": True}, token=users.admin))
    assert (await ok(server.get(f"{V1}/rooms/{q(unknown)}/block", token=users.admin)))[
        "block"
    ] is True


async def test_block_bad_bodies(server, users):
    room = await create_room(server, users.alice)
    path = f"{V1}/rooms/{q(room)}/block"
    assert_error(await server.put(path, {}, token=users.admin), 400, "M_MISSING_PARAM")
    assert_error(await server.put(path, {"block": "yes"}, token=users.admin), 400, "M_BAD_JSON")
    assert_error(await server.put(path, data="nope", token=users.admin), 400, "M_NOT_JSON")


# ----------------------------------------------------------------- deleting


async def test_delete_and_purge_room(server, users):
    room = await create_room(
        server,
        users.alice,
        preset="public_chat",
        name="Bad",
        room_alias_name="bad",
        visibility="public",
    )
    await ok(join(server, users.bob, room))
    await ok(server.post(f"{V3}/rooms/{q(room)}/invite", {"user_id": CAROL}, token=users.alice))
    sent = [await send(server, users.bob, room, f"bad {i}", f"b{i}") for i in range(3)]
    # A thread, a receipt and a tag: rows of the room in other tables.
    await ok(
        server.put(
            f"{V3}/rooms/{q(room)}/send/m.room.message/th",
            {
                "msgtype": "m.text",
                "body": "reply",
                "m.relates_to": {"rel_type": "m.thread", "event_id": sent[0]},
            },
            token=users.alice,
        )
    )
    await ok(
        server.post(f"{V3}/rooms/{q(room)}/receipt/m.read/{q(sent[2])}", {}, token=users.alice)
    )
    await ok(server.put(f"{V3}/user/{q(BOB)}/rooms/{q(room)}/tags/u.work", {}, token=users.bob))
    bob_since = (await ok(server.get(f"{V3}/sync", token=users.bob)))["next_batch"]
    other = await create_room(server, users.bob, name="Elsewhere")
    db = server.hs.db
    for table in ("threads", "receipts", "account_data"):
        assert await db.fetchval(
            "count", f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", (room,)
        ), table

    resp = await ok(
        server.delete(f"{V2}/rooms/{q(room)}", {"block": True, "purge": True}, token=users.admin)
    )
    delete_id = resp["delete_id"]
    status = await ok(server.get(f"{V2}/rooms/delete_status/{delete_id}", token=users.admin))
    assert (
        status["status"] == "complete"
        and status["room_id"] == room
        and status["delete_id"] == delete_id
    )
    assert "error" not in status
    assert sorted(status["shutdown_room"]["kicked_users"]) == [ALICE, BOB, CAROL]
    assert status["shutdown_room"]["failed_to_kick_users"] == []
    assert status["shutdown_room"]["new_room_id"] is None
    by_room = await ok(server.get(f"{V2}/rooms/{q(room)}/delete_status", token=users.admin))
    assert by_room == {"results": [status]}

    # Gone: from the admin list, the directory, the alias; no rows of it left.
    listing = await ok(server.get(f"{V1}/rooms", token=users.admin))
    assert [r["room_id"] for r in listing["rooms"]] == [other]
    for suffix in ("", "/members", "/state", "/messages"):
        assert_error(
            await server.get(f"{V1}/rooms/{q(room)}{suffix}", token=users.admin), 404, "M_NOT_FOUND"
        )
    public = await ok(server.get(f"{V3}/publicRooms", token=users.bob))
    assert room not in [r["room_id"] for r in public["chunk"]]
    assert_error(
        await server.get(f"{V3}/directory/room/{q('#bad:' + SERVER)}", token=users.bob),
        404,
        "M_NOT_FOUND",
    )
    for table in (
        "events",
        "current_state_events",
        "room_memberships",
        "state_groups",
        "rooms",
        "event_forward_extremities",
        "room_aliases",
        "receipts",
        "account_data",
        "threads",
        "thread_participants",
        "event_push_actions",
    ):
        assert (
            await db.fetchval("count", f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", (room,))
            == 0
        ), table
    # Blocked: nobody gets back in, by ID or otherwise.
    for token in (users.alice, users.bob, users.admin):
        assert_error(await join(server, token, room), 403, "M_FORBIDDEN")

    # Former members' syncs still work, incremental and initial.
    inc = await ok(server.get(f"{V3}/sync", params={"since": bob_since}, token=users.bob))
    assert room not in inc.get("rooms", {}).get("join", {})
    for token in (users.alice, users.bob, users.carol):
        full = await ok(server.get(f"{V3}/sync", token=token))
        for section in ("join", "invite", "leave"):
            assert room not in full.get("rooms", {}).get(section, {})
        await ok(server.get(f"{V3}/sync", params={"since": full["next_batch"]}, token=token))
    # And the room's history answers that the room is gone, not a server error.
    assert_error(
        await server.get(f"{V3}/rooms/{q(room)}/messages", params={"dir": "b"}, token=users.bob),
        404,
        "M_NOT_FOUND",
    )
    # Rooms elsewhere are untouched.
    await send(server, users.bob, other, "fine", "o1")


async def test_delete_moves_users_and_aliases_to_a_new_room(server, users):
    room = await create_room(server, users.alice, preset="public_chat", room_alias_name="old")
    await ok(join(server, users.bob, room))
    body = {
        "new_room_user_id": ADMIN,
        "room_name": "Closed",
        "message": "Moved you",
        "purge": False,
    }
    resp = await ok(server.delete(f"{V1}/rooms/{q(room)}", body, token=users.admin))
    new_room = resp["new_room_id"]
    assert sorted(resp["kicked_users"]) == [ALICE, BOB] and resp["failed_to_kick_users"] == []
    assert resp["local_aliases"] == [f"#old:{SERVER}"]
    alias = await ok(server.get(f"{V3}/directory/room/{q('#old:' + SERVER)}", token=users.bob))
    assert alias["room_id"] == new_room
    members = await ok(server.get(f"{V1}/rooms/{q(new_room)}/members", token=users.admin))
    assert members["members"] == sorted([ADMIN, ALICE, BOB])
    details = await ok(server.get(f"{V1}/rooms/{q(new_room)}", token=users.admin))
    assert details["name"] == "Closed"
    messages = await ok(
        server.get(f"{V3}/rooms/{q(new_room)}/messages", params={"dir": "b"}, token=users.bob)
    )
    assert "Moved you" in [e["content"].get("body") for e in messages["chunk"]]
    # Not purged, not blocked: the old room is still there, empty of local users.
    old = await ok(server.get(f"{V1}/rooms/{q(room)}", token=users.admin))
    assert old["joined_members"] == 0 and old["forgotten"] is True


async def test_delete_without_purge_keeps_the_room(server, users):
    room = await create_room(server, users.alice, preset="public_chat", room_alias_name="kept")
    await ok(join(server, users.bob, room))
    resp = await ok(server.delete(f"{V2}/rooms/{q(room)}", {"purge": False}, token=users.admin))
    status = await ok(
        server.get(f"{V2}/rooms/delete_status/{resp['delete_id']}", token=users.admin)
    )
    assert status["status"] == "complete" and status["shutdown_room"]["local_aliases"] == []
    details = await ok(server.get(f"{V1}/rooms/{q(room)}", token=users.admin))
    assert details["joined_members"] == 0
    assert_error(
        await server.get(f"{V3}/directory/room/{q('#kept:' + SERVER)}", token=users.bob),
        404,
        "M_NOT_FOUND",
    )
    # Not blocked: a user may come back.
    await ok(join(server, users.bob, room))


async def test_delete_refusals(server, users):
    room = await create_room(server, users.alice)
    path = f"{V2}/rooms/{q(room)}"
    assert_error(await server.delete(path, token=users.admin), 400, "M_NOT_JSON")
    assert_error(await server.delete(path, {"block": "yes"}, token=users.admin), 400, "M_BAD_JSON")
    assert_error(
        await server.delete(path, {"new_room_user_id": "@x:remote.example"}, token=users.admin),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(
        await server.delete(f"{V2}/rooms/{q('!nope:' + SERVER)}", {}, token=users.admin),
        404,
        "M_NOT_FOUND",
    )
    assert_error(
        await server.delete(f"{V2}/rooms/bogus", {}, token=users.admin), 400, "M_INVALID_PARAM"
    )
    assert_error(
        await server.get(f"{V2}/rooms/delete_status/nothing", token=users.admin), 404, "M_NOT_FOUND"
    )
    assert_error(
        await server.get(f"{V2}/rooms/{q(room)}/delete_status", token=users.admin),
        404,
        "M_NOT_FOUND",
    )
    # The room is untouched.
    assert (await ok(server.get(f"{V1}/rooms/{q(room)}", token=users.admin)))["joined_members"] == 1
    # v1 blocks a room this server does not know yet.
    unknown = f"!unknown:{SERVER}"
    resp = await ok(server.delete(f"{V1}/rooms/{q(unknown)}", {"block": True}, token=users.admin))
    assert resp == {
        "kicked_users": [],
        "failed_to_kick_users": [],
        "local_aliases": [],
        "new_room_id": None,
    }
    assert (await ok(server.get(f"{V1}/rooms/{q(unknown)}/block", token=users.admin)))[
        "block"
    ] is True


# -------------------------------------------------------------------- media


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


async def upload(server: TestServer, token: str, data: bytes, name: str = "f.png") -> str:
    resp = await ok(
        server.post(
            "/_matrix/media/v3/upload",
            data=data,
            params={"filename": name},
            headers={"Content-Type": "image/png"},
            token=token,
        )
    )
    return resp["content_uri"].rsplit("/", 1)[1]


async def download(server: TestServer, token: str, media_id: str) -> Response:
    return await server.get(f"/_matrix/client/v1/media/download/{SERVER}/{media_id}", token=token)


async def thumbnail(server: TestServer, token: str, media_id: str) -> Response:
    return await server.get(
        f"/_matrix/client/v1/media/thumbnail/{SERVER}/{media_id}",
        params={"width": "16", "height": "16"},
        token=token,
    )


async def test_list_user_media(server, users):
    ids = [await upload(server, users.alice, png((i * 40, 0, 0)), f"f{i}.png") for i in range(3)]
    await upload(server, users.bob, png((0, 0, 1)))
    body = await ok(server.get(f"{V1}/users/{q(ALICE)}/media", token=users.admin))
    assert body["total"] == 3 and "next_token" not in body
    # Newest first by default (then by media ID).
    assert sorted(m["media_id"] for m in body["media"]) == sorted(ids)
    assert [m["media_id"] for m in body["media"]] == [
        m["media_id"]
        for m in sorted(body["media"], key=lambda m: (-m["created_ts"], m["media_id"]))
    ]
    entry = next(m for m in body["media"] if m["media_id"] == ids[2])
    assert entry == {
        "media_id": ids[2],
        "created_ts": entry["created_ts"],
        "last_access_ts": None,
        "media_length": len(png((80, 0, 0))),
        "media_type": "image/png",
        "upload_name": "f2.png",
        "quarantined_by": None,
        "safe_from_quarantine": False,
    }
    page = await ok(
        server.get(
            f"{V1}/users/{q(ALICE)}/media",
            params={"limit": "2", "order_by": "upload_name"},
            token=users.admin,
        )
    )
    assert [m["upload_name"] for m in page["media"]] == ["f0.png", "f1.png"] and page[
        "next_token"
    ] == 2
    rest = await ok(
        server.get(
            f"{V1}/users/{q(ALICE)}/media",
            params={"from": "2", "order_by": "upload_name"},
            token=users.admin,
        )
    )
    assert [m["upload_name"] for m in rest["media"]] == ["f2.png"] and "next_token" not in rest
    for params in ({"order_by": "nope"}, {"dir": "x"}, {"limit": "-1"}, {"from": "-1"}):
        assert_error(
            await server.get(f"{V1}/users/{q(ALICE)}/media", params=params, token=users.admin),
            400,
            "M_INVALID_PARAM",
        )
    assert_error(
        await server.get(f"{V1}/users/{q('@x:remote.example')}/media", token=users.admin),
        400,
        "M_INVALID_PARAM",
    )
    assert_error(
        await server.get(f"{V1}/users/{q('@ghost:' + SERVER)}/media", token=users.admin),
        404,
        "M_NOT_FOUND",
    )


async def test_quarantine_hides_media_and_its_copies(server, users):
    data = png((10, 200, 10))
    mine = await upload(server, users.alice, data)
    assert (await download(server, users.bob, mine)).status == 200
    assert (await thumbnail(server, users.bob, mine)).status == 200
    await ok(server.post(f"{V1}/media/quarantine/{SERVER}/{mine}", {}, token=users.admin))
    assert_error(await download(server, users.bob, mine), 404, "M_NOT_FOUND")
    assert_error(await thumbnail(server, users.alice, mine), 404, "M_NOT_FOUND")
    # The same bytes uploaded again are quarantined too.
    again = await upload(server, users.bob, data)
    assert_error(await download(server, users.bob, again), 404, "M_NOT_FOUND")
    info = await ok(server.get(f"{V1}/media/{SERVER}/{mine}", token=users.admin))
    assert info["media_info"]["quarantined_by"] == ADMIN and info["media_info"]["media_id"] == mine
    listed = await ok(server.get(f"{V1}/users/{q(ALICE)}/media", token=users.admin))
    assert listed["media"][0]["quarantined_by"] == ADMIN
    # The file stays on disk; releasing makes all of them served again.
    assert server.hs.media.files.path_for(info["media_info"]["sha256"]).is_file()
    await ok(server.post(f"{V1}/media/unquarantine/{SERVER}/{mine}", {}, token=users.admin))
    assert (await download(server, users.bob, mine)).status == 200
    assert (await download(server, users.bob, again)).status == 200
    # Unknown, remote and malformed media.
    assert_error(
        await server.post(f"{V1}/media/quarantine/{SERVER}/nothing", {}, token=users.admin),
        404,
        "M_NOT_FOUND",
    )
    assert_error(
        await server.post(f"{V1}/media/quarantine/remote.example/{mine}", {}, token=users.admin),
        404,
        "M_NOT_FOUND",
    )
    assert_error(
        await server.post(f"{V1}/media/quarantine/bad%20server/{mine}", {}, token=users.admin),
        400,
        "M_INVALID_PARAM",
    )


async def test_delete_media_keeps_shared_files(server, users):
    data = png((1, 2, 3))
    first = await upload(server, users.alice, data)
    second = await upload(server, users.bob, data)
    await thumbnail(server, users.alice, first)
    sha = (await ok(server.get(f"{V1}/media/{SERVER}/{first}", token=users.admin)))["media_info"][
        "sha256"
    ]
    path = server.hs.media.files.path_for(sha)
    thumbs = await server.hs.db.fetchall(
        "thumbs", "SELECT thumbnail_sha256 FROM media_thumbnails WHERE sha256 = ?", (sha,)
    )
    assert thumbs

    resp = await ok(server.delete(f"{V1}/media/{SERVER}/{first}", token=users.admin))
    assert resp == {"deleted_media": [first], "total": 1}
    assert_error(await download(server, users.alice, first), 404, "M_NOT_FOUND")
    # Still used by the second media ID: kept.
    assert path.is_file()
    assert (await download(server, users.bob, second)).status == 200

    resp = await ok(server.delete(f"{V1}/users/{q(BOB)}/media", token=users.admin))
    assert resp == {"deleted_media": [second], "total": 1}
    assert not path.exists()
    for (thumb_sha,) in thumbs:
        assert not server.hs.media.files.path_for(thumb_sha).exists()
    assert (await ok(server.get(f"{V1}/users/{q(BOB)}/media", token=users.admin)))["total"] == 0

    assert_error(
        await server.delete(f"{V1}/media/{SERVER}/{first}", token=users.admin), 404, "M_NOT_FOUND"
    )
    assert_error(
        await server.delete(f"{V1}/media/remote.example/{second}", token=users.admin),
        400,
        "M_INVALID_PARAM",
    )


async def test_delete_user_media_honours_limit(server, users):
    ids = [await upload(server, users.alice, png((i, i, 0))) for i in range(3)]
    listed = await ok(
        server.get(f"{V1}/users/{q(ALICE)}/media", params={"limit": "2"}, token=users.admin)
    )
    first_two = [m["media_id"] for m in listed["media"]]
    resp = await ok(
        server.delete(f"{V1}/users/{q(ALICE)}/media", params={"limit": "2"}, token=users.admin)
    )
    # The same page as listed: newest first.
    assert resp == {"deleted_media": first_two, "total": 2}
    left = await ok(server.get(f"{V1}/users/{q(ALICE)}/media", token=users.admin))
    assert [m["media_id"] for m in left["media"]] == [i for i in ids if i not in first_two]


async def test_purge_media_cache(server, users):
    assert await ok(
        server.post(f"{V1}/purge_media_cache", {}, params={"before_ts": "1"}, token=users.admin)
    ) == {"deleted": 0}
    assert_error(
        await server.post(f"{V1}/purge_media_cache", {}, token=users.admin), 400, "M_MISSING_PARAM"
    )
    assert_error(
        await server.post(
            f"{V1}/purge_media_cache", {}, params={"before_ts": "-3"}, token=users.admin
        ),
        400,
        "M_INVALID_PARAM",
    )
