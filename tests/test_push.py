"""Push: the spec's default rules, compiled evaluation, unread counts and receipts,
push rule CRUD, pushers against a real push gateway, and /notifications.

Evaluator tests use hand-made events; the rest runs over real HTTP on both engines.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from aiohttp import web
from yarl import URL

from homeserver.events.model import ROOM_VERSIONS, Event
from homeserver.push.evaluator import (
    EventContext,
    RuleSet,
    compile_ruleset,
    evaluate,
    glob_matches,
    parse_path,
)
from homeserver.push.rules import (
    DEFAULT_OVERRIDE_RULES,
    DEFAULT_UNDERRIDE_RULES,
    PushRule,
    merge_rules,
)
from homeserver.rooms.power_levels import PowerLevels

from .conftest import with_config

if TYPE_CHECKING:
    from .conftest import Response, TestServer

V3 = "/_matrix/client/v3"
SPEC_OVERRIDE_IDS = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.invite_for_me",
    ".m.rule.member_event",
    ".m.rule.is_user_mention",
    ".m.rule.is_room_mention",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
]
SPEC_UNDERRIDE_IDS = [
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
]
SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
HIGHLIGHT = {"set_tweak": "highlight"}

_txn_ids = itertools.count()
_event_ids = itertools.count()


def q(identifier: str) -> str:
    return quote(identifier, safe="")


# ========================================================== evaluator (units)

V12 = ROOM_VERSIONS["12"]
ALICE, BOB, CAROL = "@alice:test.local", "@bob:test.local", "@carol:test.local"
DEFAULTS = compile_ruleset(merge_rules(()))


def make_event(event_type: str = "m.room.message", content: dict[str, Any] | None = None, **pdu: Any) -> Event:
    body: dict[str, Any] = {
        "type": event_type,
        "sender": ALICE,
        "room_id": "!room",
        "content": {"msgtype": "m.text", "body": "hello"} if content is None else content,
        **pdu,
    }
    return Event(f"$e{next(_event_ids)}", V12, body)


def context(event: Event, members: int = 5, *, users: dict[str, int] | None = None, **extra: Any) -> EventContext:
    levels = PowerLevels(V12, frozenset(), {"users": users or {}, **extra})
    return EventContext(event, members, levels, {})


def outcome(event: Event, user: str = BOB, ruleset: RuleSet = DEFAULTS, **kw: Any) -> str | None:
    rule = evaluate(ruleset, context(event, **kw), user)
    return rule.rule_id if rule is not None else None


def test_default_rules_are_the_specs_in_order() -> None:
    assert [r.rule_id for r in DEFAULT_OVERRIDE_RULES] == SPEC_OVERRIDE_IDS
    assert [r.rule_id for r in DEFAULT_UNDERRIDE_RULES] == SPEC_UNDERRIDE_IDS
    master = DEFAULT_OVERRIDE_RULES[0]
    assert (master.enabled, master.actions, master.conditions) == (False, (), ())
    assert all(r.default for r in (*DEFAULT_OVERRIDE_RULES, *DEFAULT_UNDERRIDE_RULES))


def test_messages_by_room_size() -> None:
    assert outcome(make_event(), members=2) == ".m.rule.room_one_to_one"
    assert outcome(make_event(), members=3) == ".m.rule.message"
    encrypted = make_event("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"})
    assert outcome(encrypted, members=2) == ".m.rule.encrypted_room_one_to_one"
    assert outcome(encrypted, members=10) == ".m.rule.encrypted"
    assert outcome(make_event("m.call.invite", {"call_id": "1"})) == ".m.rule.call"
    assert outcome(make_event("m.room.topic", {"topic": "t"}, state_key="")) is None


def test_suppressing_rules() -> None:
    notice = make_event(content={"msgtype": "m.notice", "body": "bot says"})
    assert outcome(notice) == ".m.rule.suppress_notices"
    reaction = make_event("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}})
    assert outcome(reaction) == ".m.rule.reaction"
    edit = make_event(content={"body": "* fixed", "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert outcome(edit) == ".m.rule.suppress_edits"
    acl = make_event("m.room.server_acl", {"allow": ["*"]}, state_key="")
    assert outcome(acl) == ".m.rule.room.server_acl"


def test_member_events() -> None:
    invite = make_event("m.room.member", {"membership": "invite"}, state_key=BOB)
    assert outcome(invite, BOB) == ".m.rule.invite_for_me"
    assert outcome(invite, CAROL) == ".m.rule.member_event"
    join = make_event("m.room.member", {"membership": "join"}, state_key=CAROL)
    assert outcome(join, BOB) == ".m.rule.member_event"


def test_mentions() -> None:
    mention = make_event(content={"body": "hey", "m.mentions": {"user_ids": [BOB]}})
    ctx = context(mention)
    bob, carol = evaluate(DEFAULTS, ctx, BOB), evaluate(DEFAULTS, ctx, CAROL)
    assert bob is not None and bob.rule_id == ".m.rule.is_user_mention" and bob.highlight
    assert carol is not None and carol.rule_id == ".m.rule.message" and not carol.highlight
    # A body naming Bob is not a mention since v1.17 (legacy mention rules removed).
    assert outcome(make_event(content={"body": "bob: hi", "msgtype": "m.text"})) == ".m.rule.message"

    room = make_event(content={"body": "@room", "m.mentions": {"room": True}})
    assert outcome(room, users={ALICE: 50}) == ".m.rule.is_room_mention"
    assert outcome(room, users={ALICE: 0}) == ".m.rule.message"
    assert outcome(room, users={ALICE: 10}, notifications={"room": 10}) == ".m.rule.is_room_mention"
    not_true = make_event(content={"body": "@room", "m.mentions": {"room": "true"}})
    assert outcome(not_true, users={ALICE: 100}) == ".m.rule.message"


def test_tombstone_highlights_only_as_state() -> None:
    tombstone = make_event("m.room.tombstone", {"body": "moved", "replacement_room": "!new"}, state_key="")
    rule = evaluate(DEFAULTS, context(tombstone), BOB)
    assert rule is not None and rule.rule_id == ".m.rule.tombstone" and rule.highlight
    assert outcome(make_event("m.room.tombstone", {"body": "x"})) is None


def test_event_match_globs_and_word_boundaries() -> None:
    # The spec's examples.
    for topic in ("Lunch plans", "LUNCH"):
        assert glob_matches("lunc?*", topic, False)
    for topic in (" lunch", "lunc"):
        assert not glob_matches("lunc?*", topic, False)
    for body in ("An example event.", "exple", "An exciting triple-whammy"):
        assert glob_matches("ex*ple", body, True)
    assert not glob_matches("ex*ple", "examples", True)
    assert glob_matches("cake", "I like cake!", True)
    assert not glob_matches("cake", "cakes", True)
    assert not glob_matches("cake", "my_cake", True)  # `_` is a word character
    assert glob_matches("", "", False) and not glob_matches("", "x", False)


def test_property_paths_and_exact_values() -> None:
    assert parse_path("content.m\\.relates_to.rel_type") == ("content", "m.relates_to", "rel_type")
    assert parse_path("content.m\\\\foo") == ("content", "m\\foo")
    assert parse_path("content.a\\xb") == ("content", "a\\xb")

    def rules(*conditions: dict[str, Any]) -> RuleSet:
        return compile_ruleset([PushRule("override", "r", ("notify",), conditions=tuple(conditions))])

    create = make_event("m.room.create", {"m.federate": True, "n": 1, "alt": ["#a:x", 1]}, state_key="")
    is_true = rules({"kind": "event_property_is", "key": "content.m\\.federate", "value": True})
    assert outcome(create, ruleset=is_true) == "r"
    for value in ("true", 1):
        wrong = rules({"kind": "event_property_is", "key": "content.m\\.federate", "value": value})
        assert outcome(create, ruleset=wrong) is None
    assert outcome(create, ruleset=rules({"kind": "event_property_is", "key": "content.n", "value": True})) is None
    # `1` is not `true`, even where both conditions are evaluated for one event.
    both = compile_ruleset(
        [
            PushRule("override", "is-true", ("notify",), conditions=({"kind": "event_property_is", "key": "content.n", "value": True},)),
            PushRule("override", "is-one", ("notify",), conditions=({"kind": "event_property_is", "key": "content.n", "value": 1},)),
        ]
    )
    assert outcome(create, ruleset=both) == "is-one"
    contains = rules({"kind": "event_property_contains", "key": "content.alt", "value": "#a:x"})
    assert outcome(create, ruleset=contains) == "r"
    partial = rules({"kind": "event_property_contains", "key": "content.alt", "value": ":x"})
    assert outcome(create, ruleset=partial) is None
    star_on_missing = rules({"kind": "event_match", "key": "content.nothing", "pattern": "*"})
    assert outcome(create, ruleset=star_on_missing) is None
    star_on_number = rules({"kind": "event_match", "key": "content.n", "pattern": "*"})
    assert outcome(create, ruleset=star_on_number) is None
    assert outcome(create, ruleset=rules({"kind": "some_future_condition"})) is None
    assert outcome(create, ruleset=rules()) == "r"  # no conditions: always


def test_room_member_count_operators() -> None:
    event = make_event()
    for is_, members, expected in [
        ("2", 2, True), ("==2", 3, False), ("<3", 2, True), ("<3", 3, False), (">3", 4, True),
        (">=3", 3, True), ("<=3", 4, False),
    ]:
        ruleset = compile_ruleset(
            [PushRule("override", "r", ("notify",), conditions=({"kind": "room_member_count", "is": is_},))]
        )
        assert (outcome(event, ruleset=ruleset, members=members) == "r") is expected, (is_, members)


def test_user_rules_come_before_defaults_and_master_beats_all() -> None:
    from storage.push import StoredRule

    def stored(kind: str, rule_id: str, priority: int = 0, **kw: Any) -> StoredRule:
        return StoredRule(kind, rule_id, priority, kw.get("conditions"), kw.get("pattern"), kw.get("actions", ()), kw.get("enabled", True))

    cake = stored("content", "cake", pattern="cake", actions=("notify", HIGHLIGHT))
    quiet_room = stored("room", "!room", actions=())
    ruleset = compile_ruleset(merge_rules([cake, quiet_room]))
    assert outcome(make_event(content={"msgtype": "m.text", "body": "Cake time"}), ruleset=ruleset) == "cake"
    assert outcome(make_event(), ruleset=ruleset) == "!room"
    # Override rules (default ones too) win over content rules: notices stay quiet.
    notice = make_event(content={"msgtype": "m.notice", "body": "cake"})
    assert outcome(notice, ruleset=ruleset) == ".m.rule.suppress_notices"
    # The master rule, enabled, is above even the user's override rules.
    own_override = stored("override", "everything", conditions=(), actions=("notify",))
    master_on = StoredRule("override", ".m.rule.master", 0, None, None, None, True)
    assert outcome(make_event(), ruleset=compile_ruleset(merge_rules([own_override]))) == "everything"
    assert outcome(make_event(), ruleset=compile_ruleset(merge_rules([own_override, master_on]))) == ".m.rule.master"
    disabled = StoredRule("underride", ".m.rule.message", 0, None, None, None, False)
    assert outcome(make_event(), ruleset=compile_ruleset(merge_rules([disabled]))) is None


def test_contains_display_name_condition() -> None:
    ruleset = compile_ruleset(
        [PushRule("override", "name", ("notify",), conditions=({"kind": "contains_display_name"},))]
    )
    event = make_event(content={"msgtype": "m.text", "body": "Thanks, Bob Smith!"})
    ctx = EventContext(event, 3, None, {BOB: "bob smith", CAROL: "Smith Bob", "@d:test.local": None})
    assert evaluate(ruleset, ctx, BOB) is not None
    assert evaluate(ruleset, ctx, CAROL) is None
    assert evaluate(ruleset, ctx, "@d:test.local") is None


def test_shared_outcomes_still_per_member() -> None:
    """Outcomes are memoised per ruleset and member-dependent facts, never leaking across members."""
    users = [f"@u{i}:test.local" for i in range(300)]
    event = make_event(content={"body": "hi", "m.mentions": {"user_ids": users[10:12]}})
    ctx = context(event)
    results = {u: evaluate(DEFAULTS, ctx, u) for u in users}
    highlighted = {u for u, rule in results.items() if rule is not None and rule.highlight}
    assert highlighted == set(users[10:12])
    assert len(ctx.outcomes) == 2  # mentioned, or not


# ============================================================== HTTP helpers


async def room_with(server: TestServer, *names: str, **create: Any) -> tuple[str, list[dict[str, Any]]]:
    """A room created by the first user and joined by the others; returns (room ID, logins)."""
    users = [await server.register_user(name) for name in names]
    resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat", **create}, token=users[0]["access_token"])
    assert resp.status == 200, resp.body
    room_id = resp.body["room_id"]
    for user in users[1:]:
        joined = await server.post(f"{V3}/join/{q(room_id)}", {}, token=user["access_token"])
        assert joined.status == 200, joined.body
    return room_id, users


async def send(
    server: TestServer, token: str, room_id: str, body: str = "hi", *, event_type: str = "m.room.message", **content: Any
) -> str:
    payload = {"msgtype": "m.text", "body": body, **content}
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/t{next(_txn_ids)}", payload, token=token)
    assert resp.status == 200, resp.body
    return resp.body["event_id"]


async def counts(server: TestServer, user: dict[str, Any], room_id: str) -> dict[str, Any]:
    return (await server.hs.push.unread_counts(user["user_id"], [room_id]))[room_id]


async def receipt(server: TestServer, user: dict[str, Any], room_id: str, event_id: str, receipt_type: str = "m.read", **body: Any) -> None:
    resp = await server.post(
        f"{V3}/rooms/{q(room_id)}/receipt/{receipt_type}/{q(event_id)}", body, token=user["access_token"]
    )
    assert resp.status == 200, resp.body


def zero(threads: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"notification_count": 0, "highlight_count": 0, "threads": threads or {}}


def count(n: int, h: int = 0, threads: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"notification_count": n, "highlight_count": h, "threads": threads or {}}


def error(resp: Response) -> tuple[int, str]:
    return resp.status, (resp.body or {}).get("errcode")


# ===================================================== evaluation over HTTP


async def test_unread_counts_follow_messages_mentions_and_receipts(server: TestServer) -> None:
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol")
    assert await counts(server, bob, room_id) == zero()
    await send(server, alice["access_token"], room_id, "one")
    second = await send(server, alice["access_token"], room_id, "two")
    assert await counts(server, bob, room_id) == count(2)
    mention = await send(server, alice["access_token"], room_id, "bob!", **{"m.mentions": {"user_ids": [bob["user_id"]]}})
    assert await counts(server, bob, room_id) == count(3, 1)
    # The sender is never notified of their own events.
    assert await counts(server, alice, room_id) == zero()

    await receipt(server, bob, room_id, second)
    assert await counts(server, bob, room_id) == count(1, 1)
    await receipt(server, bob, room_id, mention, "m.read.private")
    assert await counts(server, bob, room_id) == zero()
    # A public receipt behind the private one does not bring notifications back.
    await send(server, alice["access_token"], room_id, "three")
    await receipt(server, bob, room_id, second)
    assert await counts(server, bob, room_id) == count(1)


async def test_suppressed_events_do_not_count(server: TestServer) -> None:
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol")
    target = await send(server, alice["access_token"], room_id, "base")
    await receipt(server, bob, room_id, target)
    await send(server, alice["access_token"], room_id, "beep", msgtype="m.notice")
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/send/m.reaction/t{next(_txn_ids)}",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}},
        token=alice["access_token"],
    )
    assert resp.status == 200, resp.body
    await send(
        server, alice["access_token"], room_id, "* base!",
        **{"m.new_content": {"msgtype": "m.text", "body": "base!"}, "m.relates_to": {"rel_type": "m.replace", "event_id": target}},
    )
    resp = await server.put(f"{V3}/rooms/{q(room_id)}/state/m.room.topic", {"topic": "quiet"}, token=alice["access_token"])
    assert resp.status == 200
    assert await counts(server, bob, room_id) == zero()


async def test_one_to_one_and_invites_and_tombstones(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    await send(server, alice["access_token"], room_id, "just us")
    carol = await server.register_user("carol")
    resp = await server.post(f"{V3}/rooms/{q(room_id)}/invite", {"user_id": carol["user_id"]}, token=alice["access_token"])
    assert resp.status == 200, resp.body
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/state/m.room.tombstone",
        {"body": "moved", "replacement_room": "!elsewhere:test.local"},
        token=alice["access_token"],
    )
    assert resp.status == 200, resp.body

    bob_notes = (await server.get(f"{V3}/notifications", token=bob["access_token"])).body["notifications"]
    assert [(n["event"]["type"], n["actions"]) for n in bob_notes] == [
        ("m.room.tombstone", ["notify", HIGHLIGHT]),
        ("m.room.message", ["notify", SOUND_DEFAULT]),  # .m.rule.room_one_to_one
    ]
    assert await counts(server, bob, room_id) == count(2, 1)
    # The invitee is not joined, yet hears of the invite (.m.rule.invite_for_me).
    carol_notes = (await server.get(f"{V3}/notifications", token=carol["access_token"])).body["notifications"]
    assert [(n["event"]["type"], n["event"]["state_key"], n["actions"]) for n in carol_notes] == [
        ("m.room.member", carol["user_id"], ["notify", SOUND_DEFAULT])
    ]


async def test_room_mentions_need_power(server: TestServer) -> None:
    room_id, (alice, bob, carol) = await room_with(server, "alice", "bob", "carol")
    await send(server, bob["access_token"], room_id, "@room", **{"m.mentions": {"room": True}})
    assert await counts(server, carol, room_id) == count(1, 0)
    await send(server, alice["access_token"], room_id, "@room", **{"m.mentions": {"room": True}})
    assert await counts(server, carol, room_id) == count(2, 1)


async def test_thread_counts_and_threaded_receipts(server: TestServer) -> None:
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol")
    root = await send(server, alice["access_token"], room_id, "root")
    in_thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    first = await send(server, alice["access_token"], room_id, "r1", **in_thread)
    second = await send(server, alice["access_token"], room_id, "r2", **in_thread)
    # A reply to a thread message, not itself marked m.thread, is still in the thread (one hop).
    await send(server, alice["access_token"], room_id, "ref", **{"m.relates_to": {"rel_type": "m.reference", "event_id": second}})
    main_after = await send(server, alice["access_token"], room_id, "main 2")
    thread = {root: {"notification_count": 3, "highlight_count": 0}}
    assert await counts(server, bob, room_id) == count(2, 0, thread)

    await receipt(server, bob, room_id, first, thread_id=root)
    assert await counts(server, bob, room_id) == count(2, 0, {root: {"notification_count": 2, "highlight_count": 0}})
    await receipt(server, bob, room_id, main_after, thread_id="main")
    assert await counts(server, bob, room_id) == count(0, 0, {root: {"notification_count": 2, "highlight_count": 0}})
    # An unthreaded receipt clears everything up to it, threads included.
    await receipt(server, bob, room_id, main_after)
    assert await counts(server, bob, room_id) == zero()


async def test_unread_counts_for_many_rooms_in_one_call(server: TestServer) -> None:
    alice = await server.register_user("alice")
    bob = await server.register_user("bob")
    rooms = []
    for i in range(3):
        resp = await server.post(f"{V3}/createRoom", {"preset": "public_chat"}, token=alice["access_token"])
        rooms.append(resp.body["room_id"])
        await server.post(f"{V3}/join/{q(rooms[-1])}", {}, token=bob["access_token"])
        for _ in range(i):
            await send(server, alice["access_token"], rooms[-1])
    result = await server.hs.push.unread_counts(bob["user_id"], [*rooms, "!unknown:test.local"])
    # Two-member rooms: .m.rule.room_one_to_one.
    assert [result[r]["notification_count"] for r in rooms] == [0, 1, 2]
    assert result["!unknown:test.local"] == zero()


# =============================================================== push rules


async def test_default_ruleset_over_http(server: TestServer) -> None:
    alice = await server.register_user("alice")
    resp = await server.get(f"{V3}/pushrules/", token=alice["access_token"])
    assert resp.status == 200
    ruleset = resp.body["global"]
    assert set(ruleset) == {"override", "content", "room", "sender", "underride"}
    assert [r["rule_id"] for r in ruleset["override"]] == SPEC_OVERRIDE_IDS
    assert [r["rule_id"] for r in ruleset["underride"]] == SPEC_UNDERRIDE_IDS
    assert ruleset["content"] == ruleset["room"] == ruleset["sender"] == []
    invite = next(r for r in ruleset["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert invite == {
        "rule_id": ".m.rule.invite_for_me",
        "default": True,
        "enabled": True,
        "conditions": [
            {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
            {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
            {"key": "state_key", "kind": "event_match", "pattern": alice["user_id"]},
        ],
        "actions": ["notify", SOUND_DEFAULT],
    }
    mention = next(r for r in ruleset["override"] if r["rule_id"] == ".m.rule.is_user_mention")
    assert mention["conditions"][0]["value"] == alice["user_id"]
    assert (await server.get(f"{V3}/pushrules/global/", token=alice["access_token"])).body == ruleset
    assert (await server.get(f"{V3}/pushrules/", token=None)).status == 401

    resp = await server.get(f"{V3}/pushrules/global/override/.m.rule.master", token=alice["access_token"])
    assert resp.body == {"rule_id": ".m.rule.master", "default": True, "enabled": False, "conditions": [], "actions": []}
    assert error(await server.get(f"{V3}/pushrules/global/underride/.m.rule.master", token=alice["access_token"])) == (404, "M_NOT_FOUND")
    assert error(await server.get(f"{V3}/pushrules/global/override/nope", token=alice["access_token"])) == (404, "M_NOT_FOUND")
    assert error(await server.get(f"{V3}/pushrules/global/sideways/x", token=alice["access_token"])) == (400, "M_INVALID_PARAM")
    account_data = await server.hs.push.push_rules_account_data(alice["user_id"])
    assert account_data == {"type": "m.push_rules", "content": {"global": ruleset}}


async def rule_ids(server: TestServer, token: str, kind: str) -> list[str]:
    return [r["rule_id"] for r in (await server.get(f"{V3}/pushrules/global/", token=token)).body[kind]]


async def test_put_rules_with_ordering(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    base = f"{V3}/pushrules/global/content"
    for name in ("a", "b", "c"):
        resp = await server.put(f"{base}/{name}", {"pattern": name, "actions": ["notify"]}, token=token)
        assert resp.status == 200 and resp.body == {}
    assert await rule_ids(server, token, "content") == ["c", "b", "a"]  # newest first
    await server.put(f"{base}/d", {"pattern": "d", "actions": []}, token=token, params={"after": "c"})
    assert await rule_ids(server, token, "content") == ["c", "d", "b", "a"]
    await server.put(f"{base}/e", {"pattern": "e", "actions": []}, token=token, params={"before": "a"})
    assert await rule_ids(server, token, "content") == ["c", "d", "b", "e", "a"]
    # Moving an existing rule; `before` wins over `after`.
    await server.put(f"{base}/c", {"pattern": "c2", "actions": []}, token=token, params={"before": "a", "after": "d"})
    assert await rule_ids(server, token, "content") == ["d", "b", "e", "c", "a"]
    # An update without before/after keeps its place and its enabled state.
    await server.put(f"{base}/b/enabled", {"enabled": False}, token=token)
    await server.put(f"{base}/b", {"pattern": "bee", "actions": ["notify", HIGHLIGHT]}, token=token)
    assert await rule_ids(server, token, "content") == ["d", "b", "e", "c", "a"]
    rule = (await server.get(f"{base}/b", token=token)).body
    assert rule == {"rule_id": "b", "default": False, "enabled": False, "pattern": "bee", "actions": ["notify", HIGHLIGHT]}

    override = f"{V3}/pushrules/global/override/beer"
    conditions = [
        {"kind": "event_match", "key": "content.body", "pattern": "beer"},
        {"kind": "room_member_count", "is": "<=10"},
    ]
    resp = await server.put(override, {"conditions": conditions, "actions": ["notify", "dont_notify", "coalesce"]}, token=token)
    assert resp.status == 200, resp.body
    rules = (await server.get(f"{V3}/pushrules/global/", token=token)).body["override"]
    # User overrides sit after the master rule and before the other defaults.
    assert [r["rule_id"] for r in rules[:3]] == [".m.rule.master", "beer", ".m.rule.suppress_notices"]
    assert rules[1] == {"rule_id": "beer", "default": False, "enabled": True, "conditions": conditions, "actions": ["notify"]}
    resp = await server.put(f"{V3}/pushrules/global/room/{q('!r:test.local')}", {"actions": []}, token=token)
    assert resp.status == 200
    assert (await server.get(f"{V3}/pushrules/global/room/{q('!r:test.local')}", token=token)).body == {
        "rule_id": "!r:test.local", "default": False, "enabled": True, "actions": []
    }


async def test_put_rule_refusals(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    content = f"{V3}/pushrules/global/content"
    await server.put(f"{content}/a", {"pattern": "a", "actions": []}, token=token)
    cases: list[tuple[str, Any, dict[str, str] | None, tuple[int, str]]] = [
        (f"{content}/.mine", {"pattern": "x", "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/.m.rule.master", {"actions": ["notify"]}, None, (400, "M_INVALID_PARAM")),
        (f"{content}/a%5Cb", {"pattern": "x", "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{content}/x", {"pattern": "x", "actions": []}, {"before": "nope"}, (400, "M_UNKNOWN")),
        (f"{content}/x", {"pattern": "x", "actions": []}, {"after": ".m.rule.master"}, (400, "M_UNKNOWN")),
        (f"{content}/x", {"actions": []}, None, (400, "M_MISSING_PARAM")),
        (f"{content}/x", {"pattern": 5, "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{content}/x", {"pattern": "x"}, None, (400, "M_MISSING_PARAM")),
        (f"{content}/x", {"pattern": "x", "actions": "notify"}, None, (400, "M_INVALID_PARAM")),
        (f"{content}/x", {"pattern": "x", "actions": ["shout"]}, None, (400, "M_INVALID_PARAM")),
        (f"{content}/x", {"pattern": "x", "actions": [{"set_tweak": 1}]}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/x", {"conditions": {}, "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/x", {"conditions": [{"key": "type"}], "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/x", {"conditions": [{"kind": "event_match", "key": "type"}], "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/x", {"conditions": [{"kind": "event_property_is", "key": "a", "value": [1]}], "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/override/x", {"conditions": [{"kind": "room_member_count", "is": "~2"}], "actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/room/not-a-room", {"actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/sender/not-a-user", {"actions": []}, None, (400, "M_INVALID_PARAM")),
        (f"{V3}/pushrules/global/sideways/x", {"actions": []}, None, (400, "M_INVALID_PARAM")),
    ]
    for path, body, params, expected in cases:
        resp = await server.put(path, body, token=token, params=params)
        assert error(resp) == expected, (path, body, params, resp.body)
    assert error(await server.put(f"{content}/x", data="{", token=token)) == (400, "M_NOT_JSON")
    # Unknown condition kinds are accepted: they simply never match (spec).
    resp = await server.put(f"{V3}/pushrules/global/override/future", {"conditions": [{"kind": "future"}], "actions": ["notify"]}, token=token)
    assert resp.status == 200
    assert await rule_ids(server, token, "content") == ["a"]


async def test_delete_enabled_and_actions(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    rule = f"{V3}/pushrules/global/sender/{q('@spam:test.local')}"
    assert (await server.put(rule, {"actions": []}, token=token)).status == 200
    assert (await server.get(f"{rule}/enabled", token=token)).body == {"enabled": True}
    assert (await server.put(f"{rule}/enabled", {"enabled": False}, token=token)).status == 200
    assert (await server.get(f"{rule}/enabled", token=token)).body == {"enabled": False}
    assert (await server.put(f"{rule}/actions", {"actions": ["notify"]}, token=token)).status == 200
    assert (await server.get(f"{rule}/actions", token=token)).body == {"actions": ["notify"]}
    assert error(await server.put(f"{rule}/enabled", {"enabled": "no"}, token=token)) == (400, "M_BAD_JSON")
    assert error(await server.put(f"{rule}/enabled", {}, token=token)) == (400, "M_MISSING_PARAM")
    assert error(await server.put(f"{rule}/actions", {}, token=token)) == (400, "M_MISSING_PARAM")
    assert error(await server.put(f"{rule}/actions", {"actions": ["sing"]}, token=token)) == (400, "M_INVALID_PARAM")
    assert (await server.delete(rule, token=token)).status == 200
    for resp in (
        await server.delete(rule, token=token),
        await server.get(rule, token=token),
        await server.get(f"{rule}/enabled", token=token),
        await server.put(f"{rule}/enabled", {"enabled": True}, token=token),
        await server.get(f"{rule}/actions", token=token),
        await server.put(f"{rule}/actions", {"actions": []}, token=token),
        await server.put(f"{V3}/pushrules/global/override/.m.rule.nonexistent/enabled", {"enabled": True}, token=token),
    ):
        assert error(resp) == (404, "M_NOT_FOUND"), resp.body

    # Server-default rules: enabled and actions change, deletion is refused.
    master = f"{V3}/pushrules/global/override/.m.rule.master"
    assert error(await server.delete(master, token=token)) == (400, "M_INVALID_PARAM")
    assert (await server.put(f"{master}/enabled", {"enabled": True}, token=token)).status == 200
    message = f"{V3}/pushrules/global/underride/.m.rule.message"
    assert (await server.put(f"{message}/actions", {"actions": ["notify", HIGHLIGHT]}, token=token)).status == 200
    body = (await server.get(message, token=token)).body
    assert body["actions"] == ["notify", HIGHLIGHT] and body["default"] is True and body["enabled"] is True
    assert (await server.get(f"{master}/enabled", token=token)).body == {"enabled": True}
    # Another user's rules are untouched.
    other = (await server.register_user("bob"))["access_token"]
    assert (await server.get(f"{master}/enabled", token=other)).body == {"enabled": False}


async def test_rule_changes_apply_to_evaluation_and_account_data_stream(server: TestServer) -> None:
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol")
    await send(server, alice["access_token"], room_id, "cached ruleset")  # caches bob's ruleset
    assert await counts(server, bob, room_id) == count(1)
    push = server.hs.push
    before = server.hs.notifier.positions.get("account_data", 0)
    assert not await push.rules_changed_since(bob["user_id"], 0, before)
    message = f"{V3}/pushrules/global/underride/.m.rule.message/enabled"
    assert (await server.put(message, {"enabled": False}, token=bob["access_token"])).status == 200
    after = server.hs.notifier.positions["account_data"]
    assert after > before
    assert await push.rules_changed_since(bob["user_id"], before, after)
    assert not await push.rules_changed_since(bob["user_id"], after, after)
    assert not await push.rules_changed_since(alice["user_id"], before, after)
    await send(server, alice["access_token"], room_id, "silenced")
    assert await counts(server, bob, room_id) == count(1)
    # A keyword rule of Bob's own highlights.
    resp = await server.put(
        f"{V3}/pushrules/global/content/tea", {"pattern": "tea", "actions": ["notify", HIGHLIGHT]}, token=bob["access_token"]
    )
    assert resp.status == 200
    await send(server, alice["access_token"], room_id, "Time for TEA?")
    assert await counts(server, bob, room_id) == count(2, 1)


# ================================================================== pushers


def pusher_body(url: str, pushkey: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "app_id": "com.example.app.ios",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Alice's phone",
        "lang": "en",
        "data": {"url": url, "custom": "yes"},
        **extra,
    }


GATEWAY = "https://push.example.org/_matrix/push/v1/notify"
LOCAL_GATEWAYS = {"ip_range_whitelist": ["127.0.0.1/32"]}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """The push gateways of these tests listen on 127.0.0.1, which must be let through."""
    return LOCAL_GATEWAYS


async def test_pushers_set_list_update_delete(server: TestServer) -> None:
    alice = await server.register_user("alice")
    token = alice["access_token"]
    assert (await server.get(f"{V3}/pushers", token=token)).body == {"pushers": []}
    resp = await server.post(f"{V3}/pushers/set", pusher_body(GATEWAY, profile_tag="tag"), token=token)
    assert resp.status == 200 and resp.body == {}
    assert (await server.get(f"{V3}/pushers", token=token)).body == {
        "pushers": [
            {
                "pushkey": "key-1",
                "kind": "http",
                "app_id": "com.example.app.ios",
                "app_display_name": "Example",
                "device_display_name": "Alice's phone",
                "profile_tag": "tag",
                "lang": "en",
                "data": {"url": GATEWAY, "custom": "yes"},
            }
        ]
    }
    await server.post(f"{V3}/pushers/set", pusher_body(GATEWAY, lang="de"), token=token)
    pushers = (await server.get(f"{V3}/pushers", token=token)).body["pushers"]
    assert [(p["pushkey"], p["lang"]) for p in pushers] == [("key-1", "de")]
    await server.post(f"{V3}/pushers/set", pusher_body(GATEWAY, pushkey="key-2"), token=token)
    assert len((await server.get(f"{V3}/pushers", token=token)).body["pushers"]) == 2

    # The same app and pushkey for another user: moved, unless appended.
    bob = await server.register_user("bob")
    await server.post(f"{V3}/pushers/set", pusher_body(GATEWAY, pushkey="key-2", append=True), token=bob["access_token"])
    assert len((await server.get(f"{V3}/pushers", token=token)).body["pushers"]) == 2
    await server.post(f"{V3}/pushers/set", pusher_body(GATEWAY, pushkey="key-2"), token=bob["access_token"])
    assert [p["pushkey"] for p in (await server.get(f"{V3}/pushers", token=token)).body["pushers"]] == ["key-1"]
    assert len((await server.get(f"{V3}/pushers", token=bob["access_token"])).body["pushers"]) == 1

    resp = await server.post(f"{V3}/pushers/set", {"kind": None, "app_id": "com.example.app.ios", "pushkey": "key-1"}, token=token)
    assert resp.status == 200
    assert (await server.get(f"{V3}/pushers", token=token)).body == {"pushers": []}
    # Deleting what is not there is fine.
    resp = await server.post(f"{V3}/pushers/set", {"kind": None, "app_id": "com.example.app.ios", "pushkey": "key-1"}, token=token)
    assert resp.status == 200


async def test_pusher_refusals(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    good = pusher_body(GATEWAY)
    cases: list[tuple[dict[str, Any], tuple[int, str]]] = [
        ({k: v for k, v in good.items() if k != "kind"}, (400, "M_MISSING_PARAM")),
        ({k: v for k, v in good.items() if k != "app_id"}, (400, "M_MISSING_PARAM")),
        ({k: v for k, v in good.items() if k != "pushkey"}, (400, "M_MISSING_PARAM")),
        ({k: v for k, v in good.items() if k not in ("lang", "data")}, (400, "M_MISSING_PARAM")),
        ({**good, "kind": "email"}, (400, "M_INVALID_PARAM")),
        ({**good, "kind": 5}, (400, "M_INVALID_PARAM")),
        ({**good, "app_id": "x" * 65}, (400, "M_INVALID_PARAM")),
        ({**good, "pushkey": "é" * 257}, (400, "M_INVALID_PARAM")),
        ({**good, "pushkey": ""}, (400, "M_INVALID_PARAM")),
        ({**good, "data": {}}, (400, "M_INVALID_PARAM")),
        ({**good, "data": {"url": "https://push.example.org/notify"}}, (400, "M_INVALID_PARAM")),
        ({**good, "data": {"url": "ftp://push.example.org/_matrix/push/v1/notify"}}, (400, "M_INVALID_PARAM")),
        ({**good, "data": {"url": GATEWAY, "format": 1}}, (400, "M_INVALID_PARAM")),
        ({**good, "data": "url"}, (400, "M_BAD_JSON")),
        ({**good, "lang": 5}, (400, "M_BAD_JSON")),
        ({**good, "append": "yes"}, (400, "M_BAD_JSON")),
    ]
    for body, expected in cases:
        resp = await server.post(f"{V3}/pushers/set", body, token=token)
        assert error(resp) == expected, (body, resp.body)
    assert (await server.get(f"{V3}/pushers", token=token)).body == {"pushers": []}
    assert (await server.get(f"{V3}/pushers")).status == 401


@dataclass
class Gateway:
    """A real push gateway on a local port, answering from a script of responses."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    responses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Sent with redirects.
    headers: dict[str, str] = field(default_factory=dict)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        await until(lambda: len(self.received) >= n, timeout)
        return self.received


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    state = Gateway(url="")

    async def notify(request: web.Request) -> web.Response:
        state.received.append(await request.json())
        status, body = state.responses.pop(0) if state.responses else (200, {"rejected": []})
        return web.json_response(body, status=status, headers=state.headers if 300 <= status < 400 else None)

    app = web.Application()
    app.router.add_post("/_matrix/push/v1/notify", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/_matrix/push/v1/notify"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_http_pusher_delivers_and_retries(server: TestServer, gateway: Gateway) -> None:
    server.hs.push.pushers.initial_backoff = 0.05
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol", name="Mission Control")
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/state/m.room.member/{q(alice['user_id'])}",
        {"membership": "join", "displayname": "Major Tom"},
        token=alice["access_token"],
    )
    assert resp.status == 200, resp.body
    resp = await server.post(f"{V3}/pushers/set", pusher_body(gateway.url), token=bob["access_token"])
    assert resp.status == 200, resp.body
    gateway.responses = [(500, {"errcode": "M_UNKNOWN"}), (502, {})]
    event_id = await send(server, alice["access_token"], room_id, "I'm floating", **{"m.mentions": {"user_ids": [bob["user_id"]]}})
    received = await gateway.wait_for(3)
    assert received[0] == received[1] == received[2]  # the same notification, retried
    notification = received[2]["notification"]
    devices = notification.pop("devices")
    assert notification == {
        "event_id": event_id,
        "room_id": room_id,
        "type": "m.room.message",
        "sender": alice["user_id"],
        "sender_display_name": "Major Tom",
        "room_name": "Mission Control",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating", "m.mentions": {"user_ids": [bob["user_id"]]}},
        "counts": {"unread": 1},
    }
    assert len(devices) == 1
    pushkey_ts = devices[0].pop("pushkey_ts")
    assert isinstance(pushkey_ts, int) and abs(pushkey_ts - __import__("time").time()) < 60
    assert devices[0] == {
        "app_id": "com.example.app.ios",
        "pushkey": "key-1",
        "data": {"custom": "yes"},  # everything but the url (spec)
        "tweaks": {"sound": "default", "highlight": True},
    }
    # Once delivered, it is not sent again; the next one carries the new count.
    await send(server, alice["access_token"], room_id, "second")
    received = await gateway.wait_for(4)
    assert received[3]["notification"]["counts"] == {"unread": 2}
    assert received[3]["notification"]["prio"] == "low"
    assert received[3]["notification"]["devices"][0]["tweaks"] == {}
    await asyncio.sleep(0.2)
    assert len(gateway.received) == 4


async def test_http_pusher_event_id_only_and_rejection(server: TestServer, gateway: Gateway) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    body = pusher_body(gateway.url)
    body["data"] = {"url": gateway.url, "format": "event_id_only"}
    assert (await server.post(f"{V3}/pushers/set", body, token=bob["access_token"])).status == 200
    gateway.responses = [(200, {"rejected": ["key-1"]})]
    event_id = await send(server, alice["access_token"], room_id, "secret")
    received = await gateway.wait_for(1)
    assert received[0] == {
        "notification": {
            "event_id": event_id,
            "room_id": room_id,
            "prio": "high",
            "counts": {"unread": 1},
            "devices": [
                {
                    "app_id": "com.example.app.ios",
                    "pushkey": "key-1",
                    "pushkey_ts": received[0]["notification"]["devices"][0]["pushkey_ts"],
                    "data": {"format": "event_id_only"},
                    "tweaks": {"sound": "default"},
                }
            ],
        }
    }

    async def pushers() -> list[Any]:
        return (await server.get(f"{V3}/pushers", token=bob["access_token"])).body["pushers"]

    for _ in range(200):
        if not await pushers():
            break
        await asyncio.sleep(0.02)
    assert await pushers() == []
    await send(server, alice["access_token"], room_id, "after rejection")
    await asyncio.sleep(0.2)
    assert len(gateway.received) == 1


async def test_pusher_catches_up_after_restart_of_pool(server: TestServer, gateway: Gateway) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    assert (await server.post(f"{V3}/pushers/set", pusher_body(gateway.url), token=bob["access_token"])).status == 200
    await server.hs.push.pushers.stop()
    event_id = await send(server, alice["access_token"], room_id, "while down")
    assert gateway.received == []
    await server.hs.push.pushers.start()
    received = await gateway.wait_for(1)
    assert received[0]["notification"]["event_id"] == event_id
    # Read notifications are not pushed.
    read = await send(server, alice["access_token"], room_id, "read already")
    await gateway.wait_for(2)
    await server.hs.push.pushers.stop()
    await send(server, alice["access_token"], room_id, "read before push")
    latest = await send(server, alice["access_token"], room_id, "also read")
    await receipt(server, bob, room_id, latest)
    await server.hs.push.pushers.start()
    await asyncio.sleep(0.3)
    assert [r["notification"]["event_id"] for r in gateway.received][1:] == [read]


# ============================================================ notifications


async def test_notifications_endpoint(server: TestServer) -> None:
    room_id, (alice, bob, _carol) = await room_with(server, "alice", "bob", "carol")
    first = await send(server, alice["access_token"], room_id, "first")
    mention = await send(server, alice["access_token"], room_id, "hey bob", **{"m.mentions": {"user_ids": [bob["user_id"]]}})
    third = await send(server, alice["access_token"], room_id, "third")
    await receipt(server, bob, room_id, first)

    resp = await server.get(f"{V3}/notifications", token=bob["access_token"])
    assert resp.status == 200
    notes = resp.body["notifications"]
    assert "next_token" not in resp.body
    assert [n["event"]["event_id"] for n in notes] == [third, mention, first]
    assert [n["read"] for n in notes] == [False, False, True]
    assert all(n["room_id"] == room_id and isinstance(n["ts"], int) for n in notes)
    assert "room_id" not in notes[0]["event"]
    assert notes[0]["event"]["content"]["body"] == "third"
    assert notes[1]["actions"] == ["notify", SOUND_DEFAULT, HIGHLIGHT]
    assert notes[0]["actions"] == ["notify"]

    page = await server.get(f"{V3}/notifications", token=bob["access_token"], params={"limit": "2"})
    assert [n["event"]["event_id"] for n in page.body["notifications"]] == [third, mention]
    rest = await server.get(
        f"{V3}/notifications", token=bob["access_token"], params={"limit": "2", "from": page.body["next_token"]}
    )
    assert [n["event"]["event_id"] for n in rest.body["notifications"]] == [first]
    highlights = await server.get(f"{V3}/notifications", token=bob["access_token"], params={"only": "highlight"})
    assert [n["event"]["event_id"] for n in highlights.body["notifications"]] == [mention]
    assert (await server.get(f"{V3}/notifications", token=alice["access_token"])).body == {"notifications": []}

    for params in ({"from": "abc"}, {"from": "-1"}, {"limit": "0"}, {"limit": "x"}):
        resp = await server.get(f"{V3}/notifications", token=bob["access_token"], params=params)
        assert error(resp) == (400, "M_INVALID_PARAM"), params
    assert (await server.get(f"{V3}/notifications")).status == 401


# ============================================= several processes (PostgreSQL)


@pytest.fixture
async def two_servers(tmp_path: Any, postgres_dsn: str | None) -> AsyncIterator[tuple[Any, Any]]:
    """Two HomeServers on one PostgreSQL schema, as two processes would run."""
    from homeserver.app import HomeServer

    from . import postgres
    from .conftest import _require_postgres, make_config

    schema = postgres.Schema(_require_postgres(postgres_dsn))
    database = {"name": "psycopg", "args": schema.database_args()}
    servers = [HomeServer(make_config(tmp_path, database, **LOCAL_GATEWAYS)) for _ in range(2)]
    started = []
    try:
        for hs in servers:
            hs.push.pushers.ownership_retry = 0.1
            hs.push.pushers.poll_interval = 0.05
            await hs.start()
            started.append(hs)
        yield servers[0], servers[1]
    finally:
        for hs in reversed(started):
            await hs.stop()
        schema.drop()


async def test_one_process_pushes_and_rule_changes_reach_the_others(two_servers: tuple[Any, Any], gateway: Gateway) -> None:
    from storage.push import Pusher

    a, b = two_servers
    await until(lambda: a.push.pushers.is_owner or b.push.pushers.is_owner)
    await asyncio.sleep(0.3)  # the other has tried, and failed, to take over
    assert a.push.pushers.is_owner != b.push.pushers.is_owner
    owner, other = (a, b) if a.push.pushers.is_owner else (b, a)

    alice, bob = "@alice:test.local", "@bob:test.local"
    room_id = await other.rooms.create_room(alice, {"preset": "public_chat"})
    for user in (bob, CAROL):
        await other.rooms.update_membership(user, room_id, user, "join")
    pusher = Pusher(bob, "app", "key", "http", "App", "Phone", None, "en", {"url": gateway.url}, None, 0, 0)
    await other.push.set_pusher(pusher, append=False)  # set where it is not run
    message = {"msgtype": "m.text", "body": "hi"}
    first = await other.rooms.send_event(alice, room_id, "m.room.message", message)
    received = await gateway.wait_for(1)
    assert received[0]["notification"]["event_id"] == first
    await asyncio.sleep(0.3)
    assert len(gateway.received) == 1  # once, not once per process

    # Bob silences messages through one process; the other, which has his
    # ruleset cached, follows.
    assert (await other.push.unread_counts(bob, [room_id]))[room_id]["notification_count"] == 1
    await owner.push.set_enabled(bob, "underride", ".m.rule.message", False)
    await other.rooms.send_event(alice, room_id, "m.room.message", message)
    assert (await other.push.unread_counts(bob, [room_id]))[room_id]["notification_count"] == 1

    # The owner going away hands pushing over to the other process.
    await owner.push.pushers.stop()
    await until(lambda: other.push.pushers.is_owner)
    third = await owner.rooms.send_event(alice, room_id, "m.room.message", {**message, "m.mentions": {"user_ids": [bob]}})
    received = await gateway.wait_for(2)
    assert received[1]["notification"]["event_id"] == third


# ============================================= gateway addresses (SSRF)


@with_config()  # no ip_range_whitelist: 127.0.0.1 is as private as any
async def test_pusher_urls_at_non_public_addresses_are_refused(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    for host in (
        "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:10.1.2.3]", "10.1.2.3", "192.168.1.1",
        "172.16.0.1", "100.64.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "[fe80::1]", "[fd00::1]",
    ):
        url = f"http://{host}:8080/_matrix/push/v1/notify"
        resp = await server.post(f"{V3}/pushers/set", pusher_body(url), token=token)
        assert error(resp) == (400, "M_INVALID_PARAM"), (url, resp.body)
    assert (await server.get(f"{V3}/pushers", token=token)).body == {"pushers": []}


@with_config(ip_range_blacklist=["203.0.113.0/24", "8.8.8.0/24"])
async def test_pusher_urls_in_the_blacklist_are_refused(server: TestServer) -> None:
    token = (await server.register_user("alice"))["access_token"]
    for host in ("8.8.8.8", "[::ffff:8.8.8.8]"):
        resp = await server.post(f"{V3}/pushers/set", pusher_body(f"https://{host}/_matrix/push/v1/notify"), token=token)
        assert error(resp) == (400, "M_INVALID_PARAM"), (host, resp.body)
    resp = await server.post(f"{V3}/pushers/set", pusher_body("https://8.8.4.4/_matrix/push/v1/notify"), token=token)
    assert resp.status == 200, resp.body


async def pushed_up_to(server: TestServer, user_id: str) -> int:
    (pusher,) = await server.hs.storage.push.get_pushers([user_id])
    return pusher.last_push_position


@with_config()
async def test_pusher_never_connects_to_a_host_name_resolving_to_a_private_address(
    server: TestServer, gateway: Gateway
) -> None:
    """`localhost` passes POST /pushers/set (names are checked as they are
    resolved), but its addresses are refused when pushing: the notification
    is skipped, not retried."""
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    port = URL(gateway.url).port
    url = f"http://localhost:{port}/_matrix/push/v1/notify"
    assert (await server.post(f"{V3}/pushers/set", pusher_body(url), token=bob["access_token"])).status == 200
    before = await pushed_up_to(server, bob["user_id"])
    await send(server, alice["access_token"], room_id, "psst")
    for _ in range(500):
        if await pushed_up_to(server, bob["user_id"]) > before:
            break
        await asyncio.sleep(0.02)
    assert await pushed_up_to(server, bob["user_id"]) > before  # skipped
    assert gateway.received == []


async def test_pusher_does_not_follow_redirects(server: TestServer, gateway: Gateway) -> None:
    """A gateway redirecting elsewhere (say, to a private address it cannot be
    set to) gets its notification retried, never sent where it points."""
    server.hs.push.pushers.initial_backoff = 0.05
    elsewhere: list[str] = []

    async def notify(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.json_response({"rejected": []})

    app = web.Application()
    app.router.add_post("/_matrix/push/v1/notify", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        target = f"http://{host}:{port}/_matrix/push/v1/notify"
        gateway.responses = [(307, {}), (200, {"rejected": []})]
        gateway.headers = {"Location": target}
        room_id, (alice, bob) = await room_with(server, "alice", "bob")
        assert (await server.post(f"{V3}/pushers/set", pusher_body(gateway.url), token=bob["access_token"])).status == 200
        event_id = await send(server, alice["access_token"], room_id, "where to?")
        received = await gateway.wait_for(2)
        assert [r["notification"]["event_id"] for r in received] == [event_id, event_id]
        assert elsewhere == []
    finally:
        await runner.cleanup()


# ================================================= recipients at the event


async def test_evaluation_uses_the_members_at_the_event(server: TestServer) -> None:
    """An event evaluated after the members changed (a process catching up,
    say) is judged by the room as it was: those who joined later are not
    recipients, those who left since are, and the member count is then's."""
    room_id, (alice, bob, dave) = await room_with(server, "alice", "bob", "dave")
    event_id = await send(server, alice["access_token"], room_id, "three of us")
    for user in (bob, dave):
        assert (await server.post(f"{V3}/rooms/{q(room_id)}/leave", {}, token=user["access_token"])).status == 200
    carol = await server.register_user("carol")
    assert (await server.post(f"{V3}/join/{q(room_id)}", {}, token=carol["access_token"])).status == 200

    push = server.hs.push
    event = await server.hs.storage.events.get_event(event_id)
    assert event is not None
    (position, _group), = (await server.hs.storage.events.get_positions([event_id])).values()
    actions = await push._evaluate_room(room_id, [event], {event_id: position.stream_ordering})
    assert sorted(a.user_id for a in actions) == sorted([bob["user_id"], dave["user_id"]])
    # Three members then: a group message, not a one-to-one one (which has a sound).
    assert all(list(a.actions) == ["notify"] for a in actions)
    # Now, as it is: a one-to-one room where only Carol hears Alice.
    latest = await send(server, alice["access_token"], room_id, "two of us")
    assert await counts(server, carol, room_id) == count(1)
    notes = (await server.get(f"{V3}/notifications", token=carol["access_token"])).body["notifications"]
    assert [(n["event"]["event_id"], n["actions"]) for n in notes] == [(latest, ["notify", SOUND_DEFAULT])]


# ======================================================== housekeeping


async def test_redacted_events_stop_counting(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    kept = await send(server, alice["access_token"], room_id, "keep me")
    mention = await send(server, alice["access_token"], room_id, "oops", **{"m.mentions": {"user_ids": [bob["user_id"]]}})
    assert await counts(server, bob, room_id) == count(2, 1)
    resp = await server.put(
        f"{V3}/rooms/{q(room_id)}/redact/{q(mention)}/r{next(_txn_ids)}", {"reason": "typo"}, token=alice["access_token"]
    )
    assert resp.status == 200, resp.body
    assert await counts(server, bob, room_id) == count(1)
    notes = (await server.get(f"{V3}/notifications", token=bob["access_token"])).body["notifications"]
    assert [n["event"]["event_id"] for n in notes] == [kept]


async def stored_actions(server: TestServer, user_id: str) -> list[str]:
    rows = await server.hs.db.fetchall(
        "test_actions", "SELECT event_id FROM event_push_actions WHERE user_id = ? ORDER BY push_position", (user_id,)
    )
    return [r[0] for r in rows]


async def test_old_read_push_actions_are_pruned(server: TestServer) -> None:
    room_id, (alice, bob, carol) = await room_with(server, "alice", "bob", "carol")
    first = await send(server, alice["access_token"], room_id, "first")
    read = await send(server, alice["access_token"], room_id, "second")
    await receipt(server, bob, room_id, read)
    unread = await send(server, alice["access_token"], room_id, "third")
    push = server.hs.push
    # Recent ones stay, read or not.
    assert await push.prune_push_actions() == 0
    assert await stored_actions(server, bob["user_id"]) == [first, read, unread]

    push.keep_read_actions_ms = 0
    await asyncio.sleep(0.01)
    assert await push.prune_push_actions() == 2
    assert await stored_actions(server, bob["user_id"]) == [unread]
    # Carol read nothing: hers all stay, and still count.
    assert await stored_actions(server, carol["user_id"]) == [first, read, unread]
    assert await counts(server, carol, room_id) == count(3)
    assert await counts(server, bob, room_id) == count(1)
    # A thread's receipt covers that thread only.
    root = await send(server, alice["access_token"], room_id, "root")
    reply = await send(
        server, alice["access_token"], room_id, "in thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    await receipt(server, carol, room_id, reply, thread_id=root)
    await asyncio.sleep(0.01)
    assert await push.prune_push_actions() == 1
    assert reply not in await stored_actions(server, carol["user_id"])
    assert root in await stored_actions(server, carol["user_id"])


async def test_pruning_runs_in_the_background(server: TestServer) -> None:
    room_id, (alice, bob) = await room_with(server, "alice", "bob")
    read = await send(server, alice["access_token"], room_id, "read")
    await receipt(server, bob, room_id, read)
    push = server.hs.push
    await push.stop()
    push.prune_interval = 0.05
    push.keep_read_actions_ms = 0
    await push.start()
    for _ in range(250):
        if not await stored_actions(server, bob["user_id"]):
            break
        await asyncio.sleep(0.02)
    assert await stored_actions(server, bob["user_id"]) == []


@pytest.mark.parametrize(
    "raw_config, message",
    [
        ({"ip_range_blacklist": ["10.0.0.0/33"]}, "ip_range_blacklist[0]: expected an IP address range"),
        ({"ip_range_whitelist": ["127.0.0.1", "localhost"]}, "ip_range_whitelist[1]: expected an IP address range"),
    ],
)
def test_gateway_address_config_errors_name_the_key(raw_config: dict[str, Any], message: str) -> None:
    from homeserver.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"server_name": "example.com", **raw_config})
    assert message in str(info.value)
