"""Admin API for content reports, as Synapse serves it (/_synapse/admin/v1/event_reports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from storage.reports import EventReport

from ..errors import invalid_param, not_found
from ..http import Router, json_response, query_int
from ..events.redaction import state_content

if TYPE_CHECKING:
    from ..app import HomeServer

DEFAULT_LIMIT = 100
_ROOM_FIELDS = {"m.room.name": "name", "m.room.canonical_alias": "alias"}


def register(router: Router, hs: "HomeServer") -> None:
    events = hs.storage.events
    reports = hs.storage.reports

    async def describe(found: Sequence[EventReport]) -> list[dict[str, Any]]:
        """Reports as Synapse lists them, with the room's name and alias and the event's sender."""
        room_ids = list(dict.fromkeys(r.room_id for r in found))
        state = await events.get_current_state_ids_for_rooms(room_ids, list(_ROOM_FIELDS))
        wanted = [e for room in state.values() for k, e in room.items() if k[1] == ""]
        fetched = await events.get_events([*wanted, *(r.event_id for r in found)])

        def room_field(room_id: str, event_type: str) -> Any:
            event = fetched.get(state[room_id].get((event_type, ""), ""))
            value = state_content(event).get(_ROOM_FIELDS[event_type]) if event else None
            return value if isinstance(value, str) else None

        entries = []
        for report in found:
            event = fetched.get(report.event_id)
            entries.append(
                {
                    "id": report.id,
                    "received_ts": report.received_ts,
                    "room_id": report.room_id,
                    "name": room_field(report.room_id, "m.room.name"),
                    "event_id": report.event_id,
                    "user_id": report.user_id,
                    "reason": report.reason,
                    "score": report.score,
                    "sender": event.sender if event is not None else None,
                    "canonical_alias": room_field(report.room_id, "m.room.canonical_alias"),
                }
            )
        return entries

    async def list_reports(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        start = query_int(request, "from") or 0
        limit = query_int(request, "limit")
        limit = DEFAULT_LIMIT if limit is None else limit
        if start < 0:
            raise invalid_param("The start parameter must be a positive integer.")
        if limit < 0:
            raise invalid_param("The limit parameter must be a positive integer.")
        direction = request.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise invalid_param("Unknown direction: dir must be 'b' or 'f'")
        found, total = await reports.get_event_reports(
            offset=start,
            limit=limit,
            newest_first=direction == "b",
            room_id=request.query.get("room_id"),
            user_id=request.query.get("user_id"),
        )
        body: dict[str, Any] = {"event_reports": await describe(found), "total": total}
        if start + len(found) < total:
            body["next_token"] = start + len(found)
        return json_response(body)

    async def get_report(request: web.Request) -> web.Response:
        await hs.auth.get_admin(request)
        report_id = request.match_info["reportId"]
        if not report_id.isascii() or not report_id.isdigit() or len(report_id) > 18:
            raise invalid_param(
                "The report_id parameter must be a string representing a positive integer."
            )
        report = await reports.get_event_report(int(report_id))
        if report is None:
            raise not_found("Event report not found")
        (entry,) = await describe([report])
        event = await events.get_event(report.event_id)
        entry["event_json"] = event.pdu if event is not None else None
        return json_response(entry)

    router.add("GET", "/_synapse/admin/v1/event_reports", list_reports)
    router.add("GET", "/_synapse/admin/v1/event_reports/{reportId}", get_report)
