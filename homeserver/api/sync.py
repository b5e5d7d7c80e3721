"""GET /sync and the filter API."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..http import Router, json_response, query_int, read_json
from ..sync.filters import Filter
from ..sync.tokens import InvalidToken, StreamToken

if TYPE_CHECKING:
    from ..app import HomeServer

PRESENCE_STATES = ("online", "unavailable", "offline")


def register(router: Router, hs: HomeServer) -> None:
    store = hs.storage.sync
    # Set when this app shuts down: long-polls answer at once instead of
    # holding the shutdown for their whole timeout.
    closing = asyncio.Event()

    async def end_long_polls(_app: web.Application) -> None:
        closing.set()
        hs.notifier.wake_all({})

    router.app.on_shutdown.append(end_long_polls)

    async def _filter(user_id: str, value: str | None) -> Filter:
        if value is None:
            return Filter()
        if value.lstrip().startswith("{"):
            try:
                raw = json.loads(value)
            except ValueError:
                raise MatrixError(400, "M_NOT_JSON", "filter is not valid JSON") from None
            return Filter.from_json(raw)
        if not value.isdigit() or len(value) > 18:
            raise invalid_param("filter must be a filter ID or a JSON filter")
        stored = await store.get_filter(user_id, int(value))
        if stored is None:
            raise invalid_param(f"Unknown filter: {value}")
        return Filter.from_json(stored)

    async def sync(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        since = None
        if "since" in request.query:
            try:
                since = StreamToken.parse(request.query["since"])
            except InvalidToken:
                raise invalid_param("since is not a sync token") from None
        timeout = query_int(request, "timeout", 0) or 0
        if timeout < 0:
            raise invalid_param("timeout must not be negative")
        full_state = request.query.get("full_state", "false")
        if full_state not in ("true", "false"):
            raise invalid_param("full_state must be true or false")
        set_presence = request.query.get("set_presence")
        if set_presence is not None and set_presence not in PRESENCE_STATES:
            raise invalid_param("set_presence must be online, unavailable or offline")
        sync_filter = await _filter(requester.user_id, request.query.get("filter"))
        body = await hs.sync_handler.sync(
            requester,
            since,
            sync_filter,
            timeout_ms=timeout,
            full_state=full_state == "true",
            set_presence=set_presence,
            closing=closing,
        )
        return json_response(body)

    def _own(request: web.Request, user_id: str) -> None:
        if request.match_info["userId"] != user_id:
            raise forbidden("You can only manage your own filters")

    async def post_filter(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        _own(request, requester.user_id)
        body = await read_json(request)
        Filter.from_json(body)  # refuse what is not a filter before storing it
        filter_id = await store.add_filter(requester.user_id, body)
        return json_response({"filter_id": str(filter_id)})

    async def get_filter(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        _own(request, requester.user_id)
        filter_id = request.match_info["filterId"]
        stored = None
        if filter_id.isdigit() and len(filter_id) <= 18:
            stored = await store.get_filter(requester.user_id, int(filter_id))
        if stored is None:
            raise not_found("No such filter")
        return json_response(stored)

    router.client("GET", "/sync", sync)
    router.client("POST", "/user/{userId}/filter", post_filter)
    router.client("GET", "/user/{userId}/filter/{filterId}", get_filter)
