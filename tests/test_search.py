"""Message search (POST /search) over real HTTP on both engines: relevance,
ordering, pagination, keys, filters, groups, context, highlights, history
visibility, redaction, query syntax that must never reach the engine as
syntax, every refusal, and the migration's back-fill of the index.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest

from homeserver.app import HomeServer
from homeserver.config import ConfigError
from homeserver.search.query import parse_search_term
from homeserver.search.service import (
    COUNT_LIMIT,
    MAX_CONTEXT_EVENTS,
    MAX_CONTEXT_LIMIT,
    MAX_LIMIT,
    Batch,
)
from storage.migrations import available_migrations

from .conftest import make_config, start_server, stop_server
from .test_history import assert_error, create_room, q, users

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"

_txn = itertools.count()


# ---------------------------------------------------------------- helpers




async def send(server: TestServer, token: str, room_id: str, body: str, **content: Any) -> str:
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.room.message/s{next(_txn)}",
        {"msgtype": "m.text", "body": body, **content},
        token=token,
    )
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def membership(server: TestServer, token: str, room_id: str, action: str, **body: Any) -> None:
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/{action}", body, token=token)
    assert resp.status == 200, resp.body


async def search(
    server: TestServer, token: str, term: str, *, next_batch: str | None = None, **criteria: Any
) -> Response:
    params = {"next_batch": next_batch} if next_batch is not None else None
    return await server.post(
        f"{V3}/search",
        {"search_categories": {"room_events": {"search_term": term, **criteria}}},
        token=token,
        params=params,
    )


async def found(server: TestServer, token: str, term: str, **criteria: Any) -> dict[str, Any]:
    resp = await search(server, token, term, **criteria)
    assert resp.status == 200, resp.body
    return resp.body["search_categories"]["room_events"]


def bodies(category: dict[str, Any]) -> list[str]:
    return [r["result"]["content"].get("body") for r in category["results"]]


async def search_all(
    server: TestServer, token: str, term: str, **criteria: Any
) -> tuple[list[str], int]:
    """Every result's event ID, following next_batch; and the number of pages."""
    seen: list[str] = []
    next_batch = None
    for pages in itertools.count(1):
        resp = await search(server, token, term, next_batch=next_batch, **criteria)
        assert resp.status == 200, resp.body
        category = resp.body["search_categories"]["room_events"]
        seen += [r["result"]["event_id"] for r in category["results"]]
        next_batch = category.get("next_batch")
        if next_batch is None:
            return seen, pages
        assert pages < 100, "pagination does not terminate"
    raise AssertionError("unreachable")


# ------------------------------------------------------------ the query


def test_search_terms_become_queries_that_cannot_be_syntax():
    query = parse_search_term('martians "and men" or -foo NEAR( * \'x')
    assert query.to_tsquery() == "(martians:* & (and <-> men)) | (!foo:* & NEAR:* & x:*)"
    assert query.to_fts5() == (
        '(("martians"* AND "and men")) OR (("NEAR"* AND "x"*) NOT "foo"*)'
    )
    assert query.words == ["martians", "and", "men", "near", "x"]
    # An unbalanced quote runs to the end; punctuation splits words into a phrase.
    assert parse_search_term('"unbalanced quote').to_fts5() == '(("unbalanced quote"))'
    assert parse_search_term("e-mail").to_tsquery() == "((e <-> mail))"
    # Nothing but exclusions, operators or punctuation searches for nothing.
    for text in ("", "   ", "-only", "OR or AND", '"" * :: ()', "-a or -b"):
        assert parse_search_term(text).is_empty, text


# ------------------------------------------------------------- ordering


async def test_better_match_ranks_first_and_recent_is_newest_first(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    strong = await send(server, alice, room, "deploy the deploy pipeline, deploy again")
    weak = await send(server, alice, room, "I might deploy that one day, or not, who knows really")
    await send(server, alice, room, "nothing to see here")

    ranked = await found(server, alice, "deploy")
    assert [r["result"]["event_id"] for r in ranked["results"]] == [strong, weak]
    assert ranked["results"][0]["rank"] > ranked["results"][1]["rank"] > 0
    assert ranked["count"] == 2
    assert "next_batch" not in ranked
    # The default order is rank; recent is newest first.
    recent = await found(server, alice, "deploy", order_by="recent")
    assert [r["result"]["event_id"] for r in recent["results"]] == [weak, strong]
    explicit = await found(server, alice, "deploy", order_by="rank")
    assert [r["result"]["event_id"] for r in explicit["results"]] == [strong, weak]


async def test_words_are_prefixes_stemmed_and_all_required(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    await send(server, alice, room, "Weekly meetings about the budget")
    await send(server, alice, room, "budget review")
    assert bodies(await found(server, alice, "meet")) == ["Weekly meetings about the budget"]
    assert bodies(await found(server, alice, "MEETING budget")) == [
        "Weekly meetings about the budget"
    ]
    assert sorted(bodies(await found(server, alice, "meeting or review"))) == [
        "Weekly meetings about the budget", "budget review"
    ]
    assert bodies(await found(server, alice, "budget -weekly")) == ["budget review"]
    await send(server, alice, room, "meetings happen weekly")
    assert bodies(await found(server, alice, '"weekly meetings"')) == [
        "Weekly meetings about the budget"
    ]
    assert bodies(await found(server, alice, "weekly unrelated")) == []


# ----------------------------------------------------------- pagination


@pytest.mark.parametrize("order_by", ["rank", "recent"])
async def test_pagination_covers_every_result_once(server, order_by):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    sent = []
    for i in range(23):
        # Varying lengths and repetitions: many distinct ranks, and some equal ones.
        sent.append(await send(server, alice, room, "report " * (1 + i % 4) + "filler " * (i % 5)))
    await send(server, alice, room, "unrelated")

    seen, pages = await search_all(server, alice, "report", order_by=order_by, filter={"limit": 5})
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(sent)
    if order_by == "recent":
        assert seen == sent[::-1]


async def test_pagination_is_stable_while_new_messages_arrive(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    sent = [await send(server, alice, room, f"status update {i}") for i in range(10)]
    first = await found(server, alice, "status", order_by="recent", filter={"limit": 4})
    assert [r["result"]["event_id"] for r in first["results"]] == sent[::-1][:4]
    # New matches after the first page do not push old ones into a later page again.
    for i in range(3):
        await send(server, alice, room, f"status update late {i}")
    seen = [r["result"]["event_id"] for r in first["results"]]
    next_batch = first["next_batch"]
    while next_batch:
        resp = await search(
            server, alice, "status", next_batch=next_batch, order_by="recent", filter={"limit": 4}
        )
        category = resp.body["search_categories"]["room_events"]
        seen += [r["result"]["event_id"] for r in category["results"]]
        next_batch = category.get("next_batch")
    assert seen == sent[::-1]


# ----------------------------------------------------- keys and filters


async def test_keys_choose_message_bodies_room_names_and_topics(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice, name="Martian embassy", topic="Martian affairs")
    message = await send(server, alice, room, "the martian said hello")

    def types(category: dict[str, Any]) -> list[str]:
        return sorted(r["result"]["type"] for r in category["results"])

    assert types(await found(server, alice, "martian")) == [
        "m.room.message", "m.room.name", "m.room.topic"
    ]
    assert types(await found(server, alice, "martian", keys=["content.name"])) == ["m.room.name"]
    assert types(await found(server, alice, "martian", keys=["content.topic"])) == ["m.room.topic"]
    body_only = await found(server, alice, "martian", keys=["content.body"])
    assert [r["result"]["event_id"] for r in body_only["results"]] == [message]
    # The text/plain representation of m.topic is searched too.
    resp = await server.put(
        f"{V3}/rooms/{q(room)}/state/m.room.topic",
        {"topic": "old words", "m.topic": {"m.text": [{"body": "venusian matters"}]}},
        token=alice,
    )
    assert resp.status == 200, resp.body
    assert types(await found(server, alice, "venusian", keys=["content.topic"])) == ["m.room.topic"]


async def test_filter_rooms_senders_types_and_limit(server):
    alice, bob = await users(server, "alice", "bob")
    first = await create_room(server, alice, preset="public_chat")
    second = await create_room(server, alice, preset="public_chat")
    for room in (first, second):
        await membership(server, bob, room, "join")
        await send(server, alice, room, "quarterly numbers from alice")
        await send(server, bob, room, "quarterly numbers from bob")

    def rooms_and_senders(category: dict[str, Any]) -> set[tuple[str, str]]:
        return {(r["result"]["room_id"], r["result"]["sender"]) for r in category["results"]}

    everything = await found(server, alice, "quarterly")
    assert everything["count"] == 4
    assert rooms_and_senders(await found(server, alice, "quarterly", filter={"rooms": [first]})) == {
        (first, ALICE), (first, BOB)
    }
    assert rooms_and_senders(
        await found(server, alice, "quarterly", filter={"not_rooms": [first], "senders": [BOB]})
    ) == {(second, BOB)}
    assert rooms_and_senders(
        await found(server, alice, "quarterly", filter={"not_senders": [BOB]})
    ) == {(first, ALICE), (second, ALICE)}
    assert (await found(server, alice, "quarterly", filter={"types": ["m.room.name"]}))["results"] == []
    assert (await found(server, alice, "quarterly", filter={"rooms": []}))["results"] == []
    limited = await found(server, alice, "quarterly", filter={"limit": 3})
    assert len(limited["results"]) == 3 and "next_batch" in limited
    assert limited["count"] == 4


# --------------------------------------------------------------- groups


async def test_groups_by_room_and_sender_and_a_group_pages_alone(server):
    alice, bob = await users(server, "alice", "bob")
    first = await create_room(server, alice, preset="public_chat")
    second = await create_room(server, alice, preset="public_chat")
    await membership(server, bob, first, "join")
    in_first = [await send(server, (alice, bob)[i % 2], first, f"incident {i}") for i in range(6)]
    in_second = [await send(server, alice, second, f"incident b{i}") for i in range(3)]

    category = await found(
        server, alice, "incident",
        order_by="recent",
        filter={"limit": 4},
        groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    )
    page = [r["result"]["event_id"] for r in category["results"]]
    assert page == in_second[::-1] + in_first[::-1][:1]
    rooms = category["groups"]["room_id"]
    assert rooms[second]["results"] == in_second[::-1] and rooms[second]["order"] == 1
    assert rooms[first]["results"] == in_first[::-1][:1] and rooms[first]["order"] == 2
    senders = category["groups"]["sender"]
    assert set(senders) == {ALICE, BOB}
    assert sum(len(g["results"]) for g in senders.values()) == 4

    # The first room's group token continues in that room alone.
    seen = list(rooms[first]["results"])
    next_batch = rooms[first]["next_batch"]
    while next_batch:
        resp = await search(
            server, alice, "incident", next_batch=next_batch, order_by="recent", filter={"limit": 4}
        )
        assert resp.status == 200, resp.body
        more = resp.body["search_categories"]["room_events"]
        assert {r["result"]["room_id"] for r in more["results"]} <= {first}
        seen += [r["result"]["event_id"] for r in more["results"]]
        next_batch = more.get("next_batch")
    assert seen == in_first[::-1]
    # A sender's group token continues with that sender alone.
    resp = await search(
        server, alice, "incident", next_batch=senders[BOB]["next_batch"], order_by="recent"
    )
    assert {r["result"]["sender"] for r in resp.body["search_categories"]["room_events"]["results"]} == {BOB}


# ------------------------------------------------- context and highlights


async def test_context_with_historic_profiles(server):
    alice, bob = await users(server, "alice", "bob")
    room = await create_room(server, alice, preset="public_chat")
    await membership(server, bob, room, "join")
    before = [await send(server, bob, room, f"before {i}") for i in range(3)]
    await send(server, alice, room, "the needle")
    after = [await send(server, bob, room, f"after {i}") for i in range(3)]
    # Renamed later: the context shows the name bob had then.
    resp = await server.put(
        f"{V3}/profile/{q(BOB)}/displayname", {"displayname": "Robert"}, token=bob
    )
    assert resp.status == 200

    category = await found(
        server, alice, "needle",
        event_context={"before_limit": 2, "after_limit": 1, "include_profile": True},
    )
    (result,) = category["results"]
    context = result["context"]
    assert [e["event_id"] for e in context["events_before"]] == before[::-1][:2]
    assert [e["event_id"] for e in context["events_after"]] == after[:1]
    assert context["profile_info"] == {
        ALICE: {"displayname": "alice"}, BOB: {"displayname": "bob"}
    }
    # The tokens page on from the edges of the context.
    resp = await server.get(
        f"{V3}/rooms/{q(room)}/messages", params={"dir": "b", "from": context["start"], "limit": "1"},
        token=alice,
    )
    assert [e["event_id"] for e in resp.body["chunk"]] == before[:1]
    resp = await server.get(
        f"{V3}/rooms/{q(room)}/messages", params={"dir": "f", "from": context["end"], "limit": "1"},
        token=alice,
    )
    assert [e["event_id"] for e in resp.body["chunk"]] == after[1:2]
    # Defaults: 5 each way, no profiles; none at all without event_context.
    category = await found(server, alice, "needle", event_context={})
    context = category["results"][0]["context"]
    assert len(context["events_after"]) == 4 and len(context["events_before"]) == 5
    assert "profile_info" not in context
    assert "context" not in (await found(server, alice, "needle"))["results"][0]


async def test_highlights_are_the_words_matched(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    await send(server, alice, room, "Meetings are moved; the meeting room is booked")
    category = await found(server, alice, "meeting")
    assert {"meetings", "meeting"} <= set(category["highlights"])
    assert "room" not in category["highlights"]
    assert (await found(server, alice, "absent"))["highlights"] == ["absent"]


async def test_include_state_gives_the_state_the_user_may_see(server):
    alice, bob = await users(server, "alice", "bob")
    room = await create_room(server, alice, preset="public_chat", name="Before")
    await membership(server, bob, room, "join")
    await send(server, alice, room, "a findable message")
    await membership(server, bob, room, "leave")
    resp = await server.put(f"{V3}/rooms/{q(room)}/state/m.room.name", {"name": "After"}, token=alice)
    assert resp.status == 200

    def room_name(category: dict[str, Any]) -> str:
        (state,) = category["state"].values()
        return next(e["content"]["name"] for e in state if e["type"] == "m.room.name")

    assert room_name(await found(server, alice, "findable", include_state=True)) == "After"
    # bob left: the state as it was when he left.
    assert room_name(await found(server, bob, "findable", include_state=True)) == "Before"
    assert "state" not in await found(server, alice, "findable")


# ----------------------------------------------------------- visibility


@pytest.mark.parametrize(
    ("visibility", "visible"),
    [
        ("shared", {"before", "invited", "joined"}),
        ("invited", {"invited", "joined"}),
        ("joined", {"joined"}),
    ],
)
async def test_a_user_finds_only_what_history_visibility_lets_them_see(server, visibility, visible):
    alice, bob = await users(server, "alice", "bob")
    room = await create_room(
        server, alice, preset="private_chat",
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}
        ],
    )
    await send(server, alice, room, "secret before")
    await membership(server, alice, room, "invite", user_id=BOB)
    await send(server, alice, room, "secret invited")
    await membership(server, bob, room, "join")
    await send(server, alice, room, "secret joined")

    assert {b.split()[1] for b in bodies(await found(server, bob, "secret"))} == visible
    assert len((await found(server, alice, "secret"))["results"]) == 3


async def test_nothing_from_after_leaving_nor_from_others_rooms(server):
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room = await create_room(server, alice, preset="public_chat")
    await membership(server, bob, room, "join")
    await send(server, alice, room, "plan while bob is here")
    await membership(server, bob, room, "leave")
    await send(server, alice, room, "plan after bob left")

    assert bodies(await found(server, bob, "plan")) == ["plan while bob is here"]
    assert (await found(server, bob, "plan", order_by="recent"))["count"] == 1
    assert (await found(server, carol, "plan"))["results"] == []
    # A forgotten room is not searched at all.
    await membership(server, bob, room, "forget")
    assert (await found(server, bob, "plan"))["results"] == []
    # Banned: up to the ban.
    await membership(server, carol, room, "join")
    await send(server, alice, room, "plan with carol")
    await membership(server, alice, room, "ban", user_id=CAROL)
    await send(server, alice, room, "plan after the ban")
    # (Shared history is for members who are joined now: the banned carol sees
    # only what was sent while she was there.)
    assert bodies(await found(server, carol, "plan")) == ["plan with carol"]


async def test_hidden_hits_do_not_shorten_or_end_pages(server):
    alice, bob = await users(server, "alice", "bob")
    room = await create_room(
        server, alice, preset="private_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    for i in range(12):
        # Better matches than the visible ones: read first, then skipped.
        await send(server, alice, room, f"topic topic topic hidden {i}")
    await membership(server, alice, room, "invite", user_id=BOB)
    await membership(server, bob, room, "join")
    shown = [await send(server, alice, room, f"topic shown {i}") for i in range(3)]
    seen, pages = await search_all(server, bob, "topic", order_by="rank", filter={"limit": 2})
    assert sorted(seen) == sorted(shown)
    assert pages == 2


async def test_count_never_reflects_what_the_user_cannot_see(server):
    """A late joiner to a `joined` room, and a user who only rejected an
    invite, get count 0 for words of hidden messages, so probing prefixes
    spells nothing out; a term matching both hidden and visible messages
    counts the visible ones only, on every page."""
    alice, bob, eve = await users(server, "alice", "bob", "eve")
    room = await create_room(
        server, alice, preset="private_chat",
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
    )
    await send(server, alice, room, "the vault code is zebrafish7731")
    await send(server, alice, room, "acquisition target is initech")
    await membership(server, alice, room, "invite", user_id=BOB)
    await membership(server, bob, room, "join")
    # bob's own padding: "zebrafish7 or padding" must count exactly these.
    shown = [await send(server, bob, room, f"padding {i}") for i in range(5)]

    for term in ("zebrafish7731", "zebrafish7", "zebra", "initech", "init"):
        category = await found(server, bob, term)
        assert (category["results"], category["count"]) == ([], 0), term
        assert category["highlights"] == [term]
        assert "groups" not in category
    for order_by in ("rank", "recent"):
        category = await found(
            server, bob, "zebrafish7 or padding", order_by=order_by, filter={"limit": 2},
            groupings={"group_by": [{"key": "room_id"}]},
        )
        assert category["count"] == 5
        assert "zebrafish7731" not in category["highlights"]
        seen = [r["result"]["event_id"] for r in category["results"]]
        assert category["groups"]["room_id"][room]["results"] == seen
        while "next_batch" in category:
            resp = await search(
                server, bob, "zebrafish7 or padding", next_batch=category["next_batch"],
                order_by=order_by, filter={"limit": 2},
            )
            assert resp.status == 200, resp.body
            category = resp.body["search_categories"]["room_events"]
            assert category["count"] == 5
            seen += [r["result"]["event_id"] for r in category["results"]]
        assert sorted(seen) == sorted(shown)
    # alice sees all of it.
    assert (await found(server, alice, "zebrafish7 or padding"))["count"] == 6

    # eve rejects an invite without ever joining: nothing counts for her.
    await membership(server, alice, room, "invite", user_id="@eve:test.local")
    await membership(server, eve, room, "leave")
    for term in ("zebrafish", "initech", "padding"):
        category = await found(server, eve, term)
        assert (category["results"], category["count"]) == ([], 0), term


async def test_large_searches_are_capped_page_context_and_count(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    sent = [await send(server, alice, room, f"tally {i}") for i in range(COUNT_LIMIT + 3)]

    # The count is exact up to its cap, on the first page and on later ones.
    first = await found(server, alice, "tally", order_by="recent", filter={"limit": 2})
    assert first["count"] == COUNT_LIMIT
    resp = await search(
        server, alice, "tally", next_batch=first["next_batch"], order_by="recent", filter={"limit": 2}
    )
    assert resp.body["search_categories"]["room_events"]["count"] == COUNT_LIMIT

    # A page holds at most MAX_LIMIT results, the context of each at most
    # MAX_CONTEXT_LIMIT events each way, and a response MAX_CONTEXT_EVENTS in all.
    huge = {"before_limit": 1000, "after_limit": 1000}
    category = await found(
        server, alice, "tally", order_by="recent", filter={"limit": 1000}, event_context=huge
    )
    results = category["results"]
    assert [r["result"]["event_id"] for r in results] == sent[::-1][:MAX_LIMIT]
    assert "next_batch" in category
    sizes = [len(r["context"]["events_before"]) + len(r["context"]["events_after"]) for r in results]
    assert 0 < sum(sizes) <= MAX_CONTEXT_EVENTS
    assert min(sizes) > 0  # shared out, not spent on the first results
    # One result alone gets the full (capped) context.
    (result,) = (await found(server, alice, '"tally 50"', event_context=huge))["results"]
    assert [e["event_id"] for e in result["context"]["events_before"]] == sent[50 - MAX_CONTEXT_LIMIT:50][::-1]
    assert [e["event_id"] for e in result["context"]["events_after"]] == sent[51:51 + MAX_CONTEXT_LIMIT]


# ------------------------------------------------ redactions, encryption


async def test_redacted_events_vanish_from_search(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    keep = await send(server, alice, room, "confidential but fine")
    gone = await send(server, alice, room, "confidential password hunter2")
    resp = await server.put(f"{V3}/rooms/{q(room)}/redact/{q(gone)}/r1", {}, token=alice)
    assert resp.status == 200, resp.body
    category = await found(server, alice, "confidential")
    assert [r["result"]["event_id"] for r in category["results"]] == [keep]
    assert category["count"] == 1
    assert (await found(server, alice, "hunter2"))["results"] == []


async def test_encrypted_events_are_not_searchable(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    resp = await server.put(
        f"{V3}/rooms/{q(room)}/send/m.room.encrypted/e1",
        {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "opaque", "body": "opaque"},
        token=alice,
    )
    assert resp.status == 200
    assert (await found(server, alice, "opaque"))["results"] == []


# --------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("term", "matches"),
    [
        ('"', 0), ('"unbalanced', 0), ('a"b"c"', 0), ("*", 0), ("martian*", 1),
        ("NEAR(martian men, 2)", 0), ("AND", 0), ("OR", 0), ("NOT", 0), ("martian AND", 1),
        ("- -", 0), ("-", 0), ("col:martian", 0), ("'", 0), ("''", 0), ("(", 0), (")", 0),
        ("\\", 0), ("&|!<->", 0), (":*", 0), ("^martian", 1), ("martian OR OR", 1),
        ('"martian', 1), ("{}[]", 0), ("😀", 0), ("ü", 0), ("a" * 999, 0), ("martian " * 60, 1),
        ("x:* | !martian", 0), ("martian -", 1),
    ],
)
async def test_query_syntax_is_never_an_error(server, term, matches):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    await send(server, alice, room, "the martian")
    resp = await search(server, alice, term)
    assert resp.status == 200, resp.body
    assert len(resp.body["search_categories"]["room_events"]["results"]) == matches


# ---------------------------------------------------------- bad input


async def test_bad_requests_are_refused(server):
    alice, = await users(server, "alice")
    room = await create_room(server, alice)
    await send(server, alice, room, "findable")

    async def post(body: Any, **params: str) -> Response:
        return await server.post(f"{V3}/search", body, token=alice, params=params or None)

    def with_criteria(**criteria: Any) -> dict[str, Any]:
        return {"search_categories": {"room_events": {"search_term": "findable", **criteria}}}

    assert_error(await server.post(f"{V3}/search", with_criteria()), 401, "M_MISSING_TOKEN")
    assert_error(await post({}), 400, "M_MISSING_PARAM")
    assert_error(await post({"search_categories": []}), 400, "M_BAD_JSON")
    assert_error(await post({"search_categories": {"rooms": {}}}), 400, "M_INVALID_PARAM")
    assert_error(await post({"search_categories": {"room_events": []}}), 400, "M_BAD_JSON")
    assert_error(await post({"search_categories": {"room_events": {}}}), 400, "M_MISSING_PARAM")
    assert_error(
        await post({"search_categories": {"room_events": {"search_term": 5}}}), 400, "M_BAD_JSON"
    )
    assert_error(await post(with_criteria(order_by="oldest")), 400, "M_INVALID_PARAM")
    assert_error(await post(with_criteria(keys="content.body")), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(keys=["content.url"])), 400, "M_INVALID_PARAM")
    assert_error(await post(with_criteria(filter=[])), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(filter={"limit": "ten"})), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(filter={"rooms": "!a:b"})), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(event_context=5)), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(event_context={"before_limit": "5"})), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(event_context={"after_limit": -1})), 400, "M_INVALID_PARAM")
    assert_error(
        await post(with_criteria(event_context={"include_profile": "yes"})), 400, "M_BAD_JSON"
    )
    assert_error(await post(with_criteria(include_state=1)), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(groupings=[])), 400, "M_BAD_JSON")
    assert_error(await post(with_criteria(groupings={"group_by": [{"key": 1}]})), 400, "M_BAD_JSON")
    assert_error(
        await post(with_criteria(groupings={"group_by": [{"key": "type"}]})), 400, "M_INVALID_PARAM"
    )
    bad_tokens = (
        "garbage", "", "%%%", "e30", "eyJvIjoicmFuayJ9", str(Batch("recent", -1)),
        str(Batch("recent", 2**63)), str(Batch("rank", (float("inf"), 1))),
        str(Batch("rank", (1.0, -5))), str(Batch("rank", (1.0, 5), ("type", "x"))),
    )
    for token in bad_tokens:
        assert_error(await post(with_criteria(), next_batch=token), 400, "M_INVALID_PARAM")
    # A token of one order is not one of the other.
    recent = str(Batch("recent", 10))
    assert_error(await post(with_criteria(), next_batch=recent), 400, "M_INVALID_PARAM")
    assert (await post(with_criteria(order_by="recent"), next_batch=recent)).status == 200
    # Not JSON at all.
    resp = await server.post(f"{V3}/search", data="{", token=alice)
    assert_error(resp, 400, "M_NOT_JSON")
    # No room_events category: nothing searched.
    resp = await post({"search_categories": {}})
    assert resp.status == 200 and resp.body == {"search_categories": {}}


# ------------------------------------------------- index and migration


async def test_the_migration_backfills_what_live_indexing_writes(server):
    """The 0012 back-fill statement, run over events already stored, builds
    the same index the persistence hook did (rejected and redacted left out)."""
    alice, = await users(server, "alice")
    room = await create_room(server, alice, name="Room name words", topic="Topic words")
    await send(server, alice, room, "a body")
    await send(server, alice, room, "   ")
    gone = await send(server, alice, room, "redacted words")
    await server.put(f"{V3}/rooms/{q(room)}/redact/{q(gone)}/r1", {}, token=alice)
    resp = await server.put(
        f"{V3}/rooms/{q(room)}/send/m.room.message/odd", {"body": {"not": "text"}}, token=alice
    )
    assert resp.status == 200
    db = server.hs.db
    if db.dialect == "postgres":
        read = "SELECT stream_ordering, vector::text FROM event_search ORDER BY 1"
    else:
        read = "SELECT rowid, value FROM event_search ORDER BY 1"
    live = await db.fetchall("test", read)
    assert len(live) == 3

    (migration,) = [m for m in available_migrations(db.dialect) if m.version == 12]
    backfill = migration.sql[migration.sql.index("INSERT INTO event_search"):]
    await db.execute("test", "DELETE FROM event_search")
    await db.execute("test", backfill)
    assert await db.fetchall("test", read) == live


async def test_an_unknown_language_stops_the_server_at_start(tmp_path, database_config, engine):
    config = make_config(tmp_path, database_config, search={"language": "klingon"})
    if engine == "sqlite":
        # SQLite has no text search configurations: the option does not apply.
        await stop_server(await start_server(config))
        return
    hs = HomeServer(config)
    try:
        with pytest.raises(Exception, match='"klingon" does not exist'):
            await hs.start()
    finally:
        await hs.db.close()


def test_the_language_must_be_a_configuration_name(tmp_path):
    with pytest.raises(ConfigError, match="search.language"):
        make_config(tmp_path, {"name": "sqlite3", "args": {"database": ":memory:"}},
                    search={"language": "english; DROP TABLE events"})
