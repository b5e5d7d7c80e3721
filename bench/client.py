"""A small Matrix client for the benchmark: the same requests against every server.

Only what the workloads need, over one aiohttp session with no connection
limit (many long-polling /sync requests are open at once).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from homeserver.api.admin import registration_mac

CLIENT = "/_matrix/client/v3"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


class RequestFailed(Exception):
    """A request the workload needed answered with an error status."""


@dataclass(frozen=True)
class User:
    user_id: str
    access_token: str


class MatrixClient:
    """Requests to one server; every method raises RequestFailed on an error status."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._txn = itertools.count()

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One JSON request; returns the decoded body of a 2xx answer."""
        assert self._session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.request(
            method, self.base_url + path, json=body, headers=headers, params=params
        ) as response:
            raw = await response.read()
            if response.status >= 300:
                raise RequestFailed(f"{method} {path}: HTTP {response.status} {raw[:300]!r}")
            return json.loads(raw) if raw else {}

    # ------------------------------------------------------------ accounts

    async def register(self, shared_secret: str, username: str, password: str) -> User:
        """Shared-secret registration (/_synapse/admin/v1/register), as both servers offer it."""
        path = "/_synapse/admin/v1/register"
        nonce = (await self.request("GET", path))["nonce"]
        mac = registration_mac(shared_secret, nonce, username, password, False, None)
        body = {"nonce": nonce, "username": username, "password": password,
                "admin": False, "mac": mac}
        result = await self.request("POST", path, body)
        return User(result["user_id"], result["access_token"])

    async def login(self, user: User, password: str) -> User:
        """A password login: a new device, with an access token of its own."""
        body = {"type": "m.login.password", "password": password,
                "identifier": {"type": "m.id.user", "user": user.user_id}}
        result = await self.request("POST", f"{CLIENT}/login", body)
        return User(result["user_id"], result["access_token"])

    # --------------------------------------------------------------- rooms

    async def create_room(self, user: User, *, room_version: str,
                          invite: Sequence[str] = ()) -> str:
        body: dict[str, Any] = {"preset": "private_chat", "room_version": room_version}
        if invite:
            body["invite"] = list(invite)
        return (await self.request("POST", f"{CLIENT}/createRoom", body,
                                   token=user.access_token))["room_id"]

    async def invite(self, user: User, room_id: str, invitee: str) -> None:
        await self.request("POST", f"{CLIENT}/rooms/{quote(room_id)}/invite",
                           {"user_id": invitee}, token=user.access_token)

    async def join(self, user: User, room_id: str) -> None:
        await self.request("POST", f"{CLIENT}/rooms/{quote(room_id)}/join", {},
                           token=user.access_token)

    async def send_text(self, user: User, room_id: str, body: str,
                        extra: dict[str, Any] | None = None) -> str:
        """Send an m.room.message; returns the event ID."""
        txn = f"b{time.monotonic_ns()}.{next(self._txn)}"
        content = {"msgtype": "m.text", "body": body, **(extra or {})}
        path = f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{txn}"
        return (await self.request("PUT", path, content, token=user.access_token))["event_id"]

    async def messages(self, user: User, room_id: str, *, limit: int,
                       from_token: str | None = None) -> dict[str, Any]:
        """One page of GET /rooms/{roomId}/messages backwards."""
        params = {"dir": "b", "limit": str(limit)}
        if from_token is not None:
            params["from"] = from_token
        return await self.request("GET", f"{CLIENT}/rooms/{quote(room_id)}/messages",
                                  token=user.access_token, params=params)

    # ---------------------------------------------------------------- sync

    async def sync(self, user: User, *, since: str | None = None,
                   timeout_ms: int = 0) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms)}
        if since is not None:
            params["since"] = since
        return await self.request("GET", f"{CLIENT}/sync", token=user.access_token,
                                  params=params)

    async def sliding_sync(self, user: User, body: dict[str, Any], *, pos: str | None = None,
                           timeout_ms: int = 0) -> dict[str, Any]:
        """Simplified Sliding Sync (MSC4186) as Element X sends it today."""
        params = {"timeout": str(timeout_ms)}
        if pos is not None:
            params["pos"] = pos
        return await self.request("POST", SLIDING_SYNC, body, token=user.access_token, params=params)

    async def versions(self) -> dict[str, Any]:
        return await self.request("GET", "/_matrix/client/versions")
