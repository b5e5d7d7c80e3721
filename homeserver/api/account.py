"""Account management: change password, deactivate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..accounts.service import NEW_PASSWORD_HASH
from ..errors import MatrixError, missing_param
from ..http import Router, body_bool, body_str, json_response, read_json

if TYPE_CHECKING:
    from ..app import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    accounts = hs.accounts

    async def change_password(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        if not hs.config.password_config.enabled:
            raise MatrixError(403, "M_FORBIDDEN", "Password changes are disabled")
        body = await read_json(request)
        # Refuse a bad new password before asking for the old one, and keep
        # only its hash with the UIA session.
        new_password = body_str(body, "new_password", None, max_length=4096)
        body.pop("new_password", None)
        session = await accounts.reauthenticate(
            request, body, requester.user_id, await accounts.new_password_values(new_password)
        )
        password_hash = session.serverdict.get(NEW_PASSWORD_HASH)
        if password_hash is None:
            raise missing_param("Missing parameter: new_password")
        logout_devices = body_bool(session.clientdict, "logout_devices", True)
        await accounts.change_password(
            requester.user_id, password_hash, requester.device_id, logout_devices
        )
        return json_response({})

    async def deactivate(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        await accounts.reauthenticate(request, body, requester.user_id)
        await accounts.deactivate(requester.user_id)
        return json_response({"id_server_unbind_result": "no-support"})

    router.client("POST", "/account/password", change_password)
    router.client("POST", "/account/deactivate", deactivate)
