"""Admin API for rooms and media under /_synapse/admin, following Synapse so
existing tools (synapse-admin, scripts) work. Server admins only.

Rooms: list, details, members, state, messages, make_room_admin, block,
delete (v1 synchronous, v2 with a delete ID) and the deletion status.
Media: a user's media (list, delete), one media ID (details, delete,
quarantine, unquarantine), and purge_media_cache (nothing cached here).
The rules live in homeserver/admin/rooms.py and homeserver/admin/media.py;
docs/admin-rooms.md shows every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.admin_rooms import MEDIA_ORDERS, ROOM_ORDERS, RoomDeletion

from ..admin.media import MediaAdmin
from ..admin.rooms import (
    DEFAULT_MESSAGE,
    DEFAULT_NEW_ROOM_NAME,
    DeleteOptions,
    RoomAdmin,
)
from ..errors import MatrixError, invalid_param, missing_param
from ..http import Router, body_bool, body_str, json_response, query_int, read_json
from .history import direction_param, filter_param, limit_param, token_param

if TYPE_CHECKING:
    from ..app import HomeServer

DEFAULT_LIMIT = 100


def _offset_and_limit(request: web.Request) -> tuple[int, int]:
    start = query_int(request, "from", 0)
    limit = query_int(request, "limit", DEFAULT_LIMIT)
    assert start is not None and limit is not None
    if start < 0:
        raise invalid_param(
            "Query parameter from must be a string representing a positive integer."
        )
    if limit < 0:
        raise invalid_param(
            "Query parameter limit must be a string representing a positive integer."
        )
    return start, limit


def _ascending(request: web.Request, default: str = "f") -> bool:
    direction = request.query.get("dir", default)
    if direction not in ("f", "b"):
        raise invalid_param("Query parameter dir must be 'f' or 'b'")
    return direction == "f"


def _optional_flag(request: web.Request, key: str) -> bool | None:
    value = request.query.get(key)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid_param(f"Query parameter {key} must be 'true' or 'false'")
    return value == "true"


def _room_entry(room: dict[str, Any]) -> dict[str, Any]:
    """A room as Synapse's room list shows it."""
    keys = (
        "room_id",
        "name",
        "canonical_alias",
        "joined_members",
        "joined_local_members",
        "version",
        "creator",
        "encryption",
        "federatable",
        "public",
        "join_rules",
        "guest_access",
        "history_visibility",
        "state_events",
        "room_type",
    )
    return {key: room[key] for key in keys}


def _delete_options(body: dict[str, Any]) -> DeleteOptions:
    return DeleteOptions(
        block=body_bool(body, "block", False),
        purge=body_bool(body, "purge", True),
        force_purge=body_bool(body, "force_purge", False),
        new_room_user_id=body_str(body, "new_room_user_id", None, max_length=255),
        room_name=body_str(body, "room_name", DEFAULT_NEW_ROOM_NAME, max_length=255),
        message=body_str(body, "message", DEFAULT_MESSAGE, max_length=4096),
    )


def register(router: Router, hs: HomeServer) -> None:
    server_name = hs.config.server_name
    rooms = RoomAdmin(hs.storage, hs.rooms, hs.directory, server_name, hs.notifier)
    media = MediaAdmin(hs.storage, hs.media, server_name)
    serializer = hs.serializer

    # --------------------------------------------------------------- rooms

    async def list_rooms(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        start, limit = _offset_and_limit(request)
        order_by = request.query.get("order_by", "name")
        if order_by not in ROOM_ORDERS:
            raise invalid_param(f"Unknown value for order_by: {order_by}")
        search_term = request.query.get("search_term")
        if search_term == "":
            raise invalid_param("search_term cannot be an empty string")
        found, total = await hs.storage.admin_rooms.list_rooms(
            server_name,
            order_by=order_by,
            ascending=_ascending(request),
            offset=start,
            limit=limit,
            search_term=search_term,
            public=_optional_flag(request, "public_rooms"),
            empty=_optional_flag(request, "empty_rooms"),
        )
        body: dict[str, Any] = {
            "rooms": [_room_entry(r) for r in found],
            "offset": start,
            "total_rooms": total,
        }
        if start + limit < total:
            body["next_batch"] = start + limit
        if start > 0:
            body["prev_batch"] = max(start - limit, 0)
        return json_response(body)

    async def room_details(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found = await rooms.details(request.match_info["roomId"])
        return json_response(
            {
                **_room_entry(found),
                **{k: found[k] for k in ("topic", "avatar", "joined_local_devices", "forgotten")},
            }
        )

    async def room_members(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        members = await rooms.members(request.match_info["roomId"])
        return json_response({"members": members, "total": len(members)})

    async def room_state(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        events = await rooms.state(request.match_info["roomId"], request.query.get("type"))
        return json_response({"state": await serializer.serialize(events)})

    async def room_messages(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        room_id = request.match_info["roomId"]
        await rooms.require_room(room_id)
        # Unlike the client API, `dir` may be left out: forwards (as Synapse).
        backwards = direction_param(request) if "dir" in request.query else False
        page = await hs.history.messages(
            requester.user_id,
            room_id,
            backwards=backwards,
            from_token=token_param(request, "from"),
            to_token=token_param(request, "to"),
            limit=limit_param(request),
            event_filter=filter_param(request),
            as_admin=True,
        )
        body: dict[str, Any] = {
            "chunk": await serializer.serialize(page.chunk),
            "start": page.start,
        }
        if page.end is not None:
            body["end"] = page.end
        if page.state:
            body["state"] = await serializer.serialize(page.state)
        return json_response(body)

    async def make_room_admin(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        body = await read_json(request, allow_empty=True)
        user_id = body_str(body, "user_id", requester.user_id, max_length=255)
        room_id = await rooms.resolve(request.match_info["roomIdOrAlias"])
        await rooms.make_room_admin(room_id, user_id)
        return json_response({})

    async def get_block(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        blocked_by = await rooms.blocked_by(request.match_info["roomId"])
        if blocked_by is None:
            return json_response({"block": False})
        return json_response({"block": True, "user_id": blocked_by})

    async def put_block(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        body = await read_json(request)
        if "block" not in body:
            raise missing_param("Missing parameter: block")
        block = body_bool(body, "block")
        await rooms.set_blocked(requester.user_id, request.match_info["roomId"], block)
        return json_response({"block": block})

    async def delete_v1(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        options = _delete_options(await read_json(request, allow_empty=True))
        deletion = await rooms.delete_room(
            requester.user_id, request.match_info["roomId"], options, allow_unknown=True
        )
        if deletion.status == "failed":
            raise MatrixError(400, "M_UNKNOWN", deletion.error or "The room could not be deleted")
        return json_response(deletion.result)

    async def delete_v2(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        options = _delete_options(await read_json(request))
        deletion = await rooms.delete_room(
            requester.user_id, request.match_info["roomId"], options, allow_unknown=False
        )
        return json_response({"delete_id": deletion.delete_id})

    async def delete_status_for_room(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found: list[RoomDeletion] = await rooms.deletions_for_room(request.match_info["roomId"])
        return json_response({"results": [d.to_json() for d in found]})

    async def delete_status(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found = await rooms.deletion(request.match_info["deleteId"])
        return json_response(found.to_json())

    # --------------------------------------------------------------- media

    def _media_order(request: web.Request) -> tuple[str, bool]:
        """order_by and direction; newest first when neither is given (as Synapse)."""
        if "order_by" not in request.query and "dir" not in request.query:
            return "created_ts", False
        order_by = request.query.get("order_by", "created_ts")
        if order_by not in MEDIA_ORDERS:
            raise invalid_param(f"Unknown value for order_by: {order_by}")
        return order_by, _ascending(request)

    async def user_media_page(request: web.Request) -> tuple[list[Any], int, int]:
        user_id = request.match_info["userId"]
        start, limit = _offset_and_limit(request)
        order_by, ascending = _media_order(request)
        await media.require_local_user(user_id)
        found, total = await hs.storage.admin_media.user_media(
            user_id, order_by=order_by, ascending=ascending, offset=start, limit=limit
        )
        return found, total, start

    async def list_user_media(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found, total, start = await user_media_page(request)
        body: dict[str, Any] = {"media": [m.to_json() for m in found], "total": total}
        if start + len(found) < total:
            body["next_token"] = start + len(found)
        return json_response(body)

    async def delete_user_media(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found, _total, _start = await user_media_page(request)
        deleted = await media.delete([m.media_id for m in found])
        return json_response({"deleted_media": deleted, "total": len(deleted)})

    async def media_info(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        found = await media.get(request.match_info["serverName"], request.match_info["mediaId"])
        return json_response(
            {
                "media_info": {
                    "media_origin": server_name,
                    "user_id": found.user_id,
                    "media_id": found.media_id,
                    "media_type": found.content_type,
                    "media_length": found.media_length,
                    "upload_name": found.upload_name,
                    "created_ts": found.created_ts,
                    "filesystem_id": found.sha256,
                    "url_cache": None,
                    "last_access_ts": None,
                    "quarantined_by": found.quarantined_by,
                    "authenticated": True,
                    "safe_from_quarantine": False,
                    "sha256": found.sha256,
                }
            }
        )

    async def delete_media(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        deleted = await media.delete_one(
            request.match_info["serverName"], request.match_info["mediaId"]
        )
        return json_response({"deleted_media": deleted, "total": len(deleted)})

    def quarantine(on: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            requester = await hs.auth.get_admin(request)
            await media.set_quarantine(
                requester.user_id,
                request.match_info["serverName"],
                request.match_info["mediaId"],
                on,
            )
            return json_response({})

        return handler

    async def purge_media_cache(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        before_ts = query_int(request, "before_ts")
        if before_ts is None:
            raise missing_param("Missing query parameter: before_ts")
        if before_ts < 0:
            raise invalid_param("Query parameter before_ts must be a positive integer.")
        # No remote media is ever cached here.
        return json_response({"deleted": 0})

    v1, v2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
    router.add("GET", f"{v1}/rooms", list_rooms)
    router.add("GET", f"{v1}/rooms/{{roomId}}", room_details)
    router.add("DELETE", f"{v1}/rooms/{{roomId}}", delete_v1)
    router.add("GET", f"{v1}/rooms/{{roomId}}/members", room_members)
    router.add("GET", f"{v1}/rooms/{{roomId}}/state", room_state)
    router.add("GET", f"{v1}/rooms/{{roomId}}/messages", room_messages)
    router.add("POST", f"{v1}/rooms/{{roomIdOrAlias}}/make_room_admin", make_room_admin)
    router.add("GET", f"{v1}/rooms/{{roomId}}/block", get_block)
    router.add("PUT", f"{v1}/rooms/{{roomId}}/block", put_block)
    router.add("DELETE", f"{v2}/rooms/{{roomId}}", delete_v2)
    router.add("GET", f"{v2}/rooms/{{roomId}}/delete_status", delete_status_for_room)
    router.add("GET", f"{v2}/rooms/delete_status/{{deleteId}}", delete_status)
    router.add("GET", f"{v1}/users/{{userId}}/media", list_user_media)
    router.add("DELETE", f"{v1}/users/{{userId}}/media", delete_user_media)
    router.add("GET", f"{v1}/media/{{serverName}}/{{mediaId}}", media_info)
    router.add("DELETE", f"{v1}/media/{{serverName}}/{{mediaId}}", delete_media)
    router.add("POST", f"{v1}/media/quarantine/{{serverName}}/{{mediaId}}", quarantine(True))
    router.add("POST", f"{v1}/media/unquarantine/{{serverName}}/{{mediaId}}", quarantine(False))
    router.add("POST", f"{v1}/purge_media_cache", purge_media_cache)
