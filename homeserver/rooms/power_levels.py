"""Power levels: who may do what, read from `m.room.power_levels` and `m.room.create`.

The auth rules and the room service (e.g. "may this user redact?") ask the
same questions, so the spec's defaults live here once. Levels are read from
state as it stands; values the auth rules would have rejected (strings, floats,
booleans) never reach accepted state in room versions 10+, and are treated as
absent if they do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from homeserver.events.model import Event, RoomVersion, StateKey

PowerLevel = int | float
"""An integer level, or `INFINITE_POWER` for a v12+ room creator."""

INFINITE_POWER: Final[float] = math.inf
"""The level of room creators in v12+: above any integer, equal only to itself."""

# Canonical JSON's integer range, which power levels must respect.
MIN_POWER_LEVEL: Final = -(2**53) + 1
MAX_POWER_LEVEL: Final = 2**53 - 1

# The defaults the m.room.power_levels schema gives when a key (or the event) is absent.
DEFAULT_USERS_DEFAULT: Final = 0
DEFAULT_EVENTS_DEFAULT: Final = 0
DEFAULT_STATE_DEFAULT: Final = 50
DEFAULT_INVITE: Final = 0
DEFAULT_KICK: Final = 50
DEFAULT_BAN: Final = 50
DEFAULT_REDACT: Final = 50
DEFAULT_NOTIFICATION: Final = 50
# Versions 1-11: the creator's level while the room has no power levels event.
CREATOR_LEVEL_WITHOUT_POWER_LEVELS: Final = 100

CREATE_KEY: Final[StateKey] = ("m.room.create", "")
POWER_LEVELS_KEY: Final[StateKey] = ("m.room.power_levels", "")


def is_power_level_int(value: Any) -> bool:
    """True for a JSON integer in canonical JSON's range (not a bool, float or string)."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_POWER_LEVEL <= value <= MAX_POWER_LEVEL
    )


def room_creators(create: Event) -> frozenset[str]:
    """The room's creators, as the create event's room version defines them.

    v10: `content.creator`; v11: the create event's `sender`; v12+: the
    sender plus `content.additional_creators`.
    """
    version = create.room_version
    if not version.v11_semantics:
        creator = create.content.get("creator")
        return frozenset([creator]) if isinstance(creator, str) else frozenset()
    if not version.creators_are_infinitely_powerful:
        return frozenset([create.sender])
    additional = create.content.get("additional_creators", [])
    extra = [u for u in additional if isinstance(u, str)] if isinstance(additional, list) else []
    return frozenset([create.sender, *extra])


def _level(value: Any, default: int) -> int:
    return value if is_power_level_int(value) else default


@dataclass(frozen=True)
class PowerLevels:
    """The power levels in force in a room: its power levels content plus its creators.

    `content` is None when the room has no `m.room.power_levels` event, which
    matters: the creators then hold level 100 (versions 10 and 11).
    """

    room_version: RoomVersion
    creators: frozenset[str]
    content: Mapping[str, Any] | None

    @classmethod
    def from_state(cls, state: Mapping[StateKey, Event]) -> PowerLevels:
        """Read from a state map that holds the create event (and the power levels, if any)."""
        create = state[CREATE_KEY]
        power_levels = state.get(POWER_LEVELS_KEY)
        return cls(
            room_version=create.room_version,
            creators=room_creators(create),
            content=power_levels.content if power_levels is not None else None,
        )

    def _get(self, key: str, default: int) -> int:
        return default if self.content is None else _level(self.content.get(key), default)

    def _map(self, key: str) -> Mapping[str, Any]:
        value = self.content.get(key) if self.content is not None else None
        return value if isinstance(value, Mapping) else {}

    def user_level(self, user_id: str) -> PowerLevel:
        """`users[user_id]`, else `users_default`; creators per the room version."""
        if user_id in self.creators and self.room_version.creators_are_infinitely_powerful:
            return INFINITE_POWER
        if self.content is None:
            return CREATOR_LEVEL_WITHOUT_POWER_LEVELS if user_id in self.creators else 0
        default = self._get("users_default", DEFAULT_USERS_DEFAULT)
        return _level(self._map("users").get(user_id), default)

    def required_level(self, event_type: str, *, is_state: bool) -> int:
        """The spec's *required power level* to send an event of this type.

        `events[event_type]`, else `state_default` (50) for state events or
        `events_default` (0) for the rest, with or without a power levels event.
        """
        if is_state:
            default = self._get("state_default", DEFAULT_STATE_DEFAULT)
        else:
            default = self._get("events_default", DEFAULT_EVENTS_DEFAULT)
        return _level(self._map("events").get(event_type), default)

    @property
    def invite(self) -> int:
        return self._get("invite", DEFAULT_INVITE)

    @property
    def kick(self) -> int:
        return self._get("kick", DEFAULT_KICK)

    @property
    def ban(self) -> int:
        return self._get("ban", DEFAULT_BAN)

    @property
    def redact(self) -> int:
        """The level to redact *other* users' events (not an auth rule; see Handling redactions)."""
        return self._get("redact", DEFAULT_REDACT)

    def notification_level(self, key: str = "room") -> int:
        """`notifications[key]`, e.g. the level to trigger an `@room` notification."""
        return _level(self._map("notifications").get(key), DEFAULT_NOTIFICATION)
