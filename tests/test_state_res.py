"""State resolution v2 / v2.1: the spec test-suite's classic graphs, in memory.

The graphs are those of Synapse's `tests/state/test_v2.py`: a DAG of events
is replayed in topological order, the state before each event resolved from
its prev events' states, and the state at END compared with the expected
winners. They run in v10 and v11 (state res v2) and v12 (v2.1), where Alice
is a creator with infinite power and so is never listed in `users`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from homeserver.events.model import ROOM_VERSIONS, Event, RoomVersion, StateKey
from homeserver.rooms.auth import auth_types_for_event
from homeserver.rooms.state_res import resolve_state

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"

JOIN = {"membership": "join"}
LEAVE = {"membership": "leave"}
BAN = {"membership": "ban"}

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"

VERSIONS = ["10", "11", "12"]


@dataclass
class Node:
    """An event of a test graph before it is built for a room version."""

    id: str
    sender: str
    type: str
    state_key: str | None
    content: dict[str, Any] = field(default_factory=dict)


def room_id(version: RoomVersion) -> str:
    return "!CREATE" if version.hashed_room_ids else "!room:example.com"


def build_event(
    version: RoomVersion,
    node: Node,
    *,
    auth_events: Iterable[str],
    prev_events: Iterable[str] = (),
    ts: int = 0,
    rejected: bool = False,
) -> Event:
    """A PDU for `node`, adapted to the version's create event, room ID and creators."""
    content = dict(node.content)
    if node.type == CREATE:
        content = {"room_version": version.identifier}
        if not version.v11_semantics:
            content["creator"] = node.sender
    if node.type == POWER_LEVELS and version.creators_are_infinitely_powerful:
        content["users"] = {u: level for u, level in content.get("users", {}).items() if u != ALICE}
    pdu: dict[str, Any] = {
        "type": node.type,
        "sender": node.sender,
        "content": content,
        "auth_events": [a for a in auth_events if not (version.hashed_room_ids and a == "$CREATE")],
        "prev_events": list(prev_events),
        "origin_server_ts": ts,
        "depth": 1,
    }
    if not (node.type == CREATE and version.hashed_room_ids):
        pdu["room_id"] = room_id(version)
    if node.state_key is not None:
        pdu["state_key"] = node.state_key
    return Event(event_id="$" + node.id, room_version=version, pdu=pdu, rejected=rejected)


def in_memory(events: Mapping[str, Event]) -> Any:
    async def get_events(event_ids: Iterable[str]) -> dict[str, Event]:
        return {eid: events[eid] for eid in event_ids if eid in events}

    return get_events


# ------------------------------------------------------ the classic graphs

INITIAL_NODES = [
    Node("CREATE", ALICE, CREATE, ""),
    Node("IMA", ALICE, MEMBER, ALICE, JOIN),
    Node("IPOWER", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}}),
    Node("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}),
    Node("IMB", BOB, MEMBER, BOB, JOIN),
    Node("IMC", CHARLIE, MEMBER, CHARLIE, JOIN),
    Node("IMZ", ZARA, MEMBER, ZARA, JOIN),
    Node("START", ZARA, MESSAGE, None),
    Node("END", ZARA, MESSAGE, None),
]
INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


def lexicographical_topological_sort(graph: dict[str, set[str]]) -> list[str]:
    """Prev events first; among the ready nodes, the smallest ID (as Synapse's tests do)."""
    done: list[str] = []
    remaining = dict(graph)
    while remaining:
        node = min(n for n, prevs in remaining.items() if prevs <= set(done))
        done.append(node)
        del remaining[node]
    return done


async def state_at_end(
    version: RoomVersion, nodes: list[Node], edges: list[list[str]]
) -> tuple[dict[StateKey, str], dict[StateKey, str], dict[str, Event]]:
    """Replay the graph; return the state at START and at END, and the events."""
    by_id = {node.id: node for node in INITIAL_NODES + nodes}
    graph: dict[str, set[str]] = {node_id: set() for node_id in by_id}
    for edge_list in [INITIAL_EDGES, *edges]:
        for child, parent in itertools.pairwise(edge_list):
            graph[child].add(parent)

    events: dict[str, Event] = {}
    state_after: dict[str, dict[StateKey, str]] = {}
    for ts, node_id in enumerate(lexicographical_topological_sort(graph)):
        node = by_id[node_id]
        prevs = sorted(graph[node_id])
        if not prevs:
            state: dict[StateKey, str] = {}
        elif len(prevs) == 1:
            state = dict(state_after[prevs[0]])
        else:
            state = await resolve_state(version, [state_after[p] for p in prevs], in_memory(events))
        auth_types = auth_types_for_event(
            version, node.type, node.sender, node.state_key, node.content
        )
        auth = [state[key] for key in auth_types if key in state]
        event = build_event(
            version, node, auth_events=auth, prev_events=["$" + p for p in prevs], ts=ts
        )
        events[event.event_id] = event
        if node.state_key is not None:
            state[(node.type, node.state_key)] = event.event_id
        state_after[node_id] = state
    return state_after["START"], state_after["END"], events


async def check_graph(
    version_id: str, nodes: list[Node], edges: list[list[str]], expected: list[str]
) -> None:
    """The state at END differs from START exactly by the `expected` winners."""
    version = ROOM_VERSIONS[version_id]
    start, end, events = await state_at_end(version, nodes, edges)
    expected_state = {events["$" + n].state_tuple: "$" + n for n in expected}
    changed = {
        key: eid for key, eid in end.items() if key in expected_state or start.get(key) != eid
    }
    assert changed == expected_state


@pytest.mark.parametrize("version", VERSIONS)
async def test_ban_vs_power_levels(version: str) -> None:
    """Alice's ban of Bob beats Bob's concurrent power levels change."""
    nodes = [
        Node("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("MA", ALICE, MEMBER, ALICE, JOIN),
        Node("MB", ALICE, MEMBER, BOB, BAN),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
    ]
    edges = [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]]
    await check_graph(version, nodes, edges, ["PA", "MA", "MB"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_join_rule_evasion(version: str) -> None:
    """A join concurrent with a switch to invite-only does not survive it."""
    nodes = [
        Node("JR", ALICE, JOIN_RULES, "", {"join_rule": "invite"}),
        Node("ME", EVELYN, MEMBER, EVELYN, JOIN),
    ]
    edges = [["END", "JR", "START"], ["END", "ME", "START"]]
    await check_graph(version, nodes, edges, ["JR"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_offtopic_power_levels(version: str) -> None:
    """Charlie's power levels, authorised by Bob's, win over the older ones."""
    nodes = [
        Node("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}),
        Node("PC", CHARLIE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 0}}),
    ]
    edges = [["END", "PC", "PB", "PA", "START"], ["END", "PA"]]
    await check_graph(version, nodes, edges, ["PC"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_topic_basic(version: str) -> None:
    """Bob's topic falls with the power levels that Alice's later change revoked."""
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T2", ALICE, TOPIC, ""),
        Node("PA2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 0}}),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T3", BOB, TOPIC, ""),
    ]
    edges = [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]]
    await check_graph(version, nodes, edges, ["PA2", "T2"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_topic_reset(version: str) -> None:
    """Banning Bob takes his topic away, back to Alice's earlier one."""
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T2", BOB, TOPIC, ""),
        Node("MB", ALICE, MEMBER, BOB, BAN),
    ]
    edges = [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]]
    await check_graph(version, nodes, edges, ["T1", "MB", "PA"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_topic(version: str) -> None:
    """A topic sent after a merge wins over both branches' topics."""
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T2", ALICE, TOPIC, ""),
        Node("PA2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 0}}),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T3", BOB, TOPIC, ""),
        Node("MZ1", ZARA, MESSAGE, None),
        Node("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "MZ1", "T3", "PB", "PA1"],
    ]
    await check_graph(version, nodes, edges, ["T4", "PA2"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_mainline_sort(version: str) -> None:
    """T3 wins over the later T4: it cites newer power levels on the mainline."""
    nodes = [
        Node("T1", ALICE, TOPIC, ""),
        Node("PA1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T2", ALICE, TOPIC, ""),
        Node(
            "PA2",
            ALICE,
            POWER_LEVELS,
            "",
            {"users": {ALICE: 100, BOB: 50}, "events": {POWER_LEVELS: 100}},
        ),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("T3", BOB, TOPIC, ""),
        Node("T4", ALICE, TOPIC, ""),
    ]
    edges = [
        ["END", "T3", "PA2", "T2", "PA1", "T1", "START"],
        ["END", "T4", "PB", "PA1"],
    ]
    await check_graph(version, nodes, edges, ["T3", "PA2"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_auth_order_beats_sender_power(version: str) -> None:
    """Alice's edit of Bob's power levels stays after them, though she outranks him."""
    nodes = [
        Node("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 10}}),
        Node(
            "PA2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 10, ZARA: 20}}
        ),
    ]
    edges = [["END", "PA2", "PB", "PA", "START"], ["END", "PA"]]
    await check_graph(version, nodes, edges, ["PA2"])


# ------------------------------------------------ handmade state sets


class Room:
    """Events built by hand, with explicit auth events, for one room version."""

    def __init__(self, version_id: str) -> None:
        self.version = ROOM_VERSIONS[version_id]
        self.events: dict[str, Event] = {}
        self.ts = 0

    def add(self, node: Node, auth: list[str], *, rejected: bool = False) -> str:
        self.ts += 1
        auth_ids = ["$" + a for a in auth]
        event = build_event(self.version, node, auth_events=auth_ids, ts=self.ts, rejected=rejected)
        self.events[event.event_id] = event
        return event.event_id

    def state(self, *event_ids: str) -> dict[StateKey, str]:
        return {self.events[eid].state_tuple: eid for eid in event_ids}

    async def resolve(self, *state_sets: dict[StateKey, str], **kwargs: Any) -> dict[StateKey, str]:
        return await resolve_state(self.version, state_sets, in_memory(self.events), **kwargs)


@pytest.mark.parametrize("version", VERSIONS)
async def test_sender_power_beats_timestamp(version: str) -> None:
    """Alice's ban of Bob is applied before Bob's earlier-stamped power levels,
    which then fail: Bob is banned by the time they are checked."""
    room = Room(version)
    base = [
        room.add(Node("CREATE", ALICE, CREATE, ""), []),
        room.add(Node("IMA", ALICE, MEMBER, ALICE, JOIN), ["CREATE"]),
        room.add(
            Node("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}), ["CREATE", "IMA"]
        ),
        room.add(
            Node("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}), ["CREATE", "IMA", "PA"]
        ),
    ]
    room.add(Node("IMB", BOB, MEMBER, BOB, JOIN), ["CREATE", "PA", "IJR"])
    room.add(
        Node("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}),
        ["CREATE", "PA", "IMB"],
    )
    room.add(Node("MB", ALICE, MEMBER, BOB, BAN), ["CREATE", "PA", "IMA", "IMB"])
    resolved = await room.resolve(room.state(*base, "$IMB", "$PB"), room.state(*base, "$MB"))
    assert resolved[(POWER_LEVELS, "")] == "$PA"
    assert resolved[(MEMBER, BOB)] == "$MB"


def bob_topic_then_leave(
    version_id: str, *, topic_rejected: bool = False, join_rejected: bool = False
) -> tuple[Room, list[str]]:
    """Bob (level 50) sets the topic, then leaves; returns the room and its common state."""
    room = Room(version_id)
    base = [
        room.add(Node("CREATE", ALICE, CREATE, ""), []),
        room.add(Node("IMA", ALICE, MEMBER, ALICE, JOIN), ["CREATE"]),
        room.add(
            Node("IPOWER", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
            ["CREATE", "IMA"],
        ),
        room.add(
            Node("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}), ["CREATE", "IMA", "IPOWER"]
        ),
    ]
    room.add(
        Node("IMB", BOB, MEMBER, BOB, JOIN), ["CREATE", "IPOWER", "IJR"], rejected=join_rejected
    )
    room.add(
        Node("T", BOB, TOPIC, "", {"topic": "Bob's"}),
        ["CREATE", "IPOWER", "IMB"],
        rejected=topic_rejected,
    )
    room.add(Node("LB", BOB, MEMBER, BOB, LEAVE), ["CREATE", "IPOWER", "IMB"])
    return room, base


async def test_no_conflict_needs_no_events() -> None:
    """Identical states resolve to themselves without reading a single event."""
    state = {(CREATE, ""): "$CREATE", (MEMBER, ALICE): "$IMA"}

    async def get_events(event_ids: Iterable[str]) -> dict[str, Event]:
        raise AssertionError("no event should be fetched")

    assert await resolve_state(ROOM_VERSIONS["11"], [state, dict(state)], get_events) == state


@pytest.mark.parametrize(("version", "topic"), [("10", None), ("11", None), ("12", "$T")])
async def test_v2_1_starts_from_an_empty_state(version: str, topic: str | None) -> None:
    """One side never saw Bob's topic. v2 checks it against the unconflicted
    state, where Bob has since left, and drops it; v2.1 checks it against its
    own auth events, where Bob was joined with enough power, and keeps it."""
    room, base = bob_topic_then_leave(version)
    with_topic = room.state(*base, "$LB", "$T")
    without_topic = room.state(*base, "$LB")
    resolved = await room.resolve(with_topic, without_topic)
    assert resolved.get((TOPIC, "")) == topic
    assert resolved[(MEMBER, BOB)] == "$LB"


async def test_rejected_event_is_reauthorised() -> None:
    """A rejected conflicted event is judged again like any other (v2.1 lets it in)."""
    room, base = bob_topic_then_leave("12", topic_rejected=True)
    resolved = await room.resolve(room.state(*base, "$LB", "$T"), room.state(*base, "$LB"))
    assert resolved[(TOPIC, "")] == "$T"


async def test_rejected_auth_event_is_not_used() -> None:
    """With Bob's join rejected, his topic has no membership to stand on."""
    room, base = bob_topic_then_leave("12", join_rejected=True)
    resolved = await room.resolve(room.state(*base, "$LB", "$T"), room.state(*base, "$LB"))
    assert (TOPIC, "") not in resolved


def power_levels_reset(version_id: str) -> tuple[Room, dict[StateKey, str], dict[StateKey, str]]:
    """Alice promotes Bob (P2), Bob joins (J) and edits the levels (P3).

    One state set has P3; the other has J but power levels reset to P1,
    before Bob's promotion.
    """
    room = Room(version_id)
    common = [
        room.add(Node("CREATE", ALICE, CREATE, ""), []),
        room.add(Node("IMA", ALICE, MEMBER, ALICE, JOIN), ["CREATE"]),
    ]
    room.add(Node("P1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}}), ["CREATE", "IMA"])
    common.append(
        room.add(
            Node("IJR", ALICE, JOIN_RULES, "", {"join_rule": "public"}), ["CREATE", "IMA", "P1"]
        )
    )
    room.add(
        Node("P2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}),
        ["CREATE", "IMA", "P1"],
    )
    common.append(room.add(Node("J", BOB, MEMBER, BOB, JOIN), ["CREATE", "P2", "IJR"]))
    room.add(
        Node("P3", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}}),
        ["CREATE", "P2", "J"],
    )
    return room, room.state(*common, "$P1"), room.state(*common, "$P3")


@pytest.mark.parametrize(("version", "power_levels"), [("11", "$P1"), ("12", "$P3")])
async def test_conflicted_state_subgraph(version: str, power_levels: str) -> None:
    """P2 and J lie on the auth path from P3 to P1 but in both auth chains.

    v2 never replays them, so P3 is judged against P1, where Bob has no
    power, and the room is reset to P1. v2.1 replays the conflicted state
    subgraph, so P2 and J are applied before P3, which then stands.
    """
    room, reset, edited = power_levels_reset(version)
    resolved = await room.resolve(reset, edited)
    assert resolved[(POWER_LEVELS, "")] == power_levels
    assert resolved[(MEMBER, BOB)] == "$J"


@pytest.mark.parametrize("version", VERSIONS)
async def test_storage_auth_chain_index(version: str) -> None:
    """An auth chain index from storage gives the same answer as walking auth_events."""
    room, reset, edited = power_levels_reset(version)
    calls: list[set[str]] = []

    async def get_auth_chain(event_ids: Iterable[str]) -> set[str]:
        calls.append(set(event_ids))
        chain: set[str] = set()
        stack = [a for eid in calls[-1] for a in room.events[eid].auth_event_ids]
        while stack:
            eid = stack.pop()
            if eid not in chain:
                chain.add(eid)
                stack.extend(room.events[eid].auth_event_ids)
        return chain

    assert await room.resolve(reset, edited, get_auth_chain=get_auth_chain) == await room.resolve(
        reset, edited
    )
    assert calls
