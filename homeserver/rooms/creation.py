"""POST /createRoom: a room's initial events, in the order the spec gives.

1. m.room.create, 2. the creator's join, 3. m.room.power_levels (with
`power_level_content_override`), 4. m.room.canonical_alias, 5. the preset's
join rules, history visibility and guest access, 6. `initial_state`,
7. name and topic, 8. invites. All of it is written in one transaction, so a
room never exists half-made.
"""

from __future__ import annotations

import asyncio

import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from storage import Storage
from storage.engines import is_unique_violation

from ..errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from ..events.model import DEFAULT_ROOM_VERSION, ROOM_VERSIONS, RoomVersion
from ..ids import split_user_id
from .writer import EventRequest, NewRoom, RoomWriter, SentEvent

# The member content of an invite of this user; raises if they cannot be invited.
InviteeContent = Callable[[str], Awaitable[dict[str, Any]]]

PRESETS = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}

_ROOM_ID_CHARS = string.ascii_letters

# The closed sets the spec gives for the state that decides who may join and
# read. A mistyped value would lock everyone out (the auth rules allow no join
# under an unknown join rule), so clients are refused one up front.
STATE_VALUES: dict[str, tuple[str, tuple[str, ...]]] = {
    "m.room.join_rules": (
        "join_rule",
        ("public", "knock", "invite", "private", "restricted", "knock_restricted"),
    ),
    "m.room.history_visibility": ("history_visibility", ("invited", "joined", "shared", "world_readable")),
    "m.room.guest_access": ("guest_access", ("can_join", "forbidden")),
}


def default_power_levels(room_version: RoomVersion, creator: str) -> dict[str, Any]:
    """Synapse's defaults; v12 creators hold infinite power and are not listed."""
    users = {} if room_version.creators_are_infinitely_powerful else {creator: 100}
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 150 if room_version.creators_are_infinitely_powerful else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "historical": 100,
    }


_CREATE_ATTEMPTS = 3


class RoomCreator:
    def __init__(self, storage: Storage, writer: RoomWriter, server_name: str) -> None:
        self.storage = storage
        self.writer = writer
        self.server_name = server_name

    async def create_room(
        self,
        creator: str,
        body: dict[str, Any],
        member_content: dict[str, Any],
        canonical_alias: str | None = None,
        invitee_content: InviteeContent | None = None,
    ) -> tuple[str, list[SentEvent]]:
        """Create the room `body` describes; returns its ID and the events sent.

        `member_content` is the creator's member event content (profile);
        `invitee_content` gives an invitee's (see `invite_content`), and
        refuses users who cannot be invited. Reserving `canonical_alias` in
        the directory is the caller's job.
        """
        version_id = _string(body, "room_version", DEFAULT_ROOM_VERSION)
        if version_id not in ROOM_VERSIONS:
            raise MatrixError(
                400, "M_UNSUPPORTED_ROOM_VERSION", f"Unsupported room version: {version_id!r}"
            )
        version = ROOM_VERSIONS[version_id]
        visibility = _string(body, "visibility", "private")
        if visibility not in ("public", "private"):
            raise invalid_param("visibility must be 'public' or 'private'")
        preset_name = _string(
            body, "preset", "public_chat" if visibility == "public" else "private_chat"
        )
        if preset_name not in PRESETS:
            raise invalid_param(f"Unknown preset: {preset_name!r}")
        preset = PRESETS[preset_name]
        invites = _user_list(body, "invite")
        for uid in invites:
            if split_user_id(uid) is None:
                raise invalid_param(f"Invalid user ID in invite: {uid!r}")
        invite_contents = [await invitee_content(uid) if invitee_content else {} for uid in invites]
        creation_content = _object(body, "creation_content")
        pl_override = _object(body, "power_level_content_override")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("type"), str)
            and isinstance(e.get("state_key", ""), str)
            and isinstance(e.get("content", {}), dict)
            for e in initial_state
        ):
            raise bad_json("initial_state must be a list of {type, state_key, content} objects")
        for key in ("name", "topic"):
            if key in body and not isinstance(body[key], str):
                raise bad_json(f"'{key}' must be a string")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise bad_json("'is_direct' must be true or false")

        create_content = {k: v for k, v in creation_content.items() if k != "room_version"}
        create_content["room_version"] = version.identifier
        if not version.v11_semantics:
            create_content["creator"] = creator
        trusted = preset_name == "trusted_private_chat"
        if trusted and version.creators_are_infinitely_powerful and invites:
            # v12+: invitees get the creator's (infinite) power as additional creators.
            extra = create_content.get("additional_creators", [])
            if not isinstance(extra, list):
                raise bad_json("'additional_creators' must be a list of user IDs")
            create_content["additional_creators"] = list(dict.fromkeys([*extra, *invites]))

        requests = [
            EventRequest("m.room.create", creator, create_content, state_key=""),
            EventRequest("m.room.member", creator, {**member_content, "membership": "join"}, state_key=creator),
        ]
        power_levels = default_power_levels(version, creator)
        if trusted and not version.creators_are_infinitely_powerful:
            for uid in invites:
                power_levels["users"][uid] = 100
        power_levels.update(pl_override)
        requests.append(EventRequest("m.room.power_levels", creator, power_levels, state_key=""))
        if canonical_alias:
            requests.append(
                EventRequest("m.room.canonical_alias", creator, {"alias": canonical_alias}, state_key="")
            )
        state_keys_given = {(e["type"], e.get("state_key", "")) for e in initial_state}
        for event_type, key, content in [
            ("m.room.join_rules", "join_rule", {"join_rule": preset["join_rule"]}),
            ("m.room.history_visibility", "history_visibility",
             {"history_visibility": preset["history_visibility"]}),
            ("m.room.guest_access", "guest_access", {"guest_access": preset["guest_access"]}),
        ]:
            if (event_type, "") not in state_keys_given:
                requests.append(EventRequest(event_type, creator, content, state_key=""))
        for state in initial_state:
            content = state.get("content", {})
            check_state_content(state["type"], content)
            requests.append(
                EventRequest(state["type"], creator, content, state_key=state.get("state_key", ""))
            )
        if "name" in body:
            requests.append(EventRequest("m.room.name", creator, {"name": body["name"]}, state_key=""))
        if "topic" in body:
            requests.append(
                EventRequest(
                    "m.room.topic",
                    creator,
                    {
                        "topic": body["topic"],
                        "m.topic": {"m.text": [{"body": body["topic"], "mimetype": "text/plain"}]},
                    },
                    state_key="",
                )
            )
        for uid, profile in zip(invites, invite_contents):
            invite: dict[str, Any] = {**profile, "membership": "invite"}
            if is_direct:
                invite["is_direct"] = True
            requests.append(EventRequest("m.room.member", creator, invite, state_key=uid))

        room_id = (
            None
            if version.hashed_room_ids
            else "!" + "".join(secrets.choice(_ROOM_ID_CHARS) for _ in range(18)) + f":{self.server_name}"
        )
        try:
            new_room = NewRoom(version, creator, visibility == "public", room_id)
            sent = await _retry_same_millisecond(
                lambda: self.writer.write(None, requests, new_room=new_room)
            )
        except MatrixError as err:
            if err.errcode != "M_FORBIDDEN":
                raise
            # Every event here is the creator's: the auth rules refusing one
            # means the request describes a room that cannot exist.
            raise MatrixError(400, "M_INVALID_ROOM_STATE", err.error) from None
        return sent[0].event.room_id, sent


async def profile_content(storage: Storage, user_id: str) -> dict[str, Any] | None:
    """The display name and avatar a member event carries; None for an unknown user."""
    profile = await storage.users.get_profile(user_id)
    if profile is None:
        return None
    fields = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
    return {k: v for k, v in fields.items() if v is not None}


async def invite_content(storage: Storage, server_name: str, user_id: str) -> dict[str, Any]:
    """The profile an invite of `user_id` carries; refuses users this server cannot invite."""
    parts = split_user_id(user_id)
    if parts is None:
        raise invalid_param(f"Invalid user ID: {user_id!r}")
    if parts[1] != server_name:
        raise forbidden("Inviting users of other servers needs federation, which is not enabled")
    content = await profile_content(storage, user_id)
    if content is None:
        raise not_found(f"Unknown user: {user_id}")
    return content


def check_state_content(event_type: str, content: dict[str, Any]) -> None:
    """Refuse (M_BAD_JSON) a join rule, history visibility or guest access the spec does not define."""
    rule = STATE_VALUES.get(event_type)
    if rule is None:
        return
    key, allowed = rule
    if content.get(key) not in allowed:
        raise bad_json(f"'{key}' of {event_type} must be one of: {', '.join(allowed)}")


def _string(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    return value


async def _retry_same_millisecond(write: Any) -> Any:
    """Run `write()`, again if it collided with an identical room created in the same millisecond.

    A v12 room ID is the hash of its create event: the same creator sending
    the same request twice within a millisecond makes the same ID. As
    Synapse does, the second one is made again with a later timestamp.
    """
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            return await write()
        except Exception as exc:
            if not is_unique_violation(exc) or attempt == _CREATE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.002)
    raise AssertionError("unreachable")


def _user_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"'{key}' must be a list of user IDs")
    return list(dict.fromkeys(value))


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise bad_json(f"'{key}' must be a JSON object")
    return value

