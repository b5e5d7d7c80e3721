"""Membership: join, invite, leave, forget, kick, ban, unban, knock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import invalid_param
from ..http import Router, body_str, json_response, read_json

if TYPE_CHECKING:
    from ..app import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    rooms = hs.rooms

    async def _reason(body: dict[str, Any]) -> str | None:
        return body_str(body, "reason", None, max_length=1024)

    async def resolve_room(room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            return await hs.directory.resolve_alias(room_id_or_alias)
        if not room_id_or_alias.startswith("!"):
            raise invalid_param("Expected a room ID (!...) or a room alias (#...)")
        return room_id_or_alias

    async def join_by_id_or_alias(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        body = await read_json(request, allow_empty=True)
        room_id = await resolve_room(request.match_info["roomIdOrAlias"])
        await rooms.update_membership(
            requester.user_id,
            room_id,
            requester.user_id,
            "join",
            reason=await _reason(body),
            guest=requester.is_guest,
        )
        return json_response({"room_id": room_id})

    async def knock(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        room_id = await resolve_room(request.match_info["roomIdOrAlias"])
        await rooms.update_membership(
            requester.user_id, room_id, requester.user_id, "knock", reason=await _reason(body)
        )
        return json_response({"room_id": room_id})

    async def leave(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        body = await read_json(request, allow_empty=True)
        await rooms.update_membership(
            requester.user_id,
            request.match_info["roomId"],
            requester.user_id,
            "leave",
            reason=await _reason(body),
        )
        return json_response({})

    async def forget(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        await rooms.forget(requester.user_id, request.match_info["roomId"])
        # The user's rooms changed without an event: their syncs (and caches) hear of it.
        hs.notifier.on_new("events", hs.notifier.positions.get("events", 0), users=(requester.user_id,))
        return json_response({})

    def targeted(membership: str, require_current: tuple[str, ...] | None = None) -> Any:
        """invite, kick (leave), ban, unban (leave): the body names the target user."""

        async def handler(request: web.Request) -> web.Response:
            requester = await hs.auth.get_requester(request)
            body = await read_json(request)
            target = body_str(body, "user_id", max_length=255)
            await rooms.update_membership(
                requester.user_id,
                request.match_info["roomId"],
                target,
                membership,
                reason=await _reason(body),
                require_current=require_current,
            )
            return json_response({})

        return handler

    router.client("POST", "/join/{roomIdOrAlias}", join_by_id_or_alias)
    # The same handler: a room ID resolves to itself.
    router.client("POST", "/rooms/{roomIdOrAlias}/join", join_by_id_or_alias)
    router.client("POST", "/knock/{roomIdOrAlias}", knock)
    router.client("POST", "/rooms/{roomId}/leave", leave)
    router.client("POST", "/rooms/{roomId}/forget", forget)
    router.client("POST", "/rooms/{roomId}/invite", targeted("invite"))
    router.client("POST", "/rooms/{roomId}/kick", targeted("leave", ("join", "invite", "knock")))
    router.client("POST", "/rooms/{roomId}/ban", targeted("ban"))
    router.client("POST", "/rooms/{roomId}/unban", targeted("leave", ("ban",)))
