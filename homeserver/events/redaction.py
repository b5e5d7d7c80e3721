"""The redaction algorithm: what of an event survives a redaction.

It is also what signatures and event IDs cover (see `hashing`), so it must
match the spec byte for byte: room version 10 uses the v9 rules, 11 and 12
the v11 rules ("Redactions" in rooms/v10.md and rooms/v11.md).
"""

from __future__ import annotations

import copy
from typing import Any

from .model import Event, RoomVersion

_V9_TOP_LEVEL_KEYS = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11 stops protecting `origin`, `membership` and `prev_state`.
_V11_TOP_LEVEL_KEYS = _V9_TOP_LEVEL_KEYS - {"origin", "membership", "prev_state"}

_POWER_LEVELS_KEYS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)

_V9_CONTENT_KEYS: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": _POWER_LEVELS_KEYS,
    "m.room.history_visibility": ("history_visibility",),
}
# m.room.create keeps all of its content in v11, so it is absent here.
_V11_CONTENT_KEYS: dict[str, tuple[str, ...]] = {
    **{k: v for k, v in _V9_CONTENT_KEYS.items() if k != "m.room.create"},
    "m.room.power_levels": (*_POWER_LEVELS_KEYS, "invite"),
    "m.room.redaction": ("redacts",),
}


def redact(pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """A redacted copy of `pdu`; the input is left untouched."""
    v11 = room_version.v11_semantics
    top_level_keys = _V11_TOP_LEVEL_KEYS if v11 else _V9_TOP_LEVEL_KEYS
    redacted = {key: value for key, value in pdu.items() if key in top_level_keys}
    if "content" in redacted:
        event_type = pdu.get("type")
        redacted["content"] = _redact_content(
            event_type if isinstance(event_type, str) else "", pdu["content"], v11
        )
    return copy.deepcopy(redacted)


def _redact_content(event_type: str, content: Any, v11: bool) -> dict[str, Any]:
    if not isinstance(content, dict):
        return {}
    if v11 and event_type == "m.room.create":
        return dict(content)
    allowed = (_V11_CONTENT_KEYS if v11 else _V9_CONTENT_KEYS).get(event_type, ())
    kept = {key: content[key] for key in allowed if key in content}
    if v11 and event_type == "m.room.member":
        # v11 keeps `third_party_invite`, but only its `signed` part: the
        # auth rules need it to check the invite.
        third_party_invite = content.get("third_party_invite")
        if isinstance(third_party_invite, dict):
            kept["third_party_invite"] = {
                key: value for key, value in third_party_invite.items() if key == "signed"
            }
    return kept


def state_content(event: Event) -> dict[str, Any]:
    """The content in force: a redacted event keeps only what redaction leaves."""
    if event.redacted_by is None:
        return event.content
    return redact(event.pdu, event.room_version)["content"]
