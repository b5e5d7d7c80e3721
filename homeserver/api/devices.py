"""Device management: list, rename and delete the signed-in user's devices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.devices import Device

from ..errors import not_found
from ..http import Router, body_str, body_str_list, json_response, read_json

if TYPE_CHECKING:
    from ..app import HomeServer


def device_json(device: Device) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": device.device_id}
    if device.display_name is not None:
        body["display_name"] = device.display_name
    if device.last_seen_ip is not None:
        body["last_seen_ip"] = device.last_seen_ip
    if device.last_seen_ts is not None:
        body["last_seen_ts"] = device.last_seen_ts
    return body


def register(router: Router, hs: "HomeServer") -> None:
    devices = hs.storage.devices

    async def list_devices(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        await hs.auth.flush_last_seen()
        found = await devices.get_devices(requester.user_id)
        return json_response({"devices": [device_json(d) for d in found]})

    async def get_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        await hs.auth.flush_last_seen()
        device = await devices.get_device(requester.user_id, request.match_info["deviceId"])
        if device is None:
            raise not_found("Device not found")
        return json_response(device_json(device))

    async def update_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        display_name = body_str(body, "display_name", None, max_length=256)
        if not await devices.set_display_name(
            requester.user_id, request.match_info["deviceId"], display_name
        ):
            raise not_found("Device not found")
        return json_response({})

    async def delete_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        await hs.accounts.reauthenticate(request, body, requester.user_id)
        await hs.accounts.delete_devices(requester.user_id, [request.match_info["deviceId"]])
        return json_response({})

    async def delete_devices(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        body_str_list(body, "devices")
        params = await hs.accounts.reauthenticate(request, body, requester.user_id)
        await hs.accounts.delete_devices(requester.user_id, body_str_list(params, "devices"))
        return json_response({})

    router.client("GET", "/devices", list_devices)
    router.client("GET", "/devices/{deviceId}", get_device)
    router.client("PUT", "/devices/{deviceId}", update_device)
    router.client("DELETE", "/devices/{deviceId}", delete_device)
    router.client("POST", "/delete_devices", delete_devices)
