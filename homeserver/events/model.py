"""Room versions and the typed view of a persistent event (PDU).

An `Event` wraps the event's JSON exactly as it is hashed and signed (the
PDU, without `event_id`, which in room versions 3+ is derived from the JSON
rather than carried in it) and exposes its fields by their Matrix names.
Everything that decides (auth rules, state resolution, redaction) takes
these and nothing else, so it runs without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RoomVersion:
    """What differs between the room versions this server supports."""

    identifier: str
    # v11+: `m.room.create` has no `creator`; `redacts` lives in `content`;
    # the v11 redaction algorithm (content of create events kept, etc.).
    v11_semantics: bool
    # v12+: the room ID is `!` + the create event's reference hash, the
    # create event has no `room_id`, is never listed in `auth_events`, and
    # its sender and `additional_creators` have infinite power.
    hashed_room_ids: bool
    # v12+: state resolution v2.1 (iterative auth checks start from an
    # empty state; the conflicted state subgraph is included).
    state_res_v2_1: bool

    @property
    def creators_are_infinitely_powerful(self) -> bool:
        return self.hashed_room_ids


ROOM_VERSIONS: dict[str, RoomVersion] = {
    "10": RoomVersion("10", v11_semantics=False, hashed_room_ids=False, state_res_v2_1=False),
    "11": RoomVersion("11", v11_semantics=True, hashed_room_ids=False, state_res_v2_1=False),
    "12": RoomVersion("12", v11_semantics=True, hashed_room_ids=True, state_res_v2_1=True),
}
DEFAULT_ROOM_VERSION = "12"

StateKey = tuple[str, str]  # (event type, state key)


@dataclass(frozen=True, eq=False)
class Event:
    """A persistent event: its ID, its room version and its PDU JSON.

    `pdu` is the signed JSON without `event_id`. `rejected` marks an event
    that failed the auth rules (it stays in the graph but never in state).
    The rest is local bookkeeping, never part of the hashed and signed PDU:
    `transaction` is the (device ID, transaction ID) a local client sent it
    with, shown back only to that device; `redacted_by` is the ID of an
    accepted redaction of this event; `replaces_state` is, for a state
    event, the event it replaced in the room state (clients get its content
    as `unsigned.prev_content`).
    """

    event_id: str
    room_version: RoomVersion
    pdu: dict[str, Any]
    rejected: bool = False
    transaction: tuple[str, str] | None = None
    redacted_by: str | None = None
    replaces_state: str | None = None

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __repr__(self) -> str:
        key = f" {self.state_key!r}" if self.is_state else ""
        return f"<Event {self.event_id} {self.type}{key}>"

    # --------------------------------------------------------------- fields

    @property
    def type(self) -> str:
        return self.pdu["type"]

    @property
    def sender(self) -> str:
        return self.pdu["sender"]

    @property
    def room_id(self) -> str:
        """The room ID; for a v12 create event (which carries none) it is derived."""
        room_id = self.pdu.get("room_id")
        if room_id is None and self.type == "m.room.create" and self.room_version.hashed_room_ids:
            return "!" + self.event_id[1:]
        return room_id

    @property
    def content(self) -> dict[str, Any]:
        return self.pdu.get("content", {})

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> StateKey:
        assert self.is_state, "not a state event"
        return (self.type, self.pdu["state_key"])

    @property
    def prev_event_ids(self) -> list[str]:
        return self.pdu.get("prev_events", [])

    @property
    def auth_event_ids(self) -> list[str]:
        return self.pdu.get("auth_events", [])

    @property
    def depth(self) -> int:
        return self.pdu.get("depth", 0)

    @property
    def origin_server_ts(self) -> int:
        return self.pdu.get("origin_server_ts", 0)

    @property
    def membership(self) -> str | None:
        """`content.membership` of an `m.room.member` event."""
        if self.type != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    @property
    def redacts(self) -> str | None:
        """The event an `m.room.redaction` redacts (in `content` from v11 on)."""
        if self.type != "m.room.redaction":
            return None
        if self.room_version.v11_semantics:
            value = self.content.get("redacts", self.pdu.get("redacts"))
        else:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None
