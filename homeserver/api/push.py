"""Push: push rules (/pushrules), pushers (/pushers) and /notifications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

from storage.push import Pusher

from ..errors import bad_json, invalid_param, missing_param
from ..http import (
    Router,
    body_bool,
    body_str,
    json_response,
    query_int,
    query_str,
    read_json,
)
from ..net import AddressPolicy
from ..push.pushers import NOTIFY_PATH
from ..util import now_ms

if TYPE_CHECKING:
    from ..app import HomeServer

RULE = "/pushrules/global/{kind}/{ruleId}"
MAX_APP_ID_LENGTH = 64  # characters (spec)
MAX_PUSHKEY_BYTES = 512  # bytes (spec)
DEFAULT_NOTIFICATIONS_LIMIT = 50
MAX_NOTIFICATIONS_LIMIT = 1000
_PUSHER_REQUIRED = ("app_display_name", "device_display_name", "lang", "data")


def _rule_path(request: web.Request) -> tuple[str, str]:
    return request.match_info["kind"], request.match_info["ruleId"]


def _pusher_from_body(user_id: str, device_id: str, body: dict[str, Any], policy: AddressPolicy) -> Pusher:
    """A pusher to create or update, checked as POST /pushers/set requires."""
    missing = [key for key in _PUSHER_REQUIRED if body.get(key) is None]
    if missing:
        raise missing_param(f"Missing parameters: {', '.join(missing)}")
    kind = body["kind"]
    if kind != "http":
        raise invalid_param(f"Unsupported pusher kind: {kind!r}")
    data = body["data"]
    if not isinstance(data, dict):
        raise bad_json("'data' must be a JSON object")
    _check_gateway_url(data.get("url"), policy)
    if "format" in data and not isinstance(data["format"], str):
        raise invalid_param("'data.format' must be a string")
    return Pusher(
        user_id=user_id,
        app_id=body["app_id"],
        pushkey=body["pushkey"],
        kind=kind,
        app_display_name=body_str(body, "app_display_name", max_length=1024),
        device_display_name=body_str(body, "device_display_name", max_length=1024),
        profile_tag=body_str(body, "profile_tag", None, max_length=1024),
        lang=body_str(body, "lang", max_length=64),
        data=data,
        device_id=device_id,
        pushkey_ts=now_ms(),
        last_push_position=0,
    )


def _check_gateway_url(url: Any, policy: AddressPolicy) -> None:
    """An http(s) URL whose path is the push gateway's notify endpoint (spec), not
    at an IP address the server may not connect to (host names are checked as
    they are resolved, when pushing)."""
    if not isinstance(url, str):
        raise invalid_param("'data.url' is required for http pushers")
    try:
        parsed = URL(url)
    except ValueError:
        raise invalid_param("'data.url' is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.path != NOTIFY_PATH:
        raise invalid_param(f"'data.url' must be an http(s) URL with the path {NOTIFY_PATH}")
    if not policy.allows_host(parsed.host):
        raise invalid_param("'data.url' is at an IP address this server does not connect to")


def register(router: Router, hs: HomeServer) -> None:
    push = hs.push

    # ------------------------------------------------------------ push rules

    async def get_all_rules(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        return json_response({"global": await push.ruleset(requester.user_id)})

    async def get_global_rules(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        return json_response(await push.ruleset(requester.user_id))

    async def get_rule(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        rule = await push.get_rule(requester.user_id, *_rule_path(request))
        return json_response(rule.to_json(requester.user_id))

    async def put_rule(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        await push.put_rule(
            requester.user_id,
            *_rule_path(request),
            body,
            before=request.query.get("before"),
            after=request.query.get("after"),
        )
        return json_response({})

    async def delete_rule(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        await push.delete_rule(requester.user_id, *_rule_path(request))
        return json_response({})

    async def get_enabled(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        rule = await push.get_rule(requester.user_id, *_rule_path(request))
        return json_response({"enabled": rule.enabled})

    async def put_enabled(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        if "enabled" not in body:
            raise missing_param("Missing parameter: enabled")
        await push.set_enabled(requester.user_id, *_rule_path(request), body_bool(body, "enabled"))
        return json_response({})

    async def get_actions(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        rule = await push.get_rule(requester.user_id, *_rule_path(request))
        return json_response({"actions": list(rule.actions)})

    async def put_actions(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        if "actions" not in body:
            raise missing_param("Missing parameter: actions")
        await push.set_actions(requester.user_id, *_rule_path(request), body["actions"])
        return json_response({})

    # --------------------------------------------------------------- pushers

    async def get_pushers(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        pushers = []
        for p in await push.get_pushers(requester.user_id):
            entry = {
                "pushkey": p.pushkey,
                "kind": p.kind,
                "app_id": p.app_id,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name,
                "lang": p.lang,
                "data": p.data,
            }
            if p.profile_tag is not None:
                entry["profile_tag"] = p.profile_tag
            pushers.append(entry)
        return json_response({"pushers": pushers})

    async def set_pusher(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        if "kind" not in body:
            raise missing_param("Missing parameter: kind")
        app_id = body_str(body, "app_id")
        pushkey = body_str(body, "pushkey")
        if not app_id or len(app_id) > MAX_APP_ID_LENGTH:
            raise invalid_param(f"'app_id' must be 1 to {MAX_APP_ID_LENGTH} characters")
        if not pushkey or len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
            raise invalid_param(f"'pushkey' must be 1 to {MAX_PUSHKEY_BYTES} bytes")
        if body["kind"] is None:
            await push.delete_pusher(requester.user_id, app_id, pushkey)
            return json_response({})
        pusher = _pusher_from_body(requester.user_id, requester.device_id, body, push.pushers.policy)
        await push.set_pusher(pusher, append=body_bool(body, "append"))
        return json_response({})

    # --------------------------------------------------------- notifications

    async def get_notifications(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        start = query_str(request, "from", None)
        if start is not None and not (start.isascii() and start.isdigit() and len(start) <= 18):
            raise invalid_param("'from' is not a token this server handed out")
        limit = query_int(request, "limit", DEFAULT_NOTIFICATIONS_LIMIT)
        assert limit is not None
        if limit < 1:
            raise invalid_param("'limit' must be a positive integer")
        entries, next_before = await push.notifications(
            requester.user_id,
            before=int(start) if start is not None else None,
            limit=min(limit, MAX_NOTIFICATIONS_LIMIT),
            only_highlight=request.query.get("only") == "highlight",
        )
        events = await hs.serializer.serialize(
            [event for _n, event in entries],
            device=(requester.user_id, requester.device_id),
            include_room_id=False,
        )
        body: dict[str, Any] = {
            "notifications": [
                {
                    "actions": notification.actions,
                    "event": event,
                    "read": notification.read,
                    "room_id": notification.room_id,
                    "ts": notification.received_ts,
                }
                for (notification, _e), event in zip(entries, events)
            ]
        }
        if next_before is not None:
            body["next_token"] = str(next_before)
        return json_response(body)

    for path in ("/pushrules", "/pushrules/"):
        router.client("GET", path, get_all_rules)
    for path in ("/pushrules/global", "/pushrules/global/"):
        router.client("GET", path, get_global_rules)
    router.client("GET", RULE, get_rule)
    router.client("PUT", RULE, put_rule)
    router.client("DELETE", RULE, delete_rule)
    router.client("GET", RULE + "/enabled", get_enabled)
    router.client("PUT", RULE + "/enabled", put_enabled)
    router.client("GET", RULE + "/actions", get_actions)
    router.client("PUT", RULE + "/actions", put_actions)
    router.client("GET", "/pushers", get_pushers)
    router.client("POST", "/pushers/set", set_pusher)
    router.client("GET", "/notifications", get_notifications)
