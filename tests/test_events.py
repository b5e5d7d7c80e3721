"""The event format layer: hashes, signatures, IDs, redaction, validation, building.

Pure functions, no database. Where the spec or another implementation gives
exact bytes (the appendices' test vectors, an event ID computed by Synapse
and checked by gomatrixserverlib), the tests reproduce them exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from signedjson.key import decode_signing_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import encode_base64

from federation.signing import sign
from homeserver.events.builder import build_event
from homeserver.events.hashing import (
    add_hashes_and_sign,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    compute_room_id,
    verify_content_hash,
    verify_event_signature,
)
from homeserver.events.model import ROOM_VERSIONS, RoomVersion
from homeserver.events.redaction import redact
from homeserver.events.validation import (
    MAX_PDU_SIZE,
    EventValidationError,
    canonical_json_size,
    validate_pdu,
)

V10, V11, V12 = ROOM_VERSIONS["10"], ROOM_VERSIONS["11"], ROOM_VERSIONS["12"]
ALL_VERSIONS = [V10, V11, V12]

# appendices.md, "Cryptographic Test Vectors".
SPEC_KEY = decode_signing_key_base64(
    "ed25519", "1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
)
SERVER = "example.org"
KEY = generate_signing_key("k1")
VERIFY_KEY = get_verify_key(KEY)


def fake_event_id(seed: str) -> str:
    return "$" + encode_base64(hashlib.sha256(seed.encode()).digest(), urlsafe=True)


def spec_canonical_json(value: Any) -> bytes:
    """The appendix's reference encoder, independent of the canonicaljson library."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def room_id_for(version: RoomVersion) -> str:
    return "!" + fake_event_id("room")[1:] if version.hashed_room_ids else "!room:example.org"


def message_pdu(version: RoomVersion, **overrides: Any) -> dict[str, Any]:
    pdu = {
        "room_id": room_id_for(version),
        "sender": "@alice:example.org",
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "hello"},
        "origin_server_ts": 1_700_000_000_000,
        "depth": 5,
        "prev_events": [fake_event_id("prev")],
        "auth_events": [fake_event_id("create"), fake_event_id("member")],
    }
    pdu.update(overrides)
    return pdu


def build(version: RoomVersion, fields: dict[str, Any], **kwargs: Any):
    defaults: dict[str, Any] = dict(
        prev_event_ids=[fake_event_id("prev")],
        auth_event_ids=[fake_event_id("create")],
        depth=2,
        server_name=SERVER,
        signing_key=KEY,
        origin_server_ts=1_700_000_000_000,
    )
    return build_event(version, fields, **{**defaults, **kwargs})


# ------------------------------------------------------------ test vectors


def test_spec_json_signing_vectors() -> None:
    assert sign({}, "domain", SPEC_KEY)["signatures"] == {
        "domain": {
            "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        }
    }
    assert sign({"one": 1, "two": "Two"}, "domain", SPEC_KEY) == {
        "one": 1,
        "two": "Two",
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
            }
        },
    }


# The spec's vectors keep `origin` in the signed (redacted) form, so they
# follow the pre-v11 redaction rules: room version 10 here.
SPEC_MINIMAL_EVENT = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
SPEC_MESSAGE_EVENT = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}


def test_spec_event_signing_minimal_event() -> None:
    signed = add_hashes_and_sign(SPEC_MINIMAL_EVENT, V10, "domain", SPEC_KEY)
    assert signed == {
        **SPEC_MINIMAL_EVENT,
        "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
        "signatures": {
            "domain": {
                "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
            }
        },
    }
    assert SPEC_MINIMAL_EVENT["signatures"] == {}  # the input is not modified


def test_spec_event_signing_redactable_event() -> None:
    signed = add_hashes_and_sign(SPEC_MESSAGE_EVENT, V10, "domain", SPEC_KEY)
    assert signed["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert signed["signatures"] == {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    }
    assert signed["content"] == SPEC_MESSAGE_EVENT["content"]
    assert verify_content_hash(signed)
    verify_event_signature(signed, V10, "domain", get_verify_key(SPEC_KEY))
    # signedjson, independently: the signature is over the redacted event.
    verify_signed_json(redact(signed, V10), "domain", get_verify_key(SPEC_KEY))


def test_event_id_of_a_real_event_matches_other_implementations() -> None:
    # A room v5 create event made by Synapse on jki.re; its ID is asserted by
    # gomatrixserverlib's eventversion_test.go. v4+ IDs and the v9 redaction
    # of a create event (only `creator` kept) are unchanged in room v10.
    create = {
        "auth_events": [],
        "prev_events": [],
        "type": "m.room.create",
        "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re",
        "sender": "@erikj:jki.re",
        "content": {
            "room_version": "5",
            "predecessor": {
                "room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk",
                "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI",
            },
            "creator": "@erikj:jki.re",
        },
        "depth": 1,
        "prev_state": [],
        "state_key": "",
        "origin": "jki.re",
        "origin_server_ts": 1560284621137,
        "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"},
        "signatures": {
            "jki.re": {
                "ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"
            }
        },
        "unsigned": {"age": 1321650},
    }
    assert compute_event_id(create, V10) == "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438"
    assert verify_content_hash(create)


# ---------------------------------------------------------- hashes and IDs


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_reference_hash_matches_an_independent_computation(version: RoomVersion) -> None:
    pdu = add_hashes_and_sign(message_pdu(version, unsigned={"age": 5}), version, SERVER, KEY)
    essential = {
        k: v for k, v in pdu.items() if k not in ("signatures", "unsigned", "content")
    }
    expected = hashlib.sha256(spec_canonical_json({**essential, "content": {}})).digest()
    assert compute_reference_hash(pdu, version) == expected
    assert compute_event_id(pdu, version) == "$" + encode_base64(expected, urlsafe=True)


def test_content_hash_matches_an_independent_computation() -> None:
    pdu = message_pdu(V11, hashes={"sha256": "x"}, signatures={"a": {}}, unsigned={"age": 1})
    body = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures", "unsigned")}
    assert compute_content_hash(pdu) == hashlib.sha256(spec_canonical_json(body)).digest()


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_event_id_is_stable_and_covers_only_what_redaction_keeps(version: RoomVersion) -> None:
    pdu = add_hashes_and_sign(message_pdu(version), version, SERVER, KEY)
    event_id = compute_event_id(pdu, version)
    assert event_id.startswith("$") and len(event_id) == 44
    assert "+" not in event_id and "/" not in event_id and "=" not in event_id
    assert compute_event_id(copy.deepcopy(pdu), version) == event_id
    reordered = dict(reversed(list(pdu.items())))
    assert compute_event_id(reordered, version) == event_id
    # Signatures, unsigned data and redacted content do not change the ID...
    assert compute_event_id({**pdu, "signatures": {}, "unsigned": {"age": 9}}, version) == event_id
    assert compute_event_id(redact(pdu, version), version) == event_id
    assert compute_event_id({**pdu, "content": {"body": "edited"}}, version) == event_id
    # ...but the fields the redacted form keeps do.
    for changed in (
        {"sender": "@bob:example.org"},
        {"depth": 6},
        {"origin_server_ts": pdu["origin_server_ts"] + 1},
        {"prev_events": [fake_event_id("other")]},
        {"hashes": {"sha256": encode_base64(b"\x00" * 32)}},
    ):
        assert compute_event_id({**pdu, **changed}, version) != event_id


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_event_id_changes_with_protected_content(version: RoomVersion) -> None:
    member = message_pdu(
        version, type="m.room.member", state_key="@alice:example.org",
        content={"membership": "join", "displayname": "Alice"},
    )
    event_id = compute_event_id(member, version)
    renamed = {**member, "content": {"membership": "join", "displayname": "Al"}}
    left = {**member, "content": {"membership": "leave", "displayname": "Alice"}}
    assert compute_event_id(renamed, version) == event_id
    assert compute_event_id(left, version) != event_id


def test_v11_event_id_ignores_origin_but_v10_does_not() -> None:
    pdu = message_pdu(V11)
    with_origin = {**pdu, "origin": "example.org"}
    assert compute_event_id(with_origin, V11) == compute_event_id(pdu, V11)
    assert compute_event_id(with_origin, V10) != compute_event_id(pdu, V10)


def test_v12_room_id_is_derived_from_the_create_event() -> None:
    create = build(
        V12,
        {"type": "m.room.create", "state_key": "", "sender": "@alice:example.org",
         "content": {"room_version": "12"}},
        prev_event_ids=[], auth_event_ids=[], depth=1,
    )
    assert "room_id" not in create.pdu
    assert "creator" not in create.content
    room_id = compute_room_id(create.pdu, V12)
    assert room_id == "!" + create.event_id[1:]
    assert create.room_id == room_id  # model.Event derives the same
    reference = compute_reference_hash(create.pdu, V12)
    assert room_id == "!" + encode_base64(reference, urlsafe=True)
    # Events in the room carry that ID and pass validation.
    message = build(V12, {"type": "m.room.message", "room_id": room_id,
                          "sender": "@alice:example.org", "content": {"body": "hi"}},
                    auth_event_ids=[])
    assert message.room_id == room_id
    # A different create event makes a different room.
    other = {**create.pdu, "origin_server_ts": create.pdu["origin_server_ts"] + 1}
    assert compute_room_id(other, V12) != room_id


def test_compute_room_id_only_for_v12_create_events() -> None:
    with pytest.raises(ValueError):
        compute_room_id({"type": "m.room.create", "content": {}}, V11)
    with pytest.raises(ValueError):
        compute_room_id(message_pdu(V12), V12)


# ---------------------------------------------------- signatures and hashes


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_signature_verifies_and_survives_redaction(version: RoomVersion) -> None:
    pdu = add_hashes_and_sign(message_pdu(version), version, SERVER, KEY)
    verify_event_signature(pdu, version, SERVER, VERIFY_KEY)
    verify_event_signature(redact(pdu, version), version, SERVER, VERIFY_KEY)
    verify_signed_json(redact(pdu, version), SERVER, VERIFY_KEY)
    assert verify_content_hash(pdu)
    assert not verify_content_hash(redact(pdu, version))  # a redacted copy is detectable


@pytest.mark.parametrize(
    "tamper",
    [
        {"sender": "@mallory:example.org"},
        {"type": "m.room.topic"},
        {"depth": 99},
        {"prev_events": [fake_event_id("forged")]},
        {"hashes": {"sha256": encode_base64(b"\x01" * 32)}},
    ],
    ids=lambda t: next(iter(t)),
)
def test_signature_fails_after_tampering(tamper: dict[str, Any]) -> None:
    pdu = add_hashes_and_sign(message_pdu(V11), V11, SERVER, KEY)
    with pytest.raises(SignatureVerifyException):
        verify_event_signature({**pdu, **tamper}, V11, SERVER, VERIFY_KEY)
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(redact({**pdu, **tamper}, V11), SERVER, VERIFY_KEY)


def test_signature_fails_with_another_key_or_server() -> None:
    pdu = add_hashes_and_sign(message_pdu(V12), V12, SERVER, KEY)
    other_key = generate_signing_key("k1")
    with pytest.raises(SignatureVerifyException):
        verify_event_signature(pdu, V12, SERVER, get_verify_key(other_key))
    with pytest.raises(SignatureVerifyException):
        verify_event_signature(pdu, V12, "other.example", VERIFY_KEY)


def test_content_hash_detects_tampering_the_signature_does_not_cover() -> None:
    pdu = add_hashes_and_sign(message_pdu(V11), V11, SERVER, KEY)
    edited = {**pdu, "content": {**pdu["content"], "body": "tampered"}}
    verify_event_signature(edited, V11, SERVER, VERIFY_KEY)  # body is not signed...
    assert not verify_content_hash(edited)  # ...but it is hashed
    assert not verify_content_hash({**pdu, "hashes": {}})
    assert not verify_content_hash({**pdu, "hashes": {"sha256": "not base64!"}})
    # Unsigned data may change in transit without breaking the hash.
    assert verify_content_hash({**pdu, "unsigned": {"age": 1234}})


def test_signing_keeps_other_servers_signatures() -> None:
    other_key = generate_signing_key("o")
    first = add_hashes_and_sign(message_pdu(V11), V11, "other.example", other_key)
    both = add_hashes_and_sign(first, V11, SERVER, KEY)
    assert set(both["signatures"]) == {"other.example", SERVER}
    verify_event_signature(both, V11, "other.example", get_verify_key(other_key))
    verify_event_signature(both, V11, SERVER, VERIFY_KEY)


# --------------------------------------------------------------- redaction

TOP_LEVEL = {
    "event_id": "$e",
    "type": "m.room.message",
    "room_id": "!r:example.org",
    "sender": "@a:example.org",
    "state_key": "",
    "content": {},
    "hashes": {"sha256": "h"},
    "signatures": {"example.org": {"ed25519:k": "s"}},
    "depth": 1,
    "prev_events": [],
    "auth_events": [],
    "origin_server_ts": 1,
    "origin": "example.org",
    "membership": "join",
    "prev_state": [],
    "unsigned": {"age": 1},
    "redacts": "$target",
    "something_else": 1,
}
V11_KEPT_TOP_LEVEL = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
    "signatures", "depth", "prev_events", "auth_events", "origin_server_ts",
}


def test_redaction_top_level_keys_per_version() -> None:
    v10_only = {"origin", "membership", "prev_state"}
    assert set(redact(TOP_LEVEL, V10)) == V11_KEPT_TOP_LEVEL | v10_only
    assert set(redact(TOP_LEVEL, V11)) == V11_KEPT_TOP_LEVEL
    assert set(redact(TOP_LEVEL, V12)) == V11_KEPT_TOP_LEVEL


def test_redaction_does_not_modify_or_share_its_input() -> None:
    pdu = {**TOP_LEVEL, "type": "m.room.power_levels", "content": {"users": {"@a:x": 100}}}
    before = copy.deepcopy(pdu)
    redacted = redact(pdu, V11)
    redacted["content"]["users"]["@b:x"] = 50
    assert pdu == before


POWER_LEVELS = {
    "ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 50, "kick": 50,
    "redact": 50, "state_default": 50, "users": {"@a:x": 100}, "users_default": 0,
    "notifications": {"room": 50}, "historical": 1,
}
PL_V10 = {
    k: v for k, v in POWER_LEVELS.items() if k not in ("invite", "notifications", "historical")
}

CREATE_CONTENT = {
    "creator": "@a:x", "room_version": "10", "m.federate": False,
    "predecessor": {"room_id": "!p:x"}, "additional_creators": ["@b:x"],
}

# (type, content, kept in v10, kept in v11 and v12)
CONTENT_CASES = [
    (
        "m.room.member",
        {"membership": "join", "join_authorised_via_users_server": "@r:x", "displayname": "A",
         "avatar_url": "mxc://x/y",
         "third_party_invite": {"display_name": "a@b", "signed": {"mxid": "@a:x", "token": "t"}}},
        {"membership": "join", "join_authorised_via_users_server": "@r:x"},
        {"membership": "join", "join_authorised_via_users_server": "@r:x",
         "third_party_invite": {"signed": {"mxid": "@a:x", "token": "t"}}},
    ),
    (
        "m.room.member",
        {"membership": "invite", "third_party_invite": "not an object"},
        {"membership": "invite"},
        {"membership": "invite"},
    ),
    ("m.room.create", CREATE_CONTENT, {"creator": "@a:x"}, CREATE_CONTENT),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:x"}],
         "other": 1},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:x"}]},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:x"}]},
    ),
    ("m.room.power_levels", POWER_LEVELS, PL_V10, {**PL_V10, "invite": 50}),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "other": 1},
        {"history_visibility": "shared"},
        {"history_visibility": "shared"},
    ),
    ("m.room.redaction", {"redacts": "$t", "reason": "spam"}, {}, {"redacts": "$t"}),
    ("m.room.message", {"msgtype": "m.text", "body": "secret"}, {}, {}),
    ("m.room.name", {"name": "Secret plans"}, {}, {}),
    ("m.room.topic", {"topic": "x"}, {}, {}),
]


@pytest.mark.parametrize(
    "event_type, content, kept_v10, kept_v11", CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES]
)
def test_redaction_content_per_event_type(
    event_type: str, content: dict[str, Any], kept_v10: dict[str, Any], kept_v11: dict[str, Any]
) -> None:
    pdu = {**TOP_LEVEL, "type": event_type, "content": content}
    assert redact(pdu, V10)["content"] == kept_v10
    assert redact(pdu, V11)["content"] == kept_v11
    assert redact(pdu, V12)["content"] == kept_v11


def test_redaction_of_v10_redaction_drops_top_level_redacts() -> None:
    pdu = {**TOP_LEVEL, "type": "m.room.redaction", "redacts": "$t", "content": {}}
    assert "redacts" not in redact(pdu, V10)
    assert "redacts" not in redact(pdu, V11)


def test_redaction_is_idempotent() -> None:
    for event_type, content, _, _ in CONTENT_CASES:
        for version in ALL_VERSIONS:
            once = redact({**TOP_LEVEL, "type": event_type, "content": content}, version)
            assert redact(once, version) == once


# -------------------------------------------------------------- validation


def refusal(pdu: dict[str, Any], version: RoomVersion) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        validate_pdu(pdu, version)
    return info.value


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_valid_pdu_passes(version: RoomVersion) -> None:
    validate_pdu(message_pdu(version), version)
    validate_pdu(add_hashes_and_sign(message_pdu(version), version, SERVER, KEY), version)


def test_oversized_event_is_too_large() -> None:
    pdu = message_pdu(V11)
    padding = MAX_PDU_SIZE - canonical_json_size(pdu)
    pdu["content"]["body"] += "x" * padding
    assert canonical_json_size(pdu) == MAX_PDU_SIZE
    validate_pdu(pdu, V11)  # exactly at the limit is allowed
    pdu["content"]["body"] += "x"
    error = refusal(pdu, V11)
    assert error.errcode == "M_TOO_LARGE" and error.status == 413


def test_size_is_measured_in_utf8_bytes() -> None:
    assert canonical_json_size({"a": "é"}) == len('{"a":"é"}'.encode())


@pytest.mark.parametrize(
    "content",
    [{"n": 1.5}, {"deep": {"list": [1, 2, {"x": 0.0}]}}, {"nan": float("nan")}],
    ids=["top", "nested", "nan"],
)
def test_floats_are_refused_anywhere(content: dict[str, Any]) -> None:
    assert refusal(message_pdu(V11, content=content), V11).errcode == "M_BAD_JSON"


def test_float_outside_content_is_refused() -> None:
    assert refusal(message_pdu(V11, origin_server_ts=1.0), V11).errcode == "M_BAD_JSON"
    assert refusal(message_pdu(V11, unsigned={"age": 1.5}), V11).errcode == "M_BAD_JSON"


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**64], ids=str)
def test_integers_outside_canonical_range_are_refused(value: int) -> None:
    assert refusal(message_pdu(V11, content={"n": [value]}), V11).errcode == "M_BAD_JSON"
    assert refusal(message_pdu(V11, depth=value), V11).errcode == "M_BAD_JSON"


def test_integers_at_the_canonical_range_edges_are_accepted() -> None:
    validate_pdu(message_pdu(V11, content={"max": 2**53 - 1, "min": -(2**53) + 1}), V11)
    validate_pdu(message_pdu(V11, depth=2**53 - 1), V11)


def test_non_json_values_and_lone_surrogates_are_refused() -> None:
    assert refusal(message_pdu(V11, content={"s": {1, 2}}), V11).errcode == "M_BAD_JSON"
    assert refusal(message_pdu(V11, content={"s": "\ud800"}), V11).errcode == "M_BAD_JSON"


@pytest.mark.parametrize("key", ["state_key", "type"])
def test_long_state_key_and_type_are_refused(key: str) -> None:
    validate_pdu(message_pdu(V11, **{key: "a" * 255}), V11)
    validate_pdu(message_pdu(V11, **{key: "é" * 127}), V11)  # 254 bytes
    error = refusal(message_pdu(V11, **{key: "é" * 128}), V11)  # 128 chars, 256 bytes
    assert error.errcode == "M_BAD_JSON"


def test_long_sender_and_room_id_are_refused() -> None:
    long_sender = "@" + "a" * 243 + ":example.org"  # 256 bytes
    assert refusal(message_pdu(V11, sender=long_sender), V11).errcode == "M_INVALID_PARAM"
    long_room = "!" + "a" * 243 + ":example.org"
    assert refusal(message_pdu(V11, room_id=long_room), V11).errcode == "M_INVALID_PARAM"


def test_v12_create_event_must_not_have_a_room_id() -> None:
    create = message_pdu(V12, type="m.room.create", state_key="", content={}, prev_events=[],
                         auth_events=[], depth=1)
    del create["room_id"]
    validate_pdu(create, V12)
    assert refusal({**create, "room_id": room_id_for(V12)}, V12).errcode == "M_BAD_JSON"
    # Before v12 a create event carries its room ID like every other event.
    assert refusal({k: v for k, v in create.items() if k != "room_id"}, V11).errcode == "M_BAD_JSON"


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_required_fields(version: RoomVersion) -> None:
    for key in ("type", "sender", "content", "origin_server_ts", "depth", "prev_events",
                "auth_events", "room_id"):
        pdu = message_pdu(version)
        del pdu[key]
        assert refusal(pdu, version).errcode == "M_BAD_JSON", key


@pytest.mark.parametrize(
    "overrides",
    [
        {"content": "text"},
        {"depth": True},
        {"depth": -1},
        {"origin_server_ts": "now"},
        {"state_key": 5},
        {"prev_events": "$a"},
        {"prev_events": [fake_event_id(str(i)) for i in range(21)]},
        {"auth_events": [fake_event_id(str(i)) for i in range(11)]},
        {"signatures": []},
        {"unsigned": 1},
    ],
    ids=lambda o: f"{next(iter(o))}={str(next(iter(o.values())))[:12]}",
)
def test_malformed_fields_are_bad_json(overrides: dict[str, Any]) -> None:
    assert refusal(message_pdu(V11, **overrides), V11).errcode == "M_BAD_JSON"


@pytest.mark.parametrize(
    "sender",
    ["@Ünïcödé:example.org", "@:example.org", "@UPPER:example.org:8448", "@a:[::1]:8008",
     "@a:1.2.3.4"],
)
def test_historical_user_ids_are_accepted_as_sender(sender: str) -> None:
    validate_pdu(message_pdu(V11, sender=sender), V11)


@pytest.mark.parametrize(
    "sender", ["alice:example.org", "@alice", "@alice:", "@al\x00ice:example.org",
               "@alice:exa mple.org", "@alice:example.org:port", 7],
)
def test_bad_senders_are_refused(sender: Any) -> None:
    errcode = refusal(message_pdu(V11, sender=sender), V11).errcode
    assert errcode in ("M_INVALID_PARAM", "M_BAD_JSON")


@pytest.mark.parametrize(
    "version, room_id",
    [
        (V11, "room:example.org"),
        (V11, "!room"),
        (V11, "!room:bad host"),
        (V12, "!room:example.org"),
        (V12, "!" + fake_event_id("x")[1:] + "A"),
        (V12, "$" + fake_event_id("x")[1:]),
    ],
)
def test_bad_room_ids_are_refused(version: RoomVersion, room_id: str) -> None:
    assert refusal(message_pdu(version, room_id=room_id), version).errcode == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "event_id", ["$abc", "$0:domain", fake_event_id("x")[1:], fake_event_id("x").replace("-", "+")]
)
def test_bad_event_ids_are_refused(event_id: str) -> None:
    pdu = message_pdu(V11, prev_events=[fake_event_id("ok"), event_id])
    assert refusal(pdu, V11).errcode == "M_INVALID_PARAM"
    redaction = message_pdu(V11, type="m.room.redaction", content={"redacts": event_id})
    assert refusal(redaction, V11).errcode == "M_INVALID_PARAM"


def test_validation_error_is_a_matrix_error() -> None:
    error = refusal(message_pdu(V11, content={"x": 1.5}), V11)
    assert error.status == 400
    assert error.to_json()["errcode"] == "M_BAD_JSON" and error.to_json()["error"]


# ---------------------------------------------------------------- building


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_build_event_signs_hashes_and_names_it(version: RoomVersion) -> None:
    event = build(version, {"type": "m.room.message", "room_id": room_id_for(version),
                            "sender": "@alice:example.org", "content": {"body": "hi"}})
    assert event.room_version is version
    assert event.event_id == compute_event_id(event.pdu, version)
    assert event.prev_event_ids == [fake_event_id("prev")]
    assert event.auth_event_ids == [fake_event_id("create")]
    assert event.depth == 2 and event.origin_server_ts == 1_700_000_000_000
    assert "event_id" not in event.pdu and "unsigned" not in event.pdu
    assert verify_content_hash(event.pdu)
    verify_event_signature(event.pdu, version, SERVER, VERIFY_KEY)
    validate_pdu(event.pdu, version)


def test_build_event_does_not_modify_its_fields() -> None:
    fields = {"type": "m.room.message", "room_id": room_id_for(V11),
              "sender": "@alice:example.org", "content": {"body": "hi"}}
    before = copy.deepcopy(fields)
    build(V11, fields)
    assert fields == before


@pytest.mark.parametrize("where", ["top", "content"])
def test_build_redaction_places_redacts_per_version(where: str) -> None:
    target = fake_event_id("target")
    fields: dict[str, Any] = {"type": "m.room.redaction", "room_id": room_id_for(V10),
                              "sender": "@alice:example.org", "content": {"reason": "spam"}}
    if where == "top":
        fields["redacts"] = target
    else:
        fields["content"] = {**fields["content"], "redacts": target}

    v10 = build(V10, fields)
    assert v10.pdu["redacts"] == target and "redacts" not in v10.content
    assert v10.redacts == target
    for version in (V11, V12):
        event = build(version, {**fields, "room_id": room_id_for(version)})
        assert event.content == {"reason": "spam", "redacts": target}
        assert "redacts" not in event.pdu and event.redacts == target
        # v11 keeps `redacts` through redaction, v10 does not.
        assert redact(event.pdu, version)["content"] == {"redacts": target}


def test_build_redaction_without_a_target_is_refused() -> None:
    fields = {"type": "m.room.redaction", "room_id": room_id_for(V11),
              "sender": "@alice:example.org", "content": {}}
    with pytest.raises(EventValidationError) as info:
        build(V11, fields)
    assert info.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(EventValidationError):
        build(V11, {**fields, "redacts": fake_event_id("a"),
                    "content": {"redacts": fake_event_id("b")}})


def test_build_create_event_creator_per_version() -> None:
    fields = {"type": "m.room.create", "state_key": "", "sender": "@alice:example.org",
              "content": {"room_version": "10"}}
    v10 = build(V10, {**fields, "room_id": "!new:example.org"}, prev_event_ids=[],
                auth_event_ids=[], depth=1)
    assert v10.content == {"room_version": "10", "creator": "@alice:example.org"}
    v11 = build(V11, {**fields, "room_id": "!new:example.org", "content": {"room_version": "11"}},
                prev_event_ids=[], auth_event_ids=[], depth=1)
    assert v11.content == {"room_version": "11"}


def test_build_v12_create_event_with_room_id_is_refused() -> None:
    with pytest.raises(EventValidationError) as info:
        build(V12, {"type": "m.room.create", "state_key": "", "sender": "@alice:example.org",
                    "room_id": room_id_for(V12), "content": {}},
              prev_event_ids=[], auth_event_ids=[], depth=1)
    assert info.value.errcode == "M_BAD_JSON"


def test_build_event_refuses_keys_it_sets_itself() -> None:
    with pytest.raises(ValueError):
        build(V11, {"type": "m.room.message", "room_id": room_id_for(V11),
                    "sender": "@alice:example.org", "content": {}, "depth": 7})


def test_build_event_counts_the_signature_towards_the_size_limit() -> None:
    fields = {"type": "m.room.message", "room_id": room_id_for(V11),
              "sender": "@alice:example.org", "content": {"body": ""}}
    unsigned_size = canonical_json_size(
        {**fields, "prev_events": [fake_event_id("prev")], "auth_events": [fake_event_id("create")],
         "depth": 2, "origin_server_ts": 1_700_000_000_000}
    )
    fields["content"] = {"body": "x" * (MAX_PDU_SIZE - unsigned_size)}  # fits only unsigned
    with pytest.raises(EventValidationError) as info:
        build(V11, fields)
    assert info.value.errcode == "M_TOO_LARGE"


def test_build_event_validates_content() -> None:
    with pytest.raises(EventValidationError) as info:
        build(V11, {"type": "m.room.message", "room_id": room_id_for(V11),
                    "sender": "@alice:example.org", "content": {"n": 0.5}})
    assert info.value.errcode == "M_BAD_JSON"
