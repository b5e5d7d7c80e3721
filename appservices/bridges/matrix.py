"""The bridges' side of the client-server API: an application service's HTTP client.

Every request carries the AS's `as_token`; `user_id=` makes it act as one of
its users (a hook's ghost). Failures come in two kinds: `MatrixRequestError`
is the homeserver saying no (a 4xx: retrying will not help), while
`HomeserverUnavailable` (no connection, timeout, 5xx, 429) is worth
retrying, which `retrying` does with exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from .config import Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")
V3 = "/_matrix/client/v3"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


class MatrixRequestError(Exception):
    """The homeserver refused the request (a 4xx other than 429)."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error


class HomeserverUnavailable(Exception):
    """The homeserver could not answer now: worth retrying."""

    def __init__(self, reason: str, retry_after_ms: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after_ms = retry_after_ms


def q(identifier: str) -> str:
    return quote(identifier, safe="")


def without_nul(value: Any) -> Any:
    """JSON with NUL removed from its strings. NUL shows nothing, and a homeserver may fail
    on it (PostgreSQL cannot store it) every time: an outbox would retry it forever."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


class MatrixClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, as_token: str, server_name: str) -> None:
        self.session = session
        self.base_url = URL(base_url)
        self.as_token = as_token
        self.server_name = server_name

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        user_id: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        query = dict(params or {})
        if user_id is not None:
            query["user_id"] = user_id
        try:
            # `path` is encoded already (see `q`): sent as it is, so an ID from an event
            # (a reply's event_id "..") stays one path segment.
            async with self.session.request(
                method,
                self.base_url.with_path(self.base_url.raw_path.rstrip("/") + path, encoded=True),
                json=body,
                params=query,
                headers={"Authorization": f"Bearer {self.as_token}"},
                timeout=REQUEST_TIMEOUT,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise HomeserverUnavailable(f"{method} {path}: {type(e).__name__}: {e}") from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status == 429:
            retry = data.get("retry_after_ms")
            raise HomeserverUnavailable(f"{method} {path}: rate limited", retry if isinstance(retry, int) else None)
        if status >= 500:
            raise HomeserverUnavailable(f"{method} {path}: HTTP {status} {data.get('errcode', '')}".rstrip())
        if status >= 400:
            raise MatrixRequestError(status, str(data.get("errcode", "M_UNKNOWN")), str(data.get("error", "")))
        return data

    # ---------------------------------------------------------------- calls

    async def register(self, localpart: str) -> None:
        """Create one of the AS's users; one that exists already is fine."""
        try:
            await self.request(
                "POST",
                f"{V3}/register",
                {"type": "m.login.application_service", "username": localpart, "inhibit_login": True},
            )
        except MatrixRequestError as e:
            if e.errcode != "M_USER_IN_USE":
                raise

    async def set_profile(self, user_id: str, display_name: str | None, avatar_url: str | None) -> None:
        if display_name is not None:
            await self.request(
                "PUT", f"{V3}/profile/{q(user_id)}/displayname", {"displayname": display_name}, user_id=user_id
            )
        if avatar_url is not None:
            await self.request(
                "PUT", f"{V3}/profile/{q(user_id)}/avatar_url", {"avatar_url": avatar_url}, user_id=user_id
            )

    async def join(self, room: str, user_id: str) -> str:
        """Join a room by ID or alias; returns the room ID."""
        data = await self.request("POST", f"{V3}/join/{q(room)}", {}, user_id=user_id)
        room_id = data.get("room_id")
        if not isinstance(room_id, str):
            raise HomeserverUnavailable(f"join {room}: the answer has no room_id")
        return room_id

    async def invite(self, room_id: str, user_id: str, *, as_user: str) -> None:
        await self.request("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": user_id}, user_id=as_user)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str, *, user_id: str) -> str:
        """Send an event; the same txn_id (per user) sends it at most once however often retried."""
        data = await self.request(
            "PUT", f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id)}", without_nul(content), user_id=user_id
        )
        event_id = data.get("event_id")
        if not isinstance(event_id, str):
            raise HomeserverUnavailable(f"send to {room_id}: the answer has no event_id")
        return event_id

    async def get_event(self, room_id: str, event_id: str, *, user_id: str) -> dict[str, Any]:
        return await self.request("GET", f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}", user_id=user_id)


async def retrying(
    call: Callable[[], Awaitable[T]], backoff: Backoff, what: str, *, attempts: int | None = None
) -> T:
    """`call()` until it does not raise HomeserverUnavailable (at most `attempts` times)."""
    delay = backoff.initial / 1000
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except HomeserverUnavailable as e:
            if attempts is not None and attempt >= attempts:
                raise
            wait = max(delay, (e.retry_after_ms or 0) / 1000)
            logger.warning("%s: homeserver unavailable (%s); retrying in %.1fs", what, e, wait)
            await asyncio.sleep(wait * random.uniform(0.9, 1.1))
            delay = min(delay * 2, backoff.max / 1000)
