"""Room administration for the admin API (homeserver/api/admin_rooms.py), as Synapse does it.

- Reading: the room list (one query, storage/admin_rooms.py), details,
  members, state.
- Blocking: a blocked room refuses every join, knock and invite
  (`Rooms.update_membership` asks the block list), whether or not this
  server knows the room yet.
- make_room_admin: the local member with the most power (and enough to
  change power levels) raises the user to its own level, and invites them
  if they are not in a room they cannot join by themselves.
- Deleting (shutting down): block if asked, take the room out of the public
  directory, make every local member leave (each with their own leave
  event, which the auth rules always allow) and forget it, optionally
  moving them and the room's aliases to a new room; otherwise the aliases
  are deleted. Then, if asked, purge every row of the room. The work is
  done within the request; its outcome is stored and can be read back by
  delete ID or room ID for a day.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from storage import Storage
from storage.admin_rooms import RoomDeletion

from ..errors import MatrixError, invalid_param, not_found
from ..events.model import Event
from ..events.redaction import state_content
from ..ids import split_user_id
from ..rooms.directory import Directory
from ..rooms.power_levels import CREATE_KEY, POWER_LEVELS_KEY, PowerLevels
from ..rooms.service import JOIN_RULES_KEY, Rooms
from ..sync.notifier import Notifier
from ..util import now_ms, random_token

logger = logging.getLogger(__name__)

# Deletions can be read back this long after they finish (as Synapse).
DELETION_STATUS_MS = 24 * 60 * 60 * 1000
DEFAULT_NEW_ROOM_NAME = "Content Violation Notification"
DEFAULT_MESSAGE = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."
# The level given by a v12+ creator (whose own power is infinite) when no
# member has a higher finite one.
_ADMIN_LEVEL = 100


@dataclass(frozen=True)
class DeleteOptions:
    block: bool = False
    purge: bool = True
    force_purge: bool = False
    new_room_user_id: str | None = None
    room_name: str = DEFAULT_NEW_ROOM_NAME
    message: str = DEFAULT_MESSAGE


def _empty_result() -> dict[str, Any]:
    return {
        "kicked_users": [],
        "failed_to_kick_users": [],
        "local_aliases": [],
        "new_room_id": None,
    }


class RoomAdmin:
    def __init__(
        self, storage: Storage, rooms: Rooms, directory: Directory, server_name: str, notifier: Notifier
    ) -> None:
        self.notifier = notifier
        self.storage = storage
        self.store = storage.admin_rooms
        self.events = storage.events
        self.rooms = rooms
        self.directory = directory
        self.server_name = server_name
        # Rooms this process is deleting now: a second deletion waits its turn.
        self._deleting: set[str] = set()

    def is_local_user(self, user_id: str) -> bool:
        parsed = split_user_id(user_id)
        return parsed is not None and parsed[1] == self.server_name

    async def _known(self, room_id: str) -> bool:
        """Whether the room exists, read from the database (a purge ends it)."""
        return await self.storage.directory.is_room_public(room_id) is not None

    async def require_room(self, room_id: str) -> None:
        self.rooms.check_room_id(room_id)
        if not await self._known(room_id):
            raise not_found("Room not found")

    # ------------------------------------------------------------- reading

    async def details(self, room_id: str) -> dict[str, Any]:
        self.rooms.check_room_id(room_id)
        found = await self.store.room_details(self.server_name, room_id)
        if found is None:
            raise not_found("Room not found")
        return found

    async def members(self, room_id: str) -> list[str]:
        await self.require_room(room_id)
        return sorted(m.user_id for m in await self.events.members_of_room(room_id, ("join",)))

    async def state(self, room_id: str, event_type: str | None) -> list[Event]:
        await self.require_room(room_id)
        state = await self.rooms.current_state_events(room_id)
        return [e for k, e in sorted(state.items()) if event_type is None or k[0] == event_type]

    # ------------------------------------------------------------ blocking

    async def set_blocked(self, admin_user_id: str, room_id: str, block: bool) -> None:
        self.rooms.check_room_id(room_id)
        if block:
            await self.store.block_room(room_id, admin_user_id, now_ms())
        else:
            await self.store.unblock_room(room_id)

    async def blocked_by(self, room_id: str) -> str | None:
        self.rooms.check_room_id(room_id)
        return await self.store.room_blocked_by(room_id)

    # ------------------------------------------------------ make_room_admin

    async def resolve(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            return await self.directory.resolve_alias(room_id_or_alias)
        await self.require_room(room_id_or_alias)
        return room_id_or_alias

    async def make_room_admin(self, room_id: str, user_id: str) -> None:
        """Give `user_id` the power of the room's most powerful local member (see module doc)."""
        if not self.is_local_user(user_id):
            raise invalid_param("Only local users can be admins of this room")
        member_key = ("m.room.member", user_id)
        state = await self.rooms.current_state_events(
            room_id, [CREATE_KEY, POWER_LEVELS_KEY, JOIN_RULES_KEY, member_key]
        )
        levels = PowerLevels.from_state(state)
        required = levels.required_level("m.room.power_levels", is_state=True)
        joined = [
            m.user_id
            for m in await self.events.members_of_room(room_id, ("join",))
            if self.is_local_user(m.user_id) and levels.user_level(m.user_id) >= required
        ]
        if not joined:
            raise MatrixError(
                400, "M_UNKNOWN", "No local admin user in room with power to update power levels."
            )
        admin = max(joined, key=lambda u: (levels.user_level(u), u))
        pl_event = state.get(POWER_LEVELS_KEY)
        content = dict(state_content(pl_event)) if pl_event is not None else {}
        users = dict(content.get("users")) if isinstance(content.get("users"), dict) else {}
        level = levels.user_level(admin)
        if math.isinf(level):
            finite = [v for v in users.values() if isinstance(v, int) and not isinstance(v, bool)]
            level = max([_ADMIN_LEVEL, *finite])
        if levels.user_level(user_id) < level:
            if pl_event is None:
                users.setdefault(admin, level)
            users[user_id] = level
            content["users"] = users
            try:
                await self.rooms.send_event(
                    admin, room_id, "m.room.power_levels", content, state_key=""
                )
            except MatrixError as err:
                if err.status != 403:
                    raise
                raise MatrixError(
                    400,
                    "M_UNKNOWN",
                    "No local admin user in room with power to update power levels.",
                ) from None
        member = state.get(member_key)
        if member is not None and member.membership in ("join", "invite"):
            return
        join_rules = state.get(JOIN_RULES_KEY)
        if join_rules is not None and state_content(join_rules).get("join_rule") == "public":
            return
        await self.rooms.update_membership(admin, room_id, user_id, "invite")

    # ------------------------------------------------------------ deleting

    async def delete_room(
        self, admin_user_id: str, room_id: str, options: DeleteOptions, *, allow_unknown: bool
    ) -> RoomDeletion:
        """Shut the room down (and purge it); the outcome, also when it failed.

        With `allow_unknown` (the v1 API) a room this server does not know
        can be blocked ahead of time.
        """
        self.rooms.check_room_id(room_id)
        new_owner = options.new_room_user_id
        if new_owner is not None and not self.is_local_user(new_owner):
            raise invalid_param(f"User must be our own: {new_owner}")
        if room_id in self._deleting:
            raise MatrixError(400, "M_UNKNOWN", f"History purge already in progress for {room_id}")
        self._deleting.add(room_id)
        try:
            return await self._delete_room(admin_user_id, room_id, options, allow_unknown)
        finally:
            self._deleting.discard(room_id)

    async def _delete_room(
        self, admin_user_id: str, room_id: str, options: DeleteOptions, allow_unknown: bool
    ) -> RoomDeletion:
        known = await self._known(room_id)
        if not known and not (allow_unknown and options.block):
            raise not_found(f"Unknown room: {room_id}")
        now = now_ms()
        await self.store.prune_deletions(now - DELETION_STATUS_MS)
        result = _empty_result()
        deletion = RoomDeletion(random_token(16), room_id, "active", None, result)
        await self.store.add_deletion(deletion, now)
        status, error = "complete", None
        try:
            if options.block:
                await self.store.block_room(room_id, admin_user_id, now)
            if known:
                await self._shut_down(room_id, options, result)
                if options.purge:
                    await self._purge(room_id, options.force_purge)
        except MatrixError as err:
            status, error = "failed", err.error
        except Exception:
            logger.exception("deleting %s failed", room_id)
            status, error = "failed", "Internal server error"
        deletion = RoomDeletion(deletion.delete_id, room_id, status, error, result)
        await self.store.update_deletion(deletion, now_ms())
        logger.info(
            "%s deleted %s: %s (%d members removed, %d not)",
            admin_user_id,
            room_id,
            status,
            len(result["kicked_users"]),
            len(result["failed_to_kick_users"]),
        )
        return deletion

    async def _shut_down(
        self, room_id: str, options: DeleteOptions, result: dict[str, Any]
    ) -> None:
        await self.storage.directory.set_room_public(room_id, False)
        new_room_id = None
        if options.new_room_user_id is not None:
            owner = options.new_room_user_id
            new_room_id = await self.rooms.create_room(
                owner,
                {
                    "preset": "public_chat",
                    "name": options.room_name,
                    "power_level_content_override": {"users_default": -10},
                },
            )
            result["new_room_id"] = new_room_id
            await self.rooms.send_event(
                owner, new_room_id, "m.room.message", {"msgtype": "m.text", "body": options.message}
            )
        for member in await self.events.members_of_room(room_id, ("join", "invite", "knock")):
            user_id = member.user_id
            if not self.is_local_user(user_id):
                continue
            try:
                await self.rooms.update_membership(user_id, room_id, user_id, "leave")
                await self.rooms.forget(user_id, room_id)
                if new_room_id is not None:
                    await self.rooms.update_membership(user_id, new_room_id, user_id, "join")
            except MatrixError as err:
                logger.warning("could not remove %s from %s: %s", user_id, room_id, err.error)
                result["failed_to_kick_users"].append(user_id)
            else:
                result["kicked_users"].append(user_id)
        if new_room_id is not None:
            result["local_aliases"] = await self.store.move_aliases(room_id, new_room_id)
        else:
            await self.store.delete_aliases(room_id)

    async def _purge(self, room_id: str, force: bool) -> None:
        if not force:
            joined = await self.events.members_of_room(room_id, ("join",))
            if any(self.is_local_user(m.user_id) for m in joined):
                raise MatrixError(400, "M_UNKNOWN", "Local users are still joined to this room")
        everyone = await self.events.members_of_room(room_id, ("join", "invite", "knock", "leave", "ban"))
        await self.store.purge_room(room_id)
        # Their rooms changed without an event: their syncs (and caches) hear of it.
        self.notifier.on_new(
            "events", self.notifier.positions.get("events", 0), users=[m.user_id for m in everyone]
        )

    async def deletion(self, delete_id: str) -> RoomDeletion:
        found = await self.store.get_deletion(delete_id, now_ms() - DELETION_STATUS_MS)
        if found is None:
            raise not_found(f"delete id '{delete_id}' not found")
        return found

    async def deletions_for_room(self, room_id: str) -> list[RoomDeletion]:
        self.rooms.check_room_id(room_id)
        found = await self.store.deletions_for_room(room_id, now_ms() - DELETION_STATUS_MS)
        if not found:
            raise not_found(f"No delete task for room_id '{room_id}' found")
        return found
