"""Discovery: /versions, /.well-known, /capabilities, /health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..http import Router, json_response
from ..events.model import DEFAULT_ROOM_VERSION, ROOM_VERSIONS

if TYPE_CHECKING:
    from ..app import HomeServer

# Spec versions whose client-server API this server implements. A version is
# only listed once everything it requires works.
SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6"]


def register(router: Router, hs: "HomeServer") -> None:
    config = hs.config

    async def versions(request: web.Request) -> web.Response:
        # msc3916.stable: authenticated media (spec v1.11) is served, so
        # clients use /_matrix/client/v1/media before v1.11 is listed.
        # msc4222: /sync's use_state_after (spec v1.16), stable and unstable names.
        return json_response(
            {
                "versions": SPEC_VERSIONS,
                "unstable_features": {
                    "org.matrix.msc3916.stable": True,
                    "org.matrix.msc4222": True,
                    "org.matrix.simplified_msc3575": True,
                },
            }
        )

    async def wellknown_client(request: web.Request) -> web.Response:
        return json_response({"m.homeserver": {"base_url": config.base_url}})

    async def wellknown_server(request: web.Request) -> web.Response:
        if not config.serve_server_wellknown:
            return json_response({"errcode": "M_NOT_FOUND", "error": "Not served"}, 404)
        host = config.base_url.split("://", 1)[1].split("/", 1)[0]
        if ":" not in host.rsplit("]", 1)[-1]:
            host += ":443" if config.base_url.startswith("https") else ":80"
        return json_response({"m.server": host})

    async def capabilities(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request, allow_guest=True)
        return json_response(
            {
                "capabilities": {
                    "m.change_password": {"enabled": config.password_config.enabled},
                    "m.set_displayname": {"enabled": True},
                    "m.set_avatar_url": {"enabled": True},
                    "m.3pid_changes": {"enabled": False},
                    "m.get_login_token": {"enabled": False},
                    "m.room_versions": {
                        "default": DEFAULT_ROOM_VERSION,
                        "available": {v: "stable" for v in ROOM_VERSIONS},
                    },
                }
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    router.add("GET", "/_matrix/client/versions", versions)
    router.add("GET", "/.well-known/matrix/client", wellknown_client)
    router.add("GET", "/.well-known/matrix/server", wellknown_server)
    router.client("GET", "/capabilities", capabilities)
    router.add("GET", "/health", health)
