"""Registration: POST /register with user-interactive auth, and its helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..accounts.service import NEW_PASSWORD_HASH, check_device_id
from ..accounts.uia import DUMMY, REGISTRATION_TOKEN
from ..errors import MatrixError, forbidden, invalid_param
from ..http import Router, body_bool, body_str, json_response, query_str, read_json
from ..ratelimit import RateLimiter
from ..util import now_ms

# Spec: application services register the users of their namespaces with this type.
APPLICATION_SERVICE = "m.login.application_service"

if TYPE_CHECKING:
    from ..app import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    config = hs.config
    accounts = hs.accounts
    limiter = RateLimiter(config.rc_registration)
    validity_limiter = RateLimiter(config.rc_registration_token_validity)

    def _flows() -> list[list[str]]:
        return [[REGISTRATION_TOKEN]] if config.registration_requires_token else [[DUMMY]]

    def _check_params(params: dict[str, Any]) -> dict[str, Any]:
        """Validate the registration parameters; returns them typed."""
        checked = {
            "username": body_str(params, "username", None, max_length=255),
            "device_id": body_str(params, "device_id", None),
            "initial_device_display_name": body_str(
                params, "initial_device_display_name", None, max_length=256
            ),
            "inhibit_login": body_bool(params, "inhibit_login"),
            "refresh_token": body_bool(params, "refresh_token"),
        }
        if checked["device_id"] is not None:
            check_device_id(checked["device_id"])
        return checked

    async def post_register(request: web.Request) -> web.Response:
        kind = request.query.get("kind", "user")
        if kind not in ("user", "guest"):
            raise invalid_param("kind must be 'user' or 'guest'")
        body = await read_json(request)
        if kind == "user" and body.get("type") == APPLICATION_SERVICE:
            return await _register_appservice_user(request, body)
        limiter.check(request.remote or "")
        if kind == "guest":
            return await _register_guest(body)
        if not config.enable_registration:
            raise forbidden("Registration has been disabled")

        checked = _check_params(body)
        password = body_str(body, "password", None, max_length=4096)
        body.pop("password", None)  # never stored with the UIA session
        if checked["username"] is not None:
            # Tell the client about a taken or invalid name before any auth.
            await accounts.check_username_available(checked["username"])

        completed, params, session = await hs.uia.check(
            request, body, _flows(), server_values=await accounts.new_password_values(password)
        )
        checked = _check_params(params)
        password_hash = session.serverdict.get(NEW_PASSWORD_HASH)
        if password_hash is None:
            # Only password sign-in exists: an account without one is useless.
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: password")
        uid, login = await accounts.register(
            checked["username"],
            password_hash,
            device_id=checked["device_id"],
            initial_device_display_name=checked["initial_device_display_name"],
            inhibit_login=checked["inhibit_login"],
            want_refresh=checked["refresh_token"],
            registration_token=completed.get(REGISTRATION_TOKEN),
            uia_session=session,
        )
        return json_response(_registration_response(uid, login))

    async def _register_appservice_user(request: web.Request, body: dict[str, Any]) -> web.Response:
        """Spec: an application service creates users of its namespace with its
        as_token, without flows or a password (and even with registration off)."""
        requester = await hs.auth.get_appservice(request)
        if requester.rate_limited:
            limiter.check(request.remote or "")
        checked = _check_params(body)
        if checked["username"] is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: username")
        uid, login = await accounts.register(
            checked["username"],
            None,
            device_id=checked["device_id"],
            initial_device_display_name=checked["initial_device_display_name"],
            inhibit_login=checked["inhibit_login"],
            want_refresh=checked["refresh_token"],
            appservice_id=requester.app_service_id,
        )
        return json_response(_registration_response(uid, login))

    def _registration_response(uid: str, login: Any) -> dict[str, Any]:
        response = {"user_id": uid, "home_server": config.server_name}
        if login is not None:
            response.update(login.to_json())
        return response

    async def _register_guest(body: dict[str, Any]) -> web.Response:
        if not config.allow_guest_access:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
        device_name = body_str(body, "initial_device_display_name", None, max_length=256)
        uid, login = await accounts.register_guest(device_name, body_bool(body, "refresh_token"))
        return json_response(_registration_response(uid, login))

    async def available(request: web.Request) -> web.Response:
        limiter.check(request.remote or "")
        username = query_str(request, "username")
        await accounts.check_username_available(username)
        return json_response({"available": True})

    async def token_validity(request: web.Request) -> web.Response:
        validity_limiter.check(request.remote or "")
        if not config.enable_registration:
            raise forbidden("Registration has been disabled")
        token = query_str(request, "token")
        found = await hs.storage.registration.get_token(token)
        return json_response({"valid": found is not None and found.is_valid(now_ms())})

    router.client("POST", "/register", post_register)
    router.client("GET", "/register/available", available)
    router.client(
        "GET",
        "/register/m.login.registration_token/validity",
        token_validity,
        versions=("v1",),
    )
