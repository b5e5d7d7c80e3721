"""Account life cycle: registration, login sessions, refresh, passwords, devices.

The API modules parse requests and call these methods; everything that must
change together (a user, its profile, its first device and token, the use
of a registration token) is written in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from storage import Storage
from storage.devices import DeviceStore
from storage.engines import Transaction, is_unique_violation
from storage.key_backup import KeyBackupStore
from storage.registration import RegistrationStore
from storage.uia import UIASession, UIAStore
from storage.users import UserStore

from ..config import Config
from ..errors import MatrixError, forbidden
from ..ids import check_new_localpart, split_user_id, user_id
from ..util import cancel_task, hash_token, now_ms, random_device_id, random_token
from .passwords import PasswordHasher
from .uia import DUMMY, PASSWORD, REGISTRATION_TOKEN, SESSION_LIFETIME_MS, UserInteractiveAuth

logger = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 512
MAX_DEVICE_ID_LENGTH = 255
MAX_DISPLAY_NAME_LENGTH = 256
UIA_CLEANUP_SECONDS = 3600
# Where a UIA session keeps the hash of the new password its request sets.
NEW_PASSWORD_HASH = "new_password_hash"
# Registration tokens: the opaque identifier grammar, at most 64 characters.
REGISTRATION_TOKEN_GRAMMAR = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


@dataclass(frozen=True)
class Session:
    """The tokens handed to a client after login or registration."""

    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None
    expires_in_ms: int | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "access_token": self.access_token,
            "device_id": self.device_id,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        if self.expires_in_ms is not None:
            body["expires_in_ms"] = self.expires_in_ms
        return body


def _after(now: int, lifetime: int | None) -> int | None:
    return None if lifetime is None else now + lifetime


def _earliest(*times: int | None) -> int | None:
    """The earliest of the given expiry times; None if none is set."""
    return min((t for t in times if t is not None), default=None)


def check_password_length(password: str) -> None:
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(400, "M_BAD_JSON", f"Password may not be longer than {MAX_PASSWORD_LENGTH} characters")


def check_device_id(device_id: str) -> None:
    if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", "device_id must be 1 to 255 characters")


class Accounts:
    def __init__(self, config: Config, storage: Storage, uia: UserInteractiveAuth) -> None:
        self.config = config
        self.storage = storage
        self.uia = uia
        self.hasher = PasswordHasher(config.bcrypt_rounds, config.password_config.pepper)
        uia.register_stage(REGISTRATION_TOKEN, self._check_registration_token_stage)
        uia.register_stage(PASSWORD, self._check_password_stage)
        self._cleanup_task: asyncio.Task | None = None
        # Awaited with (user_ids, device_lists position) when devices are deleted.
        self.device_listeners: list[Callable[[Collection[str], int], Awaitable[None]]] = []
        # Awaited with the user ID once an account is deactivated (it leaves its rooms).
        self.deactivation_listeners: list[Callable[[str], Awaitable[None]]] = []
        # Hook (the application services): raises M_EXCLUSIVE for a user ID
        # that may not be registered (by the application service given, or by
        # anyone else when None).
        self.check_user_namespace: Callable[[str, str | None], None] | None = None

    # ------------------------------------------------------------ user IDs

    def qualify(self, localpart: str) -> str:
        return user_id(localpart, self.config.server_name)

    def is_mine(self, uid: str) -> bool:
        parts = split_user_id(uid)
        return parts is not None and parts[1] == self.config.server_name

    def resolve_login_user(self, user: str) -> str | None:
        """A login identifier (localpart or full ID) as one of our user IDs, lower-cased."""
        if user.startswith("@"):
            parts = split_user_id(user)
            if parts is None or parts[1] != self.config.server_name:
                return None
            return self.qualify(parts[0].lower())
        return self.qualify(user.lower())

    async def check_username_available(self, localpart: str, *, appservice_id: str | None = None) -> str:
        """The full user ID for a new account (registered by the application service
        `appservice_id`, if given), or M_INVALID_USERNAME / M_EXCLUSIVE / M_USER_IN_USE."""
        localpart = localpart.lower()
        check_new_localpart(localpart, self.config.server_name, appservice=appservice_id is not None)
        uid = self.qualify(localpart)
        if self.check_user_namespace is not None:
            self.check_user_namespace(uid, appservice_id)
        if await self.storage.users.user_exists(uid):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken")
        return uid

    # ------------------------------------------------------------ sessions

    async def _create_session_txn(
        self,
        txn: Transaction,
        uid: str,
        device_id: str | None,
        initial_display_name: str | None,
        want_refresh: bool,
        now: int,
    ) -> Session:
        device_id = device_id or random_device_id()
        if not await DeviceStore.upsert_device_txn(txn, uid, device_id, initial_display_name, now):
            # Signing in to an existing device replaces its earlier tokens
            # (spec: "Relationship between access tokens and devices").
            await DeviceStore.delete_device_tokens_txn(txn, uid, device_id)
        access_token = f"mat_{random_token(32)}"
        refresh_token = None
        session_end = _after(now, self.config.session_lifetime)
        if want_refresh:
            refresh_token = f"mar_{random_token(32)}"
            await DeviceStore.insert_refresh_token_txn(
                txn, hash_token(refresh_token), uid, device_id, now, session_end
            )
            expires_ts = _earliest(
                now + self.config.refreshable_access_token_lifetime, session_end
            )
        else:
            expires_ts = _earliest(
                _after(now, self.config.nonrefreshable_access_token_lifetime), session_end
            )
        await DeviceStore.insert_access_token_txn(
            txn,
            hash_token(access_token),
            uid,
            device_id,
            now,
            expires_ts,
            hash_token(refresh_token) if refresh_token else None,
        )
        return Session(
            uid, device_id, access_token, refresh_token, expires_ts - now if expires_ts else None
        )

    async def create_session(
        self,
        uid: str,
        device_id: str | None = None,
        initial_display_name: str | None = None,
        want_refresh: bool = False,
    ) -> Session:
        return await self.storage.db.run(
            "create_session",
            self._create_session_txn,
            uid,
            device_id,
            initial_display_name,
            want_refresh,
            now_ms(),
        )

    # -------------------------------------------------------- registration

    async def register(
        self,
        localpart: str | None,
        password_hash: str | None,
        *,
        admin: bool = False,
        user_type: str | None = None,
        displayname: str | None = None,
        device_id: str | None = None,
        initial_device_display_name: str | None = None,
        inhibit_login: bool = False,
        want_refresh: bool = False,
        registration_token: str | None = None,
        uia_session: UIASession | None = None,
        appservice_id: str | None = None,
    ) -> tuple[str, Session | None]:
        """Create an account (and, unless inhibited, its first session)."""
        if localpart is None:
            localpart = await self._generate_localpart()
        localpart = localpart.lower()
        uid = await self.check_username_available(localpart, appservice_id=appservice_id)
        now = now_ms()

        async def _fn(txn: Transaction) -> Session | None:
            await UserStore.insert_user_txn(
                txn,
                uid,
                password_hash,
                now,
                admin=admin,
                user_type=user_type,
                displayname=displayname if displayname is not None else localpart,
            )
            if registration_token is not None:
                await RegistrationStore.complete_token_txn(txn, registration_token)
            if uia_session is not None:
                await UIAStore.delete_session_txn(txn, uia_session.session_id)
            if inhibit_login:
                return None
            return await self._create_session_txn(
                txn, uid, device_id, initial_device_display_name, want_refresh, now
            )

        try:
            session = await self.storage.db.run("register", _fn)
        except Exception as exc:
            if is_unique_violation(exc):
                raise MatrixError(400, "M_USER_IN_USE", "User ID already taken") from None
            raise
        logger.info("registered %s%s", uid, " (admin)" if admin else "")
        return uid, session

    async def register_guest(
        self, initial_device_display_name: str | None, want_refresh: bool
    ) -> tuple[str, Session]:
        """A guest account: a numeric user ID, no password, one session."""
        now = now_ms()

        async def _fn(txn: Transaction, uid: str) -> Session:
            await UserStore.insert_user_txn(txn, uid, None, now, is_guest=True)
            return await self._create_session_txn(
                txn, uid, None, initial_device_display_name, want_refresh, now
            )

        for _ in range(10):
            uid = self.qualify(str(secrets.randbelow(10**12)))
            try:
                return uid, await self.storage.db.run("register_guest", _fn, uid)
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
        raise MatrixError(500, "M_UNKNOWN", "Could not generate a guest user ID")

    async def _generate_localpart(self) -> str:
        for _ in range(10):
            candidate = "u" + "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(11))
            if not await self.storage.users.user_exists(self.qualify(candidate)):
                return candidate
        raise MatrixError(500, "M_UNKNOWN", "Could not generate a user ID")

    async def _check_registration_token_stage(self, auth: dict[str, Any], session: UIASession) -> str:
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            raise MatrixError(401, "M_MISSING_PARAM", "Missing registration token")
        if session.serverdict.get("registration_token") == token:
            return token  # already reserved by this session
        # A token outside the grammar cannot exist; it is not even looked up.
        if not REGISTRATION_TOKEN_GRAMMAR.match(token) or not await self.storage.db.run(
            "reserve_registration_token", RegistrationStore.reserve_token_txn, token, now_ms()
        ):
            raise MatrixError(401, "M_FORBIDDEN", "Invalid registration token")
        await self.storage.uia.set_server_value(session.session_id, "registration_token", token)
        session.serverdict["registration_token"] = token
        return token

    def start(self) -> None:
        self._cleanup_task = asyncio.create_task(self._cleanup_loop())

    async def stop(self) -> None:
        await cancel_task(self._cleanup_task)

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.expire_uia_sessions()
            except Exception:
                logger.exception("failed to expire UIA sessions")
            await asyncio.sleep(UIA_CLEANUP_SECONDS)

    async def expire_uia_sessions(self) -> None:
        """Delete stale UIA sessions, giving back registration tokens they reserved."""
        for session in await self.storage.uia.expired_sessions(now_ms() - SESSION_LIFETIME_MS):
            token = session.serverdict.get("registration_token")

            async def _fn(txn: Transaction, session_id: str = session.session_id) -> None:
                if token is not None:
                    await RegistrationStore.release_token_txn(txn, token)
                await UIAStore.delete_session_txn(txn, session_id)

            await self.storage.db.run("expire_uia_session", _fn)

    # --------------------------------------------------------------- login

    async def check_password(self, uid: str, password: str) -> bool:
        user = await self.storage.users.get_user(uid)
        if user is None or user.deactivated:
            # Spend the same time as a real check, so timing does not reveal
            # which user IDs exist.
            await self.hasher.hash(password)
            return False
        return await self.hasher.check(password, user.password_hash)

    async def _check_password_stage(self, auth: dict[str, Any], session: UIASession) -> str:
        """m.login.password inside UIA: must be the requester's own password."""
        expected = session.serverdict.get("user_id")
        password = auth.get("password")
        if not isinstance(password, str):
            raise MatrixError(401, "M_MISSING_PARAM", "Missing password")
        identifier = auth.get("identifier")
        claimed = None
        if isinstance(identifier, dict) and identifier.get("type") == "m.id.user":
            claimed = identifier.get("user")
        elif isinstance(auth.get("user"), str):
            claimed = auth["user"]
        if claimed is not None and (
            not isinstance(claimed, str) or self.resolve_login_user(claimed) != expected
        ):
            raise forbidden("You can only authenticate as yourself")
        if expected is None or not await self.check_password(expected, password):
            raise forbidden("Invalid password")
        return expected

    # --------------------------------------------------------- refreshing

    async def refresh(self, refresh_token: str) -> Session:
        old_hash = hash_token(refresh_token)
        now = now_ms()

        async def _fn(txn: Transaction) -> Session:
            info = await DeviceStore.get_refresh_token_txn(txn, old_hash)
            if info is None or info.next_used:
                raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown refresh token", soft_logout=False)
            lifetime = self.config.refresh_token_lifetime
            if lifetime is not None and info.created_ts + lifetime <= now:
                raise MatrixError(
                    401, "M_UNKNOWN_TOKEN", "Refresh token has expired", soft_logout=False
                )
            if info.session_expires_ts is not None and info.session_expires_ts <= now:
                raise MatrixError(
                    401, "M_UNKNOWN_TOKEN", "The session has expired; sign in again",
                    soft_logout=False,
                )
            # Using this token retires the one it replaced.
            await DeviceStore.revoke_predecessors_txn(txn, old_hash)
            if info.next_token_hash is not None:
                # Refreshed again before its successor was used (the client
                # lost the response): that unused successor is abandoned.
                await DeviceStore.delete_refresh_token_txn(txn, info.next_token_hash)
            new_refresh = f"mar_{random_token(32)}"
            new_hash = hash_token(new_refresh)
            await DeviceStore.insert_refresh_token_txn(
                txn, new_hash, info.user_id, info.device_id, now, info.session_expires_ts
            )
            await DeviceStore.set_next_refresh_token_txn(txn, old_hash, new_hash)
            access_token = f"mat_{random_token(32)}"
            expires_ts = _earliest(
                now + self.config.refreshable_access_token_lifetime, info.session_expires_ts
            )
            assert expires_ts is not None
            await DeviceStore.insert_access_token_txn(
                txn, hash_token(access_token), info.user_id, info.device_id, now, expires_ts, new_hash
            )
            return Session(
                info.user_id, info.device_id, access_token, new_refresh, expires_ts - now
            )

        return await self.storage.db.run("refresh", _fn)

    # ------------------------------------------------------ devices, logout

    async def delete_devices(self, uid: str, device_ids: list[str]) -> None:
        position = await self.storage.db.run(
            "delete_devices", DeviceStore.delete_devices_txn, uid, device_ids, read_committed=True
        )
        await self._devices_deleted(uid, position)

    async def logout_all(self, uid: str) -> None:
        async def _fn(txn: Transaction) -> int | None:
            device_ids = await DeviceStore.device_ids_txn(txn, uid)
            return await DeviceStore.delete_devices_txn(txn, uid, device_ids)

        await self._devices_deleted(uid, await self.storage.db.run("logout_all", _fn, read_committed=True))

    async def change_password(
        self, uid: str, password_hash: str, keep_device_id: str | None, logout_devices: bool
    ) -> None:
        async def _fn(txn: Transaction) -> int | None:
            await UserStore.set_password_hash_txn(txn, uid, password_hash)
            if not logout_devices:
                return None
            device_ids = [d for d in await DeviceStore.device_ids_txn(txn, uid) if d != keep_device_id]
            return await DeviceStore.delete_devices_txn(txn, uid, device_ids)

        await self._devices_deleted(uid, await self.storage.db.run("change_password", _fn, read_committed=True))

    async def deactivate(self, uid: str) -> None:
        async def _fn(txn: Transaction) -> int | None:
            await UserStore.deactivate_txn(txn, uid)
            # Encrypted as they are, the room keys of an account no one can use go.
            await KeyBackupStore.delete_all_txn(txn, uid)
            device_ids = await DeviceStore.device_ids_txn(txn, uid)
            return await DeviceStore.delete_devices_txn(txn, uid, device_ids)

        await self._devices_deleted(uid, await self.storage.db.run("deactivate", _fn, read_committed=True))
        for listener in self.deactivation_listeners:
            await listener(uid)
        logger.info("deactivated %s", uid)

    async def _devices_deleted(self, uid: str, position: int | None) -> None:
        """Tell the listeners (the user's contacts' syncs) the devices are gone."""
        if position is None:
            return
        for listener in self.device_listeners:
            await listener((uid,), position)

    # ------------------------------------------------ UIA for the signed-in

    async def new_password_values(self, password: str | None) -> dict[str, str]:
        """UIA `server_values` for a request setting `password`: only its hash is kept."""
        if password is None:
            return {}
        check_password_length(password)
        return {NEW_PASSWORD_HASH: await self.hasher.hash(password)}

    async def reauthenticate(
        self,
        request: Any,
        body: dict[str, Any],
        uid: str,
        server_values: dict[str, Any] | None = None,
    ) -> UIASession:
        """UIA for a signed-in user's sensitive action: their password, if they have one.

        Returns the completed session: its `clientdict` holds the request's
        parameters and its `serverdict` the `server_values` given with this
        or an earlier request (see `UserInteractiveAuth.check`).
        """
        user = await self.storage.users.get_user(uid)
        if user is None:
            raise forbidden("Unknown user")
        flows = [[PASSWORD]] if user.password_hash else [[DUMMY]]
        _completed, _params, session = await self.uia.check(
            request, body, flows, user_id=uid, server_values=server_values
        )
        await self.storage.uia.delete_session(session.session_id)
        return session
