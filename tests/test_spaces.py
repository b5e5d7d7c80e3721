"""GET /hierarchy over real HTTP on both engines: the walk's order, what each
requester may see, suggested_only, max_depth, pagination, cycles, and refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body.get("errcode")) == (status, errcode), resp.body


async def create_room(server: TestServer, token: str, **body: Any) -> str:
    resp = await server.post(f"{V3}/createRoom", body, token=token)
    assert resp.status == 200, resp.body
    return resp.body["room_id"]


async def add_child(server: TestServer, token: str, parent: str, child: str, **content: Any) -> str:
    content.setdefault("via", ["test.local"])
    resp = await server.put(
        f"{V3}/rooms/{q(parent)}/state/m.space.child/{q(child)}", content, token=token
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def hierarchy(server: TestServer, token: str, room_id: str, **params: Any) -> Response:
    return await server.get(
        f"{V1}/rooms/{q(room_id)}/hierarchy",
        token=token,
        params={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()},
    )


async def room_ids(server: TestServer, token: str, room_id: str, **params: Any) -> list[str]:
    resp = await hierarchy(server, token, room_id, **params)
    assert resp.status == 200, resp.body
    return [room["room_id"] for room in resp.body["rooms"]]


@dataclass
class Tree:
    """
    space (public space)
      a       order "a", suggested, public, topic
      sub     order "b", suggested, public space
        c     order "a", suggested, public
        d     order "b", private (invite only)
        space order "c": a cycle back to the root
      p       order "c", private (invite only)
      r       order "d", restricted to members of `space`
      (x)     a link without `via`: not a child
    """

    alice: str
    bob: str
    space: str
    a: str
    sub: str
    c: str
    d: str
    p: str
    r: str

    def names(self, ids: list[str]) -> list[str]:
        by_id = {getattr(self, n): n for n in ("space", "a", "sub", "c", "d", "p", "r")}
        return [by_id[i] for i in ids]


@pytest.fixture
async def tree(server: TestServer) -> Tree:
    alice = (await server.register_user("alice"))["access_token"]
    bob = (await server.register_user("bob"))["access_token"]
    space = await create_room(
        server, alice, name="Company", preset="public_chat", creation_content={"type": "m.space"}
    )
    a = await create_room(server, alice, name="General", topic="All things", preset="public_chat")
    sub = await create_room(
        server, alice, name="Sales", preset="public_chat", creation_content={"type": "m.space"}
    )
    c = await create_room(server, alice, name="Leads", preset="public_chat")
    d = await create_room(server, alice, name="Secret deals", preset="private_chat")
    p = await create_room(server, alice, name="Board", preset="private_chat")
    r = await create_room(
        server,
        alice,
        name="Staff",
        initial_state=[
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                },
            }
        ],
    )
    x = await create_room(server, alice, name="Gone", preset="public_chat")
    await add_child(server, alice, space, a, order="a", suggested=True)
    await add_child(server, alice, space, sub, order="b", suggested=True)
    await add_child(server, alice, space, p, order="c")
    await add_child(server, alice, space, r, order="d")
    await add_child(server, alice, space, x, via=[])
    await add_child(server, alice, sub, c, order="a", suggested=True)
    await add_child(server, alice, sub, d, order="b")
    await add_child(server, alice, sub, space, order="c")
    return Tree(alice, bob, space, a, sub, c, d, p, r)


# ------------------------------------------------------------------ the walk


async def test_depth_first_in_child_order_and_cycles_are_broken(server, tree):
    ids = await room_ids(server, tree.alice, tree.space)
    assert tree.names(ids) == ["space", "a", "sub", "c", "d", "p", "r"]


async def test_room_summaries_and_children_state(server, tree):
    resp = await hierarchy(server, tree.alice, tree.space)
    assert resp.status == 200, resp.body
    assert "next_batch" not in resp.body
    rooms = {room["room_id"]: room for room in resp.body["rooms"]}

    root = rooms[tree.space]
    assert root["room_type"] == "m.space"
    assert root["name"] == "Company"
    assert root["join_rule"] == "public"
    assert root["num_joined_members"] == 1
    assert root["world_readable"] is False
    assert root["guest_can_join"] is False
    assert root["room_version"] == "12"
    children = root["children_state"]
    assert [c["state_key"] for c in children] == [tree.a, tree.sub, tree.p, tree.r]
    first = children[0]
    assert set(first) == {"type", "state_key", "content", "sender", "origin_server_ts"}
    assert first["type"] == "m.space.child"
    assert first["sender"] == "@alice:test.local"
    assert first["content"] == {"via": ["test.local"], "order": "a", "suggested": True}
    assert isinstance(first["origin_server_ts"], int)

    general = rooms[tree.a]
    assert general["name"] == "General"
    assert general["topic"] == "All things"
    assert general["children_state"] == []
    assert "room_type" not in general

    assert rooms[tree.r]["join_rule"] == "restricted"
    assert rooms[tree.r]["allowed_room_ids"] == [tree.space]
    assert rooms[tree.p]["join_rule"] == "invite"


async def test_summary_follows_state_changes(server, tree):
    await server.put(
        f"{V3}/rooms/{q(tree.a)}/state/m.room.history_visibility/",
        {"history_visibility": "world_readable"},
        token=tree.alice,
    )
    await server.put(
        f"{V3}/rooms/{q(tree.a)}/state/m.room.avatar/",
        {"url": "mxc://test.local/abc"},
        token=tree.alice,
    )
    await server.put(
        f"{V3}/rooms/{q(tree.a)}/state/m.room.encryption/",
        {"algorithm": "m.megolm.v1.aes-sha2"},
        token=tree.alice,
    )
    resp = await server.post(f"{V3}/rooms/{q(tree.a)}/join", {}, token=tree.bob)
    assert resp.status == 200, resp.body
    resp = await hierarchy(server, tree.alice, tree.space, max_depth=1)
    general = next(r for r in resp.body["rooms"] if r["room_id"] == tree.a)
    assert general["world_readable"] is True
    assert general["avatar_url"] == "mxc://test.local/abc"
    assert general["encryption"] == "m.megolm.v1.aes-sha2"
    assert general["num_joined_members"] == 2


async def test_redacted_link_is_no_child(server, tree):
    ids = await room_ids(server, tree.alice, tree.space)
    assert tree.p in ids
    state = await server.get(
        f"{V3}/rooms/{q(tree.space)}/state/m.space.child/{q(tree.p)}",
        token=tree.alice,
        params={"format": "event"},
    )
    resp = await server.put(
        f"{V3}/rooms/{q(tree.space)}/redact/{q(state.body['event_id'])}/txn1", {}, token=tree.alice
    )
    assert resp.status == 200, resp.body
    ids = await room_ids(server, tree.alice, tree.space)
    assert tree.names(ids) == ["space", "a", "sub", "c", "d", "r"]


# ------------------------------------------------------------- who sees what


async def test_outsider_sees_only_rooms_they_may_join_or_read(server, tree):
    ids = await room_ids(server, tree.bob, tree.space)
    # p and d are invite-only; r needs membership of the space.
    assert tree.names(ids) == ["space", "a", "sub", "c"]

    resp = await server.post(f"{V3}/rooms/{q(tree.space)}/join", {}, token=tree.bob)
    assert resp.status == 200, resp.body
    ids = await room_ids(server, tree.bob, tree.space)
    assert tree.names(ids) == ["space", "a", "sub", "c", "r"]


async def test_invited_and_world_readable_rooms_are_visible(server, tree):
    resp = await server.post(
        f"{V3}/rooms/{q(tree.p)}/invite", {"user_id": "@bob:test.local"}, token=tree.alice
    )
    assert resp.status == 200, resp.body
    resp = await server.put(
        f"{V3}/rooms/{q(tree.d)}/state/m.room.history_visibility/",
        {"history_visibility": "world_readable"},
        token=tree.alice,
    )
    assert resp.status == 200, resp.body
    ids = await room_ids(server, tree.bob, tree.space)
    assert tree.names(ids) == ["space", "a", "sub", "c", "d", "p"]


async def test_banned_user_does_not_see_a_public_room(server, tree):
    await server.post(f"{V3}/rooms/{q(tree.a)}/join", {}, token=tree.bob)
    resp = await server.post(
        f"{V3}/rooms/{q(tree.a)}/ban", {"user_id": "@bob:test.local"}, token=tree.alice
    )
    assert resp.status == 200, resp.body
    ids = await room_ids(server, tree.bob, tree.space)
    assert tree.names(ids) == ["space", "sub", "c"]


async def test_private_root_is_forbidden_to_outsiders(server, tree):
    assert_error(await hierarchy(server, tree.bob, tree.p), 403, "M_FORBIDDEN")
    # The private room is no space: its members see it alone.
    assert await room_ids(server, tree.alice, tree.p) == [tree.p]


async def test_unknown_root_is_forbidden(server, tree):
    assert_error(await hierarchy(server, tree.alice, "!nowhere:test.local"), 403, "M_FORBIDDEN")


# ----------------------------------------------- suggested_only and max_depth


async def test_suggested_only(server, tree):
    ids = await room_ids(server, tree.alice, tree.space, suggested_only=True)
    assert tree.names(ids) == ["space", "a", "sub", "c"]
    resp = await hierarchy(server, tree.alice, tree.space, suggested_only=True)
    root = resp.body["rooms"][0]
    assert [c["state_key"] for c in root["children_state"]] == [tree.a, tree.sub]


@pytest.mark.parametrize(
    ("max_depth", "expected"),
    [
        (0, ["space"]),
        (1, ["space", "a", "sub", "p", "r"]),
        (2, ["space", "a", "sub", "c", "d", "p", "r"]),
    ],
)
async def test_max_depth(server, tree, max_depth, expected):
    resp = await hierarchy(server, tree.alice, tree.space, max_depth=max_depth)
    assert resp.status == 200, resp.body
    assert tree.names([r["room_id"] for r in resp.body["rooms"]]) == expected
    # Children are described even where the walk stops.
    assert len(resp.body["rooms"][0]["children_state"]) == 4


# ----------------------------------------------------------------- pagination


async def test_paginate_one_room_at_a_time(server, tree):
    seen: list[str] = []
    token = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1}
        if token is not None:
            params["from"] = token
        resp = await hierarchy(server, tree.alice, tree.space, **params)
        assert resp.status == 200, resp.body
        assert len(resp.body["rooms"]) <= 1
        seen += [r["room_id"] for r in resp.body["rooms"]]
        token = resp.body.get("next_batch")
        if token is None:
            break
    assert tree.names(seen) == ["space", "a", "sub", "c", "d", "p", "r"]


async def test_paginate_with_filters(server, tree):
    first = await hierarchy(server, tree.bob, tree.space, limit=2, max_depth=1)
    assert tree.names([r["room_id"] for r in first.body["rooms"]]) == ["space", "a"]
    token = first.body["next_batch"]
    rest = await hierarchy(server, tree.bob, tree.space, limit=2, max_depth=1, **{"from": token})
    assert tree.names([r["room_id"] for r in rest.body["rooms"]]) == ["sub"]
    assert "next_batch" not in rest.body
    # The same token can be used again (a retried request).
    again = await hierarchy(server, tree.bob, tree.space, limit=2, max_depth=1, **{"from": token})
    assert again.body == rest.body


async def test_pagination_parameters_cannot_change(server, tree):
    first = await hierarchy(server, tree.alice, tree.space, limit=1)
    token = first.body["next_batch"]
    for params in ({"max_depth": 1}, {"suggested_only": True}):
        resp = await hierarchy(server, tree.alice, tree.space, **{"from": token}, **params)
        assert_error(resp, 400, "M_INVALID_PARAM")
    # Another user, or another root, cannot continue it either.
    assert_error(
        await hierarchy(server, tree.bob, tree.space, **{"from": token}), 400, "M_INVALID_PARAM"
    )
    assert_error(
        await hierarchy(server, tree.alice, tree.sub, **{"from": token}), 400, "M_INVALID_PARAM"
    )


async def test_unknown_token(server, tree):
    resp = await hierarchy(server, tree.alice, tree.space, **{"from": "nonsense"})
    assert_error(resp, 400, "M_INVALID_PARAM")


# ------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": -3},
        {"limit": "many"},
        {"max_depth": -1},
        {"max_depth": "deep"},
        {"suggested_only": "yes"},
    ],
)
async def test_bad_parameters(server, tree, params):
    assert_error(await hierarchy(server, tree.alice, tree.space, **params), 400, "M_INVALID_PARAM")


async def test_bad_room_id_and_missing_token(server, tree):
    assert_error(await hierarchy(server, tree.alice, "not-a-room"), 400, "M_INVALID_PARAM")
    resp = await server.get(f"{V1}/rooms/{q(tree.space)}/hierarchy")
    assert_error(resp, 401, "M_MISSING_TOKEN")


async def test_limit_is_capped(server, tree):
    resp = await hierarchy(server, tree.alice, tree.space, limit=10_000)
    assert resp.status == 200
    assert len(resp.body["rooms"]) == 7


async def test_expired_token(server, tree):
    first = await hierarchy(server, tree.alice, tree.space, limit=1)
    await server.hs.db.execute("expire", "UPDATE hierarchy_sessions SET created_ts = 0")
    resp = await hierarchy(
        server, tree.alice, tree.space, limit=1, **{"from": first.body["next_batch"]}
    )
    assert_error(resp, 400, "M_INVALID_PARAM")
