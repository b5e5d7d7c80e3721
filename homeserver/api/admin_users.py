"""Admin API for user accounts, as Synapse serves it under /_synapse/admin,
so that admin tools (synapse-admin, scripts) work unchanged.

List, read, create and modify accounts; deactivate; reset passwords; make
and unmake admins; see and delete devices; whois; joined rooms; log in as a
user; check a username. The rules live in `homeserver.admin.users`.
Not supported: third-party IDs, external (SSO) IDs, locking, shadow bans,
erasure of messages (an `erase` request deactivates; the profile always goes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.devices import Device
from storage.users import USER_ORDERS, UserSummary

from ..accounts.service import MAX_PASSWORD_LENGTH
from ..admin.users import AdminUsers, UserChanges
from ..errors import bad_json, invalid_param, missing_param, not_found
from ..http import (
    Router,
    body_bool,
    body_str,
    body_str_list,
    json_response,
    query_int,
    query_str,
    read_json,
)
from .devices import device_json
from .profile import MAX_LENGTH

if TYPE_CHECKING:
    from ..app import HomeServer

DEFAULT_LIMIT = 100
# Paging values beyond this are refused rather than handed to the database.
_MAX_PAGING = 2**31 - 1
# Synapse's orders by fields this server does not have (every user has the
# same value): these order by name alone.
_CONSTANT_ORDERS = ("shadow_banned", "locked")


def user_json(user: UserSummary) -> dict[str, Any]:
    """A user as `GET /_synapse/admin/v2/users` lists them."""
    return {
        "name": user.user_id,
        "is_guest": user.is_guest,
        "admin": user.admin,
        "user_type": user.user_type,
        "deactivated": user.deactivated,
        "erased": False,
        "shadow_banned": False,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "creation_ts": user.creation_ts,
        "last_seen_ts": user.last_seen_ts,
        "locked": False,
    }


def user_details_json(user: UserSummary) -> dict[str, Any]:
    """A user as `GET /_synapse/admin/v2/users/<user_id>` shows them."""
    return {
        **user_json(user),
        "threepids": [],
        "external_ids": [],
        "appservice_id": user.appservice_id,
        "consent_server_notice_sent": None,
        "consent_version": None,
        "consent_ts": None,
        "suspended": False,
    }


def admin_device_json(device: Device) -> dict[str, Any]:
    return {
        **device_json(device),
        "last_seen_user_agent": device.last_seen_user_agent,
        "user_id": device.user_id,
        "dehydrated": False,
    }


def _query_bool(request: web.Request, key: str) -> bool | None:
    value = request.query.get(key)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid_param(f"Query parameter '{key}' must be 'true' or 'false'")
    return value == "true"


def _paging(request: web.Request, key: str, default: int) -> int:
    value = query_int(request, key, default)
    assert value is not None
    if not 0 <= value <= _MAX_PAGING:
        raise invalid_param(
            f"Query parameter {key} must be a string representing a positive integer."
        )
    return value


def _unsupported_list(body: dict[str, Any], key: str, what: str) -> None:
    """Accept an empty list (what tools send back), refuse entries we cannot keep."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, list):
        raise bad_json(f"'{key}' must be a list")
    if value:
        raise invalid_param(f"{what} are not supported by this server")


def _profile_field(body: dict[str, Any], key: str) -> str | None:
    """A profile field to set ("" or null removes it), or None if not given."""
    if key not in body:
        return None
    value = body_str(body, key, None, max_length=MAX_LENGTH[key])
    return value or ""


def parse_user_changes(body: dict[str, Any]) -> UserChanges:
    _unsupported_list(body, "threepids", "Third-party IDs")
    _unsupported_list(body, "external_ids", "External IDs")
    if body_bool(body, "locked"):
        raise invalid_param("Locking accounts is not supported by this server")
    changes = UserChanges(
        password=body_str(body, "password", None, max_length=MAX_PASSWORD_LENGTH),
        logout_devices=body_bool(body, "logout_devices", True),
        displayname=_profile_field(body, "displayname"),
        avatar_url=_profile_field(body, "avatar_url"),
        admin=body_bool(body, "admin") if "admin" in body else None,
        deactivated=body_bool(body, "deactivated") if "deactivated" in body else None,
    )
    if "user_type" in body:
        changes.change_user_type = True
        changes.user_type = body_str(body, "user_type", None, max_length=64)
    return changes


def register(router: Router, hs: "HomeServer") -> None:
    admin_users = AdminUsers(
        hs.config, hs.storage, hs.accounts, profile_changed=hs.rooms.update_profile_in_rooms
    )
    users = hs.storage.users
    devices = hs.storage.devices

    # ------------------------------------------------------------- accounts

    async def _list_users(request: web.Request, deactivated: bool | None) -> web.Response:
        await hs.auth.get_admin(request)
        start = _paging(request, "from", 0)
        limit = _paging(request, "limit", DEFAULT_LIMIT)
        order_by = request.query.get("order_by", "name")
        if order_by not in USER_ORDERS and order_by not in _CONSTANT_ORDERS:
            raise invalid_param(
                f"Unknown value for order_by: must be one of "
                f"{', '.join([*USER_ORDERS, *_CONSTANT_ORDERS])}"
            )
        direction = request.query.get("dir", "f")
        if direction not in ("f", "b"):
            raise invalid_param("Unknown direction: dir must be 'f' or 'b'")
        _query_bool(request, "locked")  # no account is locked: nothing to filter
        guests = _query_bool(request, "guests")
        constant = order_by in _CONSTANT_ORDERS
        found, total = await users.list_users(
            offset=start,
            limit=limit,
            user_id=request.query.get("user_id"),
            name=request.query.get("name"),
            guests=guests is not False,
            deactivated=deactivated,
            admins=_query_bool(request, "admins"),
            not_user_types=request.query.getall("not_user_type", []),
            order_by="name" if constant else order_by,
            descending=direction == "b" and not constant,
        )
        body: dict[str, Any] = {"users": [user_json(u) for u in found], "total": total}
        if start + limit < total:
            body["next_token"] = str(start + len(found))
        return json_response(body)

    async def list_users_v2(request: web.Request) -> web.Response:
        # v2: deactivated users are left out unless deactivated=true.
        return await _list_users(request, None if _query_bool(request, "deactivated") else False)

    async def list_users_v3(request: web.Request) -> web.Response:
        # v3: deactivated=true lists only them, false none of them, absent both.
        return await _list_users(request, _query_bool(request, "deactivated"))

    async def get_user(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        await hs.auth.flush_last_seen()
        return json_response(user_details_json(await admin_users.summary(request.match_info["userId"])))

    async def put_user(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        changes = parse_user_changes(await read_json(request))
        created = await admin_users.create_or_modify(requester.user_id, uid, changes)
        body = user_details_json(await admin_users.summary(uid))
        return json_response(body, status=201 if created else 200)

    async def deactivate(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        body = await read_json(request, allow_empty=True)
        body_bool(body, "erase")  # accepted; see the module docstring
        await admin_users.deactivate(request.match_info["userId"])
        return json_response({"id_server_unbind_result": "no-support"})

    async def reset_password(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        body = await read_json(request)
        password = body_str(body, "new_password", max_length=MAX_PASSWORD_LENGTH)
        logout_devices = body_bool(body, "logout_devices", True)
        await admin_users.reset_password(request.match_info["userId"], password, logout_devices)
        return json_response({})

    async def get_admin_flag(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        user = await admin_users.get_user(
            request.match_info["userId"], "Only local users can be admins of this homeserver"
        )
        return json_response({"admin": user.admin})

    async def put_admin_flag(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        body = await read_json(request)
        if "admin" not in body:
            raise missing_param("Missing parameter: admin")
        admin = body_bool(body, "admin")
        await admin_users.set_admin(requester.user_id, request.match_info["userId"], admin)
        return json_response({})

    async def login_as(request: web.Request) -> web.Response:
        requester = await hs.auth.get_admin(request)
        body = await read_json(request, allow_empty=True)
        valid_until_ms = body.get("valid_until_ms")
        if valid_until_ms is not None and (
            isinstance(valid_until_ms, bool)
            or not isinstance(valid_until_ms, int)
            or not 0 <= valid_until_ms < 2**63
        ):
            raise bad_json("'valid_until_ms' must be a timestamp in milliseconds")
        token = await admin_users.login_as(requester.user_id, request.match_info["userId"], valid_until_ms)
        return json_response({"access_token": token})

    async def username_available(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        await hs.accounts.check_username_available(query_str(request, "username"))
        return json_response({"available": True})

    async def joined_rooms(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        rooms = await admin_users.joined_rooms(request.match_info["userId"])
        return json_response({"joined_rooms": rooms, "total": len(rooms)})

    async def whois(request: web.Request) -> web.Response:
        # The client-server API's whois also lets users look themselves up.
        requester = await hs.auth.get_requester(request)
        uid = request.match_info["userId"]
        if uid != requester.user_id:
            await hs.auth.get_admin(request)
        await hs.auth.flush_last_seen()
        return json_response(await admin_users.whois(uid))

    # -------------------------------------------------------------- devices

    async def list_devices(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        await admin_users.get_user(uid)
        await hs.auth.flush_last_seen()
        found = await devices.get_devices(uid)
        return json_response({"devices": [admin_device_json(d) for d in found], "total": len(found)})

    async def get_device(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        await admin_users.get_user(uid)
        await hs.auth.flush_last_seen()
        device = await devices.get_device(uid, request.match_info["deviceId"])
        if device is None:
            raise not_found("Device not found")
        return json_response(admin_device_json(device))

    async def update_device(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        device_id = request.match_info["deviceId"]
        await admin_users.get_user(uid)
        body = await read_json(request, allow_empty=True)
        if "display_name" in body:
            display_name = body_str(body, "display_name", None, max_length=256)
            if not await devices.set_display_name(uid, device_id, display_name):
                raise not_found("Device not found")
            # The name is part of what others' /keys/query shows.
            await hs.e2ee_keys.device_list_changed(uid)
        elif await devices.get_device(uid, device_id) is None:
            raise not_found("Device not found")
        return json_response({})

    async def delete_device(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        await admin_users.get_user(uid)
        await hs.accounts.delete_devices(uid, [request.match_info["deviceId"]])
        return json_response({})

    async def delete_devices(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        uid = request.match_info["userId"]
        await admin_users.get_user(uid)
        body = await read_json(request)
        await hs.accounts.delete_devices(uid, body_str_list(body, "devices"))
        return json_response({})

    v1, v2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
    router.add("GET", f"{v2}/users", list_users_v2)
    router.add("GET", "/_synapse/admin/v3/users", list_users_v3)
    router.add("GET", f"{v2}/users/{{userId}}", get_user)
    router.add("PUT", f"{v2}/users/{{userId}}", put_user)
    router.add("POST", f"{v1}/deactivate/{{userId}}", deactivate)
    router.add("POST", f"{v1}/reset_password/{{userId}}", reset_password)
    router.add("GET", f"{v1}/users/{{userId}}/admin", get_admin_flag)
    router.add("PUT", f"{v1}/users/{{userId}}/admin", put_admin_flag)
    router.add("POST", f"{v1}/users/{{userId}}/login", login_as)
    router.add("GET", f"{v1}/users/{{userId}}/joined_rooms", joined_rooms)
    router.add("GET", f"{v1}/username_available", username_available)
    router.add("GET", f"{v1}/whois/{{userId}}", whois)
    router.client("GET", "/admin/whois/{userId}", whois)
    router.add("GET", f"{v2}/users/{{userId}}/devices", list_devices)
    router.add("GET", f"{v2}/users/{{userId}}/devices/{{deviceId}}", get_device)
    router.add("PUT", f"{v2}/users/{{userId}}/devices/{{deviceId}}", update_device)
    router.add("DELETE", f"{v2}/users/{{userId}}/devices/{{deviceId}}", delete_device)
    router.add("POST", f"{v2}/users/{{userId}}/delete_devices", delete_devices)
