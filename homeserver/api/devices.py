"""Device management: list, rename and delete the signed-in user's devices.

An application service that opted into MSC4190 (masquerading as one of its
users) also creates devices with PUT (201 when new) and deletes them
without user-interactive auth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.devices import Device

from ..errors import not_found
from ..http import Router, body_str, body_str_list, json_response, read_json

if TYPE_CHECKING:
    from ..app import HomeServer


def device_json(device: Device) -> dict[str, Any]:
    # Unknown values are null rather than absent, as Synapse sends them:
    # clients (matrix-nio among them) require every key.
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
    }


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
        device_id = request.match_info["deviceId"]
        if hs.appservices.manages_devices(requester):
            display_name = body_str(body, "display_name", None, max_length=256)
            if await hs.appservices.create_device(requester, device_id, display_name):
                return json_response({}, status=201)
        if "display_name" in body:
            display_name = body_str(body, "display_name", None, max_length=256)
            found = await devices.set_display_name(requester.user_id, device_id, display_name)
            if found:  # the name is part of what others' /keys/query shows
                await hs.e2ee_keys.device_list_changed(requester.user_id)
        else:  # "If not given, the display name is unchanged."
            found = await devices.get_device(requester.user_id, device_id) is not None
        if not found:
            raise not_found("Device not found")
        return json_response({})

    async def delete_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        if not hs.appservices.manages_devices(requester):
            await hs.accounts.reauthenticate(request, body, requester.user_id)
        await hs.accounts.delete_devices(requester.user_id, [request.match_info["deviceId"]])
        return json_response({})

    async def delete_devices(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        device_ids = body_str_list(body, "devices")
        if not hs.appservices.manages_devices(requester):
            session = await hs.accounts.reauthenticate(request, body, requester.user_id)
            device_ids = body_str_list(session.clientdict, "devices")
        await hs.accounts.delete_devices(requester.user_id, device_ids)
        return json_response({})

    router.client("GET", "/devices", list_devices)
    router.client("GET", "/devices/{deviceId}", get_device)
    router.client("PUT", "/devices/{deviceId}", update_device)
    router.client("DELETE", "/devices/{deviceId}", delete_device)
    router.client("POST", "/delete_devices", delete_devices)
