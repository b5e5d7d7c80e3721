"""Hashes, signatures and IDs of PDUs (server-server API, "Signing Events").

The content hash covers the whole event, so a receiver can tell a full copy
from a redacted one. Signatures and the reference hash cover only what
survives redaction, so they still check out after an event is redacted;
the reference hash is what event IDs (v4+) and room IDs (v12+) are made of.
"""

from __future__ import annotations

import hashlib
from typing import Any

from signedjson.key import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from federation.signing import canonical_json, sign, verify

from .model import RoomVersion
from .redaction import redact


def compute_content_hash(pdu: dict[str, Any]) -> bytes:
    """SHA-256 of the event without `unsigned`, `signatures` and `hashes`."""
    hashed = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(canonical_json(hashed)).digest()


def compute_reference_hash(pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    """SHA-256 of the redacted event without `signatures` and `unsigned`."""
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(canonical_json(redacted)).digest()


def compute_event_id(pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """`$` + the URL-safe unpadded base64 reference hash (room versions 4+)."""
    return "$" + encode_base64(compute_reference_hash(pdu, room_version), urlsafe=True)


def compute_room_id(create_pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """The v12+ room ID: the create event's ID with `!` for `$`."""
    if not room_version.hashed_room_ids:
        raise ValueError(f"room version {room_version.identifier} does not hash room IDs")
    if create_pdu.get("type") != "m.room.create":
        raise ValueError("only an m.room.create event determines a room ID")
    return "!" + compute_event_id(create_pdu, room_version)[1:]


def add_hashes_and_sign(
    pdu: dict[str, Any], room_version: RoomVersion, server_name: str, signing_key: SigningKey
) -> dict[str, Any]:
    """A copy of `pdu` with its content hash and this server's signature.

    The signature is made over the redacted event (which keeps `hashes`) and
    copied back, as the spec's "Adding hashes and signatures" describes.
    Signatures already present (another server's) are kept.
    """
    hashed = {**pdu, "hashes": {"sha256": encode_base64(compute_content_hash(pdu))}}
    signed = sign(redact(hashed, room_version), server_name, signing_key)
    return {**hashed, "signatures": signed["signatures"]}


def verify_content_hash(pdu: dict[str, Any]) -> bool:
    """Whether `hashes.sha256` matches the event; if not, it must be redacted."""
    hashes = pdu.get("hashes")
    expected = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        return False
    try:
        return decode_base64(expected) == compute_content_hash(pdu)
    except ValueError:  # not base64
        return False


def verify_event_signature(
    pdu: dict[str, Any], room_version: RoomVersion, server_name: str, verify_key: VerifyKey
) -> None:
    """Raise SignatureVerifyException unless `server_name` signed `pdu` with `verify_key`.

    Checked over the redacted event, so it holds for full and redacted copies.
    """
    verify(redact(pdu, room_version), server_name, verify_key)
