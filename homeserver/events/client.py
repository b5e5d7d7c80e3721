"""Events as clients see them (the spec's ClientEvent format).

The PDU's DAG fields (prev_events, auth_events, depth, hashes, signatures)
are dropped; `unsigned` gets what only the server knows: the event's age,
the transaction ID (for the device that sent it), the content the state
event replaced, the redaction that redacted it, and bundled relations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storage.events import EventStore

from ..util import now_ms
from .model import Event
from .redaction import redact


def client_event(
    event: Event,
    now: int,
    *,
    device: tuple[str, str] | None = None,
    replaced: Event | None = None,
    redaction: Event | None = None,
    relations: Mapping[str, Any] | None = None,
    include_room_id: bool = True,
) -> dict[str, Any]:
    """One event in client format.

    `device` is the (user ID, device ID) asking, to show its own transaction
    IDs; `replaced` the state event this one replaced; `redaction` the
    event that redacted it (its content is then stripped).
    """
    pdu = redact(event.pdu, event.room_version) if redaction is not None else event.pdu
    body: dict[str, Any] = {
        "content": pdu.get("content", {}),
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "sender": event.sender,
        "type": event.type,
    }
    if include_room_id:
        body["room_id"] = event.room_id
    if event.is_state:
        body["state_key"] = event.state_key
    redacts = event.redacts
    if redacts is not None:
        # Clients of every version read the top-level key; v11+ also has it in content.
        body["redacts"] = redacts
    unsigned: dict[str, Any] = {"age": max(0, now - event.origin_server_ts)}
    if (
        device is not None
        and event.transaction is not None
        and event.sender == device[0]
        and event.transaction[0] == device[1]
    ):
        unsigned["transaction_id"] = event.transaction[1]
    if replaced is not None:
        unsigned["replaces_state"] = replaced.event_id
        unsigned["prev_content"] = (
            redact(replaced.pdu, replaced.room_version)["content"]
            if replaced.redacted_by is not None
            else replaced.content
        )
        unsigned["prev_sender"] = replaced.sender
    if redaction is not None:
        unsigned["redacted_because"] = client_event(redaction, now, include_room_id=include_room_id)
    if relations:
        unsigned["m.relations"] = dict(relations)
    body["unsigned"] = unsigned
    return body


class ClientEventSerializer:
    """Serializes batches of events, fetching what they refer to in one go."""

    def __init__(self, events: EventStore) -> None:
        self.events = events

    async def serialize(
        self,
        events: Iterable[Event],
        *,
        device: tuple[str, str] | None = None,
        relations: Mapping[str, Mapping[str, Any]] | None = None,
        include_room_id: bool = True,
    ) -> list[dict[str, Any]]:
        events = list(events)
        wanted = {e.replaces_state for e in events if e.replaces_state is not None}
        wanted |= {e.redacted_by for e in events if e.redacted_by is not None}
        related = await self.events.get_events(wanted) if wanted else {}
        now = now_ms()
        return [
            client_event(
                e,
                now,
                device=device,
                replaced=related.get(e.replaces_state) if e.replaces_state else None,
                redaction=related.get(e.redacted_by) if e.redacted_by else None,
                relations=relations.get(e.event_id) if relations else None,
                include_room_id=include_room_id,
            )
            for e in events
        ]
