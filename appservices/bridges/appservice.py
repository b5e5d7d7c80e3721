"""What every bridge is: an application service with its own small HTTP server.

The homeserver pushes the events of the bridge's rooms to
`PUT /_matrix/app/v1/transactions/{txnId}`, authenticated with the
registration's `hs_token`. A transaction is handled once, however often the
homeserver retries it. Invites to the bridge's own users are accepted
here, so an operator invites the bridge (or a hook's ghost) into a private
room and it joins; the rest of each event is the bridge's business
(`on_event`).

Errors are Matrix errors (`errcode`, `error`), from the homeserver's own
middleware: unknown routes are 404 and wrong methods 405 `M_UNRECOGNIZED`,
as the application-service API asks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from typing import Any

import aiohttp
from aiohttp import web

from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.http import (
    COMPRESS_KEY,
    MAX_BODY_KEY,
    X_FORWARDED_KEY,
    json_response,
    read_json,
    request_middleware,
)

from .config import BridgeSection, BridgesConfig, ConfigError
from .matrix import HomeserverUnavailable, MatrixClient, MatrixRequestError, retrying
from .state import State

logger = logging.getLogger(__name__)

# Transactions can carry many events.
TRANSACTION_BODY_LIMIT = 16 * 1024 * 1024


class AppService:
    """One bridge: its config section, homeserver client, state and HTTP routes."""

    name = "bridge"

    def __init__(self, config: BridgesConfig, section: BridgeSection) -> None:
        if not section.as_token or not section.hs_token:
            where = f"{self.name}.registration" if section.registration else f"{self.name}.as_token"
            raise _missing_tokens(where, section)
        self.config = config
        self.section = section
        self.server_name = config.homeserver.server_name
        self.bot_user_id = f"@{section.sender_localpart}:{self.server_name}"
        self.state = State(config.resolve_path(section.state_path))
        self.session: aiohttp.ClientSession | None = None
        self.client: MatrixClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._joined: dict[tuple[str, str], str] = {}
        # A room's events are handled one after another, in the order sent.
        self._room_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self.client = MatrixClient(
            self.session, self.config.homeserver.url, self.section.as_token or "", self.server_name
        )
        self.state.prune()
        self.spawn(self._set_bot_profile(), "bot profile")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        self.state.close()

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("%s: %s", what, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def _set_bot_profile(self) -> None:
        if self.section.display_name is None and self.section.avatar_url is None:
            return
        await retrying(
            lambda: self.ensure_user(self.bot_user_id, self.section.display_name, self.section.avatar_url),
            self.section.retry,
            "setting the bridge's profile",
        )

    # --------------------------------------------------------------- users

    def is_ours(self, user_id: str) -> bool:
        """The bridge user or one of its ghosts."""
        return user_id == self.bot_user_id

    async def ensure_user(self, user_id: str, display_name: str | None, avatar_url: str | None) -> None:
        """Register the user (once) and set its profile when the config changed it."""
        assert self.client is not None
        profile = {"display_name": display_name, "avatar_url": avatar_url}
        if self.state.profile_is(user_id, profile):
            return
        if user_id != self.bot_user_id:
            await self.client.register(user_id[1:].split(":", 1)[0])
        await self.client.set_profile(user_id, display_name, avatar_url)
        self.state.set_profile(user_id, profile)

    async def ensure_joined(self, room: str, user_id: str) -> str:
        """The room ID of `room` (ID or alias), with `user_id` joined to it.

        A user that may not join on its own (a private room) is invited by
        the bridge user, once that one is in the room: operators invite the
        bridge user, and it brings its ghosts in.
        """
        assert self.client is not None
        cached = self._joined.get((room, user_id))
        if cached is not None:
            return cached
        try:
            room_id = await self.client.join(room, user_id)
        except MatrixRequestError as e:
            if e.status != 403 or user_id == self.bot_user_id:
                raise
            try:
                room_id = await self.client.join(room, self.bot_user_id)
            except MatrixRequestError as bot_error:
                raise MatrixRequestError(
                    bot_error.status,
                    bot_error.errcode,
                    f"cannot join {room}: invite {self.bot_user_id} to it ({bot_error.error})",
                ) from None
            try:
                await self.client.invite(room_id, user_id, as_user=self.bot_user_id)
            except MatrixRequestError as invite_error:
                # Already invited is as good as invited.
                if invite_error.status != 403:
                    raise
            room_id = await self.client.join(room_id, user_id)
        self._joined[(room, user_id)] = room_id
        self._joined[(room_id, user_id)] = room_id
        return room_id

    def forget_joined(self, room: str, user_id: str) -> None:
        for key in [k for k, v in self._joined.items() if k[1] == user_id and room in (k[0], v)]:
            del self._joined[key]

    # --------------------------------------------------------------- HTTP

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[request_middleware], client_max_size=TRANSACTION_BODY_LIMIT)
        app[MAX_BODY_KEY] = TRANSACTION_BODY_LIMIT
        app[X_FORWARDED_KEY] = False
        app[COMPRESS_KEY] = False
        for prefix in ("/_matrix/app/v1", ""):
            app.router.add_put(prefix + "/transactions/{txnId}", self._transaction)
            app.router.add_get(prefix + "/users/{userId}", self._query_user)
            app.router.add_get(prefix + "/rooms/{roomAlias}", self._query_room)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        app.router.add_get("/health", self._health)
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        """Routes of the bridge itself."""

    def _check_hs_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        token = None
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                token = None
        query_token = request.query.get("access_token")
        if token is None and query_token is None:
            raise MatrixError(401, "M_UNAUTHORIZED", "Missing the homeserver's hs_token")
        expected = (self.section.hs_token or "").encode()
        for given in (token, query_token):
            if given is not None and not hmac.compare_digest(given.strip().encode(), expected):
                raise forbidden("Wrong hs_token")

    async def _transaction(self, request: web.Request) -> web.Response:
        self._check_hs_token(request)
        body = await read_json(request)
        events = body.get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise bad_json("events: expected an array of events")
        txn_id = request.match_info["txnId"]
        if self.state.first_seen(txn_id):
            for event in events:
                self.spawn(self._handle(event), f"event {event.get('event_id')}")
        return json_response({})

    async def _handle(self, event: dict[str, Any]) -> None:
        room_id = event.get("room_id")
        if not isinstance(room_id, str):
            return
        lock = self._room_locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            await self._handle_in_order(event)

    async def _handle_in_order(self, event: dict[str, Any]) -> None:
        try:
            if (
                event.get("type") == "m.room.member"
                and isinstance(event.get("state_key"), str)
                and self.is_ours(event["state_key"])
                and isinstance(event.get("content"), dict)
                and event["content"].get("membership") == "invite"
            ):
                await self._accept_invite(event["room_id"], event["state_key"])
            elif isinstance(event.get("sender"), str) and not self.is_ours(event["sender"]):
                await self.on_event(event)
        except (MatrixRequestError, HomeserverUnavailable) as e:
            logger.warning("event %s in %s: %s", event.get("event_id"), event.get("room_id"), e)

    async def _accept_invite(self, room_id: str, user_id: str) -> None:
        assert self.client is not None
        self.forget_joined(room_id, user_id)
        if user_id != self.bot_user_id:
            await self.ensure_user(user_id, *self.profile_of(user_id))
        await retrying(lambda: self.client.join(room_id, user_id), self.section.retry, f"joining {room_id}", attempts=8)
        logger.info("%s joined %s on invitation", user_id, room_id)

    def profile_of(self, user_id: str) -> tuple[str | None, str | None]:
        """(display name, avatar) a ghost of the bridge should have."""
        return None, None

    async def on_event(self, event: dict[str, Any]) -> None:
        """An event from someone else in one of the bridge's rooms."""

    async def _query_user(self, request: web.Request) -> web.Response:
        self._check_hs_token(request)
        user_id = request.match_info["userId"]
        if user_id == self.bot_user_id or not self.is_ours(user_id):
            raise not_found("No such user")
        display_name, avatar_url = self.profile_of(user_id)
        if display_name is None:
            raise not_found("No such user")
        # The homeserver asks before an invite to a ghost that does not exist
        # yet: create it, so an operator can invite a hook before it posts.
        try:
            await self.ensure_user(user_id, display_name, avatar_url)
        except (MatrixRequestError, HomeserverUnavailable) as e:
            logger.warning("creating %s: %s", user_id, e)
            raise MatrixError(503, "M_UNKNOWN", f"cannot create {user_id} now") from None
        return json_response({})

    async def _query_room(self, request: web.Request) -> web.Response:
        self._check_hs_token(request)
        raise not_found("No such room alias")

    async def _ping(self, request: web.Request) -> web.Response:
        self._check_hs_token(request)
        await read_json(request, allow_empty=True)
        return json_response({})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")


def _missing_tokens(where: str, section: BridgeSection) -> ConfigError:
    if section.registration:
        return ConfigError(
            f"{where}: {section.registration} does not exist yet; write it with"
            " `python3 -m appservices.bridges generate-registration` and add it to the homeserver's"
            " app_service_config_files"
        )
    return ConfigError(f"{where}: give `registration` (a registration file) or `as_token` and `hs_token`")



async def serve(bridge: AppService) -> None:
    """Run a bridge until SIGINT/SIGTERM."""
    runner = web.AppRunner(bridge.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    listen = bridge.section.listen
    await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
    await bridge.start()
    logger.info("%s bridge listening on http://%s:%s as %s", bridge.name, listen.host, listen.port, bridge.bot_user_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()
        await bridge.stop()
