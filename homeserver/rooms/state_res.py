"""State resolution v2 (room versions 10 and 11) and v2.1 (room version 12).

`resolve_state` merges the room states at several forward extremities into
one. It decides nothing itself: every event is judged by the auth rules in
`auth.py`, so a state resolved here and an event checked on receipt agree.
It reads events only through the two callables it is given, which lets
storage serve them in batches and lets tests pass a dict.

The algorithm follows the spec ("State resolution" of room versions 2 and
12) step by step; the private helpers carry the spec's names.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence

from homeserver.events.model import Event, RoomVersion, StateKey

from .auth import JOIN_RULES_KEY, AuthError, auth_types_for_event, check_auth_rules
from .power_levels import CREATE_KEY, POWER_LEVELS_KEY, PowerLevel, PowerLevels, room_creators

StateMap = Mapping[StateKey, str]

EventFetcher = Callable[[Iterable[str]], Awaitable[Mapping[str, Event]]]
"""Fetch events by ID in one batch, rejected ones included; unknown IDs are left out."""

AuthChainFetcher = Callable[[Iterable[str]], Awaitable[Collection[str]]]
"""The union of the auth chains of some events: every event reachable through
`auth_events`, the given events themselves only where so reachable."""


async def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    get_events: EventFetcher,
    get_auth_chain: AuthChainFetcher | None = None,
) -> dict[StateKey, str]:
    """Resolve several room states (`(type, state_key) -> event_id`) into one.

    `get_auth_chain` lets storage answer auth chain queries from an index; by
    default they are answered by walking `auth_events` through `get_events`.
    Events are cached for the duration of this one resolution. Events that
    `get_events` does not know are left out of the conflicted set, so they
    cannot win.
    """
    unconflicted, conflicted = _separate(state_sets)
    if not conflicted:
        return unconflicted

    graph = _AuthGraph(room_version, get_events, get_auth_chain)
    conflicted_set = set().union(*conflicted.values())
    full_conflicted_set = conflicted_set | await _auth_difference(graph, state_sets)
    if room_version.state_res_v2_1:
        full_conflicted_set |= await _conflicted_state_subgraph(graph, conflicted_set)
    await graph.fetch(full_conflicted_set)
    full_conflicted_set = {
        eid for eid in full_conflicted_set if eid in graph.events and graph.events[eid].is_state
    }

    power_events = {eid for eid in full_conflicted_set if _is_power_event(graph.events[eid])}
    power_auth_chain = set(await graph.auth_chain(power_events)) if power_events else set()
    power_events |= power_auth_chain & full_conflicted_set
    sorted_power_events = await _reverse_topological_power_ordering(
        graph, power_events, power_auth_chain
    )
    # v2.1 starts from nothing: judged against the unconflicted state, the
    # conflicted events could be rejected by state newer than they are.
    base_state = {} if room_version.state_res_v2_1 else dict(unconflicted)
    partial_state = await _iterative_auth_checks(graph, sorted_power_events, base_state)

    others = full_conflicted_set - power_events
    sorted_others = await _mainline_ordering(graph, others, partial_state.get(POWER_LEVELS_KEY))
    resolved = await _iterative_auth_checks(graph, sorted_others, partial_state)

    resolved.update(unconflicted)
    return resolved


def _separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state map, and the conflicted state set grouped by key.

    A key missing from some state set is conflicted, even with one value.
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for key in set().union(*state_sets):
        values = [state.get(key) for state in state_sets]
        first = values[0]
        if first is not None and all(value == first for value in values):
            unconflicted[key] = first
        else:
            conflicted[key] = {value for value in values if value is not None}
    return unconflicted, conflicted


class _AuthGraph:
    """The events one resolution looks at, fetched in batches and cached."""

    def __init__(
        self,
        room_version: RoomVersion,
        get_events: EventFetcher,
        get_auth_chain: AuthChainFetcher | None,
    ) -> None:
        self.room_version = room_version
        self.events: dict[str, Event] = {}
        self._unknown: set[str] = set()
        self._get_events = get_events
        self.auth_chain: AuthChainFetcher = get_auth_chain or self._walk_auth_chain

    async def fetch(self, event_ids: Iterable[str]) -> None:
        wanted = {eid for eid in event_ids if eid not in self.events and eid not in self._unknown}
        if not wanted:
            return
        found = await self._get_events(wanted)
        for eid in wanted:
            if eid in found:
                self.events[eid] = found[eid]
            else:
                self._unknown.add(eid)

    async def fetch_auth_events(self, event_ids: Iterable[str]) -> None:
        await self.fetch(
            a for eid in event_ids if eid in self.events for a in self.events[eid].auth_event_ids
        )

    async def _walk_auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """Breadth first, so each level of the auth graph is one batch fetch."""
        chain: set[str] = set()
        frontier = set(event_ids)
        while frontier:
            await self.fetch(frontier)
            frontier = {
                a for eid in frontier if eid in self.events for a in self.events[eid].auth_event_ids
            } - chain
            chain |= frontier
        return chain

    def auth_events(self, event: Event) -> list[Event]:
        """The fetched events among `event`'s auth_events."""
        return [self.events[a] for a in event.auth_event_ids if a in self.events]

    def create_event(self, event: Event) -> Event | None:
        """The room's create event: named by the room ID in v12, an auth event before."""
        if self.room_version.hashed_room_ids:
            return self.events.get("$" + event.room_id[1:])
        return next((a for a in self.auth_events(event) if a.type == "m.room.create"), None)

    async def fetch_create_event(self, events: Iterable[Event]) -> None:
        """v12 events do not cite the create event, so fetch it by the room ID."""
        if self.room_version.hashed_room_ids:
            await self.fetch({"$" + event.room_id[1:] for event in events})

    def auth_first(self, event_ids: Collection[str]) -> list[str]:
        """`event_ids` ordered so each comes after those of its auth events among them."""
        order: list[str] = []
        done: set[str] = set()
        for root in event_ids:
            stack = [(root, False)]
            while stack:
                eid, expanded = stack.pop()
                if expanded:
                    order.append(eid)
                    continue
                if eid in done:
                    continue
                done.add(eid)
                stack.append((eid, True))
                stack.extend(
                    (a, False)
                    for a in self.events[eid].auth_event_ids
                    if a in event_ids and a not in done
                )
        return order


async def _auth_difference(graph: _AuthGraph, state_sets: Sequence[StateMap]) -> set[str]:
    """Events in some but not all of the state sets' full auth chains.

    Each state set's own events count as part of its full auth chain, as
    Synapse counts them: an event present in one state and only cited in
    another is then common to both, not a difference.
    """
    chains = [
        set(state.values()) | set(await graph.auth_chain(state.values())) for state in state_sets
    ]
    return chains[0].union(*chains[1:]) - chains[0].intersection(*chains[1:])


async def _conflicted_state_subgraph(graph: _AuthGraph, conflicted_set: set[str]) -> set[str]:
    """v2.1: the events on `auth_events` paths from one conflicted event to another."""
    below = set(await graph.auth_chain(conflicted_set))
    await graph.fetch(below)
    reaches_conflict: set[str] = set()
    for eid in graph.auth_first(below & graph.events.keys()):
        if eid in conflicted_set or reaches_conflict.intersection(graph.events[eid].auth_event_ids):
            reaches_conflict.add(eid)
    return reaches_conflict | conflicted_set


def _is_power_event(event: Event) -> bool:
    """Events that may take away someone's ability to act in the room."""
    if not event.is_state:
        return False
    if event.state_tuple in (POWER_LEVELS_KEY, JOIN_RULES_KEY):
        return True
    return event.membership in ("leave", "ban") and event.sender != event.state_key


async def _reverse_topological_power_ordering(
    graph: _AuthGraph, event_ids: set[str], below: set[str]
) -> list[str]:
    """Kahn's algorithm over the auth DAG, picking by (sender power desc, ts, ID).

    `below` is the auth chain of `event_ids`.
    """
    await graph.fetch(below)
    await graph.fetch_create_event(graph.events[eid] for eid in event_ids)

    # Edges to the nearest members of `event_ids` below each event: the same
    # order as the full auth chains, also through events outside the set.
    nearest: dict[str, set[str]] = {}
    for eid in graph.auth_first((below | event_ids) & graph.events.keys()):
        nearest[eid] = set()
        for a in graph.events[eid].auth_event_ids:
            if a in event_ids:
                nearest[eid].add(a)
            elif a in nearest:
                nearest[eid] |= nearest[a]

    def sort_key(eid: str) -> tuple[PowerLevel, int, str]:
        event = graph.events[eid]
        return (-_sender_power_level(graph, event), event.origin_server_ts, eid)

    waiting = {eid: len(nearest[eid]) for eid in event_ids}
    dependents: dict[str, list[str]] = {eid: [] for eid in event_ids}
    for eid in event_ids:
        for a in nearest[eid]:
            dependents[a].append(eid)
    ready = [sort_key(eid) for eid, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        eid = heapq.heappop(ready)[2]
        ordered.append(eid)
        for dependent in dependents[eid]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, sort_key(dependent))
    return ordered


def _sender_power_level(graph: _AuthGraph, event: Event) -> PowerLevel:
    """The sender's power level according to the event's own auth events."""
    power_levels = next(
        (a for a in graph.auth_events(event) if a.state_tuple == POWER_LEVELS_KEY), None
    )
    create = graph.create_event(event)
    levels = PowerLevels(
        room_version=graph.room_version,
        creators=room_creators(create) if create is not None else frozenset(),
        content=power_levels.content if power_levels is not None else None,
    )
    return levels.user_level(event.sender)


async def _mainline_ordering(
    graph: _AuthGraph, event_ids: set[str], power_levels_id: str | None
) -> list[str]:
    """Order by mainline position (earliest first), then origin_server_ts, then ID.

    All events walk their power levels chains together, one batch per step.
    """
    mainline: list[str] = []
    current = power_levels_id
    while current is not None:
        mainline.append(current)
        await graph.fetch([current])
        await graph.fetch_auth_events([current])
        current = _power_levels_auth_event(graph, current)
    mainline_position = {eid: i for i, eid in enumerate(mainline)}

    position: dict[str, float] = {}
    walking = {eid: eid for eid in event_ids}
    while walking:
        await graph.fetch_auth_events(walking.values())
        still_walking: dict[str, str] = {}
        for eid, at in walking.items():
            parent = _power_levels_auth_event(graph, at)
            if parent is None:
                position[eid] = math.inf
            elif parent in mainline_position:
                position[eid] = mainline_position[parent]
            else:
                still_walking[eid] = parent
        walking = still_walking

    def sort_key(eid: str) -> tuple[float, int, str]:
        return (-position[eid], graph.events[eid].origin_server_ts, eid)

    return sorted(event_ids, key=sort_key)


def _power_levels_auth_event(graph: _AuthGraph, event_id: str) -> str | None:
    """The ID of the `m.room.power_levels` event among the event's auth events."""
    event = graph.events.get(event_id)
    if event is None:
        return None
    return next(
        (a.event_id for a in graph.auth_events(event) if a.state_tuple == POWER_LEVELS_KEY), None
    )


async def _iterative_auth_checks(
    graph: _AuthGraph, event_ids: list[str], state: dict[StateKey, str]
) -> dict[StateKey, str]:
    """Apply each event to `state` in order if the auth rules allow it there.

    A key the rules need but `state` lacks comes from the event's own auth
    events, unless that auth event was rejected.
    """
    events = [graph.events[eid] for eid in event_ids]
    auth_types = {
        event.event_id: auth_types_for_event(
            graph.room_version, event.type, event.sender, event.state_key, event.content
        )
        for event in events
    }
    await graph.fetch_auth_events(event_ids)
    await graph.fetch(state[key] for types in auth_types.values() for key in types if key in state)
    await graph.fetch_create_event(events)

    for event in events:
        cited = {
            a.state_tuple: a for a in graph.auth_events(event) if a.is_state and not a.rejected
        }
        auth_state: dict[StateKey, Event] = {}
        for key in auth_types[event.event_id]:
            if key in state and state[key] in graph.events:
                auth_state[key] = graph.events[state[key]]
            elif key in cited:
                auth_state[key] = cited[key]
        if CREATE_KEY not in auth_state and (create := graph.create_event(event)) is not None:
            auth_state[CREATE_KEY] = create
        try:
            check_auth_rules(event, auth_state)
        except AuthError:
            continue
        state[event.state_tuple] = event.event_id
    return state
