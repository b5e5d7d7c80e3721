"""Admin API under /_synapse/admin, following Synapse so existing tools work.

- Shared-secret registration (`register_new_matrix_user`, our
  `homeserver register-user`): a one-time nonce, then an HMAC-SHA1 over
  nonce, username, password, admin flag (and user type) keyed with
  `registration_shared_secret`.
- Registration tokens: create, list, read, update, delete.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..accounts.service import REGISTRATION_TOKEN_GRAMMAR
from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..http import Router, body_bool, body_str, json_response, read_json
from ..util import now_ms, random_token

if TYPE_CHECKING:
    from ..app import HomeServer

NONCE_LIFETIME_MS = 60_000
_TOKEN_CHARS = string.ascii_letters + string.digits + "._~-"
# The largest values the registration_tokens columns hold (INTEGER, BIGINT).
_MAX_USES = 2**31 - 1
_MAX_TS = 2**63 - 1


def registration_mac(
    secret: str, nonce: str, username: str, password: str, admin: bool, user_type: str | None
) -> str:
    """The HMAC-SHA1 hex digest Synapse's shared-secret registration expects."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(username.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(user_type.encode("utf-8"))
    return mac.hexdigest()


def _optional_int(body: dict[str, Any], key: str, *, minimum: int, maximum: int) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise invalid_param(f"{key} must be an integer from {minimum} to {maximum}, or null")
    return value


def register(router: Router, hs: "HomeServer") -> None:
    config = hs.config
    registration = hs.storage.registration

    # --------------------------------------------------- shared-secret register

    def _secret() -> str:
        if not config.registration_shared_secret:
            raise MatrixError(400, "M_UNKNOWN", "Shared secret registration is not enabled")
        return config.registration_shared_secret

    async def get_nonce(request: web.Request) -> web.Response:
        _secret()
        nonce = random_token(24)
        await registration.add_nonce(nonce, now_ms())
        return json_response({"nonce": nonce})

    async def post_register(request: web.Request) -> web.Response:
        secret = _secret()
        body = await read_json(request)
        nonce = body_str(body, "nonce", max_length=128)
        # body_str refuses NUL, which separates the fields the MAC covers.
        username = body_str(body, "username", max_length=512)
        password = body_str(body, "password", max_length=512)
        admin = body_bool(body, "admin")
        user_type = body_str(body, "user_type", None, max_length=64)
        displayname = body_str(body, "displayname", None, max_length=256)
        mac = body_str(body, "mac", max_length=128)
        if not await registration.take_nonce(nonce, now_ms() - NONCE_LIFETIME_MS):
            raise MatrixError(400, "M_UNKNOWN", "Unrecognised or expired nonce")
        want = registration_mac(secret, nonce, username, password, admin, user_type)
        if not hmac.compare_digest(want.encode("ascii"), mac.encode("ascii", "replace")):
            raise forbidden("HMAC incorrect")
        uid, session = await hs.accounts.register(
            username,
            await hs.accounts.hasher.hash(password),
            admin=admin,
            user_type=user_type,
            displayname=displayname,
        )
        assert session is not None
        return json_response(
            {
                "access_token": session.access_token,
                "user_id": uid,
                "home_server": config.server_name,
                "device_id": session.device_id,
            }
        )

    # ----------------------------------------------------- registration tokens

    async def list_tokens(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        valid = request.query.get("valid")
        if valid not in (None, "true", "false"):
            raise invalid_param("valid must be 'true' or 'false'")
        tokens = await registration.list_tokens()
        now = now_ms()
        if valid is not None:
            tokens = [t for t in tokens if t.is_valid(now) == (valid == "true")]
        return json_response({"registration_tokens": [t.to_json() for t in tokens]})

    async def new_token(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        body = await read_json(request, allow_empty=True)
        token = body_str(body, "token", None)
        if token is None:
            length = _optional_int(body, "length", minimum=1, maximum=64) or 16
            token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(length))
        elif not REGISTRATION_TOKEN_GRAMMAR.match(token):
            raise invalid_param("token must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'")
        uses_allowed = _optional_int(body, "uses_allowed", minimum=0, maximum=_MAX_USES)
        expiry_time = _optional_int(body, "expiry_time", minimum=0, maximum=_MAX_TS)
        if expiry_time is not None and expiry_time < now_ms():
            raise invalid_param("expiry_time must not be in the past")
        if not await registration.create_token(token, uses_allowed, expiry_time):
            raise invalid_param(f"Token already exists: {token}")
        created = await registration.get_token(token)
        assert created is not None
        return json_response(created.to_json())

    async def get_token(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found = await registration.get_token(request.match_info["token"])
        if found is None:
            raise not_found("No such registration token")
        return json_response(found.to_json())

    async def update_token(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        body = await read_json(request, allow_empty=True)
        changes = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _optional_int(
                body, "uses_allowed", minimum=0, maximum=_MAX_USES
            )
        if "expiry_time" in body:
            expiry = _optional_int(body, "expiry_time", minimum=0, maximum=_MAX_TS)
            if expiry is not None and expiry < now_ms():
                raise invalid_param("expiry_time must not be in the past")
            changes["expiry_time"] = expiry
        updated = await registration.update_token(request.match_info["token"], changes)
        if updated is None:
            raise not_found("No such registration token")
        return json_response(updated.to_json())

    async def delete_token(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        if not await registration.delete_token(request.match_info["token"]):
            raise not_found("No such registration token")
        return json_response({})

    async def server_version(request: web.Request) -> web.Response:
        return json_response({"server_version": __version__})

    prefix = "/_synapse/admin/v1"
    router.add("GET", f"{prefix}/register", get_nonce)
    router.add("POST", f"{prefix}/register", post_register)
    router.add("GET", f"{prefix}/registration_tokens", list_tokens)
    router.add("POST", f"{prefix}/registration_tokens/new", new_token)
    router.add("GET", f"{prefix}/registration_tokens/{{token}}", get_token)
    router.add("PUT", f"{prefix}/registration_tokens/{{token}}", update_token)
    router.add("DELETE", f"{prefix}/registration_tokens/{{token}}", delete_token)
    router.add("GET", f"{prefix}/server_version", server_version)
