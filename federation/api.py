"""Federation routes: for now the key server, which other servers (and the
notary servers they trust) fetch our signing key from."""

from __future__ import annotations

from aiohttp import web

from homeserver.util import now_ms

from .keys import server_keys_response


def register_routes(app: web.Application, server_name: str, signing_key: object) -> None:
    async def get_server_keys(request: web.Request) -> web.Response:
        body = server_keys_response(server_name, signing_key, now_ms())  # type: ignore[arg-type]
        return web.Response(body=body, content_type="application/json")

    for path in ("/_matrix/key/v2/server", "/_matrix/key/v2/server/{keyId}"):
        app.router.add_route("GET", path, get_server_keys)
