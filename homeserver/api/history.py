"""Room history: /messages, /context, /members, /joined_members, /timestamp_to_event."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from ..errors import MatrixError, invalid_param, missing_param
from ..http import Router, json_response, query_int
from ..rooms.history import DEFAULT_LIMIT, MEMBERSHIPS
from ..sync.filters import MAX_LIMIT, RoomEventFilter
from ..sync.tokens import (
    MAX_POSITION,
    InvalidToken,
    PaginationToken,
    parse_pagination_token,
)

if TYPE_CHECKING:
    from ..app import HomeServer


def direction_param(request: web.Request) -> bool:
    """The required `dir` parameter; True for backwards."""
    value = request.query.get("dir")
    if value is None:
        raise missing_param("Missing query parameter: dir")
    if value not in ("b", "f"):
        raise invalid_param("Query parameter 'dir' must be 'b' or 'f'")
    return value == "b"


def token_param(request: web.Request, key: str) -> PaginationToken | None:
    value = request.query.get(key)
    if value is None:
        return None
    try:
        return parse_pagination_token(value)
    except InvalidToken:
        raise invalid_param(f"Query parameter '{key}' is not a valid token") from None


def limit_param(request: web.Request) -> int | None:
    limit = query_int(request, "limit")
    if limit is not None and limit < 0:
        raise invalid_param("Query parameter 'limit' must be 0 or more")
    return min(limit, MAX_LIMIT) if limit is not None else None


def filter_param(request: web.Request) -> RoomEventFilter:
    raw = request.query.get("filter")
    if raw is None:
        return RoomEventFilter()
    try:
        value: Any = json.loads(raw)
    except (ValueError, RecursionError):
        # Some clients URL-encode the filter twice (Synapse unquotes it again).
        try:
            value = json.loads(unquote(raw))
        except (ValueError, RecursionError):
            raise MatrixError(400, "M_NOT_JSON", "Query parameter 'filter' must be JSON") from None
    return RoomEventFilter.from_json(value)


def _membership(request: web.Request, key: str) -> str | None:
    value = request.query.get(key)
    if value is not None and value not in MEMBERSHIPS:
        raise invalid_param(f"Query parameter '{key}' must be one of {', '.join(MEMBERSHIPS)}")
    return value


def register(router: Router, hs: HomeServer) -> None:
    history = hs.history
    serializer = hs.serializer

    def room_id_of(request: web.Request) -> str:
        room_id = request.match_info["roomId"]
        hs.rooms.check_room_id(room_id)
        return room_id

    async def messages(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = room_id_of(request)
        backwards = direction_param(request)
        from_token, to_token = token_param(request, "from"), token_param(request, "to")
        limit = limit_param(request)
        event_filter = filter_param(request)
        page = await history.messages(
            requester.user_id, room_id,
            backwards=backwards, from_token=from_token, to_token=to_token,
            limit=limit, event_filter=event_filter,
        )
        device = (requester.user_id, requester.device_id)
        body: dict[str, Any] = {
            "chunk": await serializer.serialize(page.chunk, device=device),
            "start": page.start,
        }
        if page.end is not None:
            body["end"] = page.end
        if page.state:
            body["state"] = await serializer.serialize(page.state, device=device)
        return json_response(body)

    async def context(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = room_id_of(request)
        limit = limit_param(request)
        event_filter = filter_param(request)
        found = await history.context(
            requester.user_id,
            room_id,
            request.match_info["eventId"],
            DEFAULT_LIMIT if limit is None else limit,
            event_filter,
        )
        device = (requester.user_id, requester.device_id)
        return json_response(
            {
                "event": (await serializer.serialize([found.event], device=device))[0],
                "events_before": await serializer.serialize(found.events_before, device=device),
                "events_after": await serializer.serialize(found.events_after, device=device),
                "state": await serializer.serialize(found.state, device=device),
                "start": found.start,
                "end": found.end,
            }
        )

    async def members(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        room_id = room_id_of(request)
        found = await history.members(
            requester.user_id, room_id,
            at=token_param(request, "at"),
            membership=_membership(request, "membership"),
            not_membership=_membership(request, "not_membership"),
        )
        return json_response({"chunk": await serializer.serialize(found)})

    async def joined_members(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = room_id_of(request)
        return json_response({"joined": await history.joined_members(requester.user_id, room_id)})

    async def timestamp_to_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = room_id_of(request)
        ts = query_int(request, "ts")
        if ts is None:
            raise missing_param("Missing query parameter: ts")
        if abs(ts) > MAX_POSITION:
            raise invalid_param("Query parameter 'ts' is out of range")
        backwards = direction_param(request)
        event = await history.event_at_timestamp(
            requester.user_id, room_id, ts, forwards=not backwards
        )
        return json_response(
            {"event_id": event.event_id, "origin_server_ts": event.origin_server_ts}
        )

    router.client("GET", "/rooms/{roomId}/messages", messages)
    router.client("GET", "/rooms/{roomId}/context/{eventId}", context)
    router.client("GET", "/rooms/{roomId}/members", members)
    router.client("GET", "/rooms/{roomId}/joined_members", joined_members)
    router.client("GET", "/rooms/{roomId}/timestamp_to_event", timestamp_to_event, versions=("v1",))
