"""Relations: the children of an event (`/relations`) and a room's threads (`/threads`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import invalid_param
from ..http import Router, json_response, query_int, query_str
from ..rooms.relations import MAX_LIMIT

if TYPE_CHECKING:
    from ..app import HomeServer

# Synapse's defaults, which clients are written against.
DEFAULT_RELATIONS_LIMIT = 5
DEFAULT_THREADS_LIMIT = 5


def _limit(request: web.Request, default: int, maximum: int) -> int:
    """`limit`, at least 1, capped at `maximum` (spec: servers apply a maximum)."""
    limit = query_int(request, "limit")
    if limit is None:
        return default
    if limit < 1:
        raise invalid_param("limit must be a positive integer")
    return min(limit, maximum)


def _forwards(request: web.Request) -> bool:
    direction = query_str(request, "dir", "b")
    if direction not in ("b", "f"):
        raise invalid_param("dir must be 'b' or 'f'")
    return direction == "f"


def _recurse(request: web.Request) -> bool | None:
    value = request.query.get("recurse")
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid_param("recurse must be 'true' or 'false'")
    return value == "true"


def _include_participated(request: web.Request) -> bool:
    include = query_str(request, "include", "all")
    if include not in ("all", "participated"):
        raise invalid_param("include must be 'all' or 'participated'")
    return include == "participated"


def register(router: Router, hs: HomeServer) -> None:
    relations = hs.relations

    async def get_relations(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        limit = _limit(request, DEFAULT_RELATIONS_LIMIT, MAX_LIMIT)
        page = await relations.children(
            requester.user_id,
            request.match_info["roomId"],
            request.match_info["eventId"],
            relation_type=request.match_info.get("relType"),
            event_type=request.match_info.get("eventType"),
            from_token=request.query.get("from"),
            to_token=request.query.get("to"),
            limit=limit,
            forwards=_forwards(request),
            recurse=_recurse(request),
        )
        body: dict = {
            "chunk": await hs.serializer.serialize(
                page.events, device=(requester.user_id, requester.device_id)
            )
        }
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        if page.prev_batch is not None:
            body["prev_batch"] = page.prev_batch
        if page.recursion_depth is not None:
            body["recursion_depth"] = page.recursion_depth
        return json_response(body)

    async def get_threads(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        page = await relations.threads(
            requester.user_id,
            request.match_info["roomId"],
            participated=_include_participated(request),
            from_token=request.query.get("from"),
            limit=_limit(request, DEFAULT_THREADS_LIMIT, MAX_LIMIT),
        )
        body: dict = {
            "chunk": await hs.serializer.serialize(
                page.roots, device=(requester.user_id, requester.device_id)
            )
        }
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        return json_response(body)

    v1 = ("v1",)
    router.client("GET", "/rooms/{roomId}/relations/{eventId}", get_relations, v1)
    router.client("GET", "/rooms/{roomId}/relations/{eventId}/{relType}", get_relations, v1)
    router.client(
        "GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", get_relations, v1
    )
    router.client("GET", "/rooms/{roomId}/threads", get_threads, v1)
