"""Typing, receipts and read markers, account data, room tags and presence.

Typing notifications and receipts (read markers too) are rate limited per
user at `EPHEMERAL_RATE`, a fixed cap: Synapse has no `rc_` option for
them, so there is none to configure here either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..accounts.auth import Requester
from ..config import RateLimit
from ..ephemeral.account_data import FULLY_READ, PUSH_RULES
from ..ephemeral.presence import STATES
from ..ephemeral.receipts import RECEIPT_TYPES
from ..ephemeral.typing import DEFAULT_TIMEOUT_MS
from ..errors import bad_json, forbidden, invalid_param, missing_param
from ..http import Router, body_str, json_response, read_json
from ..ids import split_user_id
from ..ratelimit import RateLimiter

if TYPE_CHECKING:
    from ..app import HomeServer

# Far above what a person typing or reading does; a runaway client (or
# script) is refused with 429 instead of flooding everyone's syncs.
EPHEMERAL_RATE = RateLimit(per_second=10, burst_count=30)


def register(router: Router, hs: "HomeServer") -> None:
    typing_limiter = RateLimiter(EPHEMERAL_RATE)
    receipt_limiter = RateLimiter(EPHEMERAL_RATE)

    async def own_user(request: web.Request, what: str) -> Requester:
        """The requester, who must be the user the path names (403 otherwise)."""
        requester = await hs.auth.get_requester(request)
        if request.match_info["userId"] != requester.user_id:
            raise forbidden(f"You cannot {what} for other users")
        return requester

    def room_id_of(request: web.Request) -> str:
        room_id = request.match_info["roomId"]
        hs.rooms.check_room_id(room_id)
        return room_id

    # -------------------------------------------------------------- typing

    async def put_typing(request: web.Request) -> web.Response:
        requester = await own_user(request, "set typing notifications")
        typing_limiter.check(requester.user_id)
        body = await read_json(request)
        if "typing" not in body:
            raise missing_param("Missing parameter: typing")
        typing = body["typing"]
        if not isinstance(typing, bool):
            raise bad_json("'typing' must be true or false")
        timeout = body.get("timeout", DEFAULT_TIMEOUT_MS)
        if typing and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
            raise bad_json("'timeout' must be a non-negative integer of milliseconds")
        await hs.typing.set_typing(requester.user_id, room_id_of(request), typing, timeout)
        return json_response({})

    # --------------------------------------------------- receipts, markers

    async def post_receipt(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        receipt_limiter.check(requester.user_id)
        body = await read_json(request, allow_empty=True)
        await hs.receipts.send_receipt(
            requester.user_id,
            room_id_of(request),
            request.match_info["receiptType"],
            request.match_info["eventId"],
            body.get("thread_id"),
        )
        await hs.presence.user_active(requester.user_id)
        return json_response({})

    async def post_read_markers(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        receipt_limiter.check(requester.user_id)
        body = await read_json(request)
        markers: dict[str, str] = {}
        for kind in (FULLY_READ, *RECEIPT_TYPES):
            event_id = body.get(kind)
            if event_id is None:
                continue
            if not isinstance(event_id, str) or not event_id:
                raise invalid_param(f"'{kind}' must be an event ID")
            markers[kind] = event_id
        await hs.receipts.set_read_markers(requester.user_id, room_id_of(request), markers)
        await hs.presence.user_active(requester.user_id)
        return json_response({})

    # -------------------------------------------------------- account data

    async def get_account_data(request: web.Request) -> web.Response:
        requester = await own_user(request, "read account data")
        room_id = room_id_of(request) if "roomId" in request.match_info else ""
        data_type = request.match_info["type"]
        if data_type == PUSH_RULES and not room_id:
            # The push rules are kept by the push service, and read here as the spec asks.
            event = await hs.push.push_rules_account_data(requester.user_id)
            return json_response(event["content"])
        return json_response(await hs.account_data.get(requester.user_id, room_id, data_type))

    async def put_account_data(request: web.Request) -> web.Response:
        requester = await own_user(request, "add account data")
        room_id = room_id_of(request) if "roomId" in request.match_info else ""
        body = await read_json(request)
        await hs.account_data.set(requester.user_id, room_id, request.match_info["type"], body)
        return json_response({})

    # ---------------------------------------------------------------- tags

    async def get_tags(request: web.Request) -> web.Response:
        requester = await own_user(request, "read tags")
        tags = await hs.account_data.get_tags(requester.user_id, room_id_of(request))
        return json_response({"tags": tags})

    async def put_tag(request: web.Request) -> web.Response:
        requester = await own_user(request, "add tags")
        room_id = room_id_of(request)
        body = await read_json(request)
        await hs.account_data.add_tag(requester.user_id, room_id, request.match_info["tag"], body)
        return json_response({})

    async def delete_tag(request: web.Request) -> web.Response:
        requester = await own_user(request, "remove tags")
        await hs.account_data.remove_tag(
            requester.user_id, room_id_of(request), request.match_info["tag"]
        )
        return json_response({})

    # ------------------------------------------------------------ presence

    async def get_presence(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        user_id = request.match_info["userId"]
        if split_user_id(user_id) is None:
            raise invalid_param(f"Invalid user ID: {user_id!r}")
        return json_response(await hs.presence.get_state(requester.user_id, user_id))

    async def put_presence(request: web.Request) -> web.Response:
        requester = await own_user(request, "set presence")
        body = await read_json(request)
        state = body_str(body, "presence")
        if state not in STATES:
            raise invalid_param(f"'presence' must be one of {', '.join(STATES)}")
        status_msg = body_str(body, "status_msg", None)
        await hs.presence.set_state(requester.user_id, state, status_msg)
        return json_response({})

    router.client("PUT", "/rooms/{roomId}/typing/{userId}", put_typing)
    router.client("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", post_receipt)
    router.client("POST", "/rooms/{roomId}/read_markers", post_read_markers)
    for prefix in ("/user/{userId}", "/user/{userId}/rooms/{roomId}"):
        router.client("GET", prefix + "/account_data/{type}", get_account_data)
        router.client("PUT", prefix + "/account_data/{type}", put_account_data)
    router.client("GET", "/user/{userId}/rooms/{roomId}/tags", get_tags)
    router.client("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}", put_tag)
    router.client("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}", delete_tag)
    router.client("GET", "/presence/{userId}/status", get_presence)
    router.client("PUT", "/presence/{userId}/status", put_presence)
