"""Server-side key backups: /room_keys/version and /room_keys/keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from storage.key_backup import RoomKeys

from ..e2ee.backup import key_json, parse_key, parse_room, parse_rooms
from ..errors import not_found
from ..http import Router, json_response, query_str, read_json

if TYPE_CHECKING:
    from ..app import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    backup = hs.key_backup

    async def user_of(request: web.Request) -> str:
        return (await hs.auth.get_requester(request)).user_id

    # ------------------------------------------------------------ versions

    async def post_version(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        body = await read_json(request)
        return json_response({"version": await backup.create_version(user_id, body)})

    async def get_version(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        return json_response(await backup.get_version(user_id, request.match_info.get("version")))

    async def put_version(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        body = await read_json(request)
        await backup.update_version(user_id, request.match_info["version"], body)
        return json_response({})

    async def delete_version(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        await backup.delete_version(user_id, request.match_info["version"])
        return json_response({})

    # ---------------------------------------------------------------- keys

    async def put_keys(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        version = query_str(request, "version")
        body = await read_json(request)
        room_id = request.match_info.get("roomId")
        session_id = request.match_info.get("sessionId")
        rooms: RoomKeys
        if session_id is not None:
            rooms = {room_id: {session_id: parse_key(body)}}
        elif room_id is not None:
            rooms = {room_id: parse_room(body)}
        else:
            rooms = parse_rooms(body)
        return json_response(await backup.upload_keys(user_id, version, rooms))

    async def get_keys(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        version = query_str(request, "version")
        room_id = request.match_info.get("roomId")
        session_id = request.match_info.get("sessionId")
        rooms = await backup.get_keys(user_id, version, room_id, session_id)
        sessions = {
            room: {session: key_json(key) for session, key in keys.items()}
            for room, keys in rooms.items()
        }
        if session_id is not None:
            if not sessions:
                raise not_found("Key not found")
            return json_response(sessions[room_id][session_id])
        if room_id is not None:
            return json_response({"sessions": sessions.get(room_id, {})})
        return json_response({"rooms": {room: {"sessions": s} for room, s in sessions.items()}})

    async def delete_keys(request: web.Request) -> web.Response:
        user_id = await user_of(request)
        version = query_str(request, "version")
        return json_response(
            await backup.delete_keys(
                user_id,
                version,
                request.match_info.get("roomId"),
                request.match_info.get("sessionId"),
            )
        )

    router.client("POST", "/room_keys/version", post_version)
    router.client("GET", "/room_keys/version", get_version)
    router.client("GET", "/room_keys/version/{version}", get_version)
    router.client("PUT", "/room_keys/version/{version}", put_version)
    router.client("DELETE", "/room_keys/version/{version}", delete_version)
    for path in (
        "/room_keys/keys",
        "/room_keys/keys/{roomId}",
        "/room_keys/keys/{roomId}/{sessionId}",
    ):
        router.client("PUT", path, put_keys)
        router.client("GET", path, get_keys)
        router.client("DELETE", path, delete_keys)
