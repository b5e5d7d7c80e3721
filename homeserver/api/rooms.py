"""Rooms: create, send, state, single events, redactions, joined rooms."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..accounts.auth import Requester
from ..errors import forbidden, invalid_param, not_found
from ..http import Router, body_str, json_response, query_int, read_json
from ..rooms.creation import check_state_content

if TYPE_CHECKING:
    from ..app import HomeServer

MAX_TYPE_LENGTH = 255
MAX_TXN_ID_LENGTH = 255


def _event_type(request: web.Request) -> str:
    event_type = request.match_info["eventType"]
    if not event_type or len(event_type.encode()) > MAX_TYPE_LENGTH:
        raise invalid_param("Event type must be 1 to 255 bytes")
    return event_type


def _txn_id(request: web.Request) -> str:
    txn_id = request.match_info["txnId"]
    if not txn_id or len(txn_id) > MAX_TXN_ID_LENGTH:
        raise invalid_param("Transaction ID must be 1 to 255 characters")
    return txn_id


# The largest integer canonical JSON allows.
MAX_TS = 2**53 - 1


def _massaged_ts(request: web.Request, requester: Requester, *names: str) -> int | None:
    """MSC3316: an application service sets the event's origin_server_ts with
    `?ts=` (milliseconds). Others' `ts` is ignored, as Synapse ignores it."""
    if requester.app_service_id is None:
        return None
    for name in names:
        ts = query_int(request, name)
        if ts is not None:
            if not 0 <= ts <= MAX_TS:
                raise invalid_param(f"Query parameter '{name}' must be a timestamp in milliseconds")
            return ts
    return None


def register(router: Router, hs: "HomeServer") -> None:
    rooms = hs.rooms
    events = hs.storage.events

    async def create_room(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        # The directory reserves `room_alias_name` before the room is created.
        room_id = await hs.directory.create_room(
            requester.user_id, body, appservice_id=requester.app_service_id
        )
        return json_response({"room_id": room_id})

    async def send_message(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["roomId"]
        event_type = _event_type(request)
        txn_id = _txn_id(request)
        content = await read_json(request)
        event_id = await rooms.send_event(
            requester.user_id,
            room_id,
            event_type,
            content,
            txn_id=txn_id,
            device_id=requester.device_id,
            origin_server_ts=_massaged_ts(request, requester, "ts"),
        )
        return json_response({"event_id": event_id})

    async def put_state(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = request.match_info["roomId"]
        event_type = _event_type(request)
        state_key = request.match_info.get("stateKey", "")
        if len(state_key.encode()) > 255:
            raise invalid_param("State key must be at most 255 bytes")
        content = await read_json(request)
        # The unstable name is only for /state (MSC3316: /send had `ts` already).
        ts = _massaged_ts(request, requester, "ts", "org.matrix.msc3316.ts")
        if event_type == "m.room.member":
            # Clients set per-room display names this way (Element's /myroomnick).
            membership = body_str(content, "membership", max_length=16)
            if membership not in ("join", "invite", "leave", "ban", "knock"):
                raise invalid_param(f"Unknown membership: {membership!r}")
            extra = {k: v for k, v in content.items() if k not in ("membership", "reason")}
            event_id = await rooms.update_membership(
                requester.user_id,
                room_id,
                state_key,
                membership,
                reason=body_str(content, "reason", None, max_length=1024),
                extra=extra,
                origin_server_ts=ts,
            )
            return json_response({"event_id": event_id})
        check_state_content(event_type, content)
        event_id = await rooms.send_event(
            requester.user_id, room_id, event_type, content, state_key=state_key, origin_server_ts=ts
        )
        return json_response({"event_id": event_id})

    async def _readable_state(user_id: str, room_id: str) -> dict:
        """The state the user may read: current, or as it was when they left."""
        membership = await rooms.check_can_read(user_id, room_id)
        if membership is not None and membership.membership in ("leave", "ban"):
            positions = await events.get_positions([membership.event_id])
            return await events.get_state_group(positions[membership.event_id][1])
        if membership is not None and membership.membership == "invite":
            raise forbidden("Join the room to see its state")
        return await events.get_current_state_ids(room_id)

    async def get_state(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["roomId"]
        rooms.check_room_id(room_id)
        state = await _readable_state(requester.user_id, room_id)
        found = await events.get_events(state.values())
        serialized = await hs.serializer.serialize(found.values())
        return json_response(serialized)

    async def get_state_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["roomId"]
        rooms.check_room_id(room_id)
        key = (request.match_info["eventType"], request.match_info.get("stateKey", ""))
        state = await _readable_state(requester.user_id, room_id)
        event_id = state.get(key)
        event = await events.get_event(event_id) if event_id else None
        if event is None:
            raise not_found("State event not found")
        if request.query.get("format") == "event":
            return json_response((await hs.serializer.serialize([event]))[0])
        if request.query.get("format", "content") != "content":
            raise invalid_param("format must be 'content' or 'event'")
        serialized = await hs.serializer.serialize([event])
        return json_response(serialized[0]["content"])

    async def get_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["roomId"]
        rooms.check_room_id(room_id)
        event = await rooms.visible_event(requester.user_id, room_id, request.match_info["eventId"])
        serialized = await hs.serializer.serialize(
            [event], device=(requester.user_id, requester.device_id)
        )
        return json_response(serialized[0])

    async def redact(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = request.match_info["roomId"]
        txn_id = _txn_id(request)
        body = await read_json(request, allow_empty=True)
        reason = body_str(body, "reason", None, max_length=1024)
        event_id = await rooms.redact(
            requester.user_id,
            room_id,
            request.match_info["eventId"],
            reason,
            txn_id,
            requester.device_id,
        )
        return json_response({"event_id": event_id})

    async def joined_rooms(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        memberships = await events.rooms_for_user(requester.user_id)
        return json_response({"joined_rooms": [m.room_id for m in memberships]})

    router.client("POST", "/createRoom", create_room)
    router.client("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", send_message)
    router.client("PUT", "/rooms/{roomId}/state/{eventType}", put_state)
    # State keys may be empty or contain slashes.
    router.client("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}", put_state)
    router.client("GET", "/rooms/{roomId}/state", get_state)
    router.client("GET", "/rooms/{roomId}/state/{eventType}", get_state_event)
    router.client("GET", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}", get_state_event)
    router.client("GET", "/rooms/{roomId}/event/{eventId}", get_event)
    router.client("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", redact)
    router.client("GET", "/joined_rooms", joined_rooms)

