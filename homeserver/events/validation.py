"""Checks a PDU must pass before it is built or accepted.

The event format of room versions 10-12, canonical JSON (v6+: integers in
range, no floats), the size limits ("Size limits" in the client-server API)
and the identifier grammars (appendices). A PDU that fails is never hashed,
stored or relayed; the caller turns the error into a 400 / 413 or drops the
event, as the spec says for its endpoint.
"""

from __future__ import annotations

import re
from typing import Any

from federation.signing import canonical_json

from ..errors import MatrixError
from .model import RoomVersion

MAX_PDU_SIZE = 65536
MAX_ID_BYTES = 255  # user, room and event IDs; `type` and `state_key` too
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
CANONICAL_JSON_MIN_INT = -(2**53) + 1
CANONICAL_JSON_MAX_INT = 2**53 - 1

_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "an array"}
# hostname [":" port]; the DNS-name characters also cover IPv4 literals.
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.\-]{1,255})(?::[0-9]{1,5})?")
# Event IDs (v4+) and hashed room IDs (v12+): sigil + URL-safe base64 SHA-256.
_HASH_ID = re.compile(r"[A-Za-z0-9_\-]{43}")


class EventValidationError(MatrixError):
    """A PDU breaks the event format: `M_TOO_LARGE`, `M_BAD_JSON` or `M_INVALID_PARAM`."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(413 if errcode == "M_TOO_LARGE" else 400, errcode, message)


def canonical_json_size(value: Any) -> int:
    """Bytes of `value` as canonical JSON: what the size limits are measured on."""
    return len(canonical_json(value))


def check_pdu_size(pdu: dict[str, Any]) -> None:
    """Refuse a PDU over 64 KiB; run again once signatures are added."""
    try:
        size = canonical_json_size(pdu)
    except (ValueError, RecursionError) as e:  # lone surrogates, absurd nesting
        raise EventValidationError("M_BAD_JSON", "Event is not valid canonical JSON") from e
    if size > MAX_PDU_SIZE:
        raise EventValidationError(
            "M_TOO_LARGE", f"Event is {size} bytes, over the limit of {MAX_PDU_SIZE}"
        )


def check_canonical_json(value: Any) -> None:
    """Refuse values canonical JSON cannot carry: floats, out-of-range integers, non-JSON types."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise EventValidationError("M_BAD_JSON", f"Non-string key at {path or '/'}")
                stack.append((f"{path}/{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}/{i}", child) for i, child in enumerate(item))
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not CANONICAL_JSON_MIN_INT <= item <= CANONICAL_JSON_MAX_INT:
                raise EventValidationError(
                    "M_BAD_JSON", f"Integer out of the canonical JSON range at {path}"
                )
        elif isinstance(item, float):
            raise EventValidationError("M_BAD_JSON", f"Float at {path}: only integers are allowed")
        else:
            raise EventValidationError("M_BAD_JSON", f"Not a JSON value at {path}")


def validate_pdu(pdu: dict[str, Any], room_version: RoomVersion) -> None:
    """Raise EventValidationError unless `pdu` has its room version's event format.

    `hashes` and `signatures` are optional here so that an event can be
    checked before it is signed; a received PDU missing them fails the
    signature and hash checks that follow.
    """
    check_canonical_json(pdu)
    check_pdu_size(pdu)
    _check_fields(pdu, room_version)
    _check_identifiers(pdu, room_version)


def _check_fields(pdu: dict[str, Any], room_version: RoomVersion) -> None:
    _require(pdu, "type", str)
    _require(pdu, "sender", str)
    _require(pdu, "content", dict)
    _require(pdu, "origin_server_ts", int)
    _require(pdu, "depth", int)
    _require(pdu, "prev_events", list)
    _require(pdu, "auth_events", list)
    optional = (("state_key", str), ("hashes", dict), ("signatures", dict), ("unsigned", dict))
    for key, expected in optional:
        if key in pdu and not isinstance(pdu[key], expected):
            raise EventValidationError("M_BAD_JSON", f"'{key}' must be {_TYPE_NAMES[expected]}")
    if pdu["depth"] < 0:
        raise EventValidationError("M_BAD_JSON", "'depth' must not be negative")
    if len(pdu["prev_events"]) > MAX_PREV_EVENTS:
        raise EventValidationError("M_BAD_JSON", f"More than {MAX_PREV_EVENTS} prev_events")
    if len(pdu["auth_events"]) > MAX_AUTH_EVENTS:
        raise EventValidationError("M_BAD_JSON", f"More than {MAX_AUTH_EVENTS} auth_events")
    for key in ("type", "state_key"):
        if key in pdu and len(pdu[key].encode()) > MAX_ID_BYTES:
            raise EventValidationError("M_BAD_JSON", f"'{key}' is longer than {MAX_ID_BYTES} bytes")
    if room_version.hashed_room_ids and pdu["type"] == "m.room.create":
        if "room_id" in pdu:
            raise EventValidationError(
                "M_BAD_JSON", "An m.room.create event has no room_id in this room version"
            )
    else:
        _require(pdu, "room_id", str)


def _check_identifiers(pdu: dict[str, Any], room_version: RoomVersion) -> None:
    if not _is_user_id(pdu["sender"]):
        raise EventValidationError("M_INVALID_PARAM", "'sender' is not a valid user ID")
    if "room_id" in pdu and not _is_room_id(pdu["room_id"], room_version):
        raise EventValidationError("M_INVALID_PARAM", "'room_id' is not a valid room ID")
    for key in ("prev_events", "auth_events"):
        if not all(_is_event_id(event_id) for event_id in pdu[key]):
            raise EventValidationError("M_INVALID_PARAM", f"'{key}' holds an invalid event ID")
    if pdu["type"] == "m.room.redaction":
        # Absent from a redacted v10 redaction, so only checked when there.
        redacts = (pdu["content"] if room_version.v11_semantics else pdu).get("redacts")
        if redacts is not None and not _is_event_id(redacts):
            raise EventValidationError("M_INVALID_PARAM", "'redacts' is not a valid event ID")


def _require(pdu: dict[str, Any], key: str, expected: type) -> None:
    value = pdu.get(key)
    if value is None:
        raise EventValidationError("M_BAD_JSON", f"Missing '{key}'")
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise EventValidationError("M_BAD_JSON", f"'{key}' must be {_TYPE_NAMES[expected]}")


def is_server_name(name: str) -> bool:
    return _SERVER_NAME.fullmatch(name) is not None


def _is_user_id(user_id: str) -> bool:
    """The historical grammar: any localpart without `:` or NUL, even empty.

    Events from such users exist in real rooms and must still be accepted.
    """
    if not user_id.startswith("@") or len(user_id.encode()) > MAX_ID_BYTES:
        return False
    localpart, colon, server_name = user_id[1:].partition(":")
    return bool(colon) and "\x00" not in localpart and is_server_name(server_name)


def _is_room_id(room_id: str, room_version: RoomVersion) -> bool:
    if not room_id.startswith("!") or len(room_id.encode()) > MAX_ID_BYTES:
        return False
    if room_version.hashed_room_ids:
        return _HASH_ID.fullmatch(room_id[1:]) is not None
    localpart, colon, server_name = room_id[1:].partition(":")
    return bool(colon) and "\x00" not in localpart and is_server_name(server_name)


def _is_event_id(event_id: Any) -> bool:
    """Room versions 4+: `$` + URL-safe unpadded base64 of a SHA-256."""
    return (
        isinstance(event_id, str)
        and event_id.startswith("$")
        and _HASH_ID.fullmatch(event_id[1:]) is not None
    )
