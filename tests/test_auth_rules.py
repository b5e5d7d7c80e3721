"""The authorisation rules of room versions 10, 11 and 12, rule by rule.

Pure tests: events are hand-made PDUs wrapped in `Event`, state is a dict.
Each case names the rule number it expects per version (v10/v11, v12), so a
passing rejection proves the intended rule fired, not just any rule.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key

from federation.signing import sign
from homeserver.events.model import ROOM_VERSIONS, Event, StateKey
from homeserver.rooms.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_event_list,
    check_auth_rules,
)
from homeserver.rooms.power_levels import INFINITE_POWER, PowerLevels

VERSIONS = ("10", "11", "12")
ALICE = "@alice:a.example"  # the creator
BOB = "@bob:b.example"  # moderator, power 50
CAROL = "@carol:c.example"  # joined, power 0
DAVE = "@dave:d.example"  # not in the room
EVE = "@eve:e.example"  # banned
FRANK = "@frank:f.example"  # joined, power 50 where a case gives it
ZOE = "@zoe:z.example"  # an additional creator where a case makes her one

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")

TPI_KEY = generate_signing_key("0")
TPI_PUBLIC_KEY = encode_verify_key_base64(TPI_KEY.verify_key)
OTHER_KEY = generate_signing_key("1")
OTHER_PUBLIC_KEY = encode_verify_key_base64(OTHER_KEY.verify_key)


def signed_blob(mxid: str = DAVE, token: str = "tok", key: Any = TPI_KEY) -> dict[str, Any]:
    """A third-party invite's `signed` object, as an identity server signs it."""
    return sign({"mxid": mxid, "token": token, "sender": CAROL}, "id.example", key)


# --------------------------------------------------------------- rooms


class Room:
    """A room's state as a dict, and a factory for events in it."""

    def __init__(self, version: str, create_content: dict[str, Any] | None = None) -> None:
        self.version = ROOM_VERSIONS[version]
        self._ids = itertools.count()
        content: dict[str, Any] = {"room_version": version}
        if version == "10":
            content["creator"] = ALICE
        content.update(create_content or {})
        pdu: dict[str, Any] = {
            "type": "m.room.create",
            "sender": ALICE,
            "state_key": "",
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
        }
        if self.version.hashed_room_ids:
            self.room_id = "!create"
        else:
            self.room_id = "!room:a.example"
            pdu["room_id"] = self.room_id
        self.create = Event("$create", self.version, pdu)
        self.state: dict[StateKey, Event] = {CREATE: self.create}

    def event(
        self,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        prev_events: list[str] | None = None,
        **pdu: Any,
    ) -> Event:
        fields: dict[str, Any] = {
            "type": type,
            "room_id": self.room_id,
            "sender": sender,
            "content": content,
            "prev_events": prev_events if prev_events is not None else ["$prev"],
            "auth_events": [],
            "depth": 5,
            **pdu,
        }
        if state_key is not None:
            fields["state_key"] = state_key
        return Event(f"$e{next(self._ids)}", self.version, fields)

    def member(self, sender: str, target: str, membership: str, **content: Any) -> Event:
        return self.event("m.room.member", sender, {"membership": membership, **content}, target)

    def power_levels(self, sender: str, **changes: Any) -> Event:
        """A power levels event: the current content with `changes` (None removes a key)."""
        content = (
            copy.deepcopy(self.state[POWER_LEVELS].content) if POWER_LEVELS in self.state else {}
        )
        for key, value in changes.items():
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        return self.event("m.room.power_levels", sender, content, "")

    def put(self, event: Event) -> Room:
        self.state[event.state_tuple] = event
        return self

    def with_member(self, user: str, membership: str) -> Room:
        return self.put(
            self.member(ALICE if membership in ("invite", "ban") else user, user, membership)
        )

    def with_join_rule(self, rule: str) -> Room:
        return self.put(self.event("m.room.join_rules", ALICE, {"join_rule": rule}, ""))

    def with_power_levels(self, **changes: Any) -> Room:
        return self.put(self.power_levels(ALICE, **changes))

    def with_third_party_invite(self, sender: str = CAROL, **content: Any) -> Room:
        content = {"display_name": "d...@example.org", "public_key": TPI_PUBLIC_KEY, **content}
        return self.put(self.event("m.room.third_party_invite", sender, content, "tok"))


def standard_room(version: str, create_content: dict[str, Any] | None = None) -> Room:
    """Alice created it; Bob (50) and Carol (0) joined; Eve is banned; public."""
    room = Room(version, create_content)
    for user in (ALICE, BOB, CAROL):
        room.with_member(user, "join")
    room.with_member(EVE, "ban")
    users = {BOB: 50} if room.version.creators_are_infinitely_powerful else {ALICE: 100, BOB: 50}
    return room.with_power_levels(users=users).with_join_rule("public")


# --------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One check: `build` makes the event (adjusting the room's state as needed).

    `rule` is the rule expected to reject it in v10/v11 and `rule_v12` in v12
    (None: allowed). `versions` limits the case to some versions.
    """

    name: str
    build: Callable[[Room], Any]  # the event, or (event, auth_events) for list cases
    rule: str | None
    rule_v12: str | None
    versions: tuple[str, ...] = VERSIONS
    room: Callable[[str], Room] = standard_room


def R(rule: str | None, rule_v12: str | None) -> tuple[str | None, str | None]:
    return rule, rule_v12


ALLOW = R(None, None)


def case(
    name: str, build: Callable[[Room], Any], expect: tuple[str | None, str | None], **kw: Any
) -> Case:
    return Case(name, build, *expect, **kw)


def params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, v, id=f"v{v}-{c.name}") for c in cases for v in c.versions]


def expected_rule(c: Case, version: str) -> str | None:
    return c.rule_v12 if version == "12" else c.rule


def assert_outcome(check: Callable[[], None], expected: str | None) -> None:
    if expected is None:
        check()
    else:
        with pytest.raises(AuthError) as info:
            check()
        assert info.value.rule == expected, str(info.value)


def fresh(version: str) -> Room:
    return Room(version)


def federate_false(version: str) -> Room:
    return standard_room(version, {"m.federate": False})


def with_zoe_creator(version: str) -> Room:
    room = standard_room(version, {"additional_creators": [ZOE]})
    return room.with_member(ZOE, "join")


def with_frank_moderator(version: str) -> Room:
    room = standard_room(version).with_member(FRANK, "join")
    users = dict(room.state[POWER_LEVELS].content["users"], **{FRANK: 50})
    return room.with_power_levels(users=users)


def signed_by(server: str) -> dict[str, Any]:
    return {server: {"ed25519:x": "sig"}}


# ------------------------------------------------ rule 1: the create event


def create_event(version: str, content: dict[str, Any] | None = None, **pdu: Any) -> Event:
    fields = dict(Room(version).create.pdu, **pdu)
    if content is not None:
        fields["content"] = content
    return Event("$create", ROOM_VERSIONS[version], fields)


def creators(version: str, additional: Any) -> dict[str, Any]:
    return {"room_version": version, "creator": ALICE, "additional_creators": additional}


# (name, build(version), expected rule per version)
CREATE_CASES: list[tuple[str, Callable[[str], Event], dict[str, str | None]]] = [
    ("valid", lambda ver: create_event(ver), {"10": None, "11": None, "12": None}),
    (
        "1.1 has prev_events",
        lambda ver: create_event(ver, prev_events=["$x"]),
        {"10": "1.1", "11": "1.1", "12": "1.1"},
    ),
    (
        "1.2 room_id on another server (v10/11), any room_id (v12)",
        lambda ver: create_event(ver, room_id="!room:other.example"),
        {"10": "1.2", "11": "1.2", "12": "1.2"},
    ),
    (
        "1.3 unknown room_version",
        lambda ver: create_event(ver, {"room_version": "99", "creator": ALICE}),
        {"10": "1.3", "11": "1.3", "12": "1.3"},
    ),
    (
        "1.3 only applies when room_version is present",
        lambda ver: create_event(ver, {"creator": ALICE}),
        {"10": None, "11": None, "12": None},
    ),
    (
        "1.4 no creator (v10 only)",
        lambda ver: create_event(ver, {"room_version": ver}),
        {"10": "1.4", "11": None, "12": None},
    ),
    (
        "additional_creators valid",
        lambda ver: create_event(ver, creators(ver, [BOB, CAROL])),
        {"10": None, "11": None, "12": None},
    ),
    (
        "1.4 additional_creators not a list (v12)",
        lambda ver: create_event(ver, creators(ver, BOB)),
        {"10": None, "11": None, "12": "1.4"},
    ),
    (
        "1.4 additional_creators has an invalid user ID (v12)",
        lambda ver: create_event(ver, creators(ver, ["bob"])),
        {"10": None, "11": None, "12": "1.4"},
    ),
    (
        "1.4 additional_creators has a non-string (v12)",
        lambda ver: create_event(ver, creators(ver, [1])),
        {"10": None, "11": None, "12": "1.4"},
    ),
]


@pytest.mark.parametrize(
    "version,build,expected",
    [
        pytest.param(ver, build, expect[ver], id=f"v{ver}-{name}")
        for name, build, expect in CREATE_CASES
        for ver in VERSIONS
    ],
)
def test_create_rules(version: str, build: Callable[[str], Event], expected: str | None) -> None:
    event = build(version)
    assert_outcome(lambda: check_auth_rules(event, {}), expected)


# ------------------------------------------------ rules 2 onwards


def not_create_room(room: Room) -> Event:
    """v12 rule 2: a room ID that is not the create event's."""
    return room.event("m.room.message", CAROL, {"body": "hi"}, room_id="!elsewhere")


def rejected_create(room: Room) -> Event:
    room.state[CREATE] = Event("$create", room.version, room.create.pdu, rejected=True)
    return room.event("m.room.message", CAROL, {"body": "hi"})


def without_create(room: Room) -> Event:
    del room.state[CREATE]
    return room.event("m.room.message", CAROL, {"body": "hi"})


def create_of_other_room(room: Room) -> Event:
    pdu = dict(room.create.pdu, room_id="!other:a.example")
    room.state[CREATE] = Event("$create", room.version, pdu)
    return room.event("m.room.message", CAROL, {"body": "hi"})


def message(sender: str, **content: Any) -> Callable[[Room], Event]:
    return lambda room: room.event("m.room.message", sender, {"body": "hi", **content})


def with_pl(event: Callable[[Room], Event], **changes: Any) -> Callable[[Room], Event]:
    """`event`, built after Alice changed the power levels by `changes`."""
    return lambda room: event(room.with_power_levels(**changes))


def with_rule(rule: str, event: Callable[[Room], Event]) -> Callable[[Room], Event]:
    return lambda room: event(room.with_join_rule(rule))


def with_member(
    user: str, membership: str, event: Callable[[Room], Event]
) -> Callable[[Room], Event]:
    return lambda room: event(room.with_member(user, membership))


def member(sender: str, target: str, membership: str, **content: Any) -> Callable[[Room], Event]:
    return lambda room: room.member(sender, target, membership, **content)


def restricted_join(authoriser: str | None, *, signed: bool = True) -> Callable[[Room], Event]:
    def build(room: Room) -> Event:
        content: dict[str, Any] = {"membership": "join"}
        extra: dict[str, Any] = {}
        if authoriser is not None:
            content["join_authorised_via_users_server"] = authoriser
            if signed:
                extra["signatures"] = signed_by(authoriser.partition(":")[2])
        return room.event("m.room.member", DAVE, content, DAVE, **extra)

    return build


def third_party(signed: Any, sender: str = CAROL, target: str = DAVE) -> Callable[[Room], Event]:
    def build(room: Room) -> Event:
        content = {
            "membership": "invite",
            "third_party_invite": {"display_name": "d", "signed": signed},
        }
        return room.event("m.room.member", sender, content, target)

    return build


def tpi(event: Callable[[Room], Event], **invite: Any) -> Callable[[Room], Event]:
    """`event`, after Carol sent an `m.room.third_party_invite` (token "tok")."""
    return lambda room: event(room.with_third_party_invite(**invite))


def redaction(sender: str) -> Callable[[Room], Event]:
    """A redaction of Bob's event; `redacts` where each version puts it."""

    def build(room: Room) -> Event:
        if room.version.v11_semantics:
            return room.event("m.room.redaction", sender, {"redacts": "$bob"})
        return room.event("m.room.redaction", sender, {}, redacts="$bob")

    return build


def state(
    sender: str, type: str, content: dict[str, Any], key: str = ""
) -> Callable[[Room], Event]:
    return lambda room: room.event(type, sender, content, key)


def pl(sender: str, **changes: Any) -> Callable[[Room], Event]:
    return lambda room: room.power_levels(sender, **changes)


def users(**levels: int) -> dict[str, int]:
    names = {"alice": ALICE, "bob": BOB, "carol": CAROL, "frank": FRANK, "zoe": ZOE}
    return {names[k]: v for k, v in levels.items()}


CASES: list[Case] = [
    # v12 rule 2 / v10-11 rules 2.4-2.5 applied to the state: the event's room.
    case("2 room_id is not the create event's", not_create_room, R(None, "2"), versions=("12",)),
    case("2 create event was rejected", rejected_create, R(None, "2"), versions=("12",)),
    case("2.4 no create event", without_create, R("2.4", "2")),
    case(
        "2.5 create event of another room",
        create_of_other_room,
        R("2.5", None),
        versions=("10", "11"),
    ),
    # Rule 3 (v12: 4): m.federate.
    case("3 unfederated, foreign sender", message(BOB), R("3", "4"), room=federate_false),
    case(
        "3 unfederated, foreign join", member(DAVE, DAVE, "join"), R("3", "4"), room=federate_false
    ),
    case("3 unfederated, creator's server", message(ALICE), ALLOW, room=federate_false),
    # Rule 4.1 (v12: 5.1).
    case(
        "4.1 no state_key",
        lambda r: r.event("m.room.member", DAVE, {"membership": "join"}),
        R("4.1", "5.1"),
    ),
    case("4.1 no membership", lambda r: r.event("m.room.member", DAVE, {}, DAVE), R("4.1", "5.1")),
    # Rule 4.2: join_authorised_via_users_server needs that server's signature.
    case(
        "4.2 authorising server did not sign",
        with_rule("restricted", restricted_join(BOB, signed=False)),
        R("4.2", "5.2"),
    ),
    case(
        "4.2 authoriser is not a user ID",
        with_rule("restricted", restricted_join("bob")),
        R("4.2", "5.2"),
    ),
    case(
        "4.2 applies to any membership",
        lambda r: r.member(CAROL, CAROL, "leave", join_authorised_via_users_server=BOB),
        R("4.2", "5.2"),
    ),
    # Rule 4.3: joins.
    case(
        "4.3.1 creator's first join",
        lambda r: r.event(
            "m.room.member", ALICE, {"membership": "join"}, ALICE, prev_events=["$create"]
        ),
        ALLOW,
        room=fresh,
    ),
    case(
        "4.3.1 only for the creator",
        lambda r: r.event(
            "m.room.member", BOB, {"membership": "join"}, BOB, prev_events=["$create"]
        ),
        R("4.3.7", "5.3.7"),
        room=fresh,
    ),
    case(
        "4.3.1 only when the create event is the only prev event",
        lambda r: r.event(
            "m.room.member", ALICE, {"membership": "join"}, ALICE, prev_events=["$create", "$x"]
        ),
        R("4.3.7", "5.3.7"),
        room=fresh,
    ),
    case(
        "4.3.1 not for additional creators",
        lambda r: r.event(
            "m.room.member", ZOE, {"membership": "join"}, ZOE, prev_events=["$create"]
        ),
        R("4.3.7", "5.3.7"),
        room=lambda ver: Room(ver, {"additional_creators": [ZOE]}),
    ),
    case("4.3.2 join for someone else", member(BOB, DAVE, "join"), R("4.3.2", "5.3.2")),
    case("4.3.3 banned user joins", member(EVE, EVE, "join"), R("4.3.3", "5.3.3")),
    case(
        "4.3.3 banned even if invite-only",
        with_rule("invite", member(EVE, EVE, "join")),
        R("4.3.3", "5.3.3"),
    ),
    case(
        "4.3.4 invite rule, invited",
        with_rule("invite", with_member(DAVE, "invite", member(DAVE, DAVE, "join"))),
        ALLOW,
    ),
    case(
        "4.3.4 invite rule, already joined",
        with_rule("invite", member(CAROL, CAROL, "join")),
        ALLOW,
    ),
    case(
        "4.3.4 knock rule, invited",
        with_rule("knock", with_member(DAVE, "invite", member(DAVE, DAVE, "join"))),
        ALLOW,
    ),
    case(
        "4.3.4 invite rule, not invited",
        with_rule("invite", member(DAVE, DAVE, "join")),
        R("4.3.7", "5.3.7"),
    ),
    case(
        "4.3.4 knock rule, only knocked",
        with_rule("knock", with_member(DAVE, "knock", member(DAVE, DAVE, "join"))),
        R("4.3.7", "5.3.7"),
    ),
    case(
        "4.3.4 no join rules event means invite",
        lambda r: member(DAVE, DAVE, "join")(_drop(r, JOIN_RULES)),
        R("4.3.7", "5.3.7"),
    ),
    case(
        "4.3.5.1 restricted, invited",
        with_rule("restricted", with_member(DAVE, "invite", member(DAVE, DAVE, "join"))),
        ALLOW,
    ),
    case(
        "4.3.5.1 knock_restricted, joined",
        with_rule("knock_restricted", member(CAROL, CAROL, "join")),
        ALLOW,
    ),
    case(
        "4.3.5.2 restricted, no authoriser",
        with_rule("restricted", restricted_join(None)),
        R("4.3.5.2", "5.3.5.2"),
    ),
    case(
        "4.3.5.2 authoriser not joined",
        with_rule("restricted", restricted_join(FRANK)),
        R("4.3.5.2", "5.3.5.2"),
    ),
    case(
        "4.3.5.2 authoriser below invite level",
        with_rule("restricted", with_pl(restricted_join(CAROL), invite=10)),
        R("4.3.5.2", "5.3.5.2"),
    ),
    case("4.3.5.3 restricted, authorised", with_rule("restricted", restricted_join(BOB)), ALLOW),
    case(
        "4.3.5.3 knock_restricted, authorised",
        with_rule("knock_restricted", restricted_join(CAROL)),
        ALLOW,
    ),
    case("4.3.6 public", member(DAVE, DAVE, "join"), ALLOW),
    case(
        "4.3.7 private join rule",
        with_rule("private", member(DAVE, DAVE, "join")),
        R("4.3.7", "5.3.7"),
    ),
    # Rule 4.4.1: third-party invites.
    case("4.4.1.7 signed with public_key", tpi(third_party(signed_blob())), ALLOW),
    case(
        "4.4.1.7 signed with one of public_keys",
        tpi(
            third_party(signed_blob()),
            public_key=OTHER_PUBLIC_KEY,
            public_keys=[{"public_key": TPI_PUBLIC_KEY}],
        ),
        ALLOW,
    ),
    case(
        "4.4.1.1 target banned",
        tpi(third_party(signed_blob(mxid=EVE), target=EVE)),
        R("4.4.1.1", "5.4.1.1"),
    ),
    case("4.4.1.2 no signed", tpi(third_party(None)), R("4.4.1.2", "5.4.1.2")),
    case("4.4.1.3 signed has no token", tpi(third_party({"mxid": DAVE})), R("4.4.1.3", "5.4.1.3")),
    case("4.4.1.3 signed has no mxid", tpi(third_party({"token": "tok"})), R("4.4.1.3", "5.4.1.3")),
    case(
        "4.4.1.4 mxid is not the state_key",
        tpi(third_party(signed_blob(mxid=FRANK))),
        R("4.4.1.4", "5.4.1.4"),
    ),
    case(
        "4.4.1.5 no matching third-party invite",
        tpi(third_party(signed_blob(token="nope"))),
        R("4.4.1.5", "5.4.1.5"),
    ),
    case(
        "4.4.1.6 sender did not send the invite",
        tpi(third_party(signed_blob(), sender=BOB)),
        R("4.4.1.6", "5.4.1.6"),
    ),
    case(
        "4.4.1.8 signed by another key",
        tpi(third_party(signed_blob(key=OTHER_KEY))),
        R("4.4.1.8", "5.4.1.8"),
    ),
    case(
        "4.4.1.8 signed object tampered with",
        tpi(third_party(dict(signed_blob(), sender=BOB))),
        R("4.4.1.8", "5.4.1.8"),
    ),
    case(
        "4.4.1.8 no signatures",
        tpi(third_party({"mxid": DAVE, "token": "tok"})),
        R("4.4.1.8", "5.4.1.8"),
    ),
    # Rules 4.4.2-4.4.5: invites.
    case("4.4.2 inviter not joined", member(DAVE, FRANK, "invite"), R("4.4.2", "5.4.2")),
    case("4.4.3 target joined", member(BOB, CAROL, "invite"), R("4.4.3", "5.4.3")),
    case("4.4.3 target banned", member(BOB, EVE, "invite"), R("4.4.3", "5.4.3")),
    case("4.4.4 at invite level", member(CAROL, DAVE, "invite"), ALLOW),
    case(
        "4.4.4 re-invite an invited user",
        with_member(DAVE, "invite", member(CAROL, DAVE, "invite")),
        ALLOW,
    ),
    case(
        "4.4.5 below invite level",
        with_pl(member(CAROL, DAVE, "invite"), invite=10),
        R("4.4.5", "5.4.5"),
    ),
    # Rule 4.5: leaves and kicks.
    case("4.5.1 joined user leaves", member(CAROL, CAROL, "leave"), ALLOW),
    case(
        "4.5.1 invited user rejects",
        with_member(DAVE, "invite", member(DAVE, DAVE, "leave")),
        ALLOW,
    ),
    case(
        "4.5.1 knocking user retracts",
        with_member(DAVE, "knock", member(DAVE, DAVE, "leave")),
        ALLOW,
    ),
    case("4.5.1 outsider leaves", member(DAVE, DAVE, "leave"), R("4.5.1", "5.5.1")),
    case("4.5.1 banned user leaves", member(EVE, EVE, "leave"), R("4.5.1", "5.5.1")),
    case("4.5.2 kicker not joined", member(DAVE, CAROL, "leave"), R("4.5.2", "5.5.2")),
    case(
        "4.5.3 unban below ban level",
        with_pl(member(BOB, EVE, "leave"), ban=60),
        R("4.5.3", "5.5.3"),
    ),
    case("4.5.4 unban", member(BOB, EVE, "leave"), ALLOW),
    case("4.5.4 kick", member(BOB, CAROL, "leave"), ALLOW),
    case("4.5.5 kick a more powerful user", member(CAROL, BOB, "leave"), R("4.5.5", "5.5.5")),
    case(
        "4.5.5 kick an equal",
        member(BOB, FRANK, "leave"),
        R("4.5.5", "5.5.5"),
        room=with_frank_moderator,
    ),
    case(
        "4.5.5 below kick level", with_pl(member(BOB, CAROL, "leave"), kick=60), R("4.5.5", "5.5.5")
    ),
    # Rule 4.6: bans.
    case("4.6.1 banner not joined", member(DAVE, CAROL, "ban"), R("4.6.1", "5.6.1")),
    case("4.6.2 ban a member", member(BOB, CAROL, "ban"), ALLOW),
    case("4.6.2 ban an outsider", member(BOB, DAVE, "ban"), ALLOW),
    case("4.6.3 ban a more powerful user", member(CAROL, BOB, "ban"), R("4.6.3", "5.6.3")),
    case("4.6.3 below ban level", with_pl(member(BOB, CAROL, "ban"), ban=60), R("4.6.3", "5.6.3")),
    # Rule 4.7: knocks.
    case("4.7.1 knock on a public room", member(DAVE, DAVE, "knock"), R("4.7.1", "5.7.1")),
    case(
        "4.7.1 knock on an invite-only room",
        with_rule("invite", member(DAVE, DAVE, "knock")),
        R("4.7.1", "5.7.1"),
    ),
    case(
        "4.7.2 knock for someone else",
        with_rule("knock", member(BOB, DAVE, "knock")),
        R("4.7.2", "5.7.2"),
    ),
    case("4.7.3 knock", with_rule("knock", member(DAVE, DAVE, "knock")), ALLOW),
    case(
        "4.7.3 knock, knock_restricted",
        with_rule("knock_restricted", member(DAVE, DAVE, "knock")),
        ALLOW,
    ),
    case(
        "4.7.4 joined user knocks",
        with_rule("knock", member(CAROL, CAROL, "knock")),
        R("4.7.4", "5.7.4"),
    ),
    case(
        "4.7.4 banned user knocks",
        with_rule("knock", member(EVE, EVE, "knock")),
        R("4.7.4", "5.7.4"),
    ),
    case(
        "4.7.4 invited user knocks",
        with_rule("knock", with_member(DAVE, "invite", member(DAVE, DAVE, "knock"))),
        R("4.7.4", "5.7.4"),
    ),
    case("4.8 unknown membership", member(CAROL, CAROL, "lurk"), R("4.8", "5.8")),
    # Rule 5 (v12: 6): the sender must be joined.
    case("5 outsider sends", message(DAVE), R("5", "6")),
    case("5 banned user sends", message(EVE), R("5", "6")),
    case("5 invited user sends", with_member(DAVE, "invite", message(DAVE)), R("5", "6")),
    # Rule 6 (v12: 7): m.room.third_party_invite needs the invite level only.
    case(
        "6.1 at invite level (state_default ignored)",
        state(CAROL, "m.room.third_party_invite", {}, "t"),
        ALLOW,
    ),
    case(
        "6.1 below invite level",
        with_pl(state(CAROL, "m.room.third_party_invite", {}, "t"), invite=10),
        R("6.1", "7.1"),
    ),
    # Rule 7 (v12: 8): the required power level.
    case("7 message below events_default", with_pl(message(CAROL), events_default=10), R("7", "8")),
    case(
        "7 message type listed in events",
        with_pl(message(CAROL), events={"m.room.message": 1}),
        R("7", "8"),
    ),
    case("7 state below state_default", state(CAROL, "m.room.name", {"name": "x"}), R("7", "8")),
    case("7 state at state_default", state(BOB, "m.room.name", {"name": "x"}), ALLOW),
    case(
        "7 state type listed in events",
        with_pl(state(CAROL, "m.room.name", {"name": "x"}), events={"m.room.name": 0}),
        ALLOW,
    ),
    case(
        "7 no power levels event: state_default 50",
        lambda r: state(CAROL, "m.room.name", {})(_drop(r, POWER_LEVELS)),
        R("7", "8"),
    ),
    case("7 redaction ignores the redact level", redaction(CAROL), ALLOW),
    case(
        "7 redaction below its events level",
        with_pl(redaction(CAROL), events={"m.room.redaction": 1}),
        R("7", "8"),
    ),
    # Rule 8 (v12: 9): state keys that are user IDs.
    case("8 someone else's user ID", state(BOB, "m.custom", {}, CAROL), R("8", "9")),
    case("8 own user ID", state(BOB, "m.custom", {}, BOB), ALLOW),
    # Rule 9 (v12: 10): power levels events.
    case("9.1 string level", pl(ALICE, ban="50"), R("9.1", "10.1")),
    case("9.1 boolean level", pl(ALICE, users_default=True), R("9.1", "10.1")),
    case("9.1 float level", pl(ALICE, kick=50.0), R("9.1", "10.1")),
    case("9.1 level beyond canonical JSON", pl(ALICE, invite=2**53), R("9.1", "10.1")),
    case("9.2 events not an object", pl(ALICE, events=[]), R("9.2", "10.2")),
    case("9.2 events value a string", pl(ALICE, events={"m.room.name": "50"}), R("9.2", "10.2")),
    case(
        "9.2 notifications value a string",
        pl(ALICE, notifications={"room": "50"}),
        R("9.2", "10.2"),
    ),
    case("9.3 users not an object", pl(ALICE, users=[]), R("9.3", "10.3")),
    case("9.3 users key not a user ID", pl(ALICE, users={"bob": 50}), R("9.3", "10.3")),
    case("9.3 users value a string", pl(ALICE, users={BOB: "50"}), R("9.3", "10.3")),
    case(
        "10.4 creator in users",
        pl(ALICE, users=users(bob=50, alice=100)),
        R(None, "10.4"),
        versions=("12",),
    ),
    case(
        "10.4 additional creator in users",
        pl(ALICE, users=users(bob=50, zoe=1)),
        R(None, "10.4"),
        versions=("12",),
        room=with_zoe_creator,
    ),
    case(
        "9.4 first power levels event",
        lambda r: r.power_levels(ALICE, users={BOB: 1000}, ban=1000),
        ALLOW,
        room=lambda ver: fresh(ver).with_member(ALICE, "join"),
    ),
    case(
        "9.4 first power levels event, not the creator",
        lambda r: r.power_levels(BOB, users={BOB: 100}),
        R("7", "8"),
        room=lambda ver: fresh(ver).with_member(ALICE, "join").with_member(BOB, "join"),
    ),
    case(
        "9.5 unchanged levels",
        pl(BOB, kick=75),
        ALLOW,
        room=lambda ver: standard_room(ver).with_power_levels(kick=75),
    ),
    case("9.5 lower a level to own", pl(BOB, invite=50), ALLOW),
    case(
        "9.5.1 change a level above own",
        pl(BOB, kick=50),
        R("9.5.1", "10.6.1"),
        room=lambda ver: standard_room(ver).with_power_levels(kick=75),
    ),
    case(
        "9.5.1 remove a level above own",
        pl(BOB, kick=None),
        R("9.5.1", "10.6.1"),
        room=lambda ver: standard_room(ver).with_power_levels(kick=75),
    ),
    case(
        "9.5.1 a malformed previous level is not the sender's to change",
        pl(BOB, kick=0),
        R("9.5.1", "10.6.1"),
        room=lambda ver: standard_room(ver).with_power_levels(kick="0"),
    ),
    case("9.5.2 raise a level above own", pl(BOB, ban=60), R("9.5.2", "10.6.2")),
    case("9.5.2 add a level above own", pl(BOB, state_default=51), R("9.5.2", "10.6.2")),
    case(
        "9.6.1 change an events entry above own",
        pl(BOB, events={"m.room.name": 50}),
        R("9.6.1", "10.7.1"),
        room=lambda ver: standard_room(ver).with_power_levels(events={"m.room.name": 60}),
    ),
    case(
        "9.6.1 remove an events entry above own",
        pl(BOB, events={}),
        R("9.6.1", "10.7.1"),
        room=lambda ver: standard_room(ver).with_power_levels(events={"m.room.name": 60}),
    ),
    case(
        "9.6.1 change a notifications entry above own",
        pl(BOB, notifications={"room": 0}),
        R("9.6.1", "10.7.1"),
        room=lambda ver: standard_room(ver).with_power_levels(notifications={"room": 60}),
    ),
    case(
        "9.7.1 add an events entry above own",
        pl(BOB, events={"m.room.topic": 51}),
        R("9.7.1", "10.8.1"),
    ),
    case(
        "9.7.1 add a notifications entry above own",
        pl(BOB, notifications={"room": 51}),
        R("9.7.1", "10.8.1"),
    ),
    case("9.7 add an events entry at own", pl(BOB, events={"m.room.topic": 50}), ALLOW),
    case(
        "9.8.1 demote an equal",
        lambda r: r.power_levels(
            BOB, users=dict(r.state[POWER_LEVELS].content["users"], **{FRANK: 0})
        ),
        R("9.8.1", "10.9.1"),
        room=with_frank_moderator,
    ),
    case(
        "9.8.1 remove an equal",
        lambda r: r.power_levels(
            BOB,
            users={k: v for k, v in r.state[POWER_LEVELS].content["users"].items() if k != FRANK},
        ),
        R("9.8.1", "10.9.1"),
        room=with_frank_moderator,
    ),
    case(
        "9.8 demote oneself",
        lambda r: r.power_levels(
            BOB,
            users={
                k: (0 if k == BOB else v) for k, v in r.state[POWER_LEVELS].content["users"].items()
            },
        ),
        ALLOW,
    ),
    case(
        "9.9.1 promote above own",
        lambda r: r.power_levels(
            BOB, users=dict(r.state[POWER_LEVELS].content["users"], **{CAROL: 51})
        ),
        R("9.9.1", "10.10.1"),
    ),
    case(
        "9.9 promote to own",
        lambda r: r.power_levels(
            BOB, users=dict(r.state[POWER_LEVELS].content["users"], **{CAROL: 50})
        ),
        ALLOW,
    ),
    case(
        "creator promotes to any level (infinite in v12)",
        lambda r: r.power_levels(
            ALICE, users=dict(r.state[POWER_LEVELS].content["users"], **{CAROL: 10**6})
        ),
        R("9.9.1", None),
    ),
    # v12: creators have infinite power.
    case(
        "kick a creator demoted in users",
        with_pl(member(BOB, ALICE, "leave"), users=users(alice=10, bob=50)),
        R(None, "5.5.5"),
    ),
    case(
        "additional creator bans a 100",
        with_pl(member(ZOE, BOB, "ban"), users=users(bob=100)),
        R("4.6.3", None),
        room=with_zoe_creator,
    ),
    case(
        "creator without power levels event",
        state(ALICE, "m.room.name", {"name": "x"}),
        ALLOW,
        room=lambda ver: _drop(standard_room(ver), POWER_LEVELS),
    ),
    # Rule 10 (v12: 11).
    case("10 allowed message", message(CAROL), ALLOW),
]


def _drop(room: Room, key: StateKey) -> Room:
    del room.state[key]
    return room


@pytest.mark.parametrize("c,version", params(CASES))
def test_auth_rules(c: Case, version: str) -> None:
    room = c.room(version)
    event = c.build(room)
    assert_outcome(lambda: check_auth_rules(event, room.state), expected_rule(c, version))


# ------------------------------------------------ rule 4.2's signature check


@pytest.mark.parametrize("version", VERSIONS)
def test_restricted_join_uses_the_signature_callback(version: str) -> None:
    room = standard_room(version).with_join_rule("restricted")
    asked: list[str] = []

    def is_signed_by(event: Event, server: str) -> bool:
        asked.append(server)
        return server == "b.example"

    check_auth_rules(
        restricted_join(BOB, signed=False)(room), room.state, is_signed_by=is_signed_by
    )
    assert asked == ["b.example"]
    with pytest.raises(AuthError) as info:
        check_auth_rules(restricted_join(BOB)(room), room.state, is_signed_by=lambda e, s: False)
    assert info.value.rule == ("5.2" if version == "12" else "4.2")


# ------------------------------------------------ rule 2 (v12: 3): auth_events


def list_case(
    name: str,
    build: Callable[[Room], tuple[Event, list[Event]]],
    expect: tuple[str | None, str | None],
    versions: tuple[str, ...] = VERSIONS,
) -> Case:
    return Case(name, build, *expect, versions=versions)


def selected(room: Room, event: Event) -> list[Event]:
    """The auth events the selection algorithm picks from the room's state."""
    keys = auth_types_for_event(
        room.version, event.type, event.sender, event.state_key, event.content
    )
    return [room.state[k] for k in keys if k in room.state]


def good(room: Room) -> tuple[Event, list[Event]]:
    event = room.event("m.room.message", CAROL, {"body": "hi"})
    return event, selected(room, event)


def rejected(events: list[Event], key: StateKey) -> list[Event]:
    return [
        Event(e.event_id, e.room_version, e.pdu, rejected=True) if e.state_tuple == key else e
        for e in events
    ]


def from_other_room(events: list[Event], key: StateKey) -> list[Event]:
    return [
        (
            Event(e.event_id, e.room_version, dict(e.pdu, room_id="!other:a.example"))
            if e.state_tuple == key
            else e
        )
        for e in events
    ]


LIST_CASES: list[Case] = [
    list_case("selected events", good, ALLOW),
    list_case(
        "join selects target, join rules and authoriser",
        lambda r: (lambda e: (e, selected(r, e)))(
            restricted_join(BOB)(r.with_member(DAVE, "invite"))
        ),
        ALLOW,
    ),
    list_case(
        "2.1 duplicate",
        lambda r: (good(r)[0], good(r)[1] + [r.state[POWER_LEVELS]]),
        R("2.1", "3.1"),
    ),
    list_case(
        "2.2 unselected state",
        lambda r: (good(r)[0], good(r)[1] + [r.state[JOIN_RULES]]),
        R("2.2", "3.2"),
    ),
    list_case(
        "2.2 a message event",
        lambda r: (good(r)[0], good(r)[1] + [r.event("m.room.message", CAROL, {})]),
        R("2.2", "3.2"),
    ),
    list_case(
        "3.2 the create event (v12)",
        lambda r: (good(r)[0], good(r)[1] + [r.create]),
        R(None, "3.2"),
        versions=("12",),
    ),
    list_case(
        "2.3 rejected entry",
        lambda r: (good(r)[0], rejected(good(r)[1], POWER_LEVELS)),
        R("2.3", "3.3"),
    ),
    list_case(
        "2.4 no create event (v10/v11), none expected (v12)",
        lambda r: (good(r)[0], [e for e in good(r)[1] if e.type != "m.room.create"]),
        R("2.4", None),
    ),
    list_case(
        "2.5 entry from another room",
        lambda r: (good(r)[0], from_other_room(good(r)[1], POWER_LEVELS)),
        R("2.5", "3.5"),
    ),
    list_case(
        "create event: decided by rule 1", lambda r: (r.create, [r.state[POWER_LEVELS]]), ALLOW
    ),
]


@pytest.mark.parametrize("c,version", params(LIST_CASES))
def test_auth_event_list(c: Case, version: str) -> None:
    room = standard_room(version)
    event, auth_events = c.build(room)
    assert_outcome(lambda: check_auth_event_list(event, auth_events), expected_rule(c, version))


# ------------------------------------------------ auth events selection


def _create(version: str) -> list[StateKey]:
    return [] if version == "12" else [CREATE]


SELECTION_CASES: list[tuple[str, tuple[str, str, str | None, dict[str, Any]], list[StateKey]]] = [
    ("message", ("m.room.message", CAROL, None, {}), [POWER_LEVELS, ("m.room.member", CAROL)]),
    ("state", ("m.room.name", BOB, "", {}), [POWER_LEVELS, ("m.room.member", BOB)]),
    (
        "own join",
        ("m.room.member", DAVE, DAVE, {"membership": "join"}),
        [POWER_LEVELS, ("m.room.member", DAVE), JOIN_RULES],
    ),
    (
        "restricted join",
        (
            "m.room.member",
            DAVE,
            DAVE,
            {"membership": "join", "join_authorised_via_users_server": BOB},
        ),
        [POWER_LEVELS, ("m.room.member", DAVE), JOIN_RULES, ("m.room.member", BOB)],
    ),
    (
        "invite",
        ("m.room.member", CAROL, DAVE, {"membership": "invite"}),
        [POWER_LEVELS, ("m.room.member", CAROL), ("m.room.member", DAVE), JOIN_RULES],
    ),
    (
        "third-party invite",
        (
            "m.room.member",
            CAROL,
            DAVE,
            {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}},
        ),
        [
            POWER_LEVELS,
            ("m.room.member", CAROL),
            ("m.room.member", DAVE),
            JOIN_RULES,
            ("m.room.third_party_invite", "tok"),
        ],
    ),
    (
        "knock",
        ("m.room.member", DAVE, DAVE, {"membership": "knock"}),
        [POWER_LEVELS, ("m.room.member", DAVE), JOIN_RULES],
    ),
    (
        "kick",
        ("m.room.member", BOB, CAROL, {"membership": "leave"}),
        [POWER_LEVELS, ("m.room.member", BOB), ("m.room.member", CAROL)],
    ),
    (
        "ban",
        ("m.room.member", BOB, CAROL, {"membership": "ban"}),
        [POWER_LEVELS, ("m.room.member", BOB), ("m.room.member", CAROL)],
    ),
    (
        "authoriser ignored unless joining",
        (
            "m.room.member",
            BOB,
            CAROL,
            {"membership": "ban", "join_authorised_via_users_server": BOB},
        ),
        [POWER_LEVELS, ("m.room.member", BOB), ("m.room.member", CAROL)],
    ),
]


@pytest.mark.parametrize(
    "version,args,expected",
    [pytest.param(v, a, e, id=f"v{v}-{n}") for n, a, e in SELECTION_CASES for v in VERSIONS],
)
def test_auth_types_for_event(
    version: str, args: tuple[str, str, str | None, dict[str, Any]], expected: list[StateKey]
) -> None:
    assert auth_types_for_event(ROOM_VERSIONS[version], *args) == _create(version) + expected


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_types_for_create_event(version: str) -> None:
    assert auth_types_for_event(ROOM_VERSIONS[version], "m.room.create", ALICE, "", {}) == []


# ------------------------------------------------ power levels


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_without_an_event(version: str) -> None:
    room = Room(version, {"additional_creators": [ZOE]})
    power = PowerLevels.from_state(room.state)
    creator = INFINITE_POWER if version == "12" else 100
    assert power.user_level(ALICE) == creator
    assert power.user_level(ZOE) == (INFINITE_POWER if version == "12" else 0)
    assert power.user_level(BOB) == 0
    assert power.required_level("m.room.name", is_state=True) == 50
    assert power.required_level("m.room.message", is_state=False) == 0
    assert (power.invite, power.kick, power.ban, power.redact) == (0, 50, 50, 50)
    assert power.notification_level() == 50


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_defaults_and_values(version: str) -> None:
    room = Room(version).with_power_levels(
        users={BOB: 0, CAROL: 30},
        users_default=10,
        events={"m.room.name": 5},
        state_default=40,
        events_default=3,
        invite=1,
        kick=2,
        redact=4,
        notifications={"room": 20},
    )
    power = PowerLevels.from_state(room.state)
    assert power.user_level(BOB) == 0  # listed at 0: users_default does not apply
    assert power.user_level(CAROL) == 30
    assert power.user_level(DAVE) == 10
    assert power.user_level(ALICE) == (INFINITE_POWER if version == "12" else 10)
    assert power.required_level("m.room.name", is_state=True) == 5
    assert power.required_level("m.room.topic", is_state=True) == 40
    assert power.required_level("m.room.message", is_state=False) == 3
    assert (power.invite, power.kick, power.ban, power.redact) == (1, 2, 50, 4)
    assert power.notification_level("room") == 20

    empty = PowerLevels.from_state(Room(version).with_power_levels().state)
    assert empty.user_level(DAVE) == 0
    assert empty.required_level("m.room.topic", is_state=True) == 50
    assert (empty.invite, empty.kick, empty.ban, empty.redact) == (0, 50, 50, 50)


@pytest.mark.parametrize(
    "version,creator", [("10", ALICE), ("11", "@admin:a.example"), ("12", "@admin:a.example")]
)
def test_creator_per_version(version: str, creator: str) -> None:
    """v10 names the creator in `content.creator`; v11+ use the create event's sender."""
    room = Room(version, {"creator": ALICE})
    room.create = Event("$create", room.version, dict(room.create.pdu, sender="@admin:a.example"))
    room.state[CREATE] = room.create
    power = PowerLevels.from_state(room.state)
    assert power.creators == {creator}
    assert power.user_level(creator) > 0
    other = ALICE if creator != ALICE else "@admin:a.example"
    assert power.user_level(other) == 0


def test_infinite_power_outranks_any_integer() -> None:
    assert INFINITE_POWER > 2**53 - 1
    assert not INFINITE_POWER < INFINITE_POWER


def test_auth_error_message_names_rule_and_version() -> None:
    room = standard_room("12")
    with pytest.raises(AuthError) as info:
        check_auth_rules(room.event("m.room.message", DAVE, {}), room.state)
    assert info.value.rule == "6"
    assert "auth rule 6 of room version 12" in str(info.value)
    assert DAVE in str(info.value)
