"""Filters (spec: Filtering): what a client wants from /sync and /messages.

`Filter` is the whole thing a client uploads or passes inline to /sync;
`RoomEventFilter` the part that selects room events (also /messages'
`filter`); `EventFilter` the part for presence and global account data.
Every constructor validates and raises M_BAD_JSON for what is not a filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from storage.history import EventMatch

from ..errors import bad_json
from ..events.model import Event

MAX_LIMIT = 1000
DEFAULT_TIMELINE_LIMIT = 10


@lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _matches_any(value: str, patterns: Sequence[str]) -> bool:
    return any(_wildcard(p).fullmatch(value) for p in patterns)


def _string_list(body: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v for v in value):
        raise bad_json(f"filter: '{key}' must be a list of strings (without NUL characters)")
    return tuple(value)


def _bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_json(f"filter: '{key}' must be true or false")
    return value


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"filter: '{key}' must be a JSON object")
    return value


def _limit(body: dict[str, Any]) -> int | None:
    limit = body.get("limit")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise bad_json("filter: 'limit' must be an integer greater than 0")
    return min(limit, MAX_LIMIT) if limit is not None else None


def _match(body: dict[str, Any]) -> EventMatch:
    return EventMatch(
        types=_string_list(body, "types"),
        not_types=_string_list(body, "not_types") or (),
        senders=_string_list(body, "senders"),
        not_senders=_string_list(body, "not_senders") or (),
        contains_url=_bool(body, "contains_url"),
    )


def _type_and_sender_match(match: EventMatch, event_type: str, sender: str | None) -> bool:
    if match.types is not None and not _matches_any(event_type, match.types):
        return False
    if _matches_any(event_type, match.not_types):
        return False
    if match.senders is not None and sender not in match.senders:
        return False
    return sender not in match.not_senders


_NOTHING = EventMatch(types=())


@dataclass(frozen=True)
class EventFilter:
    """The spec's EventFilter: for presence and global account data."""

    match: EventMatch = field(default_factory=EventMatch)
    limit: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> EventFilter:
        if not isinstance(body, dict):
            raise bad_json("filter must be a JSON object")
        return cls(_match(body), _limit(body))

    def apply(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The matching events (JSON with `type` and maybe `sender`), at most `limit`."""
        kept = [e for e in events if _type_and_sender_match(self.match, e["type"], e.get("sender"))]
        return kept[: self.limit] if self.limit is not None else kept


@dataclass(frozen=True)
class RoomEventFilter:
    """The spec's RoomEventFilter (timeline, state, ephemeral, room account data; /messages)."""

    match: EventMatch = field(default_factory=EventMatch)
    limit: int | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, body: Any) -> RoomEventFilter:
        """Validate a filter a client sent; M_BAD_JSON when it is not a RoomEventFilter."""
        if not isinstance(body, dict):
            raise bad_json("filter must be a JSON object")
        return cls(
            match=_match(body),
            limit=_limit(body),
            lazy_load_members=bool(_bool(body, "lazy_load_members")),
            include_redundant_members=bool(_bool(body, "include_redundant_members")),
            unread_thread_notifications=bool(_bool(body, "unread_thread_notifications")),
            rooms=_string_list(body, "rooms"),
            not_rooms=_string_list(body, "not_rooms") or (),
        )

    def allows_room(self, room_id: str) -> bool:
        return room_id not in self.not_rooms and (self.rooms is None or room_id in self.rooms)

    def match_for(self, room_id: str) -> EventMatch:
        """`match`, or one matching nothing when `rooms`/`not_rooms` exclude the room."""
        return self.match if self.allows_room(room_id) else _NOTHING

    def matches(self, event: Event) -> bool:
        """The test `match_for` makes in SQL, for events not read through it."""
        m = self.match_for(event.room_id)
        if not _type_and_sender_match(m, event.type, event.sender):
            return False
        return m.contains_url is None or m.contains_url == isinstance(event.content.get("url"), str)

    def matches_json(self, room_id: str, event: dict[str, Any]) -> bool:
        """For ephemeral and account data events: type and sender only."""
        return self.allows_room(room_id) and _type_and_sender_match(
            self.match, event["type"], event.get("sender")
        )


@dataclass(frozen=True)
class RoomFilter:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: RoomEventFilter = field(default_factory=RoomEventFilter)
    state: RoomEventFilter = field(default_factory=RoomEventFilter)
    ephemeral: RoomEventFilter = field(default_factory=RoomEventFilter)
    account_data: RoomEventFilter = field(default_factory=RoomEventFilter)

    def allows_room(self, room_id: str) -> bool:
        return room_id not in self.not_rooms and (self.rooms is None or room_id in self.rooms)


@dataclass(frozen=True)
class Filter:
    """The spec's Filter: everything /sync is asked to leave in or out."""

    room: RoomFilter = field(default_factory=RoomFilter)
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"

    @classmethod
    def from_json(cls, body: Any) -> Filter:
        if not isinstance(body, dict):
            raise bad_json("filter must be a JSON object")
        room = _object(body, "room")
        event_format = body.get("event_format", "client")
        if event_format not in ("client", "federation"):
            raise bad_json("filter: 'event_format' must be 'client' or 'federation'")
        return cls(
            room=RoomFilter(
                rooms=_string_list(room, "rooms"),
                not_rooms=_string_list(room, "not_rooms") or (),
                include_leave=bool(_bool(room, "include_leave")),
                timeline=RoomEventFilter.from_json(_object(room, "timeline")),
                state=RoomEventFilter.from_json(_object(room, "state")),
                ephemeral=RoomEventFilter.from_json(_object(room, "ephemeral")),
                account_data=RoomEventFilter.from_json(_object(room, "account_data")),
            ),
            presence=EventFilter.from_json(_object(body, "presence")),
            account_data=EventFilter.from_json(_object(body, "account_data")),
            event_fields=_string_list(body, "event_fields"),
            event_format=event_format,
        )


def _field_path(path: str) -> list[str]:
    """`content.body` -> ["content", "body"]; `\\.` escapes a dot inside a key."""
    parts, current, escaped = [], [], False
    for char in path:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def only_fields(event: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """The event with only the `event_fields` a filter asks for."""
    result: dict[str, Any] = {}
    for path in fields:
        keys = _field_path(path)
        value: Any = event
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            target = result
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value
    return result
