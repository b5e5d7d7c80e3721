"""Room aliases, directory visibility and /publicRooms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import bad_json, invalid_param
from ..http import (
    Router,
    body_bool,
    body_dict,
    body_str,
    json_response,
    query_int,
    query_str,
    read_json,
)
from ..rooms.directory import PublicRoomsQuery

if TYPE_CHECKING:
    from ..app import HomeServer


def _limit(value: Any) -> int | None:
    """`limit`: a non-negative integer (0 means no limit, as in Synapse)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_json("'limit' must be an integer")
    if value < 0:
        raise invalid_param("'limit' must not be negative")
    return value


def _room_types(value: Any) -> frozenset[str | None] | None:
    """`filter.room_types`: room types, with null standing for rooms without one."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise bad_json("'room_types' must be a list of room types (strings or null)")
    return frozenset(value)


def _query_bool(request: web.Request, key: str) -> bool:
    value = request.query.get(key, "false")
    if value not in ("true", "false"):
        raise invalid_param(f"Query parameter '{key}' must be true or false")
    return value == "true"


def register(router: Router, hs: HomeServer) -> None:
    directory = hs.directory

    async def get_alias(request: web.Request) -> web.Response:
        alias = request.match_info["roomAlias"]
        room_id = await directory.resolve_alias(alias)
        return json_response(
            {"room_id": room_id, "servers": await directory.servers_for_room(room_id)}
        )

    async def put_alias(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        room_id = body_str(body, "room_id", max_length=255)
        await directory.create_alias(requester, request.match_info["roomAlias"], room_id)
        return json_response({})

    async def delete_alias(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        await directory.delete_alias(requester, request.match_info["roomAlias"])
        return json_response({})

    async def room_aliases(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        aliases = await directory.local_aliases(requester, request.match_info["roomId"])
        return json_response({"aliases": aliases})

    async def get_visibility(request: web.Request) -> web.Response:
        visibility = await directory.get_visibility(request.match_info["roomId"])
        return json_response({"visibility": visibility})

    async def put_visibility(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        visibility = body_str(body, "visibility", "public", max_length=16)
        await directory.set_visibility(requester, request.match_info["roomId"], visibility)
        return json_response({})

    async def get_public_rooms(request: web.Request) -> web.Response:
        # Synapse's default (allow_public_rooms_without_auth: false): a signed-in directory.
        await hs.auth.get_requester(request, allow_guest=True)
        directory.check_directory_server(query_str(request, "server", None))
        query = PublicRoomsQuery(
            limit=_limit(query_int(request, "limit")),
            since=query_str(request, "since", None) or None,
            include_all_networks=_query_bool(request, "include_all_networks"),
            third_party_instance_id=query_str(request, "third_party_instance_id", None),
        )
        return json_response(await directory.public_rooms(query))

    async def post_public_rooms(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request, allow_guest=True)
        directory.check_directory_server(query_str(request, "server", None))
        body = await read_json(request, allow_empty=True)
        room_filter = body_dict(body, "filter", {})
        query = PublicRoomsQuery(
            limit=_limit(body.get("limit")),
            since=body_str(body, "since", None, max_length=1024) or None,
            search_term=body_str(room_filter, "generic_search_term", None, max_length=1024),
            room_types=_room_types(room_filter.get("room_types")),
            include_all_networks=body_bool(body, "include_all_networks"),
            third_party_instance_id=body_str(body, "third_party_instance_id", None, max_length=255),
        )
        return json_response(await directory.public_rooms(query))

    router.client("GET", "/directory/room/{roomAlias}", get_alias)
    router.client("PUT", "/directory/room/{roomAlias}", put_alias)
    router.client("DELETE", "/directory/room/{roomAlias}", delete_alias)
    router.client("GET", "/rooms/{roomId}/aliases", room_aliases)
    router.client("GET", "/directory/list/room/{roomId}", get_visibility)
    router.client("PUT", "/directory/list/room/{roomId}", put_visibility)
    router.client("GET", "/publicRooms", get_public_rooms)
    router.client("POST", "/publicRooms", post_public_rooms)
