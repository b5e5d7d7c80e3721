"""Events as clients see them (the spec's ClientEvent format).

The PDU's DAG fields (prev_events, auth_events, depth, hashes, signatures)
are dropped; `unsigned` gets what only the server knows: the event's age,
the transaction ID (for the device that sent it), the content the state
event replaced, the redaction that redacted it, and bundled relations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from storage.events import EventStore
from storage.relations import RelationStore

from ..rooms.visibility import filter_events_for_user
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


# Children of these relation types carry no aggregations of their own
# (spec: an edit or a reaction cannot itself be edited or annotated).
_NO_AGGREGATIONS = ("m.replace", "m.annotation")


def relation_of(event: Event) -> tuple[str, str] | None:
    """The (rel_type, parent event ID) of the event's `m.relates_to`, if it forms a relation."""
    relates = event.content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    rel_type, parent_id = relates.get("rel_type"), relates.get("event_id")
    if isinstance(rel_type, str) and isinstance(parent_id, str):
        return rel_type, parent_id
    return None


def _takes_aggregations(event: Event) -> bool:
    """State, redacted and rejected events, edits and reactions get no bundled aggregations."""
    if event.is_state or event.redacted_by is not None or event.rejected:
        return False
    relation = relation_of(event)
    return relation is None or relation[0] not in _NO_AGGREGATIONS


def _valid_replacement(edit: Event) -> bool:
    """The content checks of the spec's validity rules (the store checks sender and type).

    An encrypted edit carries `m.new_content` inside the ciphertext, where
    the server cannot look.
    """
    return edit.type == "m.room.encrypted" or isinstance(edit.content.get("m.new_content"), dict)


# Ranked children of parents: (parent IDs, skip, take) -> {parent: child IDs, best first}.
_Ranking = Callable[[Sequence[str], int, int], Awaitable[dict[str, list[str]]]]


class ClientEventSerializer:
    """Serializes batches of events, fetching what they refer to in one go.

    Bundled aggregations (`unsigned["m.relations"]`: threads, edits,
    references) depend on who asks, for history visibility and thread
    participation, so they are added when the requesting user is known
    (`user_id`, or the user of `device`). A batch costs a fixed number of
    queries however many events it holds.
    """

    def __init__(self, events: EventStore, relations: RelationStore) -> None:
        self.events = events
        self.relations = relations

    async def serialize(
        self,
        events: Iterable[Event],
        *,
        device: tuple[str, str] | None = None,
        user_id: str | None = None,
        relations: Mapping[str, Mapping[str, Any]] | None = None,
        include_room_id: bool = True,
    ) -> list[dict[str, Any]]:
        """Client-format events; `relations` adds to (or overrides) the computed bundles."""
        events = list(events)
        user_id = user_id or (device[0] if device is not None else None)
        wanted = {e.replaces_state for e in events if e.replaces_state is not None}
        wanted |= {e.redacted_by for e in events if e.redacted_by is not None}
        related = await self.events.get_events(wanted) if wanted else {}
        bundles = (
            await self._aggregations(events, user_id, device, include_room_id)
            if user_id is not None
            else {}
        )
        for event_id, extra in (relations or {}).items():
            bundles[event_id] = {**bundles.get(event_id, {}), **extra}
        now = now_ms()
        return [
            client_event(
                e,
                now,
                device=device,
                replaced=related.get(e.replaces_state) if e.replaces_state else None,
                redaction=related.get(e.redacted_by) if e.redacted_by else None,
                relations=bundles.get(e.event_id),
                include_room_id=include_room_id,
            )
            for e in events
        ]

    async def _aggregations(
        self,
        events: list[Event],
        user_id: str,
        device: tuple[str, str] | None,
        include_room_id: bool,
    ) -> dict[str, dict[str, Any]]:
        """`m.relations` for each event of the batch with aggregated children (spec:
        server-side aggregation of m.thread, m.replace and m.reference)."""
        parents = {e.event_id: e for e in events if _takes_aggregations(e)}
        if not parents:
            return {}
        summaries = await self.relations.summaries(list(parents), user_id)
        if not summaries:
            return {}

        def having(rel_type: str) -> list[str]:
            return [p for p, by_type in summaries.items() if rel_type in by_type]

        # A thread cannot grow from an event that is itself a child (spec).
        roots = [p for p in having("m.thread") if relation_of(parents[p]) is None]
        latest = await self._first_visible(
            roots, self.relations.latest_thread_events, user_id, lambda _: True
        )
        edits = await self._first_visible(
            having("m.replace"), self.relations.latest_replacements, user_id, _valid_replacement
        )
        references = await self._visible_references(having("m.reference"), user_id)
        # The latest thread events carry their own aggregations (spec); edits take none.
        nested = {e.event_id: e for e in (*latest.values(), *edits.values())}
        serialized = {
            body["event_id"]: body
            for body in await self.serialize(
                nested.values(), device=device, user_id=user_id, include_room_id=include_room_id
            )
        }
        result: dict[str, dict[str, Any]] = {}
        for parent_id, event in latest.items():
            summary = summaries[parent_id]["m.thread"]
            result.setdefault(parent_id, {})["m.thread"] = {
                "latest_event": serialized[event.event_id],
                "count": summary.count,
                "current_user_participated": summary.user_participated
                or parents[parent_id].sender == user_id,
            }
        for parent_id, event in edits.items():
            result.setdefault(parent_id, {})["m.replace"] = serialized[event.event_id]
        for parent_id, child_ids in references.items():
            result.setdefault(parent_id, {})["m.reference"] = {
                "chunk": [{"event_id": child_id} for child_id in child_ids]
            }
        return result

    async def _first_visible(
        self,
        parent_ids: list[str],
        ranking: _Ranking,
        user_id: str,
        accept: Callable[[Event], bool],
    ) -> dict[str, Event]:
        """Per parent, the best-ranked child that `accept`s and the user may see.

        Usually the first candidate wins; parents whose candidates all fail
        are retried together with a window four times wider, so the number
        of queries grows with the logarithm of the skipped candidates, never
        with the number of parents.
        """
        chosen: dict[str, Event] = {}
        pending = parent_ids
        skip, take = 0, 1
        while pending:
            ranked = await ranking(pending, skip, take)
            found = await self.events.get_events(i for ids in ranked.values() for i in ids)
            candidates = [e for e in found.values() if accept(e)]
            visible = {
                e.event_id for e in await filter_events_for_user(self.events, user_id, candidates)
            }
            for parent_id in pending:
                pick = next((i for i in ranked.get(parent_id, ()) if i in visible), None)
                if pick is not None:
                    chosen[parent_id] = found[pick]
            # Only parents that filled the window may have more candidates.
            pending = [
                p for p in pending if p not in chosen and len(ranked.get(p, ())) == take
            ]
            skip, take = skip + take, take * 4
        return chosen

    async def _visible_references(
        self, parent_ids: list[str], user_id: str
    ) -> dict[str, list[str]]:
        """Per parent, the IDs of the referencing events the user may see."""
        if not parent_ids:
            return {}
        references = await self.relations.references(parent_ids)
        found = await self.events.get_events(i for ids in references.values() for i in ids)
        visible = {
            e.event_id
            for e in await filter_events_for_user(self.events, user_id, list(found.values()))
        }
        result = {p: [i for i in ids if i in visible] for p, ids in references.items()}
        return {p: ids for p, ids in result.items() if ids}
