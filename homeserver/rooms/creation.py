"""POST /createRoom: a room's initial events, in the order the spec gives.

1. m.room.create, 2. the creator's join, 3. m.room.power_levels (with
`power_level_content_override`), 4. m.room.canonical_alias, 5. the preset's
join rules, history visibility and guest access, 6. `initial_state`,
7. name and topic, 8. invites. All of it is written in one transaction, so a
room never exists half-made.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from storage import Storage

from ..errors import MatrixError, bad_json, invalid_param
from ..events.model import DEFAULT_ROOM_VERSION, ROOM_VERSIONS, RoomVersion
from ..ids import split_user_id
from .writer import EventRequest, NewRoom, RoomWriter, SentEvent

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
    ) -> tuple[str, list[SentEvent]]:
        """Create the room `body` describes; returns its ID and the events sent.

        `member_content` is the creator's member event content (profile).
        Reserving `canonical_alias` in the directory is the caller's job.
        """
        version_id = body.get("room_version", DEFAULT_ROOM_VERSION)
        if not isinstance(version_id, str) or version_id not in ROOM_VERSIONS:
            raise MatrixError(
                400, "M_UNSUPPORTED_ROOM_VERSION", f"Unsupported room version: {version_id!r}"
            )
        version = ROOM_VERSIONS[version_id]
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise invalid_param("visibility must be 'public' or 'private'")
        preset_name = body.get("preset", "public_chat" if visibility == "public" else "private_chat")
        if preset_name not in PRESETS:
            raise invalid_param(f"Unknown preset: {preset_name!r}")
        preset = PRESETS[preset_name]
        invites = _user_list(body, "invite")
        for uid in invites:
            if split_user_id(uid) is None:
                raise invalid_param(f"Invalid user ID in invite: {uid!r}")
        creation_content = _object(body, "creation_content")
        pl_override = _object(body, "power_level_content_override")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) for e in initial_state
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

        requests = [
            EventRequest("m.room.create", creator, create_content, state_key=""),
            EventRequest("m.room.member", creator, {**member_content, "membership": "join"}, state_key=creator),
        ]
        power_levels = default_power_levels(version, creator)
        if preset_name == "trusted_private_chat":
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
            state_key = state.get("state_key", "")
            content = state.get("content", {})
            if not isinstance(state_key, str) or not isinstance(content, dict):
                raise bad_json("initial_state entries need a string state_key and an object content")
            requests.append(EventRequest(state["type"], creator, content, state_key=state_key))
        if "name" in body:
            requests.append(EventRequest("m.room.name", creator, {"name": body["name"]}, state_key=""))
        if "topic" in body:
            requests.append(
                EventRequest(
                    "m.room.topic",
                    creator,
                    {"topic": body["topic"], "m.topic": [{"body": body["topic"], "mimetype": "text/plain"}]},
                    state_key="",
                )
            )
        for uid in invites:
            content: dict[str, Any] = {"membership": "invite"}
            if is_direct:
                content["is_direct"] = True
            requests.append(EventRequest("m.room.member", creator, content, state_key=uid))

        room_id = (
            None
            if version.hashed_room_ids
            else "!" + "".join(secrets.choice(_ROOM_ID_CHARS) for _ in range(18)) + f":{self.server_name}"
        )
        sent = await self.writer.write(
            None,
            requests,
            new_room=NewRoom(version, creator, visibility == "public", room_id),
        )
        return sent[0].event.room_id, sent


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

