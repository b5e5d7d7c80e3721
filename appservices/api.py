"""Client-server API extensions only application services call.

POST /_matrix/client/v1/appservice/{appserviceId}/ping: the homeserver pings
the service back (POST /_matrix/app/v1/ping) and says how long it took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from homeserver.errors import forbidden
from homeserver.http import Router, body_str, json_response, read_json

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def register(router: Router, hs: HomeServer) -> None:
    appservices = hs.appservices

    async def ping(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        service = appservices.get(requester.app_service_id)
        if service is None or service.id != request.match_info["appserviceId"]:
            raise forbidden("Provided access token is not the appservice's as_token")
        body = await read_json(request, allow_empty=True)
        transaction_id = body_str(body, "transaction_id", None, max_length=255)
        duration_ms = await appservices.ping(service, transaction_id)
        return json_response({"duration_ms": duration_ms})

    router.client("POST", "/appservice/{appserviceId}/ping", ping, versions=("v1",))
