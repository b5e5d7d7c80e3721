"""Relations over real HTTP on both engines: threads, edits, references and
reactions; bundled aggregations in `unsigned["m.relations"]`; `/relations`
pagination, recursion and visibility; `/threads`; every refusal the spec names.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from storage.migrations import SCHEMA_DIR

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
BOB = "@bob:test.local"

_txn_ids = itertools.count()


# ---------------------------------------------------------------- helpers


def q(identifier: str) -> str:
    return quote(identifier, safe="")


async def room_with(server: TestServer, *names: str, **create: Any) -> tuple[str, list[str]]:
    """A room created by the first user and joined by the others; returns (room ID, tokens)."""
    tokens = [(await server.register_user(name))["access_token"] for name in names]
    resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat", **create}, token=tokens[0])
    assert resp.status == 200, resp.body
    room_id = resp.body["room_id"]
    for token in tokens[1:]:
        await join(server, token, room_id)
    return room_id, tokens


async def join(server: TestServer, token: str, room_id: str) -> None:
    resp = await server.post(f"{V3}/join/{q(room_id)}", {}, token=token)
    assert resp.status == 200, resp.body


async def send(
    server: TestServer,
    token: str,
    room_id: str,
    body: str = "hi",
    *,
    relates_to: dict[str, Any] | None = None,
    event_type: str = "m.room.message",
    **content: Any,
) -> str:
    content = {"msgtype": "m.text", "body": body, **content}
    if relates_to is not None:
        content["m.relates_to"] = relates_to
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/t{next(_txn_ids)}", content, token=token
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def reply(server: TestServer, token: str, room_id: str, root: str, body: str = "re") -> str:
    return await send(server, token, room_id, body, relates_to={"rel_type": "m.thread", "event_id": root})


async def edit(
    server: TestServer, token: str, room_id: str, original: str, body: str, **extra: Any
) -> str:
    # Distinct origin_server_ts, so "most recent" is unambiguous.
    await asyncio.sleep(0.005)
    return await send(
        server,
        token,
        room_id,
        f"* {body}",
        relates_to={"rel_type": "m.replace", "event_id": original},
        **{"m.new_content": {"msgtype": "m.text", "body": body}, **extra},
    )


async def redact(server: TestServer, token: str, room_id: str, event_id: str) -> None:
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/redact/{q(event_id)}/r{next(_txn_ids)}", {}, token=token
    )
    assert resp.status == 200, resp.body


async def get_event(server: TestServer, token: str, room_id: str, event_id: str) -> dict[str, Any]:
    resp = await server.get(f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}", token=token)
    assert resp.status == 200, resp.body
    return resp.body


def bundle(event: dict[str, Any]) -> dict[str, Any]:
    return event["unsigned"].get("m.relations", {})


async def relations(
    server: TestServer, token: str, room_id: str, event_id: str, *path: str, **params: Any
) -> Response:
    tail = "".join(f"/{q(p)}" for p in path)
    return await server.get(
        f"{V1}/rooms/{q(room_id)}/relations/{q(event_id)}{tail}",
        token=token,
        params={k: str(v) for k, v in params.items()} or None,
    )


async def threads(server: TestServer, token: str, room_id: str, **params: Any) -> Response:
    return await server.get(
        f"{V1}/rooms/{q(room_id)}/threads",
        token=token,
        params={k: str(v) for k, v in params.items()} or None,
    )


def ids(resp: Response) -> list[str]:
    assert resp.status == 200, resp.body
    return [e["event_id"] for e in resp.body["chunk"]]


def assert_error(resp: Response, status: int, errcode: str) -> None:
    assert (resp.status, resp.body["errcode"]) == (status, errcode), resp.body


# ---------------------------------------------------------------- threads


async def test_thread_bundle_counts_latest_and_participation(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    root_a = await send(server, alice, room_id, "root A")
    root_b = await send(server, alice, room_id, "root B")
    a1 = await reply(server, bob, room_id, root_a)
    await reply(server, alice, room_id, root_b)
    a2 = await reply(server, bob, room_id, root_a, "latest")

    thread = bundle(await get_event(server, alice, room_id, root_a))["m.thread"]
    assert thread["count"] == 2
    assert thread["current_user_participated"] is True  # alice sent the root
    latest = thread["latest_event"]
    assert latest["event_id"] == a2
    assert latest["content"]["body"] == "latest"
    assert latest["room_id"] == room_id and latest["sender"] == BOB

    # Bob replied in thread A but not in thread B.
    assert bundle(await get_event(server, bob, room_id, root_a))["m.thread"]["current_user_participated"]
    assert not bundle(await get_event(server, bob, room_id, root_b))["m.thread"]["current_user_participated"]
    # Thread replies themselves carry no m.thread aggregation.
    assert "m.thread" not in bundle(await get_event(server, alice, room_id, a1))

    # A redacted reply stops counting; the latest is then the one before it.
    await redact(server, bob, room_id, a2)
    thread = bundle(await get_event(server, alice, room_id, root_a))["m.thread"]
    assert (thread["count"], thread["latest_event"]["event_id"]) == (1, a1)


async def test_latest_thread_event_carries_its_own_aggregations(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    root = await send(server, alice, room_id, "root")
    child = await reply(server, alice, room_id, root, "typo")
    fix = await edit(server, alice, room_id, child, "fixed")
    latest = bundle(await get_event(server, alice, room_id, root))["m.thread"]["latest_event"]
    assert latest["event_id"] == child
    assert bundle(latest)["m.replace"]["event_id"] == fix


async def test_threads_list_order_pagination_and_participated(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    root_a = await send(server, alice, room_id, "root A")
    root_b = await send(server, alice, room_id, "root B")
    await send(server, alice, room_id, "not a thread")
    await reply(server, bob, room_id, root_a)
    await reply(server, alice, room_id, root_b)
    await reply(server, bob, room_id, root_a)

    resp = await threads(server, alice, room_id)
    assert ids(resp) == [root_a, root_b]
    assert "next_batch" not in resp.body
    # Every root comes with its bundled aggregation.
    assert [bundle(e)["m.thread"]["count"] for e in resp.body["chunk"]] == [2, 1]

    first = await threads(server, alice, room_id, limit=1)
    assert ids(first) == [root_a]
    second = await threads(server, alice, room_id, limit=1, **{"from": first.body["next_batch"]})
    assert ids(second) == [root_b]
    assert "next_batch" not in second.body

    assert ids(await threads(server, bob, room_id, include="participated")) == [root_a]
    assert ids(await threads(server, alice, room_id, include="participated")) == [root_a, root_b]

    # New activity in thread B moves it to the top.
    await reply(server, bob, room_id, root_b)
    assert ids(await threads(server, alice, room_id)) == [root_b, root_a]
    assert ids(await threads(server, bob, room_id, include="participated")) == [root_b, root_a]


async def test_threads_refusals(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice", preset="private_chat")
    (charlie,) = [(await server.register_user("charlie"))["access_token"]]
    assert_error(await threads(server, charlie, room_id), 403, "M_FORBIDDEN")
    assert_error(await threads(server, alice, "!unknown:test.local"), 403, "M_FORBIDDEN")
    assert_error(await threads(server, alice, "not-a-room"), 400, "M_INVALID_PARAM")
    for params in ({"include": "mine"}, {"limit": 0}, {"limit": "ten"}, {"from": "nonsense"}):
        assert_error(await threads(server, alice, room_id, **params), 400, "M_INVALID_PARAM")
    assert (await server.get(f"{V1}/rooms/{q(room_id)}/threads")).status == 401


# ------------------------------------------------------------------ edits


async def test_edit_bundles_the_most_recent_valid_replacement(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    original = await send(server, alice, room_id, "helo")
    first = await edit(server, alice, room_id, original, "hello")
    second = await edit(server, alice, room_id, original, "hello!")
    # Invalid edits, all more recent: another sender, no m.new_content, another type.
    await edit(server, bob, room_id, original, "bob was here")
    await asyncio.sleep(0.005)
    await send(server, alice, room_id, "* x", relates_to={"rel_type": "m.replace", "event_id": original})
    await asyncio.sleep(0.005)
    await send(
        server,
        alice,
        room_id,
        "* y",
        event_type="org.example.other",
        relates_to={"rel_type": "m.replace", "event_id": original},
        **{"m.new_content": {"body": "y"}},
    )

    for token in (alice, bob):
        event = await get_event(server, token, room_id, original)
        assert event["content"]["body"] == "helo"  # the original content is left intact
        replacement = bundle(event)["m.replace"]
        assert replacement["event_id"] == second
        assert replacement["sender"] == "@alice:test.local"
        assert replacement["type"] == "m.room.message"
        assert replacement["content"]["m.new_content"]["body"] == "hello!"
        assert replacement["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": original}
        assert "origin_server_ts" in replacement

    # A redacted edit is ignored: the previous one is the latest again.
    await redact(server, alice, room_id, second)
    assert bundle(await get_event(server, alice, room_id, original))["m.replace"]["event_id"] == first
    # An edit carries no aggregations itself.
    assert bundle(await get_event(server, alice, room_id, first)) == {}
    # A redacted original gets no aggregations at all.
    await redact(server, alice, room_id, original)
    event = await get_event(server, alice, room_id, original)
    assert event["content"] == {} and bundle(event) == {}


# ------------------------------------------------------ references, reactions


async def test_references_are_bundled_and_redaction_breaks_them(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    parent = await send(server, alice, room_id, "parent")
    ref1 = await send(server, bob, room_id, "r1", relates_to={"rel_type": "m.reference", "event_id": parent})
    ref2 = await send(server, alice, room_id, "r2", relates_to={"rel_type": "m.reference", "event_id": parent})
    chunk = bundle(await get_event(server, bob, room_id, parent))["m.reference"]["chunk"]
    assert chunk == [{"event_id": ref1}, {"event_id": ref2}]
    await redact(server, bob, room_id, ref1)
    chunk = bundle(await get_event(server, bob, room_id, parent))["m.reference"]["chunk"]
    assert chunk == [{"event_id": ref2}]
    assert ids(await relations(server, bob, room_id, parent)) == [ref2]


async def test_reactions_are_listed_by_type_but_not_bundled(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    parent = await send(server, alice, room_id, "react to me")

    async def react(token: str, key: str, event_type: str = "m.reaction") -> str:
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/t{next(_txn_ids)}",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": key}},
            token=token,
        )
        assert resp.status == 200, resp.body
        return resp.body["event_id"]

    thumbs_alice = await react(alice, "👍")
    thumbs_bob = await react(bob, "👍")
    custom = await react(bob, "done", "org.example.annotation")
    threaded = await reply(server, bob, room_id, parent)

    assert ids(await relations(server, alice, room_id, parent, "m.annotation")) == [
        custom, thumbs_bob, thumbs_alice
    ]
    assert ids(await relations(server, alice, room_id, parent, "m.annotation", "m.reaction")) == [
        thumbs_bob, thumbs_alice
    ]
    assert ids(await relations(server, alice, room_id, parent)) == [
        threaded, custom, thumbs_bob, thumbs_alice
    ]
    assert ids(await relations(server, alice, room_id, parent, "m.reference")) == []
    assert set(bundle(await get_event(server, alice, room_id, parent))) == {"m.thread"}


# ------------------------------------------------------ /relations pagination


async def test_pagination_both_directions(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    root = await send(server, alice, room_id, "root")
    children = [await reply(server, alice, room_id, root, f"c{i}") for i in range(1, 8)]
    newest_first = children[::-1]

    async def walk(**params: Any) -> tuple[list[list[str]], list[Response]]:
        pages, responses, token = [], [], None
        while True:
            extra = {"from": token} if token else {}
            resp = await relations(server, alice, room_id, root, "m.thread", limit=2, **params, **extra)
            pages.append(ids(resp))
            responses.append(resp)
            token = resp.body.get("next_batch")
            if token is None:
                return pages, responses

    pages, responses = await walk()
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:6], newest_first[6:]]
    assert "prev_batch" not in responses[0].body
    assert responses[1].body["prev_batch"] == responses[0].body["next_batch"]
    assert "recursion_depth" not in responses[0].body

    pages, _ = await walk(dir="f")
    assert pages == [children[0:2], children[2:4], children[4:6], children[6:]]

    # A backwards token used forwards returns what lies after it.
    first = await relations(server, alice, room_id, root, limit=2)
    back = first.body["next_batch"]
    forward = await relations(server, alice, room_id, root, limit=2, dir="f", **{"from": back})
    assert ids(forward) == children[5:7]
    assert "next_batch" not in forward.body
    # `to` stops the page: from the newest down to the end of the second page.
    second = await relations(server, alice, room_id, root, limit=2, **{"from": back})
    bounded = await relations(server, alice, room_id, root, limit=50, to=second.body["next_batch"])
    assert ids(bounded) == newest_first[:4]
    # Page 2's token as `from`, page 1's as `to`, is the empty set (spec example).
    empty = await relations(server, alice, room_id, root, **{"from": second.body["next_batch"], "to": back})
    assert ids(empty) == []

    # The default limit is small, with a token for the rest.
    default = await relations(server, alice, room_id, root)
    assert ids(default) == newest_first[:5] and "next_batch" in default.body


async def test_recurse_follows_indirect_relations(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    parent = await send(server, alice, room_id, "parent")
    chain = []
    target = parent
    for i in range(4):
        target = await send(
            server, alice, room_id, f"level {i + 1}",
            relates_to={"rel_type": "m.reference", "event_id": target},
        )
        chain.append(target)
    other = await reply(server, alice, room_id, parent)

    direct = await relations(server, alice, room_id, parent)
    assert ids(direct) == [other, chain[0]]
    assert "recursion_depth" not in direct.body
    not_recursing = await relations(server, alice, room_id, parent, recurse="false")
    assert ids(not_recursing) == [other, chain[0]]
    assert not_recursing.body["recursion_depth"] == 1

    deep = await relations(server, alice, room_id, parent, recurse="true", limit=10)
    assert deep.body["recursion_depth"] == 3
    assert ids(deep) == [other, chain[2], chain[1], chain[0]]  # three levels, newest first
    by_type = await relations(server, alice, room_id, parent, "m.reference", recurse="true", limit=10)
    assert ids(by_type) == [chain[2], chain[1], chain[0]]
    paged = await relations(server, alice, room_id, parent, recurse="true", limit=2)
    assert ids(paged) == [other, chain[2]]
    rest = await relations(
        server, alice, room_id, parent, recurse="true", limit=2, **{"from": paged.body["next_batch"]}
    )
    assert ids(rest) == [chain[1], chain[0]] and "next_batch" not in rest.body


# ------------------------------------------------------------- visibility


async def test_parent_hidden_by_history_visibility_is_not_found(server: TestServer) -> None:
    room_id, (alice,) = await room_with(
        server,
        "alice",
        initial_state=[
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ],
    )
    before = await send(server, alice, room_id, "before bob")
    await reply(server, alice, room_id, before)
    (bob,) = [(await server.register_user("bob"))["access_token"]]
    (charlie,) = [(await server.register_user("charlie"))["access_token"]]
    await join(server, bob, room_id)
    after = await send(server, alice, room_id, "after bob")
    child = await reply(server, alice, room_id, after)

    assert_error(await relations(server, bob, room_id, before), 404, "M_NOT_FOUND")
    assert ids(await relations(server, bob, room_id, after)) == [child]
    # Not in the room at all: the event is as good as unknown (spec lists only 404).
    assert_error(await relations(server, charlie, room_id, after), 404, "M_NOT_FOUND")
    assert_error(await relations(server, alice, room_id, "$unknown"), 404, "M_NOT_FOUND")
    assert_error(await relations(server, alice, "!unknown:test.local", after), 404, "M_NOT_FOUND")
    assert (await relations(server, "", room_id, after)).status == 401


async def test_children_after_leaving_are_hidden(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    root = await send(server, alice, room_id, "root")
    seen = await reply(server, alice, room_id, root, "seen")
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/leave", {}, token=bob)
    assert resp.status == 200, resp.body
    for i in range(3):
        await reply(server, alice, room_id, root, f"unseen {i}")

    assert ids(await relations(server, bob, room_id, root)) == [seen]
    thread = bundle(await get_event(server, bob, room_id, root))["m.thread"]
    # The latest event bob may see, however many newer ones hide it.
    assert thread["latest_event"]["event_id"] == seen
    assert thread["latest_event"]["content"]["body"] == "seen"
    latest = bundle(await get_event(server, alice, room_id, root))["m.thread"]["latest_event"]
    assert latest["content"]["body"] == "unseen 2"


# ------------------------------------------------------------- bad input


async def test_bad_relations_parameters(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    parent = await send(server, alice, room_id, "parent")
    for params in (
        {"limit": 0},
        {"limit": -1},
        {"limit": "many"},
        {"dir": "sideways"},
        {"from": "garbage"},
        {"to": "t1-"},
        {"from": "t99999999999999999999-1"},
        {"recurse": "yes"},
    ):
        assert_error(await relations(server, alice, room_id, parent, **params), 400, "M_INVALID_PARAM")
    assert_error(await relations(server, alice, "bad-room", parent), 400, "M_INVALID_PARAM")


# ---------------------------------------------------------- no N+1 queries


async def test_bundles_for_a_batch_cost_a_fixed_number_of_queries(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    roots = []
    for i in range(8):
        root = await send(server, alice, room_id, f"root {i}")
        await reply(server, alice, room_id, root)
        await edit(server, alice, room_id, root, f"edited {i}")
        await send(server, alice, room_id, "ref", relates_to={"rel_type": "m.reference", "event_id": root})
        roots.append(root)
    hs = server.hs
    user = "@alice:test.local"
    events = await hs.storage.events.get_events(roots)
    calls = 0
    # Transactions, and on PostgreSQL the lone statements run outside one.
    wrapped = {name: getattr(hs.db, name) for name in ("run", "_statement") if hasattr(hs.db, name)}

    def counting(real: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await real(*args, **kwargs)

        return call

    async def queries_for(batch: list[str]) -> int:
        nonlocal calls
        await hs.serializer.serialize([events[r] for r in batch], user_id=user)  # warm caches
        calls = 0
        out = await hs.serializer.serialize([events[r] for r in batch], user_id=user)
        assert all(set(bundle(e)) == {"m.thread", "m.replace", "m.reference"} for e in out)
        return calls

    for name, real in wrapped.items():
        setattr(hs.db, name, counting(real))
    try:
        few, many = await queries_for(roots[:2]), await queries_for(roots)
        assert 0 < few == many
    finally:
        for name, real in wrapped.items():
            setattr(hs.db, name, real)


# ------------------------------------------------- refusing bad relations


async def annotate(
    server: TestServer,
    token: str,
    room_id: str,
    parent: str,
    key: Any,
    *,
    event_type: str = "m.reaction",
    txn_id: str | None = None,
) -> Response:
    return await server.put(
        f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/{txn_id or f't{next(_txn_ids)}'}",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": key}},
        token=token,
    )


async def test_a_second_identical_annotation_is_refused(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    parent = await send(server, alice, room_id, "react to me")
    first = await annotate(server, alice, room_id, parent, "👍", txn_id="react-1")
    assert first.status == 200, first.body

    assert_error(await annotate(server, alice, room_id, parent, "👍"), 400, "M_DUPLICATE_ANNOTATION")
    # Retrying the same transaction is not a second annotation: the first comes back.
    again = await annotate(server, alice, room_id, parent, "👍", txn_id="react-1")
    assert (again.status, again.body) == (200, first.body)
    # Another key, another event type, another sender: all distinct annotations.
    for token, key, event_type in (
        (alice, "🎉", "m.reaction"),
        (alice, "👍", "org.example.vote"),
        (bob, "👍", "m.reaction"),
    ):
        resp = await annotate(server, token, room_id, parent, key, event_type=event_type)
        assert resp.status == 200, resp.body
    bobs = resp.body["event_id"]
    # Once redacted, the first no longer counts.
    await redact(server, alice, room_id, first.body["event_id"])
    resent = await annotate(server, alice, room_id, parent, "👍")
    assert resent.status == 200, resent.body
    reactions = ids(await relations(server, alice, room_id, parent, "m.annotation", "m.reaction"))
    assert reactions[:2] == [resent.body["event_id"], bobs]
    assert first.body["event_id"] not in reactions


async def test_concurrent_identical_annotations_make_one(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    parent = await send(server, alice, room_id, "react to me")
    results = await asyncio.gather(*(annotate(server, alice, room_id, parent, "🔥") for _ in range(4)))
    assert sorted(r.status for r in results) == [200, 400, 400, 400], [r.body for r in results]
    assert {r.body.get("errcode") for r in results if r.status == 400} == {"M_DUPLICATE_ANNOTATION"}
    assert len(ids(await relations(server, alice, room_id, parent, "m.annotation"))) == 1


async def test_annotations_need_a_key(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    parent = await send(server, alice, room_id, "react to me")
    for key in (None, 5, ["👍"]):
        assert_error(await annotate(server, alice, room_id, parent, key), 400, "M_INVALID_PARAM")
    assert ids(await relations(server, alice, room_id, parent)) == []


async def test_a_thread_cannot_start_from_an_event_with_a_relation(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    root = await send(server, alice, room_id, "root")
    in_thread = await reply(server, alice, room_id, root)
    reaction = await annotate(server, alice, room_id, root, "👍")
    edited = await edit(server, alice, room_id, root, "root, edited")
    for parent in (in_thread, reaction.body["event_id"], edited):
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/send/m.room.message/t{next(_txn_ids)}",
            {"msgtype": "m.text", "body": "re", "m.relates_to": {"rel_type": "m.thread", "event_id": parent}},
            token=alice,
        )
        assert_error(resp, 400, "M_UNKNOWN")
        # Other relations to those events are fine.
        await send(server, alice, room_id, "ref", relates_to={"rel_type": "m.reference", "event_id": parent})
    # A rich reply is not a relation (no rel_type), so a thread may grow from it, as in Synapse.
    rich = await send(server, alice, room_id, "reply", relates_to={"m.in_reply_to": {"event_id": root}})
    await reply(server, alice, room_id, rich)
    # Redaction strips the relation: the redacted edit may start a thread.
    await redact(server, alice, room_id, edited)
    await reply(server, alice, room_id, edited)
    assert ids(await threads(server, alice, room_id)) == [edited, rich, root]


async def test_relations_must_stay_in_their_room(server: TestServer) -> None:
    room_id, (alice,) = await room_with(server, "alice")
    other_room, _ = await room_with(server, "bob")
    await join(server, alice, other_room)
    elsewhere = await send(server, alice, other_room, "in the other room")
    for rel_type, extra in (("m.annotation", {"key": "👍"}), ("m.thread", {}), ("m.reference", {})):
        resp = await server.put(
            f"{V3}/rooms/{q(room_id)}/send/m.room.message/t{next(_txn_ids)}",
            {"msgtype": "m.text", "body": "x",
             "m.relates_to": {"rel_type": rel_type, "event_id": elsewhere, **extra}},
            token=alice,
        )
        assert_error(resp, 400, "M_UNKNOWN")
    assert ids(await relations(server, alice, other_room, elsewhere)) == []
    assert ids(await threads(server, alice, room_id)) == []


# ------------------------------------------------------ thread summaries


async def thread_rows(server: TestServer, room_id: str) -> list[tuple[Any, ...]]:
    rows = await server.hs.db.fetchall(
        "test",
        "SELECT t.thread_id, t.reply_count, p.user_id FROM threads t"
        " JOIN thread_participants p ON p.thread_id = t.thread_id"
        " WHERE t.room_id = ? ORDER BY t.thread_id, p.user_id",
        (room_id,),
    )
    return [tuple(row) for row in rows]


async def test_thread_summaries_follow_replies_and_redactions(server: TestServer) -> None:
    room_id, (alice, bob, carol) = await room_with(server, "alice", "bob", "carol")
    root = await send(server, alice, room_id, "root")
    other = await send(server, alice, room_id, "other")
    bob_reply = await reply(server, bob, room_id, root)
    carol_reply = await reply(server, carol, room_id, root)
    await reply(server, alice, room_id, other)
    assert await thread_rows(server, room_id) == sorted(
        [(root, 2, "@alice:test.local"), (root, 2, BOB), (root, 2, "@carol:test.local"),
         (other, 1, "@alice:test.local")]
    )
    assert ids(await threads(server, alice, room_id)) == [other, root]

    # Bob's only reply redacted: he no longer took part, and the count drops.
    await redact(server, bob, room_id, bob_reply)
    assert ids(await threads(server, bob, room_id, include="participated")) == []
    assert ids(await threads(server, carol, room_id, include="participated")) == [root]
    thread = bundle(await get_event(server, bob, room_id, root))["m.thread"]
    assert (thread["count"], thread["current_user_participated"]) == (1, False)
    # Latest activity is the latest live reply: redacting the newest moves the thread down.
    await reply(server, carol, room_id, root, "newest")
    assert ids(await threads(server, alice, room_id)) == [root, other]
    newest = ids(await relations(server, alice, room_id, root, limit=1))[0]
    await redact(server, carol, room_id, newest)
    assert ids(await threads(server, alice, room_id)) == [other, root]
    # Every reply gone: no thread, no bundle.
    await redact(server, carol, room_id, carol_reply)
    assert ids(await threads(server, alice, room_id)) == [other]
    assert "m.thread" not in bundle(await get_event(server, alice, room_id, root))
    assert [row[0] for row in await thread_rows(server, room_id)] == [other]
    # The thread comes back with a new reply, its root's sender taking part again.
    await reply(server, bob, room_id, root)
    assert ids(await threads(server, alice, room_id, include="participated")) == [root, other]


async def test_threads_list_reads_the_summary_index(server: TestServer) -> None:
    """GET /threads walks threads_room_latest, never the room's replies."""
    room_id, (alice,) = await room_with(server, "alice")
    root = await send(server, alice, room_id, "root")
    await reply(server, alice, room_id, root)
    db = server.hs.db
    sql = (
        "SELECT t.thread_id, t.latest_stream_ordering FROM threads t"
        " JOIN events r ON r.event_id = t.thread_id"
        " WHERE t.room_id = ? AND (r.relation_type IS NULL OR r.redacted_by IS NOT NULL)"
        " ORDER BY t.latest_stream_ordering DESC LIMIT ?"
    )
    if db.dialect == "sqlite":
        plan = " ".join(str(row[-1]) for row in await db.fetchall("test", f"EXPLAIN QUERY PLAN {sql}", (room_id, 5)))
        assert "threads_room_latest" in plan and "TEMP B-TREE" not in plan, plan
    else:

        async def explain(txn: Any) -> list[Any]:
            # The tables are tiny: ask whether an index CAN give this order.
            for method in ("seqscan", "bitmapscan", "sort"):
                await txn.execute(f"SET LOCAL enable_{method} = off")
            return await txn.fetchall(f"EXPLAIN {sql}", (room_id, 5))

        plan = " ".join(str(row[0]) for row in await db.run("test", explain))
        assert "threads_room_latest" in plan and "Sort" not in plan, plan


async def test_the_migration_summarises_threads_already_there(server: TestServer) -> None:
    """0016's backfill gives the rows the writes keep up, for threads written before it."""
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    root = await send(server, alice, room_id, "root")
    other = await send(server, bob, room_id, "other")
    await reply(server, bob, room_id, root)
    gone = await reply(server, alice, room_id, other)
    await reply(server, bob, room_id, other)
    await redact(server, alice, room_id, gone)
    db = server.hs.db
    summary = "SELECT thread_id, room_id, latest_stream_ordering, reply_count FROM threads ORDER BY thread_id"
    participants = "SELECT thread_id, user_id, room_id FROM thread_participants ORDER BY thread_id, user_id"
    kept = (await db.fetchall("test", summary), await db.fetchall("test", participants))
    assert len(kept[0]) == 2 and len(kept[1]) == 3

    await db.execute("test", "DELETE FROM thread_participants")
    await db.execute("test", "DELETE FROM threads")
    migration = (SCHEMA_DIR / "0016_threads.sql").read_text()
    statements = [s.strip() for s in migration.split(";")]
    backfill = [s for s in statements if "INSERT INTO thread" in s]
    assert len(backfill) == 2
    for statement in backfill:
        await db.execute("test", "\n".join(l for l in statement.splitlines() if not l.startswith("--")))
    assert (await db.fetchall("test", summary), await db.fetchall("test", participants)) == kept
