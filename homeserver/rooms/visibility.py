"""History visibility: which events a user may see (spec: Room History Visibility).

Decided from the room state AT each event: the state group stored with the
event is the state after it; the state before it differs only in the
event's own key, which `replaces_state` gives. State groups and events are
cached, so filtering a page of events costs a few dictionary lookups.

As Synapse does, "shared" history is visible to users who are joined now:
"joined at any point after the event" is read as "is joined at present".

Users a reader ignores (their `m.ignored_user_list` account data) are
hidden too, but for their state events (spec: Ignoring Users).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from storage.events import EventStore, StateMap

from ..events.model import Event

HISTORY_KEY = ("m.room.history_visibility", "")
_VISIBILITIES = ("world_readable", "shared", "invited", "joined")
IGNORED_USER_LIST = "m.ignored_user_list"


def ignored_in(content: dict[str, Any] | None) -> frozenset[str]:
    """The users an `m.ignored_user_list` content names (a malformed one: nobody)."""
    users = (content or {}).get("ignored_users")
    return frozenset(u for u in users if isinstance(u, str)) if isinstance(users, dict) else frozenset()


def is_ignored(event: Event, ignored: Collection[str]) -> bool:
    """Whether a reader ignoring `ignored` must not see the event: state events always show."""
    return not event.is_state and event.sender in ignored


def _allowed(visibility: str, membership: str | None, joined_now: bool) -> bool:
    if visibility == "world_readable":
        return True
    if membership == "join":
        return True
    if visibility == "shared" and joined_now:
        return True
    return visibility == "invited" and membership == "invite"


async def filter_events_for_user(
    store: EventStore,
    user_id: str,
    events: Sequence[Event],
    *,
    joined_now: dict[str, bool] | None = None,
    ignored: Collection[str] = (),
) -> list[Event]:
    """The events `user_id` may see, in the order given.

    `joined_now` maps room ID to whether the user is currently joined (the
    caller usually knows; otherwise it is looked up). Non-state events sent
    by the `ignored` users (see `ignored_users`) are left out.
    """
    if ignored:
        events = [e for e in events if not is_ignored(e, ignored)]
    if not events:
        return []
    member_key = ("m.room.member", user_id)
    groups = await store.get_positions([e.event_id for e in events])
    states: dict[int, StateMap] = {}
    for _position, group in groups.values():
        if group not in states:
            states[group] = await store.get_state_group(group)
    # The events that decide: history visibility and the user's membership
    # after each event, and before it where the event itself changed them.
    wanted: set[str] = set()
    for event in events:
        state = states[groups[event.event_id][1]]
        for key in (HISTORY_KEY, member_key):
            if key in state:
                wanted.add(state[key])
        if event.is_state and event.state_tuple in (HISTORY_KEY, member_key) and event.replaces_state:
            wanted.add(event.replaces_state)
    deciding = await store.get_events(wanted)

    def visibility_of(event_id: str | None) -> str:
        found = deciding.get(event_id) if event_id else None
        value = found.content.get("history_visibility") if found else None
        return value if value in _VISIBILITIES else "shared"

    def membership_of(event_id: str | None) -> str | None:
        found = deciding.get(event_id) if event_id else None
        return found.membership if found else None

    if joined_now is None:
        joined_now = {}
        for room_id in {e.room_id for e in events}:
            membership = await store.get_membership(room_id, user_id)
            joined_now[room_id] = membership is not None and membership.membership == "join"

    visible = []
    for event in events:
        state = states[groups[event.event_id][1]]
        after_hv, after_member = state.get(HISTORY_KEY), state.get(member_key)
        before_hv, before_member = after_hv, after_member
        if event.is_state and event.state_tuple == HISTORY_KEY:
            before_hv = event.replaces_state
        if event.is_state and event.state_tuple == member_key:
            before_member = event.replaces_state
        now = joined_now.get(event.room_id, False)
        # For a visibility change and for the user's own membership change,
        # either side of the event allows it (spec); otherwise both agree.
        if _allowed(visibility_of(after_hv), membership_of(after_member), now) or _allowed(
            visibility_of(before_hv), membership_of(before_member), now
        ):
            visible.append(event)
    return visible
