"""Spaces, room upgrades and reporting content: GET /hierarchy, POST /upgrade, POST /report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import bad_json, invalid_param, not_found
from ..events.model import Event
from ..http import Router, body_str, json_response, query_int, query_str, read_json
from ..util import now_ms

if TYPE_CHECKING:
    from ..app import HomeServer

# Synapse's bounds for an event report's (no longer specified) `score`.
MIN_SCORE, MAX_SCORE = -100, 0


def _query_bool(request: web.Request, key: str, default: bool = False) -> bool:
    value = request.query.get(key)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise invalid_param(f"Query parameter '{key}' must be 'true' or 'false'")
    return value == "true"


def _score(body: dict[str, Any]) -> int | None:
    score = body.get("score")
    if score is None:
        return None
    if not isinstance(score, int) or isinstance(score, bool):
        raise bad_json("'score' must be an integer")
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise invalid_param(f"'score' must be an integer between {MIN_SCORE} and {MAX_SCORE}")
    return score


def register(router: Router, hs: "HomeServer") -> None:
    rooms = hs.rooms
    reports = hs.storage.reports

    async def hierarchy(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        page = await hs.hierarchy.get_hierarchy(
            requester.user_id,
            request.match_info["roomId"],
            suggested_only=_query_bool(request, "suggested_only"),
            max_depth=query_int(request, "max_depth"),
            limit=query_int(request, "limit"),
            from_token=query_str(request, "from", None),
        )
        return json_response(page)

    async def upgrade(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        new_version = body_str(body, "new_version", max_length=255)
        creators = body.get("additional_creators", [])
        if not isinstance(creators, list) or not all(isinstance(c, str) for c in creators):
            raise bad_json("'additional_creators' must be a list of user IDs")
        new_room_id = await hs.upgrades.upgrade(
            requester.user_id, request.match_info["roomId"], new_version, creators
        )
        return json_response({"replacement_room": new_room_id})

    async def reportable_event(user_id: str, room_id: str, event_id: str) -> Event:
        """The event, if the reporter is joined and may see it; 404 otherwise (spec)."""
        rooms.check_room_id(room_id)
        membership = await rooms.membership(room_id, user_id)
        if membership is None or membership.membership != "join":
            raise not_found("The event was not found or you are not joined to the room")
        event = await rooms.visible_event(user_id, room_id, event_id)
        if event.redacted_by is not None:
            raise not_found("The event was not found or you are not joined to the room")
        return event

    async def report_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id, event_id = request.match_info["roomId"], request.match_info["eventId"]
        body = await read_json(request)
        reason = body_str(body, "reason", None)
        score = _score(body)
        await reportable_event(requester.user_id, room_id, event_id)
        await reports.add_event_report(
            room_id, event_id, requester.user_id, reason, score, now_ms()
        )
        return json_response({})

    async def report_room(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = request.match_info["roomId"]
        body = await read_json(request)
        reason = body_str(body, "reason")
        await rooms.require_room(room_id)
        await reports.add_room_report(room_id, requester.user_id, reason, now_ms())
        return json_response({})

    router.client("GET", "/rooms/{roomId}/hierarchy", hierarchy, versions=("v1",))
    router.client("POST", "/rooms/{roomId}/upgrade", upgrade)
    router.client("POST", "/rooms/{roomId}/report/{eventId}", report_event)
    router.client("POST", "/rooms/{roomId}/report", report_room)
