"""Building a new PDU for a room version: assemble, validate, hash, sign, name.

The caller (the room service) decides what the event says and where it sits
in the DAG; this module only puts it in the room version's format, so every
event this server creates goes through the same checks as one received.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.key import SigningKey

from .hashing import add_hashes_and_sign, compute_event_id
from .model import Event, RoomVersion
from .validation import EventValidationError, check_pdu_size, validate_pdu

# Set from the keyword arguments, by signing or not at all (the event ID is
# derived, `unsigned` lives on Event); never taken from `fields`.
_BUILDER_KEYS = frozenset(
    {
        "prev_events",
        "auth_events",
        "depth",
        "origin_server_ts",
        "hashes",
        "signatures",
        "unsigned",
        "event_id",
    }
)


def build_event(
    room_version: RoomVersion,
    fields: Mapping[str, Any],
    *,
    prev_event_ids: Sequence[str],
    auth_event_ids: Sequence[str],
    depth: int,
    server_name: str,
    signing_key: SigningKey,
    origin_server_ts: int,
) -> Event:
    """A signed event from `fields` (`type`, `sender`, `content`, `room_id`, ...).

    `room_id` is left out of a v12 create event (the room ID is derived
    from it). A redaction's `redacts` may be given at the top level or in
    `content`; it is put where the room version wants it.
    """
    clashing = _BUILDER_KEYS.intersection(fields)
    if clashing:
        raise ValueError(f"build_event sets these itself: {sorted(clashing)}")
    pdu: dict[str, Any] = copy.deepcopy(dict(fields))
    pdu.setdefault("content", {})
    pdu.update(
        prev_events=list(prev_event_ids),
        auth_events=list(auth_event_ids),
        depth=depth,
        origin_server_ts=origin_server_ts,
    )
    if pdu.get("type") == "m.room.redaction":
        _place_redacts(pdu, room_version)
    if pdu.get("type") == "m.room.create" and not room_version.v11_semantics:
        # Before v11 the auth rules require `creator`, always the sender.
        if isinstance(pdu["content"], dict) and "sender" in pdu:
            pdu["content"].setdefault("creator", pdu["sender"])
    validate_pdu(pdu, room_version)
    signed = add_hashes_and_sign(pdu, room_version, server_name, signing_key)
    check_pdu_size(signed)  # the signature and hash count towards the limit
    return Event(compute_event_id(signed, room_version), room_version, signed)


def _place_redacts(pdu: dict[str, Any], room_version: RoomVersion) -> None:
    """Move `redacts` to `content` (v11+) or the top level (v10)."""
    content = pdu["content"]
    if not isinstance(content, dict):
        return  # validate_pdu refuses it
    top_level, in_content = pdu.pop("redacts", None), content.pop("redacts", None)
    if top_level is not None and in_content is not None and top_level != in_content:
        raise EventValidationError("M_INVALID_PARAM", "Two different 'redacts' given")
    redacts = top_level if top_level is not None else in_content
    if not isinstance(redacts, str):
        raise EventValidationError("M_INVALID_PARAM", "A redaction must name the event it redacts")
    if room_version.v11_semantics:
        content["redacts"] = redacts
    else:
        pdu["redacts"] = redacts
