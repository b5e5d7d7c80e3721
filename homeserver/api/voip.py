"""Calls and third-party networks: GET /voip/turnServer, /thirdparty/protocols."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from aiohttp import web

from ..http import Router, json_response

if TYPE_CHECKING:
    from ..app import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    config = hs.config

    async def turn_server(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        if not config.turn_uris or (requester.is_guest and not config.turn_allow_guests):
            return json_response({})
        ttl_s = config.turn_user_lifetime // 1000
        if config.turn_shared_secret:
            # The TURN REST API (coturn's use-auth-secret): the server can
            # check these credentials with the secret alone, until they expire.
            username = f"{int(time.time()) + ttl_s}:{requester.user_id}"
            mac = hmac.new(config.turn_shared_secret.encode(), username.encode(), hashlib.sha1).digest()
            password = base64.b64encode(mac).decode()
        elif config.turn_username and config.turn_password:
            username, password = config.turn_username, config.turn_password
        else:
            return json_response({})
        return json_response({"username": username, "password": password, "uris": config.turn_uris, "ttl": ttl_s})

    async def protocols(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        # Third-party networks are offered by bridges that declare protocols;
        # none here is such a bridge, so there are none to list.
        return json_response({})

    router.client("GET", "/voip/turnServer", turn_server)
    router.client("GET", "/thirdparty/protocols", protocols)
