"""Search: POST /search (room events) and POST /user_directory/search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.search import KEY_TYPES

from ..errors import bad_json, invalid_param, missing_param
from ..events.model import Event
from ..http import Router, body_str, json_response, read_json
from ..search.service import (
    DEFAULT_CONTEXT_LIMIT,
    GROUP_KEYS,
    MAX_CONTEXT_LIMIT,
    ORDERS,
    Batch,
    RoomEventsCriteria,
    RoomEventsResults,
)
from ..search.user_directory import DEFAULT_LIMIT, MAX_LIMIT
from ..sync.filters import RoomEventFilter
from ..sync.tokens import InvalidToken

if TYPE_CHECKING:
    from ..app import HomeServer

CATEGORY = "room_events"


def _object(body: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise bad_json(f"'{where}{key}' must be a JSON object")
    return value


def _bool(body: dict[str, Any], key: str, where: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad_json(f"'{where}{key}' must be true or false")
    return value


def _count(body: dict[str, Any], key: str, default: int, maximum: int, where: str) -> int:
    value = body.get(key, default)
    if type(value) is not int:
        raise bad_json(f"'{where}{key}' must be an integer")
    if value < 0:
        raise invalid_param(f"'{where}{key}' must be 0 or more")
    return min(value, maximum)


def _criteria(category: dict[str, Any]) -> RoomEventsCriteria:
    """The `room_events` criteria, or M_BAD_JSON / M_INVALID_PARAM / M_MISSING_PARAM."""
    where = f"search_categories.{CATEGORY}."
    term = body_str(category, "search_term", max_length=1000)
    keys = category.get("keys", list(KEY_TYPES))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise bad_json(f"'{where}keys' must be a list of strings")
    unknown = [k for k in keys if k not in KEY_TYPES]
    if unknown:
        raise invalid_param(f"Unknown search key {unknown[0]!r}; known: {', '.join(KEY_TYPES)}")
    order_by = category.get("order_by", "rank")
    if order_by not in ORDERS:
        raise invalid_param(f"'{where}order_by' must be 'rank' or 'recent'")
    filter_json = category.get("filter")
    event_filter = RoomEventFilter.from_json(filter_json) if filter_json is not None else RoomEventFilter()
    context = _object(category, "event_context", where)
    group_by: list[str] = []
    groupings = _object(category, "groupings", where)
    if groupings is not None:
        groups = groupings.get("group_by", [])
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("key"), str) for g in groups
        ):
            raise bad_json(f"'{where}groupings.group_by' must be a list of {{\"key\": ...}} objects")
        group_by = [g["key"] for g in groups]
        if any(k not in GROUP_KEYS for k in group_by):
            raise invalid_param(f"'{where}groupings' can group by 'room_id' or 'sender'")
    before_limit = after_limit = None
    include_profile = False
    if context is not None:
        context_where = f"{where}event_context."
        before_limit = _count(context, "before_limit", DEFAULT_CONTEXT_LIMIT, MAX_CONTEXT_LIMIT, context_where)
        after_limit = _count(context, "after_limit", DEFAULT_CONTEXT_LIMIT, MAX_CONTEXT_LIMIT, context_where)
        include_profile = _bool(context, "include_profile", context_where)
    return RoomEventsCriteria(
        search_term=term,
        keys=tuple(keys),
        event_filter=event_filter,
        order_by=order_by,
        before_limit=before_limit,
        after_limit=after_limit,
        include_profile=include_profile,
        include_state=_bool(category, "include_state", where),
        group_by=tuple(group_by),
    )


def register(router: Router, hs: HomeServer) -> None:
    serializer = hs.serializer

    async def serialize(events: list[Event], device: tuple[str, str]) -> list[dict[str, Any]]:
        return await serializer.serialize(events, device=device)

    async def room_events_body(
        results: RoomEventsResults, device: tuple[str, str]
    ) -> dict[str, Any]:
        events = await serialize([r.event for r in results.results], device)
        items = []
        for result, event in zip(results.results, events):
            item: dict[str, Any] = {"rank": result.rank, "result": event}
            if result.context is not None:
                context = result.context
                item["context"] = {
                    "events_before": await serialize(context.events_before, device),
                    "events_after": await serialize(context.events_after, device),
                    "start": context.start,
                    "end": context.end,
                }
                if context.profile_info is not None:
                    item["context"]["profile_info"] = context.profile_info
            items.append(item)
        body: dict[str, Any] = {
            "results": items,
            "count": results.count,
            "highlights": results.highlights,
        }
        if results.next_batch is not None:
            body["next_batch"] = results.next_batch
        if results.groups:
            body["groups"] = {
                key: {
                    value: {
                        "results": group.results,
                        "order": group.order,
                        **({"next_batch": group.next_batch} if group.next_batch else {}),
                    }
                    for value, group in groups.items()
                }
                for key, groups in results.groups.items()
            }
        if results.state is not None:
            body["state"] = {
                room_id: await serialize(state, device) for room_id, state in results.state.items()
            }
        return body

    async def search(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        categories = body.get("search_categories")
        if categories is None:
            raise missing_param("Missing parameter: search_categories")
        if not isinstance(categories, dict):
            raise bad_json("'search_categories' must be a JSON object")
        unknown = [c for c in categories if c != CATEGORY]
        if unknown:
            raise invalid_param(f"Unknown search category {unknown[0]!r}; known: {CATEGORY}")
        token = request.query.get("next_batch")
        try:
            batch = Batch.parse(token) if token is not None else None
        except InvalidToken:
            raise invalid_param("Query parameter 'next_batch' is not a valid token") from None
        category = _object(categories, CATEGORY, "search_categories.")
        if category is None:
            return json_response({"search_categories": {}})
        criteria = _criteria(category)
        results = await hs.search.room_events(requester.user_id, criteria, batch)
        device = (requester.user_id, requester.device_id)
        return json_response(
            {"search_categories": {CATEGORY: await room_events_body(results, device)}}
        )

    async def user_directory_search(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        body = await read_json(request)
        term = body_str(body, "search_term", max_length=1000)
        limit = _count(body, "limit", DEFAULT_LIMIT, MAX_LIMIT, "")
        found = await hs.user_directory.search(requester.user_id, term, limit)
        results = []
        for entry in found.results:
            result = {"user_id": entry.user_id}
            if entry.display_name is not None:
                result["display_name"] = entry.display_name
            if entry.avatar_url is not None:
                result["avatar_url"] = entry.avatar_url
            results.append(result)
        return json_response({"limited": found.limited, "results": results})

    router.client("POST", "/search", search)
    router.client("POST", "/user_directory/search", user_directory_search)
