"""The registered application services, and the answers the core's hooks get.

- `requester_for_token`: an `as_token` authenticates as the service's
  sender, or as a user of its namespace named by `?user_id=` (and one of
  that user's devices by `?device_id=`): spec "Identity assertion".
- `check_user_id` / `check_alias`: exclusive namespaces (M_EXCLUSIVE).
- `query_user` / `query_alias`: asking a service about an unknown user or
  alias of its namespace, which it may create before answering 200.
- `ping`: POST /_matrix/app/v1/ping on behalf of the client-server endpoint.
- `manages_devices` / `create_device`: MSC4190, a service that opted in
  creates its users' devices (PUT /devices/{deviceId}) and deletes them
  without UIA.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from homeserver.accounts.auth import Requester
from homeserver.accounts.service import check_device_id
from homeserver.errors import MatrixError, forbidden
from homeserver.util import hash_token, now_ms
from storage import Storage
from storage.devices import DeviceStore

from .registration import ApplicationService
from .sender import TransactionSender

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)

# The unstable name of `device_id` masquerading (MSC3202), which bridges still use.
DEVICE_ID_UNSTABLE = "org.matrix.msc3202.device_id"


def exclusive(msg: str) -> MatrixError:
    return MatrixError(400, "M_EXCLUSIVE", msg)


class ApplicationServices:
    # Seconds; tests shorten them.
    query_timeout = 10.0
    ping_timeout = 10.0

    def __init__(self, hs: HomeServer, services: list[ApplicationService]) -> None:
        self.services = services
        self.storage: Storage = hs.storage
        self.accounts = hs.accounts
        self._by_token = {s.as_token: s for s in services}
        self._by_id = {s.id: s for s in services}
        self.sender = TransactionSender(hs, [s for s in services if s.url is not None])
        self._session: aiohttp.ClientSession | None = None

    def attach(self, hs: HomeServer) -> None:
        """Plug into the core's hook points (none at all without application services)."""
        if not self.services:
            return
        hs.auth.appservice_requester = self.requester_for_token
        hs.accounts.check_user_namespace = self.check_user_id
        hs.directory.check_alias_namespace = self.check_alias
        hs.directory.query_alias = self.query_alias
        hs.rooms.query_user = self.query_user
        hs.room_writer.listeners.append(self.sender.on_events)
        hs.notifier.publishers.append(self.sender.on_stream_change)

    def get(self, appservice_id: str | None) -> ApplicationService | None:
        return self._by_id.get(appservice_id) if appservice_id is not None else None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for service in self.services:
            logger.info(
                "application service %s (%s): sender %s, url %s",
                service.id, service.source, service.sender, service.url,
            )
            await self._ensure_sender_user(service)
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ensure_sender_user(self, service: ApplicationService) -> None:
        if await self.storage.users.user_exists(service.sender):
            return
        try:
            await self.accounts.register(
                service.sender.partition(":")[0][1:], None,
                appservice_id=service.id, inhibit_login=True,
            )
        except MatrixError as err:
            if err.errcode != "M_USER_IN_USE":  # another process just made it
                raise

    # ------------------------------------------------------ authentication

    async def requester_for_token(self, token: str, request: web.Request) -> Requester | None:
        """The requester an `as_token` stands for; None if `token` is no service's."""
        service = self._by_token.get(token)
        if service is None:
            return None
        uid = request.query.get("user_id") or service.sender
        # Not required to exist yet: bridges register their users while
        # masquerading as them (as Synapse allows).
        if not service.is_interested_in_user(uid):
            raise forbidden(f"Application service cannot masquerade as this user ({uid})")
        device_id = request.query.get("device_id") or request.query.get(DEVICE_ID_UNSTABLE)
        if device_id is not None and await self.storage.devices.get_device(uid, device_id) is None:
            raise MatrixError(
                400, "M_UNKNOWN_DEVICE", f"Device {device_id} does not belong to {uid}"
            )
        return Requester(
            uid,
            device_id or "",
            hash_token(token),
            app_service_id=service.id,
            rate_limited=service.rate_limited,
        )

    # -------------------------------------------------- exclusive namespaces

    def check_user_id(self, uid: str, appservice_id: str | None) -> None:
        """May `uid` be registered (by `appservice_id`, or by anyone else if None)?"""
        service = self.get(appservice_id)
        if service is not None and not service.is_interested_in_user(uid):
            raise exclusive("Invalid user localpart for this application service")
        if any(s.is_exclusive_user(uid) for s in self.services if s is not service):
            raise exclusive("This user ID is reserved by an application service")

    def check_alias(self, alias: str, appservice_id: str | None) -> None:
        """May `alias` be created or deleted (by `appservice_id`, or anyone else if None)?"""
        service = self.get(appservice_id)
        if service is not None and not service.is_interested_in_alias(alias):
            raise exclusive("This application service has not reserved this kind of alias")
        if any(s.is_exclusive_alias(alias) for s in self.services if s is not service):
            raise exclusive("This alias is reserved by an application service")

    # ---------------------------------------------------- device management

    def manages_devices(self, requester: Requester) -> bool:
        """Whether the request comes from a service that opted into MSC4190."""
        service = self.get(requester.app_service_id)
        return service is not None and service.device_management

    async def create_device(self, requester: Requester, device_id: str, display_name: str | None) -> bool:
        """MSC4190: the requester's device `device_id`, created (without any
        access token: the service masquerades as it) if missing. True if new."""
        check_device_id(device_id)
        if not await self.storage.users.user_exists(requester.user_id):
            raise forbidden(f"Application service has not registered this user ({requester.user_id})")
        return await self.storage.db.run(
            "appservice_create_device",
            DeviceStore.upsert_device_txn,
            requester.user_id,
            device_id,
            display_name,
            now_ms(),
        )

    # ------------------------------------------------------------- queries

    async def query_user(self, uid: str) -> bool:
        """Whether `uid` exists, after asking the services whose namespace holds it."""
        candidates = [s for s in self.services if s.url and s.is_interested_in_user(uid)]
        if not candidates:
            return False
        if await self.storage.users.user_exists(uid):
            return True
        for service in candidates:
            if await self._query(service, "users", uid) and await self.storage.users.user_exists(uid):
                return True
        return False

    async def query_alias(self, alias: str) -> bool:
        """Whether the services whose namespace holds `alias` created it when asked."""
        for service in self.services:
            if service.url and service.is_interested_in_alias(alias):
                if await self._query(service, "rooms", alias):
                    return True
        return False

    async def _query(self, service: ApplicationService, kind: str, value: str) -> bool:
        url = URL(f"{service.url}/_matrix/app/v1/{kind}/{quote(value, safe='')}", encoded=True)
        try:
            async with self.session.get(
                url,
                headers=_auth(service),
                timeout=aiohttp.ClientTimeout(total=self.query_timeout),
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.info("query of %s about %s failed: %s", service.id, value, exc)
            return False

    # ---------------------------------------------------------------- ping

    async def ping(self, service: ApplicationService, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping; the round trip in milliseconds, or the spec's errors."""
        if service.url is None:
            raise MatrixError(400, "M_URL_NOT_SET", "Application service doesn't have a URL configured")
        body: dict[str, Any] = {} if transaction_id is None else {"transaction_id": transaction_id}
        start = time.monotonic()
        try:
            async with self.session.post(
                f"{service.url}/_matrix/app/v1/ping",
                json=body,
                headers=_auth(service),
                timeout=aiohttp.ClientTimeout(total=self.ping_timeout),
            ) as resp:
                text = await resp.text(errors="replace")
        except TimeoutError:
            raise MatrixError(
                504, "M_CONNECTION_TIMEOUT", "Connection to application service timed out"
            ) from None
        except aiohttp.ClientError as exc:
            raise MatrixError(
                502, "M_CONNECTION_FAILED", f"Connection to application service failed: {exc}"
            ) from None
        if resp.status // 100 != 2:
            error = MatrixError(502, "M_BAD_STATUS", f"Ping returned status {resp.status}")
            # `status` is also MatrixError's own parameter: set as extra fields afterwards.
            error.extra.update(status=resp.status, body=text)
            raise error
        return int((time.monotonic() - start) * 1000)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "application services are not started"
        return self._session


def _auth(service: ApplicationService) -> dict[str, str]:
    """Spec: the homeserver authenticates to the service with its hs_token."""
    return {"Authorization": f"Bearer {service.hs_token}"}
