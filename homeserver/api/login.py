"""Login, token refresh, logout and whoami."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..accounts.service import check_device_id, check_password_length
from ..errors import MatrixError, bad_json, forbidden
from ..http import Router, body_bool, body_str, json_response, read_json
from ..ratelimit import RateLimiter

if TYPE_CHECKING:
    from ..app import HomeServer

PASSWORD_LOGIN = "m.login.password"
# Spec (application services): sign in as a user of the service's namespace.
APPLICATION_SERVICE = "m.login.application_service"


def register(router: Router, hs: "HomeServer") -> None:
    config = hs.config
    accounts = hs.accounts
    by_address = RateLimiter(config.rc_login.address)
    by_account = RateLimiter(config.rc_login.account)
    failures = RateLimiter(config.rc_login.failed_attempts)

    async def get_login(request: web.Request) -> web.Response:
        flows = [{"type": PASSWORD_LOGIN}] if config.password_config.enabled else []
        if hs.appservices.services:
            flows.append({"type": APPLICATION_SERVICE})
        return json_response({"flows": flows})

    def _identifier_user(body: dict[str, Any]) -> str:
        identifier = body.get("identifier")
        if identifier is None:
            # Deprecated top-level `user`, still sent by older clients.
            return body_str(body, "user")
        if not isinstance(identifier, dict):
            raise bad_json("'identifier' must be a JSON object")
        if identifier.get("type") != "m.id.user":
            raise MatrixError(
                400, "M_UNKNOWN", f"Unsupported login identifier type: {identifier.get('type')!r}"
            )
        return body_str(identifier, "user", max_length=255)

    async def post_login(request: web.Request) -> web.Response:
        body = await read_json(request)
        login_type = body_str(body, "type")
        if login_type == APPLICATION_SERVICE:
            return await _appservice_login(request, body)
        by_address.check(request.remote or "")
        if login_type != PASSWORD_LOGIN or not config.password_config.enabled:
            raise MatrixError(400, "M_UNKNOWN", f"Unsupported login type: {login_type!r}")
        user = _identifier_user(body)
        password = body_str(body, "password", max_length=4096)
        check_password_length(password)
        device_id = body_str(body, "device_id", None)
        if device_id is not None:
            check_device_id(device_id)
        display_name = body_str(body, "initial_device_display_name", None, max_length=256)
        want_refresh = body_bool(body, "refresh_token")

        uid = accounts.resolve_login_user(user)
        if uid is None:
            raise forbidden("Invalid username or password")
        by_account.check(uid)
        failures.check(uid, update=False)
        if not await accounts.check_password(uid, password):
            failures.record(uid)
            raise forbidden("Invalid username or password")
        return await _session_response(uid, device_id, display_name, want_refresh)

    async def _appservice_login(request: web.Request, body: dict[str, Any]) -> web.Response:
        """Spec: an application service signs in as a user of its namespace with its as_token."""
        requester = await hs.auth.get_appservice(request)
        if requester.rate_limited:
            by_address.check(request.remote or "")
        device_id = body_str(body, "device_id", None)
        if device_id is not None:
            check_device_id(device_id)
        display_name = body_str(body, "initial_device_display_name", None, max_length=256)
        uid = accounts.resolve_login_user(_identifier_user(body))
        if uid is None:
            raise forbidden("Invalid username")
        if accounts.check_user_namespace is not None:
            accounts.check_user_namespace(uid, requester.app_service_id)
        if not await hs.storage.users.user_exists(uid):
            raise forbidden("Invalid username")
        return await _session_response(uid, device_id, display_name, body_bool(body, "refresh_token"))

    async def _session_response(
        uid: str, device_id: str | None, display_name: str | None, want_refresh: bool
    ) -> web.Response:
        session = await accounts.create_session(uid, device_id, display_name, want_refresh)
        response = session.to_json()
        response["home_server"] = config.server_name
        response["well_known"] = {"m.homeserver": {"base_url": config.base_url}}
        return json_response(response)

    async def refresh(request: web.Request) -> web.Response:
        body = await read_json(request)
        token = body_str(body, "refresh_token")
        session = await accounts.refresh(token)
        return json_response(
            {
                "access_token": session.access_token,
                "refresh_token": session.refresh_token,
                "expires_in_ms": session.expires_in_ms,
            }
        )

    async def logout(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_expired=True, allow_guest=True)
        await accounts.delete_devices(requester.user_id, [requester.device_id])
        return json_response({})

    async def logout_all(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_expired=True, allow_guest=True)
        await accounts.logout_all(requester.user_id)
        return json_response({})

    async def whoami(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        body = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id:  # an application service acting without a device has none
            body["device_id"] = requester.device_id
        return json_response(body)

    router.client("GET", "/login", get_login)
    router.client("POST", "/login", post_login)
    router.client("POST", "/refresh", refresh, versions=("v3", "v1"))
    router.client("POST", "/logout", logout)
    router.client("POST", "/logout/all", logout_all)
    router.client("GET", "/account/whoami", whoami)
