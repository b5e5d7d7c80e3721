"""Administering user accounts: the admin API's user endpoints and the
`homeserver users` command both call this, so the rules hold for both.

- Only local users are administered (400 for a remote user ID, 404 for an
  unknown local one).
- An admin may not demote themselves (as Synapse refuses); the command line
  acts for the operator, not for a user, and may.
- Passwords are hashed with the server's bcrypt settings and changed through
  `Accounts.change_password`; deactivation is `Accounts.deactivate` (devices,
  tokens, keys, backups go; contacts hear of the device changes). Tokens are
  looked up in the database on every request, so both take effect at once.
- Reactivating an account needs a password: deactivation wiped its hash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from storage import Storage
from storage.users import User, UserSummary

from ..accounts.service import Accounts, check_password_length
from ..config import Config
from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..ids import split_user_id
from ..util import hash_token, now_ms

logger = logging.getLogger(__name__)

# The user types Synapse accepts (UserTypes.ALL_USER_TYPES).
USER_TYPES = ("bot", "support")
# The device a token from "login as a user" signs in with.
ADMIN_LOGIN_DEVICE_NAME = "Admin API login"


@dataclass
class UserChanges:
    """What `PUT /_synapse/admin/v2/users/<user_id>` asks for; None leaves a field as it is."""

    password: str | None = None
    logout_devices: bool = True
    # "" removes the display name or avatar.
    displayname: str | None = None
    avatar_url: str | None = None
    admin: bool | None = None
    deactivated: bool | None = None
    change_user_type: bool = False
    user_type: str | None = None


class AdminUsers:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        accounts: Accounts,
        profile_changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.accounts = accounts
        # Carries a changed display name or avatar into the user's rooms.
        self.profile_changed = profile_changed

    # ---------------------------------------------------------------- lookup

    def check_user_id(self, uid: str) -> None:
        if split_user_id(uid) is None:
            raise invalid_param(f"Invalid user ID: {uid!r}")

    def check_local(self, uid: str, message: str = "Can only look up local users") -> None:
        self.check_user_id(uid)
        if not self.accounts.is_mine(uid):
            raise invalid_param(message)

    async def get_user(self, uid: str, message: str = "Can only look up local users") -> User:
        """The local user `uid`; `message` is the error for a remote one."""
        self.check_local(uid, message)
        user = await self.storage.users.get_user(uid)
        if user is None:
            raise not_found("User not found")
        return user

    async def summary(self, uid: str) -> UserSummary:
        self.check_local(uid)
        found = await self.storage.users.get_user_summary(uid)
        if found is None:
            raise not_found("User not found")
        return found

    async def joined_rooms(self, uid: str) -> list[str]:
        """The rooms `uid` is joined to; remote users' as far as this server knows."""
        self.check_user_id(uid)
        if self.accounts.is_mine(uid) and not await self.storage.users.user_exists(uid):
            raise not_found("User not found")
        return [m.room_id for m in await self.storage.events.rooms_for_user(uid)]

    async def whois(self, uid: str) -> dict[str, Any]:
        """The user's devices and where each was last seen, in the shape of
        the client-server API's `GET /admin/whois/{userId}`."""
        await self.get_user(uid, "Can only whois a local user")
        devices = {}
        for device in await self.storage.devices.get_devices(uid):
            connections = []
            if device.last_seen_ts is not None:
                connections.append(
                    {
                        "ip": device.last_seen_ip,
                        "last_seen": device.last_seen_ts,
                        "user_agent": device.last_seen_user_agent,
                    }
                )
            devices[device.device_id] = {"sessions": [{"connections": connections}]}
        return {"user_id": uid, "devices": devices}

    # --------------------------------------------------------------- changes

    async def _hash_password(self, password: str) -> str:
        if not self.config.password_config.enabled:
            raise forbidden("Password login is disabled: passwords cannot be set")
        if not password:
            raise invalid_param("The password may not be empty")
        check_password_length(password)
        return await self.accounts.hasher.hash(password)

    async def reset_password(self, uid: str, password: str, logout_devices: bool = True) -> None:
        await self.get_user(uid, "Can only change the password of local users")
        password_hash = await self._hash_password(password)
        await self.accounts.change_password(uid, password_hash, None, logout_devices)
        logger.info("admin: reset the password of %s", uid)

    async def deactivate(self, uid: str) -> None:
        await self.get_user(uid, "Can only deactivate local users")
        await self.accounts.deactivate(uid)

    async def set_admin(self, requester_id: str | None, uid: str, admin: bool) -> None:
        """Make `uid` an admin or not; `requester_id` (None: the operator) may not demote themselves."""
        await self.get_user(uid, "Only local users can be admins of this homeserver")
        if uid == requester_id and not admin:
            raise MatrixError(400, "M_UNKNOWN", "You may not demote yourself.")
        await self.storage.users.set_admin(uid, admin)
        logger.info("admin: %s is %s an admin", uid, "now" if admin else "no longer")

    async def create_or_modify(self, requester_id: str, uid: str, changes: UserChanges) -> bool:
        """Apply `changes` to `uid`, creating the account if there is none; True if created.

        Everything is checked before anything changes, so a refusal leaves
        the account as it was.
        """
        self.check_local(uid, "This endpoint can only be used with local users")
        if changes.avatar_url and not changes.avatar_url.startswith("mxc://"):
            raise invalid_param("avatar_url must be an mxc:// URI")
        if changes.change_user_type and changes.user_type not in (None, *USER_TYPES):
            raise invalid_param(f"Invalid user type: must be one of {', '.join(USER_TYPES)} or null")
        user = await self.storage.users.get_user(uid)
        if user is None:
            await self._create(uid, changes)
            return True
        await self._modify(requester_id, user, changes)
        return False

    async def _create(self, uid: str, changes: UserChanges) -> None:
        parts = split_user_id(uid)
        assert parts is not None
        localpart = parts[0]
        if localpart != localpart.lower():
            raise MatrixError(400, "M_INVALID_USERNAME", "User IDs may not contain upper-case letters")
        if changes.deactivated:
            raise invalid_param("A new account cannot be created deactivated")
        password_hash = None
        if changes.password is not None:
            password_hash = await self._hash_password(changes.password)
        await self.accounts.register(
            localpart,
            password_hash,
            admin=bool(changes.admin),
            user_type=changes.user_type,
            displayname=changes.displayname or None,
            inhibit_login=True,
        )
        if changes.avatar_url:
            await self.storage.users.set_profile_field(uid, "avatar_url", changes.avatar_url)
        logger.info("admin: created %s", uid)

    async def _modify(self, requester_id: str, user: User, changes: UserChanges) -> None:
        uid = user.user_id
        if changes.admin is False and user.admin and uid == requester_id:
            raise MatrixError(400, "M_UNKNOWN", "You may not demote yourself.")
        reactivate = changes.deactivated is False and user.deactivated
        if reactivate and changes.password is None and user.password_hash is None:
            raise MatrixError(400, "M_UNKNOWN", "Must provide a password to re-activate an account.")
        password_hash = None
        if changes.password is not None:
            password_hash = await self._hash_password(changes.password)

        profile_changed = False
        for field in ("displayname", "avatar_url"):
            value = getattr(changes, field)
            if value is not None:
                await self.storage.users.set_profile_field(uid, field, value or None)
                profile_changed = True
        if changes.admin is not None and changes.admin != user.admin:
            await self.storage.users.set_admin(uid, changes.admin)
        if changes.change_user_type:
            await self.storage.users.set_user_type(uid, changes.user_type)
        if reactivate:
            await self.storage.users.reactivate(uid, password_hash or user.password_hash)
            logger.info("admin: reactivated %s", uid)
        elif password_hash is not None:
            await self.accounts.change_password(uid, password_hash, None, changes.logout_devices)
        if changes.deactivated and not user.deactivated:
            await self.accounts.deactivate(uid)
        elif profile_changed and self.profile_changed is not None and (
            reactivate or not user.deactivated
        ):
            await self.profile_changed(uid)

    async def login_as(self, requester_id: str, uid: str, valid_until_ms: int | None) -> str:
        """An access token for `uid`, on a new device of theirs named
        ADMIN_LOGIN_DEVICE_NAME; signing out with it deletes that device."""
        user = await self.get_user(uid, "Only local users can be logged in as")
        if uid == requester_id:
            raise MatrixError(400, "M_UNKNOWN", "Cannot use admin API to login as self")
        if user.deactivated:
            raise MatrixError(400, "M_UNKNOWN", "Cannot log in as a deactivated user")
        now = now_ms()
        if valid_until_ms is not None and valid_until_ms <= now:
            raise invalid_param("valid_until_ms must be in the future")
        session = await self.accounts.create_session(uid, None, ADMIN_LOGIN_DEVICE_NAME)
        if valid_until_ms is not None and (
            session.expires_in_ms is None or now + session.expires_in_ms > valid_until_ms
        ):
            await self.storage.devices.set_access_token_expiry(
                hash_token(session.access_token), valid_until_ms
            )
        logger.info("admin: %s logged in as %s (device %s)", requester_id, uid, session.device_id)
        return session.access_token
