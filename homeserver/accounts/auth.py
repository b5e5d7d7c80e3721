"""Who is making this request: access-token authentication.

Tokens come from `Authorization: Bearer ...` (or the deprecated
`access_token` query parameter). They are looked up by their SHA-256
digest. An expired refreshable token is answered with `soft_logout: true`
so clients refresh instead of signing the person out. An application
service's `as_token` is recognised first, by the `appservice_requester` hook.

Last-seen data (time, IP, user agent) for each device is kept in memory and
written in one batch every few seconds rather than on every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from storage import Storage

from ..errors import MatrixError, forbidden
from ..http import USER_ID
from ..util import cancel_task, hash_token, now_ms

logger = logging.getLogger(__name__)

LAST_SEEN_FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str
    token_hash: str
    is_guest: bool = False
    admin: bool = False
    # Set when an application service's as_token made the request.
    app_service_id: str | None = None
    rate_limited: bool = True


AppserviceRequester = Callable[[str, web.Request], Awaitable["Requester | None"]]


def access_token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(
                401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <access token>'"
            )
        return token.strip()
    return request.query.get("access_token")


class Auth:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._last_seen: dict[tuple[str, str], tuple[int, str | None, str | None]] = {}
        self._flush_task: asyncio.Task | None = None
        # Hook (the application services): the requester an as_token stands
        # for, None if the token is not one; looked up before user tokens.
        self.appservice_requester: AppserviceRequester | None = None

    async def get_requester(
        self, request: web.Request, *, allow_guest: bool = False, allow_expired: bool = False
    ) -> Requester:
        token = access_token_from_request(request)
        if token is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        requester = None
        if self.appservice_requester is not None:
            requester = await self.appservice_requester(token, request)
        if requester is None:
            requester = await self.requester_for_token(token, allow_expired=allow_expired)
        if requester.is_guest and not allow_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed here")
        request[USER_ID] = requester.user_id
        if requester.device_id:
            self._note_seen(requester, request)
        return requester

    async def requester_for_token(self, token: str, *, allow_expired: bool = False) -> Requester:
        token_hash = hash_token(token)
        info = await self.storage.devices.get_access_token(token_hash)
        if info is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        if info.deactivated:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "This account has been deactivated", soft_logout=False)
        if info.expires_ts is not None and info.expires_ts <= now_ms() and not allow_expired:
            raise MatrixError(
                401, "M_UNKNOWN_TOKEN", "Access token has expired", soft_logout=True
            )
        if info.refresh_token_hash is not None and not info.used:
            # The first use of a refreshed token retires the refresh token it replaced.
            await self.storage.devices.mark_access_token_used(token_hash, info.refresh_token_hash)
        return Requester(info.user_id, info.device_id, token_hash, info.is_guest, info.admin)

    async def get_appservice(self, request: web.Request) -> Requester:
        """The requester, who must be an application service (its as_token):
        for what only services may do (m.login.application_service)."""
        requester = await self.get_requester(request)
        if requester.app_service_id is None:
            raise MatrixError(
                401, "M_UNKNOWN_TOKEN", "m.login.application_service needs an application service's as_token"
            )
        return requester

    async def get_admin(self, request: web.Request) -> Requester:
        requester = await self.get_requester(request)
        if not requester.admin:
            raise forbidden("You are not a server admin")
        return requester

    # ------------------------------------------------------------- last seen

    def _note_seen(self, requester: Requester, request: web.Request) -> None:
        self._last_seen[(requester.user_id, requester.device_id)] = (
            now_ms(),
            request.remote,
            request.headers.get("User-Agent"),
        )

    def start(self) -> None:
        self._flush_task = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        await cancel_task(self._flush_task)
        await self.flush_last_seen()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(LAST_SEEN_FLUSH_SECONDS)
            try:
                await self.flush_last_seen()
            except Exception:
                logger.exception("failed to record device last-seen data")

    async def flush_last_seen(self) -> None:
        if not self._last_seen:
            return
        pending, self._last_seen = self._last_seen, {}
        await self.storage.devices.record_last_seen(
            [(u, d, ts, ip, ua) for (u, d), (ts, ip, ua) in pending.items()]
        )
