"""GET /sync, Simplified Sliding Sync (POST) and the filter API."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..http import Router, json_response, query_int, read_json
from ..sync.filters import Filter
from ..sync.handler import STATE_AFTER, UNSTABLE_STATE_AFTER
from ..sync.sliding import SlidingRequest
from ..sync.tokens import InvalidToken, StreamToken
from ..util import cancel_task

if TYPE_CHECKING:
    from ..app import HomeServer

PRESENCE_STATES = ("online", "unavailable", "offline")
# How often long-polls are checked for clients that went away.
DISCONNECT_CHECK_SECONDS = 0.5


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise invalid_param(f"{name} must be true or false")
    return value == "true"


def _state_key(request: web.Request) -> str:
    """Where rooms carry their state (MSC4222): `use_state_after` asks for
    `state_after`, its unstable name for the unstable field; both at once
    get the stable one."""
    stable, unstable = _flag(request, "use_state_after"), _flag(request, "org.matrix.msc4222.use_state_after")
    if stable:
        return STATE_AFTER
    return UNSTABLE_STATE_AFTER if unstable else "state"


def register(router: Router, hs: HomeServer) -> None:
    store = hs.storage.sync
    # The long-polls under way, each with the event that ends its wait:
    # set when its client has gone away (found by `watch_disconnects`), so
    # a poll nobody will read stops at once instead of at its timeout, and
    # for all of them when this app shuts down, so they do not hold the
    # shutdown. (aiohttp's handler cancellation is off: it would cancel
    # writes mid-transaction; this ends only the waiting.)
    polls: dict[asyncio.Event, web.Request] = {}
    shutting_down = False
    watcher: asyncio.Task[None] | None = None

    async def watch_disconnects() -> None:
        """While there are long-polls, look every DISCONNECT_CHECK_SECONDS for those
        whose connection closed (aiohttp tells a handler of that only by
        cancelling it)."""
        while polls:
            await asyncio.sleep(DISCONNECT_CHECK_SECONDS)
            for ended, request in list(polls.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    ended.set()

    def long_poll(request: web.Request) -> asyncio.Event:
        nonlocal watcher
        ended = asyncio.Event()
        if shutting_down:
            ended.set()
        polls[ended] = request
        if watcher is None or watcher.done():
            watcher = asyncio.create_task(watch_disconnects())
        return ended

    async def end_long_polls(_app: web.Application) -> None:
        nonlocal shutting_down
        shutting_down = True
        for ended in polls:
            ended.set()

    async def stop_watching(_app: web.Application) -> None:
        await cancel_task(watcher)

    router.app.on_shutdown.append(end_long_polls)
    router.app.on_cleanup.append(stop_watching)

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
        full_state = _flag(request, "full_state")
        state_key = _state_key(request)
        set_presence = request.query.get("set_presence")
        if set_presence is not None and set_presence not in PRESENCE_STATES:
            raise invalid_param("set_presence must be online, unavailable or offline")
        sync_filter = await _filter(requester.user_id, request.query.get("filter"))
        closing = long_poll(request) if timeout > 0 else None
        try:
            body = await hs.sync_handler.sync(
                requester,
                since,
                sync_filter,
                timeout_ms=timeout,
                full_state=full_state,
                set_presence=set_presence,
                state_key=state_key,
                closing=closing,
            )
        finally:
            if closing is not None:
                del polls[closing]
        return json_response(body)

    async def sliding_sync(request: web.Request, *, legacy: bool) -> web.Response:
        requester = await hs.auth.get_requester(request)
        parsed = SlidingRequest.parse(await read_json(request, allow_empty=True), request.query)
        closing = long_poll(request) if parsed.timeout_ms > 0 and parsed.pos else None
        try:
            body = await hs.sliding_sync.sliding_sync(requester, parsed, legacy=legacy, closing=closing)
        finally:
            if closing is not None:
                del polls[closing]
        return json_response(body)

    async def sliding_sync_v4(request: web.Request) -> web.Response:
        return await sliding_sync(request, legacy=False)

    async def sliding_sync_unstable(request: web.Request) -> web.Response:
        return await sliding_sync(request, legacy=True)

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
    # Simplified Sliding Sync (MSC4186): as the MSC has it, and as clients use it today.
    router.client("POST", "/sync", sliding_sync_v4, versions=("v4",))
    router.add("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", sliding_sync_unstable)
    router.client("POST", "/user/{userId}/filter", post_filter)
    router.client("GET", "/user/{userId}/filter/{filterId}", get_filter)
