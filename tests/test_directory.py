"""Room aliases, the room directory and /publicRooms, over real HTTP on both engines."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import TestServer
from .test_rooms_api import assert_error, create_room, put_state, q, users

V3 = "/_matrix/client/v3"


def alias_path(alias: str) -> str:
    return f"{V3}/directory/room/{q(alias)}"


async def put_alias(server: TestServer, token: str, alias: str, room_id: str) -> Any:
    return await server.put(alias_path(alias), {"room_id": room_id}, token=token)


async def admin_token(server: TestServer) -> str:
    return (await server.register_user("root", admin=True))["access_token"]


async def join(server: TestServer, token: str, room_id_or_alias: str) -> str:
    resp = await server.post(f"{V3}/join/{q(room_id_or_alias)}", {}, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def room_count(server: TestServer) -> int:
    return await server.hs.storage.db.fetchval("test", "SELECT COUNT(*) FROM rooms")


# ------------------------------------------------------------------ aliases


async def test_alias_create_resolve_and_delete(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat")
    await join(server, bob, room_id)

    resp = await put_alias(server, alice, "#lobby:test.local", room_id)
    assert resp.status == 200 and resp.body == {}
    resp = await server.get(alias_path("#lobby:test.local"))  # no token needed
    assert resp.status == 200
    assert resp.body == {"room_id": room_id, "servers": ["test.local"]}
    # r0 too, and a raw (unencoded) `#` would be a URL fragment, so it is always %23.
    assert (await server.get("/_matrix/client/r0/directory/room/%23lobby:test.local")).status == 200

    # Taken, whichever room it is asked for.
    other = await create_room(server, bob)
    assert_error(await put_alias(server, bob, "#lobby:test.local", other), 409, "M_UNKNOWN")
    assert_error(await put_alias(server, alice, "#lobby:test.local", room_id), 409, "M_UNKNOWN")

    assert (await put_alias(server, bob, "#second:test.local", room_id)).status == 200
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/aliases", token=bob)
    assert resp.status == 200
    assert sorted(resp.body["aliases"]) == ["#lobby:test.local", "#second:test.local"]

    resp = await server.delete(alias_path("#lobby:test.local"), token=alice)
    assert resp.status == 200 and resp.body == {}
    assert_error(await server.get(alias_path("#lobby:test.local")), 404, "M_NOT_FOUND")
    assert_error(await server.delete(alias_path("#lobby:test.local"), token=alice), 404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/aliases", token=bob)
    assert resp.body == {"aliases": ["#second:test.local"]}
    # Free again: it can now point at another room.
    assert (await put_alias(server, bob, "#lobby:test.local", other)).status == 200
    assert (await server.get(alias_path("#lobby:test.local"))).body["room_id"] == other


async def test_alias_with_unicode_and_slash(server):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    for alias in ("#café ☕:test.local", "#a/b:test.local", "#x:test.local:8448"):
        expected = 200 if alias.endswith(":test.local") else 400
        assert (await put_alias(server, alice, alias, room_id)).status == expected, alias
    assert (await server.get(alias_path("#café ☕:test.local"))).body["room_id"] == room_id
    assert (await server.get(alias_path("#a/b:test.local"))).body["room_id"] == room_id


@pytest.mark.parametrize(
    "alias",
    [
        "lobby:test.local",  # no sigil
        "#lobby",  # no server
        "#:test.local",  # empty localpart
        "#lobby:bad_server!",  # not a server name
        "#" + "a" * 250 + ":test.local",  # over 255 bytes
        "#lobby:other.example",  # not ours
        "@lobby:test.local",
    ],
)
async def test_alias_malformed_or_remote_is_refused(server, alias):
    (alice,) = await users(server, "alice")
    room_id = await create_room(server, alice)
    assert_error(await put_alias(server, alice, alias, room_id), 400, "M_INVALID_PARAM")
    assert_error(await server.delete(alias_path(alias), token=alice), 400, "M_INVALID_PARAM")
    resp = await server.get(alias_path(alias))
    if alias == "#lobby:other.example":  # well-formed but remote: not resolvable without federation
        assert_error(resp, 404, "M_NOT_FOUND")
    else:
        assert_error(resp, 400, "M_INVALID_PARAM")


async def test_alias_put_refusals(server):
    alice, bob, guest_free = await users(server, "alice", "bob", "carol")
    root = await admin_token(server)
    room_id = await create_room(server, alice, invite=["@bob:test.local"])
    path = alias_path("#a:test.local")
    assert_error(await server.put(path, {"room_id": room_id}), 401, "M_MISSING_TOKEN")
    assert_error(await server.put(path, {}, token=alice), 400, "M_MISSING_PARAM")
    assert_error(await server.put(path, {"room_id": 5}, token=alice), 400, "M_BAD_JSON")
    assert_error(await server.put(path, data="nope", token=alice), 400, "M_NOT_JSON")
    assert_error(await server.put(path, {"room_id": "abc"}, token=alice), 400, "M_INVALID_PARAM")
    assert_error(await server.put(path, {"room_id": "!nope:test.local"}, token=alice), 404, "M_NOT_FOUND")
    # Only joined members: not invited (bob), not strangers (carol).
    assert_error(await put_alias(server, bob, "#a:test.local", room_id), 403, "M_FORBIDDEN")
    assert_error(await put_alias(server, guest_free, "#a:test.local", room_id), 403, "M_FORBIDDEN")
    assert_error(await server.get(path), 404, "M_NOT_FOUND")
    # Server admins need no membership.
    assert (await put_alias(server, root, "#a:test.local", room_id)).status == 200


async def test_alias_delete_permissions(server):
    alice, bob, carol, dave = await users(server, "alice", "bob", "carol", "dave")
    root = await admin_token(server)
    room_id = await create_room(server, alice, preset="public_chat")
    for token in (bob, carol):
        await join(server, token, room_id)
    for name in ("one", "two", "three", "four"):
        assert (await put_alias(server, bob, f"#{name}:test.local", room_id)).status == 200

    # carol (level 0) did not create it and cannot change the canonical alias (level 50).
    assert_error(await server.delete(alias_path("#one:test.local"), token=carol), 403, "M_FORBIDDEN")
    # dave is not in the room.
    assert_error(await server.delete(alias_path("#one:test.local"), token=dave), 403, "M_FORBIDDEN")
    assert_error(await server.delete(alias_path("#one:test.local")), 401, "M_MISSING_TOKEN")
    # The creator of the alias may, even after leaving the room.
    assert (await server.post(f"{V3}/rooms/{q(room_id)}/leave", {}, token=bob)).status == 200
    assert (await server.delete(alias_path("#one:test.local"), token=bob)).status == 200
    # A member with the power to change the canonical alias may.
    assert (await server.delete(alias_path("#two:test.local"), token=alice)).status == 200
    # So may carol once given that power.
    levels = (await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.power_levels", token=alice)).body
    levels["users"]["@carol:test.local"] = 50
    assert (await put_state(server, alice, room_id, "m.room.power_levels", levels)).status == 200
    assert (await server.delete(alias_path("#three:test.local"), token=carol)).status == 200
    # And a server admin, in the room or not.
    assert (await server.delete(alias_path("#four:test.local"), token=root)).status == 200
    assert (await server.get(f"{V3}/rooms/{q(room_id)}/aliases", token=alice)).body == {"aliases": []}


async def test_local_aliases_permissions(server):
    alice, bob = await users(server, "alice", "bob")
    root = await admin_token(server)
    room_id = await create_room(server, alice)
    assert (await put_alias(server, alice, "#priv:test.local", room_id)).status == 200
    path = f"{V3}/rooms/{q(room_id)}/aliases"
    assert (await server.get(path, token=alice)).body == {"aliases": ["#priv:test.local"]}
    assert_error(await server.get(path, token=bob), 403, "M_FORBIDDEN")
    assert_error(await server.get(path), 401, "M_MISSING_TOKEN")
    assert (await server.get(path, token=root)).body == {"aliases": ["#priv:test.local"]}
    assert_error(await server.get(f"{V3}/rooms/nope/aliases", token=alice), 400, "M_INVALID_PARAM")
    assert_error(await server.get(f"{V3}/rooms/{q('!nope:test.local')}/aliases", token=bob), 403, "M_FORBIDDEN")
    assert_error(await server.get(f"{V3}/rooms/{q('!nope:test.local')}/aliases", token=root), 404, "M_NOT_FOUND")
    # World-readable rooms show their aliases to anyone.
    world_readable = {"history_visibility": "world_readable"}
    resp = await put_state(server, alice, room_id, "m.room.history_visibility", world_readable)
    assert resp.status == 200
    assert (await server.get(path, token=bob)).body == {"aliases": ["#priv:test.local"]}


# --------------------------------------------------------------- createRoom


async def test_create_room_with_alias_name(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat", room_alias_name="town-square")
    alias = "#town-square:test.local"
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.canonical_alias", token=alice)
    assert resp.body == {"alias": alias}
    assert (await server.get(alias_path(alias))).body["room_id"] == room_id
    assert (await server.get(f"{V3}/rooms/{q(room_id)}/aliases", token=alice)).body == {"aliases": [alias]}

    # Taken: 400 M_ROOM_IN_USE, and no room is created.
    before = await room_count(server)
    resp = await server.post(f"{V3}/createRoom", {"room_alias_name": "town-square"}, token=bob)
    assert_error(resp, 400, "M_ROOM_IN_USE")
    assert await room_count(server) == before

    # Joining by alias.
    assert await join(server, bob, alias) == room_id
    assert (await server.get(f"{V3}/joined_rooms", token=bob)).body == {"joined_rooms": [room_id]}


async def test_create_room_alias_name_refusals(server):
    (alice,) = await users(server, "alice")
    before = await room_count(server)
    for body, status, errcode in [
        ({"room_alias_name": "a:test.local"}, 400, "M_INVALID_PARAM"),
        ({"room_alias_name": "two words"}, 400, "M_INVALID_PARAM"),
        ({"room_alias_name": ""}, 400, "M_INVALID_PARAM"),
        ({"room_alias_name": "x" * 250}, 400, "M_INVALID_PARAM"),
        ({"room_alias_name": 5}, 400, "M_BAD_JSON"),
        # The room itself is invalid: the alias is released again.
        ({"room_alias_name": "kept", "preset": "nope"}, 400, "M_INVALID_PARAM"),
        ({"room_alias_name": "kept", "room_version": "1"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
    ]:
        assert_error(await server.post(f"{V3}/createRoom", body, token=alice), status, errcode)
    assert await room_count(server) == before
    assert await server.hs.storage.db.fetchval("test", "SELECT COUNT(*) FROM room_aliases") == 0
    room_id = await create_room(server, alice, room_alias_name="kept")
    assert (await server.get(alias_path("#kept:test.local"))).body["room_id"] == room_id


async def test_stale_alias_reservation_expires(server):
    """A reservation a crash left behind (room_id NULL) stops holding the alias after a while."""
    (alice,) = await users(server, "alice")
    store = server.hs.storage.directory
    assert await store.reserve_alias("#held:test.local", "@alice:test.local", 1000, 0)
    # Not resolvable while held, and not free for PUT either.
    assert_error(await server.get(alias_path("#held:test.local")), 404, "M_NOT_FOUND")
    resp = await server.post(f"{V3}/createRoom", {"room_alias_name": "held"}, token=alice)
    assert resp.status == 200  # the reservation (from ts 1000) has expired
    assert (await server.get(alias_path("#held:test.local"))).body["room_id"] == resp.body["room_id"]


async def test_join_and_knock_by_alias(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await create_room(server, alice, preset="public_chat", room_alias_name="pub")
    resp = await server.post(f"{V3}/join/%23pub%3Atest.local", {}, token=bob)
    assert resp.status == 200 and resp.body == {"room_id": room_id}
    assert_error(await server.post(f"{V3}/join/{q('#missing:test.local')}", {}, token=bob), 404, "M_NOT_FOUND")
    assert_error(await server.post(f"{V3}/join/{q('#bad')}", {}, token=bob), 400, "M_INVALID_PARAM")
    assert_error(await server.post(f"{V3}/join/{q('#x:other.example')}", {}, token=bob), 404, "M_NOT_FOUND")

    knock_room = await create_room(
        server, alice, initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    )
    assert (await put_alias(server, alice, "#knock:test.local", knock_room)).status == 200
    resp = await server.post(f"{V3}/knock/{q('#knock:test.local')}", {}, token=carol)
    assert resp.status == 200 and resp.body == {"room_id": knock_room}


# ------------------------------------------------------ m.room.canonical_alias


async def test_canonical_alias_must_point_to_the_room(server):
    alice, bob = await users(server, "alice", "bob")
    room_a = await create_room(server, alice, room_alias_name="a")
    room_b = await create_room(server, bob, room_alias_name="b")
    assert (await put_alias(server, alice, "#a2:test.local", room_a)).status == 200

    async def set_canonical(content: Any) -> Any:
        return await put_state(server, alice, room_a, "m.room.canonical_alias", content)

    assert_error(await set_canonical({"alias": "#b:test.local"}), 400, "M_BAD_ALIAS")
    assert_error(await set_canonical({"alias": "#unknown:test.local"}), 400, "M_BAD_ALIAS")
    assert_error(await set_canonical({"alias": "#a:test.local", "alt_aliases": ["#b:test.local"]}), 400, "M_BAD_ALIAS")
    assert_error(await set_canonical({"alias": "not-an-alias"}), 400, "M_INVALID_PARAM")
    assert_error(await set_canonical({"alias": 5}), 400, "M_INVALID_PARAM")
    assert_error(await set_canonical({"alt_aliases": "#a:test.local"}), 400, "M_INVALID_PARAM")
    assert_error(await set_canonical({"alt_aliases": [None]}), 400, "M_INVALID_PARAM")
    assert_error(await set_canonical({"alt_aliases": ["#:test.local"]}), 400, "M_INVALID_PARAM")

    # Local aliases of this room pass; remote ones cannot be checked without federation.
    content = {"alias": "#a:test.local", "alt_aliases": ["#a2:test.local", "#far:remote.example"]}
    assert (await set_canonical(content)).status == 200
    assert (await set_canonical({})).status == 200  # no canonical alias at all
    assert (await set_canonical({"alias": ""})).status == 200
    assert (await set_canonical(content)).status == 200
    # The non-state /send path and other state keys are not canonical aliases.
    resp = await server.put(
        f"{V3}/rooms/{q(room_a)}/send/m.room.canonical_alias/t1", {"alias": "#b:test.local"}, token=alice
    )
    assert resp.status == 200

    # Deleting an alias takes it out of the event.
    assert (await server.delete(alias_path("#a2:test.local"), token=alice)).status == 200
    resp = await server.get(f"{V3}/rooms/{q(room_a)}/state/m.room.canonical_alias", token=alice)
    assert resp.body == {"alias": "#a:test.local", "alt_aliases": ["#far:remote.example"]}
    assert (await server.delete(alias_path("#a:test.local"), token=alice)).status == 200
    resp = await server.get(f"{V3}/rooms/{q(room_a)}/state/m.room.canonical_alias", token=alice)
    assert resp.body == {"alt_aliases": ["#far:remote.example"]}
    # Aliases already in the event are not checked again when it changes.
    await server.hs.storage.directory.delete_alias("#b:test.local", room_b)
    resp = await put_state(server, bob, room_b, "m.room.canonical_alias", {"alias": "#b:test.local", "alt_aliases": []})
    assert resp.status == 200


async def test_alias_deletion_stands_when_canonical_alias_cannot_change(server):
    alice, bob = await users(server, "alice", "bob")
    room_id = await create_room(server, alice, preset="public_chat", room_alias_name="main")
    await join(server, bob, room_id)
    assert (await put_alias(server, bob, "#bobs:test.local", room_id)).status == 200
    content = {"alias": "#main:test.local", "alt_aliases": ["#bobs:test.local"]}
    assert (await put_state(server, alice, room_id, "m.room.canonical_alias", content)).status == 200
    # bob created the alias, so may delete it, but may not send m.room.canonical_alias.
    assert (await server.delete(alias_path("#bobs:test.local"), token=bob)).status == 200
    assert_error(await server.get(alias_path("#bobs:test.local")), 404, "M_NOT_FOUND")
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/state/m.room.canonical_alias", token=alice)
    assert resp.body == content


# ---------------------------------------------------- directory visibility


async def test_directory_visibility(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    root = await admin_token(server)
    private = await create_room(server, alice)
    public = await create_room(server, alice, visibility="public")
    await join(server, bob, public)

    def path(room_id: str) -> str:
        return f"{V3}/directory/list/room/{q(room_id)}"

    assert (await server.get(path(private))).body == {"visibility": "private"}
    assert (await server.get(path(public))).body == {"visibility": "public"}
    assert_error(await server.get(path("!nope:test.local")), 404, "M_NOT_FOUND")
    assert_error(await server.get(path("nope")), 400, "M_INVALID_PARAM")

    # bob is joined but at level 0; carol is not in the room.
    assert_error(await server.put(path(public), {"visibility": "private"}, token=bob), 403, "M_FORBIDDEN")
    assert_error(await server.put(path(public), {"visibility": "private"}, token=carol), 403, "M_FORBIDDEN")
    assert_error(await server.put(path(public), {"visibility": "private"}), 401, "M_MISSING_TOKEN")
    assert_error(await server.put(path(public), {"visibility": "secret"}, token=alice), 400, "M_INVALID_PARAM")
    assert_error(await server.put(path(public), {"visibility": 1}, token=alice), 400, "M_BAD_JSON")
    assert_error(await server.put(path("!nope:test.local"), {"visibility": "public"}, token=alice), 404, "M_NOT_FOUND")
    assert (await server.get(path(public))).body == {"visibility": "public"}

    assert (await server.put(path(public), {"visibility": "private"}, token=alice)).status == 200
    assert (await server.get(path(public))).body == {"visibility": "private"}
    # Visibility defaults to public; admins need no membership.
    assert (await server.put(path(private), {}, token=root)).status == 200
    assert (await server.get(path(private))).body == {"visibility": "public"}


# --------------------------------------------------------------- publicRooms


async def _directory_fixture(server: TestServer) -> dict[str, str]:
    """Published rooms with 4, 3, 2, 1 and 1 joined members, and some that are not listed."""
    tokens = await users(server, "alice", "bob", "carol", "dave")
    alice = tokens[0]
    rooms = {
        "big": await create_room(
            server, alice, visibility="public", name="Big Hall", topic="Everyone is here",
            room_alias_name="big",
        ),
        "mid": await create_room(server, alice, visibility="public", name="Middle", topic="Coffee talk"),
        "small": await create_room(server, alice, visibility="public", name="Small"),
        "space": await create_room(
            server, alice, visibility="public", name="Company space", creation_content={"type": "m.space"}
        ),
        "readable": await create_room(
            server, alice, visibility="public", preset="private_chat", name="Read only",
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
                {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
                {"type": "m.room.avatar", "content": {"url": "mxc://test.local/avatar"}},
            ],
        ),
        # Published but invite-only and not world-readable: not listed.
        "hidden": await create_room(server, alice, visibility="public", preset="private_chat", name="Hidden"),
        # Not published.
        "private": await create_room(server, alice, preset="public_chat", name="Private"),
    }
    for token in tokens[1:]:
        await join(server, token, rooms["big"])
    for token in tokens[1:3]:
        await join(server, token, rooms["mid"])
    await join(server, tokens[1], rooms["small"])
    return {"token": alice, **rooms}


async def test_public_rooms_listing(server):
    f = await _directory_fixture(server)
    token = f["token"]
    resp = await server.get(f"{V3}/publicRooms", token=token)
    assert resp.status == 200
    chunk = resp.body["chunk"]
    assert [e["room_id"] for e in chunk[:3]] == [f["big"], f["mid"], f["small"]]
    assert {e["room_id"] for e in chunk[3:]} == {f["space"], f["readable"]}
    assert resp.body["total_room_count_estimate"] == 5
    assert "next_batch" not in resp.body and "prev_batch" not in resp.body
    by_id = {e["room_id"]: e for e in chunk}
    assert by_id[f["big"]] == {
        "room_id": f["big"],
        "name": "Big Hall",
        "topic": "Everyone is here",
        "canonical_alias": "#big:test.local",
        "num_joined_members": 4,
        "world_readable": False,
        "guest_can_join": False,
        "join_rule": "public",
    }
    assert by_id[f["space"]]["room_type"] == "m.space"
    assert by_id[f["readable"]] == {
        "room_id": f["readable"],
        "name": "Read only",
        "num_joined_members": 1,
        "world_readable": True,
        "guest_can_join": True,
        "join_rule": "invite",
        "avatar_url": "mxc://test.local/avatar",
    }
    # POST with an empty body is the same list; r0 and the server's own name work too.
    assert (await server.post(f"{V3}/publicRooms", {}, token=token)).body == resp.body
    resp = await server.get("/_matrix/client/r0/publicRooms", token=token, params={"server": "test.local"})
    assert resp.status == 200 and len(resp.body["chunk"]) == 5

    # Unpublishing removes a room; publishing an invite-only room does not list it.
    await server.put(f"{V3}/directory/list/room/{q(f['small'])}", {"visibility": "private"}, token=token)
    await server.put(f"{V3}/directory/list/room/{q(f['private'])}", {"visibility": "public"}, token=token)
    ids = [e["room_id"] for e in (await server.get(f"{V3}/publicRooms", token=token)).body["chunk"]]
    assert f["small"] not in ids and f["private"] in ids and f["hidden"] not in ids


async def test_public_rooms_pagination(server):
    f = await _directory_fixture(server)
    token = f["token"]
    everything = [e["room_id"] for e in (await server.get(f"{V3}/publicRooms", token=token)).body["chunk"]]

    # Forward with GET, two at a time.
    seen: list[str] = []
    pages = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        body = (await server.get(f"{V3}/publicRooms", token=token, params=params)).body
        pages.append(body)
        seen += [e["room_id"] for e in body["chunk"]]
        assert body["total_room_count_estimate"] == 5
        if "next_batch" not in body:
            break
        params = {"limit": "2", "since": body["next_batch"]}
    assert seen == everything
    assert [len(p["chunk"]) for p in pages] == [2, 2, 1]
    assert "prev_batch" not in pages[0] and "prev_batch" in pages[1] and "prev_batch" in pages[2]

    # Backward with POST from the last page.
    body = (await server.post(f"{V3}/publicRooms", {"limit": 2, "since": pages[2]["prev_batch"]}, token=token)).body
    assert [e["room_id"] for e in body["chunk"]] == everything[2:4]
    body = (await server.post(f"{V3}/publicRooms", {"limit": 2, "since": body["prev_batch"]}, token=token)).body
    assert [e["room_id"] for e in body["chunk"]] == everything[:2]
    assert "prev_batch" not in body and "next_batch" in body

    # A room gaining members between pages does not make the next page repeat or skip others.
    first = (await server.get(f"{V3}/publicRooms", token=token, params={"limit": "1"})).body
    assert first["chunk"][0]["room_id"] == f["big"]
    params = {"limit": "1", "since": first["next_batch"]}
    body = (await server.get(f"{V3}/publicRooms", token=token, params=params)).body
    assert body["chunk"][0]["room_id"] == f["mid"]


async def test_public_rooms_filter(server):
    f = await _directory_fixture(server)
    token = f["token"]

    async def search(**body: Any) -> list[str]:
        resp = await server.post(f"{V3}/publicRooms", body, token=token)
        assert resp.status == 200, resp.body
        return [e["room_id"] for e in resp.body["chunk"]]

    assert await search(filter={"generic_search_term": "hall"}) == [f["big"]]  # name, any case
    assert await search(filter={"generic_search_term": "COFFEE"}) == [f["mid"]]  # topic
    assert await search(filter={"generic_search_term": "#big:test"}) == [f["big"]]  # alias
    assert await search(filter={"generic_search_term": "nothing like it"}) == []
    assert await search(filter={"generic_search_term": ""}) != []
    assert await search(filter={"room_types": ["m.space"]}) == [f["space"]]
    assert f["space"] not in await search(filter={"room_types": [None]})
    assert len(await search(filter={"room_types": [None, "m.space"]})) == 5
    resp = await server.post(f"{V3}/publicRooms", {"filter": {"generic_search_term": "O"}, "limit": 1}, token=token)
    assert resp.body["total_room_count_estimate"] == 4 and "next_batch" in resp.body
    # Bridged networks: all networks is everything; a specific one has no rooms here.
    assert len(await search(include_all_networks=True)) == 5
    assert await search(third_party_instance_id="irc") == []


async def test_public_rooms_refusals(server):
    (token,) = await users(server, "alice")
    path = f"{V3}/publicRooms"
    assert_error(await server.get(path), 401, "M_MISSING_TOKEN")
    assert_error(await server.post(path, {}), 401, "M_MISSING_TOKEN")
    assert_error(await server.get(path, token=token, params={"server": "other.example"}), 403, "M_FORBIDDEN")
    assert_error(await server.post(f"{path}?server=other.example", {}, token=token), 403, "M_FORBIDDEN")
    assert_error(await server.get(path, token=token, params={"server": "bad server!"}), 400, "M_INVALID_PARAM")
    assert_error(await server.get(path, token=token, params={"since": "garbage"}), 400, "M_INVALID_PARAM")
    assert_error(await server.get(path, token=token, params={"limit": "x"}), 400, "M_INVALID_PARAM")
    assert_error(await server.get(path, token=token, params={"limit": "-1"}), 400, "M_INVALID_PARAM")
    assert_error(await server.get(path, token=token, params={"include_all_networks": "yes"}), 400, "M_INVALID_PARAM")
    for body, errcode in [
        ({"limit": "2"}, "M_BAD_JSON"),
        ({"limit": True}, "M_BAD_JSON"),
        ({"limit": -5}, "M_INVALID_PARAM"),
        ({"since": 5}, "M_BAD_JSON"),
        ({"since": "!!!"}, "M_INVALID_PARAM"),
        ({"filter": []}, "M_BAD_JSON"),
        ({"filter": {"generic_search_term": 5}}, "M_BAD_JSON"),
        ({"filter": {"room_types": "m.space"}}, "M_BAD_JSON"),
        ({"filter": {"room_types": [5]}}, "M_BAD_JSON"),
        ({"include_all_networks": "yes"}, "M_BAD_JSON"),
        ({"include_all_networks": True, "third_party_instance_id": "irc"}, "M_INVALID_PARAM"),
    ]:
        assert_error(await server.post(path, body, token=token), 400, errcode)
