"""End-to-end encryption keys and to-device messages: /keys/*, /sendToDevice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..accounts.auth import Requester
from ..errors import bad_json, invalid_param
from ..http import Router, json_response, read_json
from ..ratelimit import RateLimiter
from ..sync.tokens import InvalidToken, StreamToken

if TYPE_CHECKING:
    from ..app import HomeServer

# Keys asked for in one /keys/query or /keys/claim (Synapse allows no more either).
MAX_QUERIED_DEVICES = 10_000


def _timeout(body: dict[str, Any]) -> None:
    timeout = body.get("timeout", 10_000)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise bad_json("'timeout' must be an integer of milliseconds")


def _user_map(body: dict[str, Any], key: str, value_ok: Any, what: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise bad_json(f"'{key}' must be an object")
    if not all(isinstance(u, str) and value_ok(v) for u, v in value.items()):
        raise bad_json(f"'{key}' must map user IDs to {what}")
    return value


def register(router: Router, hs: "HomeServer") -> None:
    keys = hs.e2ee_keys
    limiter = RateLimiter(hs.config.rc_key_requests)

    def rate_limit(requester: Requester) -> None:
        if requester.rate_limited:
            limiter.check(requester.user_id)

    async def upload(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        return json_response(await keys.upload(requester.user_id, requester.device_id, body))

    async def query(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        wanted = _user_map(
            body, "device_keys",
            lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v), "lists of device IDs",
        )
        if sum(max(len(v), 1) for v in wanted.values()) > MAX_QUERIED_DEVICES:
            raise invalid_param(f"At most {MAX_QUERIED_DEVICES} devices can be queried at once")
        _timeout(body)
        return json_response(await keys.query(requester.user_id, wanted))

    async def claim(request: web.Request) -> web.Response:
        rate_limit(await hs.auth.get_requester(request))
        body = await read_json(request)
        wanted = _user_map(
            body, "one_time_keys",
            lambda v: isinstance(v, dict) and all(isinstance(a, str) for a in v.values()),
            "objects of device IDs to algorithms",
        )
        if sum(len(v) for v in wanted.values()) > MAX_QUERIED_DEVICES:
            raise invalid_param(f"At most {MAX_QUERIED_DEVICES} keys can be claimed at once")
        _timeout(body)
        return json_response(await keys.claim(wanted))

    async def changes(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        try:
            since = StreamToken.parse(request.query.get("from", ""))
            upto = StreamToken.parse(request.query.get("to", ""))
        except InvalidToken:
            raise invalid_param("'from' and 'to' must be sync tokens") from None
        memberships = await hs.storage.events.rooms_for_user(requester.user_id, ("join", "leave", "ban"))
        changed, left = await hs.device_lists.changes(requester.user_id, memberships, since, upto)
        return json_response({"changed": sorted(changed), "left": sorted(left)})

    async def device_signing_upload(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        # MSC4190: a service managing its users' devices replaces their keys without UIA.
        if not hs.appservices.manages_devices(requester) and await keys.cross_signing_upload_needs_auth(
            requester.user_id, body
        ):
            session = await hs.accounts.reauthenticate(request, body, requester.user_id)
            body = {**session.clientdict, **{k: v for k, v in body.items() if k != "auth"}}
        await keys.upload_cross_signing(requester.user_id, body)
        return json_response({})

    async def signatures_upload(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        return json_response(await keys.upload_signatures(requester.user_id, body))

    async def send_to_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        rate_limit(requester)
        body = await read_json(request)
        await hs.to_device.send(
            requester.user_id,
            requester.device_id,
            request.match_info["eventType"],
            request.match_info["txnId"],
            body.get("messages"),
        )
        return json_response({})

    router.client("POST", "/keys/upload", upload)
    # Deprecated form with the device ID in the path (still sent by some clients).
    router.client("POST", "/keys/upload/{deviceId}", upload, versions=("r0",))
    router.client("POST", "/keys/query", query)
    router.client("POST", "/keys/claim", claim)
    router.client("GET", "/keys/changes", changes)
    router.client("POST", "/keys/device_signing/upload", device_signing_upload, versions=("v3", "unstable"))
    router.client("POST", "/keys/signatures/upload", signatures_upload, versions=("v3", "unstable"))
    router.client("PUT", "/sendToDevice/{eventType}/{txnId}", send_to_device)
