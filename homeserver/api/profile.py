"""Profiles: display name and avatar URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..http import Router, body_str, json_response, read_json
from ..ids import split_user_id

if TYPE_CHECKING:
    from ..app import HomeServer

MAX_LENGTH = {"displayname": 256, "avatar_url": 1000}


def register(router: Router, hs: "HomeServer") -> None:
    users = hs.storage.users

    async def _profile(request: web.Request) -> tuple[str, dict[str, Any]]:
        if hs.config.require_auth_for_profile_requests:
            await hs.auth.get_requester(request, allow_guest=True)
        uid = request.match_info["userId"]
        if split_user_id(uid) is None:
            raise invalid_param(f"Invalid user ID: {uid!r}")
        profile = await users.get_profile(uid) if hs.accounts.is_mine(uid) else None
        if profile is None and hs.accounts.is_mine(uid) and await hs.appservices.query_user(uid):
            profile = await users.get_profile(uid)  # the application service created it
        if profile is None:
            raise not_found("Profile not found")
        fields = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
        return uid, {k: v for k, v in fields.items() if v is not None}

    async def get_profile(request: web.Request) -> web.Response:
        _uid, fields = await _profile(request)
        return json_response(fields)

    def field_handlers(field: str) -> tuple[Any, Any]:
        async def get_field(request: web.Request) -> web.Response:
            _uid, fields = await _profile(request)
            if field not in fields:
                raise not_found(f"The user has no {field}")
            return json_response({field: fields[field]})

        async def set_field(request: web.Request) -> web.Response:
            requester = await hs.auth.get_requester(request, allow_guest=True)
            uid = request.match_info["userId"]
            if uid != requester.user_id and not requester.admin:
                raise forbidden("You cannot change another user's profile")
            if not await users.user_exists(uid):
                raise not_found("User not found")
            body = await read_json(request)
            if field not in body:
                raise MatrixError(400, "M_MISSING_PARAM", f"Missing parameter: {field}")
            value = body_str(body, field, None)
            if value is not None and len(value) > MAX_LENGTH[field]:
                raise MatrixError(
                    400, "M_TOO_LARGE", f"'{field}' may be at most {MAX_LENGTH[field]} characters"
                )
            await users.set_profile_field(uid, field, value or None)
            await hs.rooms.update_profile_in_rooms(uid)
            return json_response({})

        return get_field, set_field

    router.client("GET", "/profile/{userId}", get_profile)
    for field in ("displayname", "avatar_url"):
        get_field, set_field = field_handlers(field)
        router.client("GET", f"/profile/{{userId}}/{field}", get_field)
        router.client("PUT", f"/profile/{{userId}}/{field}", set_field)
