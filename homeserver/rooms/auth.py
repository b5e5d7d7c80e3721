"""The authorisation rules of room versions 10, 11 and 12, as pure functions.

Each check is a plain function of the event and the state it is checked
against, so the room service (before sending), federation (on receipt) and
state resolution (iterative auth checks) run exactly the same code. Rule
numbers in errors follow the room version's own list in the spec; the code
is written against the v10/v11 numbering and `_forbid` renumbers for v12,
which inserted rule 2 (room ID) and rule 10.4 (creators in `users`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from signedjson.key import decode_verify_key_bytes
from unpaddedbase64 import decode_base64

from federation.signing import SignatureVerifyException, verify
from homeserver.events.model import ROOM_VERSIONS, Event, RoomVersion, StateKey
from homeserver.ids import split_user_id

from .power_levels import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    PowerLevel,
    PowerLevels,
    is_power_level_int,
    room_creators,
)

JOIN_RULES_KEY: Final[StateKey] = ("m.room.join_rules", "")
JOIN_AUTHORISED_VIA: Final = "join_authorised_via_users_server"
# Named top-level levels that rule 9 (v12: 10) validates and compares.
_NAMED_LEVELS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)


class AuthError(Exception):
    """An event is not allowed; `rule` is the failing rule's number in the version's list."""

    def __init__(self, rule: str, reason: str, room_version: str) -> None:
        super().__init__(f"Forbidden by auth rule {rule} of room version {room_version}: {reason}")
        self.rule = rule
        self.reason = reason


def _forbid(event: Event, rule: str, reason: str) -> AuthError:
    """An AuthError for `rule` as numbered in v10/v11, renumbered for the event's version."""
    if event.room_version.hashed_room_ids:
        parts = [int(p) for p in rule.split(".")]
        if parts[0] == 9 and len(parts) > 1 and parts[1] >= 4:
            parts[1] += 1
        if parts[0] >= 2:
            parts[0] += 1
        rule = ".".join(map(str, parts))
    return AuthError(rule, reason, event.room_version.identifier)


def _domain(identifier: str) -> str:
    return identifier.partition(":")[2]


def _room_id_of_create(create: Event) -> str:
    """v12: the room ID a create event defines (its event ID with `!` for `$`)."""
    return "!" + create.event_id[1:]


def has_signature_from(event: Event, server_name: str) -> bool:
    """Whether the PDU carries a signature from `server_name`.

    Signatures are verified on receipt (check 2 of "Checks performed on
    receipt of a PDU"), which covers every signature an event carries; the
    auth rules only need to know that the server's signature is among them.
    """
    signatures = event.pdu.get("signatures")
    return isinstance(signatures, dict) and isinstance(signatures.get(server_name), dict)


# ------------------------------------------------------------ auth events


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> list[StateKey]:
    """The state an event's `auth_events` must be drawn from ("Auth events selection").

    Used both to build `auth_events` for new events and to check received ones.
    """
    if event_type == "m.room.create":
        return []
    selected: list[StateKey] = []
    if not room_version.hashed_room_ids:
        selected.append(CREATE_KEY)
    selected += [POWER_LEVELS_KEY, ("m.room.member", sender)]
    if event_type == "m.room.member" and state_key is not None:
        membership = content.get("membership")
        selected.append(("m.room.member", state_key))
        if membership in ("join", "invite", "knock"):
            selected.append(JOIN_RULES_KEY)
        third_party = content.get("third_party_invite")
        if membership == "invite" and isinstance(third_party, Mapping):
            signed = third_party.get("signed")
            token = signed.get("token") if isinstance(signed, Mapping) else None
            if isinstance(token, str):
                selected.append(("m.room.third_party_invite", token))
        authoriser = content.get(JOIN_AUTHORISED_VIA)
        if membership == "join" and isinstance(authoriser, str):
            selected.append(("m.room.member", authoriser))
    return list(dict.fromkeys(selected))


def check_auth_event_list(event: Event, auth_events: Sequence[Event]) -> None:
    """Rule 2 (v12: 3): whether the event's `auth_events` are the right, acceptable events.

    The create event is decided by rule 1 alone, so it is not checked here.
    """
    if event.type == "m.room.create":
        return
    allowed = set(
        auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content
        )
    )
    seen: set[tuple[str, str | None]] = set()
    for auth_event in auth_events:
        key = (auth_event.type, auth_event.state_key)
        if key in seen:
            raise _forbid(event, "2.1", f"auth_events lists {key} more than once")
        seen.add(key)
    for auth_event in auth_events:
        key = (auth_event.type, auth_event.state_key)
        if key not in allowed:
            raise _forbid(
                event,
                "2.2",
                f"auth_events contains {key}, which the auth events selection excludes",
            )
    for auth_event in auth_events:
        if auth_event.rejected:
            raise _forbid(event, "2.3", f"auth event {auth_event.event_id} was rejected")
    if not event.room_version.hashed_room_ids and CREATE_KEY not in seen:
        raise _forbid(event, "2.4", "auth_events has no m.room.create event")
    for auth_event in auth_events:
        if auth_event.room_id != event.room_id:
            raise _forbid(event, "2.5", f"auth event {auth_event.event_id} belongs to another room")


# ------------------------------------------------------------ the rules


def check_auth_rules(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    *,
    is_signed_by: Callable[[Event, str], bool] = has_signature_from,
) -> None:
    """Raise AuthError unless `event` passes its room version's authorisation rules.

    `auth_state` is the state the event is checked against (its auth events,
    the state before it, or the current state) and always holds the create
    event, even in v12. `is_signed_by(event, server)` answers rule 4.2 (v12:
    5.2) for restricted joins; by default it trusts that signatures were
    verified on receipt and looks for the authorising server's one.
    """
    if event.type == "m.room.create":
        _check_create(event)
        return
    create = _check_room(event, auth_state)

    federated = create.content.get("m.federate", True) is not False
    if not federated and _domain(event.sender) != _domain(create.sender):
        raise _forbid(event, "3", "the room is not federated and the sender is from another server")

    power = PowerLevels.from_state(auth_state)
    if event.type == "m.room.member":
        _check_membership(event, auth_state, power, is_signed_by)
        return

    if _membership(auth_state, event.sender) != "join":
        raise _forbid(event, "5", f"{event.sender} is not joined to the room")

    sender_level = power.user_level(event.sender)
    if event.type == "m.room.third_party_invite":
        if sender_level >= power.invite:
            return
        raise _forbid(
            event, "6.1", f"{event.sender} has power {sender_level} < invite level {power.invite}"
        )

    required = power.required_level(event.type, is_state=event.is_state)
    if required > sender_level:
        raise _forbid(
            event,
            "7",
            f"{event.sender} has power {sender_level} < {required} required for {event.type}",
        )

    if event.state_key is not None and event.state_key.startswith("@"):
        if event.state_key != event.sender:
            raise _forbid(event, "8", "only the user themselves may set state keyed by their ID")

    if event.type == "m.room.power_levels":
        _check_power_levels(event, auth_state, sender_level)


def _check_create(event: Event) -> None:
    """Rule 1: the create event stands alone; it is checked against no state."""
    version = event.room_version
    ident = version.identifier
    if event.prev_event_ids:
        raise AuthError("1.1", "the create event has prev_events", ident)
    if version.hashed_room_ids:
        if "room_id" in event.pdu:
            raise AuthError("1.2", "the create event has a room_id", ident)
    elif _domain(event.room_id or "") != _domain(event.sender):
        raise AuthError("1.2", "the room ID's server is not the sender's", ident)
    if "room_version" in event.content and event.content["room_version"] not in ROOM_VERSIONS:
        room_version = event.content["room_version"]
        raise AuthError("1.3", f"room version {room_version!r} is not recognised", ident)
    if not version.v11_semantics and "creator" not in event.content:
        raise AuthError("1.4", "the create event has no creator", ident)
    if version.creators_are_infinitely_powerful and "additional_creators" in event.content:
        additional = event.content["additional_creators"]
        if not isinstance(additional, list) or not all(
            isinstance(u, str) and split_user_id(u) is not None for u in additional
        ):
            raise AuthError("1.4", "additional_creators is not a list of user IDs", ident)


def _check_room(event: Event, auth_state: Mapping[StateKey, Event]) -> Event:
    """v12 rule 2, or v10/v11 rules 2.4-2.5 as they apply to the create event: the event's room."""
    create = auth_state.get(CREATE_KEY)
    if event.room_version.hashed_room_ids:
        if create is None or create.rejected or _room_id_of_create(create) != event.room_id:
            raise AuthError(
                "2",
                f"{event.room_id} is not the ID of an accepted create event",
                event.room_version.identifier,
            )
        return create
    if create is None:
        raise _forbid(event, "2.4", "there is no m.room.create event")
    if create.room_id != event.room_id:
        raise _forbid(event, "2.5", "the m.room.create event belongs to another room")
    return create


def _membership(state: Mapping[StateKey, Event], user_id: str) -> str:
    """A user's current membership; "leave" when they have no member event."""
    member = state.get(("m.room.member", user_id))
    membership = member.membership if member is not None else None
    return membership or "leave"


def _join_rule(state: Mapping[StateKey, Event]) -> str | None:
    """The current join rule; "invite" without an event, as Synapse and ruma assume."""
    join_rules = state.get(JOIN_RULES_KEY)
    if join_rules is None:
        return "invite"
    rule = join_rules.content.get("join_rule")
    return rule if isinstance(rule, str) else None


def _check_membership(
    event: Event,
    state: Mapping[StateKey, Event],
    power: PowerLevels,
    is_signed_by: Callable[[Event, str], bool],
) -> None:
    """Rule 4 (v12: 5): `m.room.member` events."""
    target = event.state_key
    if target is None or "membership" not in event.content:
        raise _forbid(event, "4.1", "member event without state_key or membership")

    authoriser = event.content.get(JOIN_AUTHORISED_VIA)
    if JOIN_AUTHORISED_VIA in event.content:
        server = _domain(authoriser) if isinstance(authoriser, str) else ""
        if not server or not is_signed_by(event, server):
            raise _forbid(
                event, "4.2", f"the event is not signed by the server of {JOIN_AUTHORISED_VIA}"
            )

    sender = event.sender
    membership = event.content["membership"]
    sender_membership = _membership(state, sender)
    target_membership = _membership(state, target)
    sender_level = power.user_level(sender)
    target_level = power.user_level(target)

    if membership == "join":
        _check_join(event, state, power, target, authoriser)
    elif membership == "invite":
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, state, target, target_membership)
            return
        if sender_membership != "join":
            raise _forbid(event, "4.4.2", f"{sender} is not joined to the room")
        if target_membership in ("join", "ban"):
            raise _forbid(event, "4.4.3", f"{target}'s membership is {target_membership}")
        if sender_level < power.invite:
            raise _forbid(
                event, "4.4.5", f"{sender} has power {sender_level} < invite level {power.invite}"
            )
    elif membership == "leave":
        if sender == target:
            if sender_membership in ("invite", "join", "knock"):
                return
            raise _forbid(
                event, "4.5.1", f"{sender} cannot leave with membership {sender_membership}"
            )
        if sender_membership != "join":
            raise _forbid(event, "4.5.2", f"{sender} is not joined to the room")
        if target_membership == "ban" and sender_level < power.ban:
            raise _forbid(
                event, "4.5.3", f"{sender} has power {sender_level} < ban level {power.ban}"
            )
        if not (sender_level >= power.kick and target_level < sender_level):
            raise _forbid(
                event,
                "4.5.5",
                f"{sender} (power {sender_level}, kick level {power.kick}) cannot kick "
                f"{target} (power {target_level})",
            )
    elif membership == "ban":
        if sender_membership != "join":
            raise _forbid(event, "4.6.1", f"{sender} is not joined to the room")
        if not (sender_level >= power.ban and target_level < sender_level):
            raise _forbid(
                event,
                "4.6.3",
                f"{sender} (power {sender_level}, ban level {power.ban}) cannot ban "
                f"{target} (power {target_level})",
            )
    elif membership == "knock":
        join_rule = _join_rule(state)
        if join_rule not in ("knock", "knock_restricted"):
            raise _forbid(event, "4.7.1", f"cannot knock on a room whose join rule is {join_rule}")
        if sender != target:
            raise _forbid(event, "4.7.2", "a user can only knock for themselves")
        if sender_membership in ("ban", "invite", "join"):
            raise _forbid(
                event, "4.7.4", f"{sender} cannot knock with membership {sender_membership}"
            )
    else:
        raise _forbid(event, "4.8", f"unknown membership {membership!r}")


def _check_join(
    event: Event,
    state: Mapping[StateKey, Event],
    power: PowerLevels,
    target: str,
    authoriser: Any,
) -> None:
    """Rule 4.3 (v12: 5.3): joins, by the creator, by invite, by restriction or publicly."""
    create = state[CREATE_KEY]
    prev = event.prev_event_ids
    creator = create.sender if create.room_version.v11_semantics else create.content.get("creator")
    if len(prev) == 1 and prev[0] == create.event_id and target == creator:
        return
    if event.sender != target:
        raise _forbid(event, "4.3.2", "a user can only join for themselves")
    membership = _membership(state, target)
    if membership == "ban":
        raise _forbid(event, "4.3.3", f"{target} is banned from the room")
    join_rule = _join_rule(state)
    if join_rule in ("invite", "knock") and membership in ("invite", "join"):
        return
    if join_rule in ("restricted", "knock_restricted"):
        if membership in ("join", "invite"):
            return
        if not isinstance(authoriser, str) or _membership(state, authoriser) != "join":
            raise _forbid(event, "4.3.5.2", f"{JOIN_AUTHORISED_VIA} does not name a joined member")
        authoriser_level = power.user_level(authoriser)
        if authoriser_level < power.invite:
            raise _forbid(
                event,
                "4.3.5.2",
                f"{authoriser} has power {authoriser_level} < invite level {power.invite}",
            )
        return
    if join_rule == "public":
        return
    raise _forbid(event, "4.3.7", f"join rule is {join_rule} and {target} is {membership}")


def _check_third_party_invite(
    event: Event, state: Mapping[StateKey, Event], target: str, target_membership: str
) -> None:
    """Rule 4.4.1 (v12: 5.4.1): an invite redeeming an `m.room.third_party_invite`."""
    if target_membership == "ban":
        raise _forbid(event, "4.4.1.1", f"{target} is banned from the room")
    third_party = event.content["third_party_invite"]
    signed = third_party.get("signed") if isinstance(third_party, Mapping) else None
    if not isinstance(signed, Mapping):
        raise _forbid(event, "4.4.1.2", "third_party_invite has no signed object")
    if "mxid" not in signed or "token" not in signed:
        raise _forbid(event, "4.4.1.3", "third_party_invite.signed lacks mxid or token")
    if signed["mxid"] != target:
        raise _forbid(event, "4.4.1.4", "third_party_invite.signed.mxid is not the state_key")
    token = signed["token"]
    invite = state.get(("m.room.third_party_invite", token)) if isinstance(token, str) else None
    if invite is None:
        raise _forbid(event, "4.4.1.5", "no m.room.third_party_invite matches the token")
    if invite.sender != event.sender:
        raise _forbid(event, "4.4.1.6", "the sender did not send the m.room.third_party_invite")
    if not _signed_by_any(signed, _public_keys(invite)):
        raise _forbid(event, "4.4.1.8", "no third-party invite public key signed the invite")


def _public_keys(invite: Event) -> list[str]:
    """`public_key` plus each `public_keys[].public_key` of an `m.room.third_party_invite`."""
    keys = [invite.content.get("public_key")]
    listed = invite.content.get("public_keys")
    if isinstance(listed, list):
        keys += [k.get("public_key") for k in listed if isinstance(k, Mapping)]
    return [k for k in keys if isinstance(k, str)]


def _signed_by_any(signed: Mapping[str, Any], public_keys: list[str]) -> bool:
    """Whether any ed25519 signature in `signed` verifies with one of the base64 keys."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for public_key in public_keys:
        for server, by_key in signatures.items():
            if not isinstance(by_key, Mapping):
                continue
            for key_id in by_key:
                if not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, decode_base64(public_key))
                    verify(dict(signed), server, verify_key)
                except (SignatureVerifyException, ValueError):
                    continue
                return True
    return False


def _check_power_levels(
    event: Event, state: Mapping[StateKey, Event], sender_level: PowerLevel
) -> None:
    """Rule 9 (v12: 10): well-formed levels, and no one grants or revokes beyond their own."""
    content = event.content
    for key in _NAMED_LEVELS:
        if key in content and not is_power_level_int(content[key]):
            raise _forbid(event, "9.1", f"{key} is not an integer")
    for key in ("events", "notifications"):
        if key in content and not _is_level_map(content[key]):
            raise _forbid(event, "9.2", f"{key} is not an object of integers")
    users = content.get("users", {})
    if not _is_level_map(users) or not all(split_user_id(u) is not None for u in users):
        raise _forbid(event, "9.3", "users is not an object of user IDs to integers")
    if event.room_version.creators_are_infinitely_powerful:
        listed = room_creators(state[CREATE_KEY]) & set(users)
        if listed:
            raise AuthError(
                "10.4",
                f"room creators cannot be given a power level: {', '.join(sorted(listed))}",
                event.room_version.identifier,
            )

    previous = state.get(POWER_LEVELS_KEY)
    if previous is None:
        return
    old = previous.content

    for key in _NAMED_LEVELS:
        if key in old and key in content and old[key] == content[key]:
            continue
        if key not in old and key not in content:
            continue
        if key in old and _as_level(old[key]) > sender_level:
            raise _forbid(event, "9.5.1", f"{key} is above the sender's power {sender_level}")
        if key in content and content[key] > sender_level:
            raise _forbid(event, "9.5.2", f"new {key} is above the sender's power {sender_level}")

    for key in ("events", "notifications"):
        before, after = _level_map(old.get(key)), content.get(key, {})
        for name, level in before.items():
            if after.get(name) != level and _as_level(level) > sender_level:
                raise _forbid(
                    event, "9.6.1", f"{key}[{name!r}] is above the sender's power {sender_level}"
                )
    for key in ("events", "notifications"):
        before, after = _level_map(old.get(key)), content.get(key, {})
        for name, level in after.items():
            if before.get(name) != level and level > sender_level:
                raise _forbid(
                    event,
                    "9.7.1",
                    f"new {key}[{name!r}] is above the sender's power {sender_level}",
                )

    before = _level_map(old.get("users"))
    for user, level in before.items():
        if user != event.sender and users.get(user) != level and _as_level(level) >= sender_level:
            raise _forbid(
                event, "9.8.1", f"{user}'s power {level} is not below the sender's {sender_level}"
            )
    for user, level in users.items():
        if before.get(user) != level and level > sender_level:
            raise _forbid(
                event, "9.9.1", f"{user}'s new power {level} is above the sender's {sender_level}"
            )


def _is_level_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(is_power_level_int(v) for v in value.values())


def _level_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_level(value: Any) -> int:
    """A previous (accepted) level; anything malformed counts as too high to touch."""
    return value if is_power_level_int(value) else 2**53
