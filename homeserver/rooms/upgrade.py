"""POST /rooms/{roomId}/upgrade: replace a room with a new one of another version.

Following the spec's server behaviour (and Synapse where it leaves
details open): the new room's m.room.create names its `predecessor` and
keeps the old `type`; the transferable state (and bans) are copied; local
aliases move; the old room gets an m.room.tombstone and power levels that
stop ordinary members from talking or inviting. Nobody is invited: members
follow the tombstone.

One upgrade of a room runs at a time, across processes: a row in
`room_upgrades` claims the room. As Synapse answers from a response cache
kept for five minutes, the upgrader repeating their request (a
double-clicked button, a retry) gets the same replacement room while the
upgrade runs in this process or for `UPGRADE_WINDOW_MS` after it ended;
anyone else gets 400 M_UNKNOWN then, so requests racing each other make
one new room. (A claim never finished, from a process that died, is
taken over once that long has passed.)

The upgrader may need more power in the new room than they had in the old
one to copy every state event; they get it while the room is built and
their old level back at the end. In v12+ rooms the upgrader is the creator
(infinitely powerful), so creators leave the `users` map, and the
tombstone needs 150, as in new v12 rooms, so only creators can upgrade.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from storage import Storage

from ..errors import MatrixError, forbidden, invalid_param
from ..events.model import ROOM_VERSIONS, Event, RoomVersion, StateKey
from ..ids import split_user_id
from ..util import now_ms
from ..events.redaction import state_content
from .directory import CANONICAL_ALIAS_TYPE, parse_room_alias
from .summary import SPACE_CHILD
from .power_levels import (
    DEFAULT_BAN,
    DEFAULT_EVENTS_DEFAULT,
    DEFAULT_INVITE,
    DEFAULT_KICK,
    DEFAULT_REDACT,
    DEFAULT_STATE_DEFAULT,
    DEFAULT_USERS_DEFAULT,
    PowerLevel,
    PowerLevels,
    is_power_level_int,
)
from .service import Rooms
from .writer import EventRequest, RoomWriter

logger = logging.getLogger(__name__)

TOMBSTONE = "m.room.tombstone"
POWER_LEVELS = "m.room.power_levels"
# State copied to the new room (spec: "recommended state events to transfer").
TRANSFERRED_TYPES = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
)
# What an absent event means, made explicit so the new room means the same.
_ABSENT_MEANS = {
    "m.room.join_rules": {"join_rule": "invite"},
    "m.room.history_visibility": {"history_visibility": "shared"},
    "m.room.guest_access": {"guest_access": "forbidden"},
}
_READ_TYPES = ("m.room.create", POWER_LEVELS, CANONICAL_ALIAS_TYPE, SPACE_CHILD, *TRANSFERRED_TYPES)
# Power levels keys whose absence means a spec default; filled in before the
# content is merged over createRoom's defaults, which differ.
_LEVEL_DEFAULTS = {
    "users_default": DEFAULT_USERS_DEFAULT,
    "events_default": DEFAULT_EVENTS_DEFAULT,
    "state_default": DEFAULT_STATE_DEFAULT,
    "ban": DEFAULT_BAN,
    "kick": DEFAULT_KICK,
    "redact": DEFAULT_REDACT,
    "invite": DEFAULT_INVITE,
}
# The tombstone level of new v12 rooms: above every admin, so only creators upgrade.
V12_TOMBSTONE_LEVEL = 150
# Ordinary members of the old room stop talking and inviting at max(this, users_default + 1).
RESTRICTED_LEVEL = 50
TOMBSTONE_BODY = "This room has been replaced"
# How long a finished upgrade answers repeats, and a claim never finished holds.
UPGRADE_WINDOW_MS = 5 * 60_000


def _int_level(content: dict[str, Any], key: str, default: int) -> int:
    value: Any = content.get(key)
    return value if is_power_level_int(value) else default


class RoomUpgrader:
    def __init__(self, storage: Storage, rooms: Rooms, writer: RoomWriter) -> None:
        self.storage = storage
        self.events = storage.events
        self.directory = storage.directory
        self.rooms = rooms
        self.writer = writer
        # The upgrades under way in this process, by room and upgrader.
        self._running: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def upgrade(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        additional_creators: list[str] | None = None,
    ) -> str:
        """Upgrade `room_id` to `new_version`; returns the replacement room's ID."""
        version = ROOM_VERSIONS.get(new_version)
        if version is None:
            raise MatrixError(
                400, "M_UNSUPPORTED_ROOM_VERSION", f"Unsupported room version: {new_version!r}"
            )
        extra_creators = self._additional_creators(user_id, version, additional_creators or [])
        await self.rooms.require_room(room_id)
        key = (room_id, user_id)
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(
                self._claimed_upgrade(user_id, room_id, version, extra_creators)
            )
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        # Shielded: the upgrade finishes for the others if one request goes away.
        return await asyncio.shield(running)

    async def _claimed_upgrade(
        self, user_id: str, room_id: str, version: RoomVersion, extra_creators: list[str]
    ) -> str:
        claimed_at = now_ms()
        other = await self.events.claim_room_upgrade(
            room_id, user_id, claimed_at, claimed_at - UPGRADE_WINDOW_MS
        )
        if other is not None:
            upgrader, replacement = other
            if replacement is None:
                raise MatrixError(400, "M_UNKNOWN", "An upgrade of this room is already in progress")
            if upgrader != user_id:
                raise MatrixError(400, "M_UNKNOWN", f"This room was just upgraded to {replacement}")
            return replacement
        new_room_id = None
        try:
            new_room_id = await self._upgrade(user_id, room_id, version, extra_creators)
            return new_room_id
        finally:
            await self.events.end_room_upgrade(
                room_id, user_id, claimed_at, new_room_id, now_ms()
            )

    @staticmethod
    def _additional_creators(user_id: str, version: RoomVersion, requested: list[str]) -> list[str]:
        """The valid, distinct additional creators; ignored by versions without them."""
        for uid in requested:
            if split_user_id(uid) is None:
                raise invalid_param(f"Invalid user ID in additional_creators: {uid!r}")
        if not version.creators_are_infinitely_powerful:
            return []
        return [uid for uid in dict.fromkeys(requested) if uid != user_id]

    async def _upgrade(
        self, user_id: str, old_room_id: str, version: RoomVersion, extra_creators: list[str]
    ) -> str:
        state = await self._state(old_room_id)
        old_levels = PowerLevels.from_state(state)
        membership = await self.rooms.membership(old_room_id, user_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")
        if old_levels.user_level(user_id) < old_levels.required_level(TOMBSTONE, is_state=True):
            raise forbidden("You do not have permission to upgrade this room")

        power_levels, restore_users = self._new_power_levels(
            user_id, state, old_levels, version, extra_creators
        )
        was_public = bool(await self.directory.is_room_public(old_room_id))
        body = {
            "room_version": version.identifier,
            "creation_content": await self._creation_content(old_room_id, state, extra_creators),
            # Everything a preset would set is in initial_state.
            "preset": "private_chat",
            "visibility": "public" if was_public else "private",
            "power_level_content_override": power_levels,
            "initial_state": self._initial_state(state),
        }
        new_room_id = await self.rooms.create_room(user_id, body)

        # As for deleting aliases: who may change the canonical alias, or made the alias.
        may_edit_aliases = old_levels.user_level(user_id) >= old_levels.required_level(
            CANONICAL_ALIAS_TYPE, is_state=True
        )
        moved = await self._move_aliases(user_id, old_room_id, new_room_id, may_edit_aliases)
        old_alias = state.get((CANONICAL_ALIAS_TYPE, ""))
        alias_content = state_content(old_alias) if old_alias is not None else {}

        finish = await self._bans(old_room_id, user_id, power_levels, version)
        if moved and alias_content:
            kept = _canonical_alias_keeping(
                alias_content, lambda a: a in moved or not self._is_local(a)
            )
            if kept:
                finish.append(EventRequest(CANONICAL_ALIAS_TYPE, user_id, kept, state_key=""))
        if restore_users is not None:
            restored = {**power_levels, "users": restore_users}
            finish.append(EventRequest(POWER_LEVELS, user_id, restored, state_key=""))
        if finish:
            await self.writer.write(new_room_id, finish)

        retire = [
            EventRequest(
                TOMBSTONE,
                user_id,
                {"body": TOMBSTONE_BODY, "replacement_room": new_room_id},
                state_key="",
            )
        ]
        if moved and alias_content and may_edit_aliases:
            remaining = _canonical_alias_keeping(alias_content, lambda a: a not in moved)
            if remaining != alias_content:
                retire.insert(
                    0, EventRequest(CANONICAL_ALIAS_TYPE, user_id, remaining, state_key="")
                )
        await self.writer.write(old_room_id, retire)
        await self._restrict_old_room(user_id, old_room_id)
        if was_public:
            await self.directory.set_room_public(old_room_id, False)
        logger.info(
            "%s upgraded %s to %s (version %s)",
            user_id,
            old_room_id,
            new_room_id,
            version.identifier,
        )
        return new_room_id

    # ------------------------------------------------------------- reading

    async def _state(self, room_id: str) -> dict[StateKey, Event]:
        """The old room's state this upgrade reads (never its members)."""
        ids = (await self.events.get_current_state_ids_for_rooms([room_id], _READ_TYPES))[room_id]
        found = await self.events.get_events(ids.values())
        return {key: found[event_id] for key, event_id in ids.items() if event_id in found}

    async def _creation_content(
        self, old_room_id: str, state: dict[StateKey, Event], extra_creators: list[str]
    ) -> dict[str, Any]:
        old_create = state_content(state[("m.room.create", "")])
        predecessor = {"room_id": old_room_id}
        last_event_id = await self._last_event_id(old_room_id)
        if last_event_id is not None:
            predecessor["event_id"] = last_event_id
        content: dict[str, Any] = {"predecessor": predecessor}
        if isinstance(old_create.get("type"), str):
            content["type"] = old_create["type"]
        if old_create.get("m.federate") is False:
            content["m.federate"] = False
        if extra_creators:
            content["additional_creators"] = extra_creators
        return content

    async def _last_event_id(self, room_id: str) -> str | None:
        """The newest of the room's forward extremities (spec: "the last known event")."""
        extremities = await self.storage.db.run(
            "forward_extremities", self.events.forward_extremities_txn, room_id
        )
        positions = await self.events.get_positions(extremities)
        if not positions:
            return None
        return max(positions, key=lambda e: positions[e][0].stream_ordering)

    @staticmethod
    def _initial_state(state: dict[StateKey, Event]) -> list[dict[str, Any]]:
        initial = []
        for event_type in TRANSFERRED_TYPES:
            event = state.get((event_type, ""))
            content = state_content(event) if event is not None else _ABSENT_MEANS.get(event_type)
            if content is not None:
                initial.append({"type": event_type, "state_key": "", "content": content})
        create = state_content(state[("m.room.create", "")])
        if create.get("type") == "m.space":
            for event_type, state_key in sorted(state):
                content = state_content(state[(event_type, state_key)])
                if event_type == SPACE_CHILD and content:
                    initial.append(
                        {"type": SPACE_CHILD, "state_key": state_key, "content": content}
                    )
        return initial

    # -------------------------------------------------------- power levels

    @staticmethod
    def _new_power_levels(
        user_id: str,
        state: dict[StateKey, Event],
        old_levels: PowerLevels,
        version: RoomVersion,
        extra_creators: list[str],
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The new room's power levels while it is built, and the `users` to restore after.

        The second value is None when the upgrader needs no more power than
        they had.
        """
        old_event = state.get((POWER_LEVELS, ""))
        content = copy.deepcopy(state_content(old_event)) if old_event is not None else {}
        for key, default in _LEVEL_DEFAULTS.items():
            content[key] = _int_level(content, key, default)
        users = content["users"] = dict(content.get("users") or {})
        events = content["events"] = dict(content.get("events") or {})
        if version.creators_are_infinitely_powerful:
            for creator in (user_id, *extra_creators):
                users.pop(creator, None)
            if not old_levels.room_version.creators_are_infinitely_powerful:
                tombstone = _int_level(events, TOMBSTONE, content["state_default"])
                events[TOMBSTONE] = max(tombstone, V12_TOMBSTONE_LEVEL)
            return content, None
        # Enough to send every state event copied, and the bans.
        needed = max(
            content["state_default"],
            content["ban"],
            *(v for v in events.values() if is_power_level_int(v)),
        )
        old_level: PowerLevel = old_levels.user_level(user_id)
        if old_level == float("inf"):
            # A v12 creator moving to an older version: keep them on top.
            users[user_id] = max(needed, 100)
            return content, None
        current = _int_level(users, user_id, content["users_default"])
        if current >= needed:
            return content, None
        restore = dict(users)
        users[user_id] = needed
        return content, restore

    async def _bans(
        self, old_room_id: str, user_id: str, power_levels: dict[str, Any], version: RoomVersion
    ) -> list[EventRequest]:
        """Bans of the old room that the upgrader can repeat in the new one."""
        banned = await self.events.members_of_room(old_room_id, ("ban",))
        if not banned:
            return []
        found = await self.events.get_events(m.event_id for m in banned)
        users, default = power_levels["users"], power_levels["users_default"]
        own_level: PowerLevel = (
            float("inf")
            if version.creators_are_infinitely_powerful
            else _int_level(users, user_id, default)
        )
        requests = []
        for member in banned:
            if _int_level(users, member.user_id, default) >= own_level:
                continue  # the auth rules would refuse it
            content: dict[str, Any] = {"membership": "ban"}
            event = found.get(member.event_id)
            reason = state_content(event).get("reason") if event is not None else None
            if isinstance(reason, str):
                content["reason"] = reason
            requests.append(
                EventRequest("m.room.member", user_id, content, state_key=member.user_id)
            )
        return requests

    # ------------------------------------------------------------- aliases

    def _is_local(self, alias: str) -> bool:
        parsed = parse_room_alias(alias)
        return parsed is not None and parsed[1] == self.rooms.server_name

    async def _move_aliases(
        self, user_id: str, old_room_id: str, new_room_id: str, may_edit: bool
    ) -> set[str]:
        """Point the old room's local aliases at the new room (spec step 4).

        Without `may_edit`, only the aliases the upgrader made move.
        """
        moved = set()
        for alias in await self.directory.aliases_for_room(old_room_id):
            mapping = await self.directory.get_alias(alias)
            if mapping is None or not (may_edit or mapping.creator == user_id):
                continue
            if not await self.directory.delete_alias(alias, old_room_id):
                continue
            if await self.directory.create_alias(alias, new_room_id, user_id, now_ms()):
                moved.add(alias)
            else:
                logger.warning("alias %s was taken while moving it to %s", alias, new_room_id)
        return moved

    # ------------------------------------------------------- the old room

    async def _restrict_old_room(self, user_id: str, room_id: str) -> None:
        """Stop ordinary members talking and inviting (spec step 6); best effort."""
        state = await self.rooms.current_state_events(room_id, [(POWER_LEVELS, "")])
        event = state.get((POWER_LEVELS, ""))
        content = copy.deepcopy(state_content(event)) if event is not None else {}
        users_default = _int_level(content, "users_default", DEFAULT_USERS_DEFAULT)
        restricted = max(RESTRICTED_LEVEL, users_default + 1)
        changed = False
        for key, default in (
            ("events_default", DEFAULT_EVENTS_DEFAULT),
            ("invite", DEFAULT_INVITE),
        ):
            if _int_level(content, key, default) < restricted:
                content[key] = restricted
                changed = True
        if not changed:
            return
        try:
            await self.writer.write(
                room_id, [EventRequest(POWER_LEVELS, user_id, content, state_key="")]
            )
        except MatrixError as err:
            logger.warning(
                "could not restrict the power levels of upgraded room %s: %s", room_id, err.error
            )


def _canonical_alias_keeping(content: dict[str, Any], keep: Any) -> dict[str, Any]:
    """`content` of an m.room.canonical_alias with only the aliases `keep` accepts."""
    result = {k: v for k, v in content.items() if k not in ("alias", "alt_aliases")}
    alias = content.get("alias")
    if isinstance(alias, str) and keep(alias):
        result["alias"] = alias
    alt_aliases = content.get("alt_aliases")
    if isinstance(alt_aliases, list):
        kept = [a for a in alt_aliases if isinstance(a, str) and keep(a)]
        if kept:
            result["alt_aliases"] = kept
    return result
