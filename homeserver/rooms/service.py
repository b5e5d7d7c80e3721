"""What people do in rooms: create, send, change membership, redact, read.

The checks here are the ones the auth rules do not make (the rules decide
whether an event is valid in the DAG; this decides whether this server
lets a client ask for it): who may redact whose events, who may see an
event, joins through restricted rules, and profile updates carried into
every joined room.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from storage import Storage
from storage.engines import Transaction
from storage.events import Membership

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..events.model import Event
from ..ids import split_user_id
from .creation import RoomCreator, invite_content, profile_content
from .directory import CANONICAL_ALIAS_TYPE, check_canonical_alias
from .power_levels import CREATE_KEY, POWER_LEVELS_KEY, PowerLevels
from .relations import check_new_relation
from .visibility import HISTORY_KEY, filter_events_for_user
from .writer import EventRequest, RoomHead, RoomWriter

logger = logging.getLogger(__name__)

JOIN_RULES_KEY = ("m.room.join_rules", "")
GUEST_ACCESS_KEY = ("m.room.guest_access", "")
MAX_REASON_LENGTH = 1024


def _room_id_ok(room_id: str) -> bool:
    return room_id.startswith("!") and len(room_id) <= 255 and len(room_id) > 1


class Rooms:
    def __init__(self, storage: Storage, writer: RoomWriter, server_name: str) -> None:
        self.storage = storage
        self.events = storage.events
        self.writer = writer
        self.creator = RoomCreator(storage, writer, server_name)
        self.server_name = server_name
        # Hook (the application services): asks the service whose namespace
        # holds an unknown local user to create it; True if the user exists.
        self.query_user: Callable[[str], Awaitable[bool]] | None = None

    # ------------------------------------------------------------- helpers

    def check_room_id(self, room_id: str) -> None:
        if not _room_id_ok(room_id):
            raise invalid_param(f"Invalid room ID: {room_id!r}")

    async def room_exists(self, room_id: str) -> bool:
        return await self.events.get_room_version(room_id) is not None

    async def require_room(self, room_id: str) -> None:
        self.check_room_id(room_id)
        if not await self.room_exists(room_id):
            raise not_found("Unknown room")

    async def _invitee_content(self, user_id: str) -> dict[str, Any]:
        """`invite_content`, once the application service owning an unknown invitee was asked."""
        if self.query_user is not None:
            await self.query_user(user_id)
        return await invite_content(self.storage, self.server_name, user_id)

    async def member_content(self, user_id: str) -> dict[str, Any]:
        """The profile fields a member event carries."""
        return await profile_content(self.storage, user_id) or {}

    async def current_state_events(self, room_id: str, keys: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], Event]:
        ids = await self.events.get_current_state_ids(room_id, keys)
        found = await self.events.get_events(ids.values())
        return {k: found[v] for k, v in ids.items() if v in found}

    async def power_levels(self, room_id: str) -> PowerLevels:
        state = await self.current_state_events(
            room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
        )
        return PowerLevels.from_state(state)

    # ------------------------------------------------------------ creating

    async def create_room(
        self, user_id: str, body: dict[str, Any], canonical_alias: str | None = None
    ) -> str:
        room_id, _sent = await self.creator.create_room(
            user_id,
            body,
            await self.member_content(user_id),
            canonical_alias,
            invitee_content=self._invitee_content,
        )
        logger.info("%s created %s", user_id, room_id)
        return room_id

    # -------------------------------------------------------------- sending

    async def send_event(
        self,
        user_id: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
        device_id: str | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Send an event; `origin_server_ts` (an application service's `?ts=`) overrides the clock."""
        await self.require_room(room_id)
        if event_type == "m.room.redaction":
            raise invalid_param("Use /redact to redact events")
        if event_type == "m.room.member" and state_key is not None:
            raise invalid_param("Use the membership endpoints to change membership")
        if event_type == "m.room.create":
            raise forbidden("A room has only one m.room.create event")
        if event_type == CANONICAL_ALIAS_TYPE and state_key == "":
            await check_canonical_alias(self, room_id, content)
        sent = await self.writer.write(
            room_id,
            [
                EventRequest(
                    event_type, user_id, content, state_key, txn_id, device_id,
                    origin_server_ts=origin_server_ts,
                )
            ],
            check=check_new_relation,
        )
        return sent[0].event.event_id

    async def redact(
        self,
        user_id: str,
        room_id: str,
        target_id: str,
        reason: str | None,
        txn_id: str,
        device_id: str,
    ) -> str:
        """Redact `target_id`: its sender may; others need the redact power level."""
        await self.require_room(room_id)
        target = await self.events.get_event(target_id)
        if target is None or target.room_id != room_id:
            raise not_found("Unknown event")
        if target.type == "m.room.create":
            raise forbidden("The m.room.create event cannot be redacted")
        content: dict[str, Any] = {"redacts": target_id}
        if reason is not None:
            content["reason"] = reason

        async def check(txn: Transaction, head: RoomHead, request: EventRequest) -> None:
            if target.sender == user_id:
                return
            await self._require_redact_power(txn, head, user_id)

        sent = await self.writer.write(
            room_id,
            [EventRequest("m.room.redaction", user_id, content, txn_id=txn_id, device_id=device_id)],
            check=check,
        )
        return sent[0].event.event_id

    async def _require_redact_power(self, txn: Transaction, head: RoomHead, user_id: str) -> None:
        keys = [CREATE_KEY, POWER_LEVELS_KEY]
        ids = [head.state[k] for k in keys if k in head.state]
        found = await self.events.get_events_txn(txn, ids)
        levels = PowerLevels.from_state({k: found[head.state[k]] for k in keys if k in head.state})
        if levels.user_level(user_id) < levels.redact:
            raise forbidden(
                f"You need power level {levels.redact} to redact other people's events"
            )

    # ----------------------------------------------------------- membership

    async def membership(self, room_id: str, user_id: str) -> Membership | None:
        return await self.events.get_membership(room_id, user_id)

    async def leave_all(self, user_id: str) -> None:
        """Leave every room the user is in, invited to or knocking on (a
        deactivated account), as Synapse does; one room failing does not stop
        the others."""
        for membership in await self.storage.events.rooms_for_user(user_id, ("join", "invite", "knock")):
            try:
                await self.update_membership(user_id, membership.room_id, user_id, "leave")
            except MatrixError as err:
                logger.warning("%s could not leave %s: %s", user_id, membership.room_id, err.error)

    async def update_membership(
        self,
        sender: str,
        room_id: str,
        target: str,
        membership: str,
        *,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
        require_current: tuple[str, ...] | None = None,
        guest: bool = False,
        origin_server_ts: int | None = None,
    ) -> str:
        """Send an m.room.member event for `target`; the auth rules decide if it is allowed.

        `require_current` lists the memberships the target must have now
        (unban: a ban; kick: in the room), for a clearer refusal than the
        auth rules would give. `guest` says the sender is a guest, who may
        only join rooms that let guests in. `origin_server_ts` (an
        application service's `?ts=`) overrides the clock.
        """
        self.check_room_id(room_id)
        if membership in ("join", "invite", "knock") and (
            await self.storage.admin_rooms.room_blocked_by(room_id) is not None
        ):
            # Blocked by a server admin (homeserver/admin/rooms.py): nobody gets in.
            raise forbidden("This room has been blocked on this server")
        await self.require_room(room_id)
        if split_user_id(target) is None:
            raise invalid_param(f"Invalid user ID: {target!r}")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
            raise invalid_param(f"reason must be a string of at most {MAX_REASON_LENGTH} characters")
        current = await self.membership(room_id, target)
        if require_current is not None and (current is None or current.membership not in require_current):
            raise forbidden(f"{target} is not {' or '.join(require_current)} in this room")
        content: dict[str, Any] = {"membership": membership}
        if membership == "invite":
            content.update(await self._invitee_content(target))
        elif membership in ("join", "knock"):
            content.update(await self.member_content(target))
        if membership == "join" and current is not None and current.membership == "join" and not extra:
            return current.event_id  # already joined: nothing to change
        if membership == "leave" and sender == target and (current is None or current.membership == "leave"):
            if current is None:
                raise forbidden("You are not a member of this room")
            return current.event_id  # already left
        if reason:
            content["reason"] = reason
        if extra:
            content.update(extra)
        if guest and membership == "join" and (current is None or current.membership != "join"):
            await self._require_guest_access(room_id)
        if membership == "join" and (current is None or current.membership not in ("join", "invite")):
            authoriser = await self._join_authoriser(room_id, target)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        sent = await self.writer.write(
            room_id,
            [
                EventRequest(
                    "m.room.member", sender, content, state_key=target, origin_server_ts=origin_server_ts
                )
            ],
        )
        return sent[0].event.event_id

    async def _require_guest_access(self, room_id: str) -> None:
        state = await self.current_state_events(room_id, [GUEST_ACCESS_KEY])
        guest_access = state.get(GUEST_ACCESS_KEY)
        if guest_access is None or guest_access.content.get("guest_access") != "can_join":
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "This room does not let guests join")

    async def _join_authoriser(self, room_id: str, user_id: str) -> str | None:
        """For a join the room's rules restrict, the local member who authorises it.

        Chosen from the current state before the write; the auth rules then
        check the choice (joined, may invite) against the state the join is
        sent in, so a concurrent change cannot let anyone in.
        """
        state = await self.current_state_events(room_id, [CREATE_KEY, POWER_LEVELS_KEY, JOIN_RULES_KEY])
        join_rules = state.get(JOIN_RULES_KEY)
        if join_rules is None or join_rules.content.get("join_rule") not in ("restricted", "knock_restricted"):
            return None
        allow = join_rules.content.get("allow")
        allowed_rooms = [
            entry["room_id"]
            for entry in (allow if isinstance(allow, list) else [])
            if isinstance(entry, dict)
            and entry.get("type") == "m.room_membership"
            and isinstance(entry.get("room_id"), str)
        ]
        for allowed in allowed_rooms:
            found = await self.events.get_membership(allowed, user_id)
            if found is not None and found.membership == "join":
                break
        else:
            raise forbidden("You are not a member of any room this room's join rules allow")
        levels = PowerLevels.from_state(state)
        local = [
            m.user_id
            for m in await self.events.members_of_room(room_id)
            if m.user_id.endswith(":" + self.server_name) and levels.user_level(m.user_id) >= levels.invite
        ]
        if not local:
            raise forbidden("No member of this server can authorise the join")
        return max(local, key=levels.user_level)

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.require_room(room_id)
        current = await self.membership(room_id, user_id)
        if current is not None and current.membership in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "Leave the room before forgetting it")
        await self.events.forget_room(user_id, room_id)

    async def update_profile_in_rooms(self, user_id: str) -> None:
        """Carry a changed display name or avatar into every joined room."""
        content = {"membership": "join", **await self.member_content(user_id)}
        for room in await self.events.rooms_for_user(user_id):
            try:
                await self.writer.write(
                    room.room_id,
                    [EventRequest("m.room.member", user_id, dict(content), state_key=user_id)],
                )
            except MatrixError as err:
                logger.info("not updating profile of %s in %s: %s", user_id, room.room_id, err.error)

    # -------------------------------------------------------------- reading

    async def check_can_read(self, user_id: str, room_id: str) -> Membership | None:
        """Allow joined members, former members (up to their leaving) and world-readable rooms.

        Returns the user's membership, or None for a non-member reading a
        world-readable room.
        """
        await self.require_room(room_id)
        current = await self.membership(room_id, user_id)
        if current is not None and current.membership in ("join", "leave", "ban"):
            return current
        state = await self.current_state_events(room_id, [HISTORY_KEY])
        hv = state.get(HISTORY_KEY)
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return current
        if current is not None and current.membership == "invite":
            return current
        raise forbidden("You are not allowed to see this room")

    async def visible_event(self, user_id: str, room_id: str, event_id: str) -> Event:
        """An event of the room the user may see, or 404 (never revealing it exists).

        History visibility alone decides, so a non-member gets the same 404
        as for an unknown event (the spec lists no 403 here).
        """
        await self.require_room(room_id)
        event = await self.events.get_event(event_id)
        if event is None or event.room_id != room_id or event.rejected:
            raise not_found("Event not found")
        if not await filter_events_for_user(self.events, user_id, [event]):
            raise not_found("Event not found")
        return event
