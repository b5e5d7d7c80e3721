"""Room summaries: what the public room directory and space hierarchies show
of a room, read from its current state for many rooms at once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.events import EventStore

from ..events.model import Event
from ..events.redaction import state_content

SPACE_CHILD = "m.space.child"
SPACE_ROOM_TYPE = "m.space"
MAX_ORDER_LENGTH = 50
_INVALID_ORDER_CHARS = re.compile(r"[^\x20-\x7E]")

# The state a summary reads (all with an empty state key).
SUMMARY_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
)
# Join rules under which anyone not banned may ask to join (spec: "knockable" or public).
OPEN_JOIN_RULES = ("public", "knock", "knock_restricted")
_RESTRICTED_JOIN_RULES = ("restricted", "knock_restricted")


def plain_topic(content: dict[str, Any]) -> str | None:
    """The plain-text topic: the `text/plain` entry of `m.topic`, else `topic`."""
    rich = content.get("m.topic")
    texts = rich.get("m.text") if isinstance(rich, dict) else None
    if isinstance(texts, list):
        for entry in texts:
            if (
                isinstance(entry, dict)
                and entry.get("mimetype", "text/plain") == "text/plain"
                and isinstance(entry.get("body"), str)
            ):
                return entry["body"]
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None


def valid_via(content: dict[str, Any]) -> bool:
    """A child link is valid while its `via` is a non-empty list of server names."""
    via = content.get("via")
    return isinstance(via, list) and bool(via) and all(isinstance(v, str) and v for v in via)


def _child_order_key(child: Event) -> tuple[bool, str, int, str]:
    """The spec's order: valid `order` strings first (by code point), then by timestamp, then ID."""
    order = child.content.get("order")
    if (
        not isinstance(order, str)
        or len(order) > MAX_ORDER_LENGTH
        or _INVALID_ORDER_CHARS.search(order)
    ):
        order = None
    return order is None, order or "", child.origin_server_ts, child.state_key or ""


@dataclass(frozen=True)
class RoomSummary:
    """One room as its current state describes it."""

    room_id: str
    # Content in force of the summary's state events, by type.
    state: dict[str, dict[str, Any]]
    num_joined_members: int
    # The room's valid m.space.child events, in the spec's order (if read).
    children: list[Event] = field(default_factory=list)

    def _string(self, event_type: str, key: str) -> str | None:
        value = self.state.get(event_type, {}).get(key)
        return value if isinstance(value, str) and value else None

    @property
    def room_type(self) -> str | None:
        return self._string("m.room.create", "type")

    @property
    def is_space(self) -> bool:
        return self.room_type == SPACE_ROOM_TYPE

    @property
    def join_rule(self) -> str | None:
        return self._string("m.room.join_rules", "join_rule")

    @property
    def world_readable(self) -> bool:
        return self._string("m.room.history_visibility", "history_visibility") == "world_readable"

    @property
    def guest_can_join(self) -> bool:
        return self._string("m.room.guest_access", "guest_access") == "can_join"

    @property
    def allowed_room_ids(self) -> list[str]:
        """The rooms whose members may join a restricted room."""
        if self.join_rule not in _RESTRICTED_JOIN_RULES:
            return []
        allow = self.state.get("m.room.join_rules", {}).get("allow")
        if not isinstance(allow, list):
            return []
        return [
            entry["room_id"]
            for entry in allow
            if isinstance(entry, dict)
            and entry.get("type") == "m.room_membership"
            and isinstance(entry.get("room_id"), str)
        ]

    def chunk(self) -> dict[str, Any]:
        """The spec's PublishedRoomsChunk (absent fields left out)."""
        fields = {
            "room_id": self.room_id,
            "name": self._string("m.room.name", "name"),
            "topic": plain_topic(self.state.get("m.room.topic", {})),
            "canonical_alias": self._string("m.room.canonical_alias", "alias"),
            "avatar_url": self._string("m.room.avatar", "url"),
            "join_rule": self.join_rule,
            "room_type": self.room_type,
        }
        body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        body["num_joined_members"] = self.num_joined_members
        body["world_readable"] = self.world_readable
        body["guest_can_join"] = self.guest_can_join
        return body


async def summarise_rooms(
    events: EventStore, room_ids: Sequence[str], *, with_children: bool = False
) -> dict[str, RoomSummary]:
    """Summaries of the rooms this server knows, read together (a few queries in all)."""
    types = SUMMARY_TYPES + ((SPACE_CHILD,) if with_children else ())
    state_ids = await events.get_current_state_ids_for_rooms(room_ids, types)
    known = [room_id for room_id in room_ids if ("m.room.create", "") in state_ids[room_id]]
    found = await events.get_events(
        event_id for room_id in known for event_id in state_ids[room_id].values()
    )
    counts = await events.count_joined_members(known)
    summaries = {}
    for room_id in known:
        state: dict[str, dict[str, Any]] = {}
        children = []
        for (event_type, state_key), event_id in state_ids[room_id].items():
            event = found.get(event_id)
            if event is None:
                continue
            if event_type == SPACE_CHILD:
                if state_key.startswith("!") and event.redacted_by is None and valid_via(event.content):
                    children.append(event)
            elif state_key == "":
                state[event_type] = state_content(event)
        children.sort(key=_child_order_key)
        summaries[room_id] = RoomSummary(room_id, state, counts[room_id], children)
    return summaries
