"""Relations: an event's children (`/relations`), a room's threads (`/threads`),
and the checks a new relation must pass before it is sent.

Pagination tokens are those of `/messages` and `/sync` (`homeserver.sync.tokens`):
a token names the gap just after an event, so a backwards page starts
with the event before the gap and a forwards page with the one after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage import Storage
from storage.engines import Transaction
from storage.relations import Position, RelatedEvent, RelationStore

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..events.model import Event
from ..sync.tokens import (
    InvalidToken,
    StreamToken,
    TopologicalToken,
    parse_pagination_token,
)
from .visibility import filter_events_for_user

if TYPE_CHECKING:
    from .service import Rooms
    from .writer import EventRequest, RoomHead

# Spec: "Homeservers SHOULD traverse at least 3 levels of relationships".
MAX_RECURSION_DEPTH = 3
MAX_LIMIT = 100


async def check_new_relation(txn: Transaction, head: RoomHead, request: EventRequest) -> None:
    """Refuse a relation this server will not send (a `WriteCheck`, run under the room's lock).

    As Synapse does: the target, when known, must be in the same room
    (400); an annotation needs a string `key`, and a second one with the
    same type and key from the same sender is refused with 400
    M_DUPLICATE_ANNOTATION until the first is redacted (spec: avoiding
    duplicate annotations); a thread cannot start from an event that
    itself relates to another, a thread reply included (spec: 400 M_UNKNOWN).
    """
    relates = request.content.get("m.relates_to")
    if not isinstance(relates, dict):
        return
    parent_id, rel_type = relates.get("event_id"), relates.get("rel_type")
    if not isinstance(parent_id, str) or not isinstance(rel_type, str):
        return  # not a relation (a reply's m.in_reply_to, or malformed): nothing to check
    if "\x00" in parent_id + rel_type:
        return  # names nothing: stored as no relation (see storage.events)
    if rel_type == "m.annotation" and (not isinstance(relates.get("key"), str) or "\x00" in relates["key"]):
        raise invalid_param("An annotation needs a string 'key' (without NUL characters)")
    parent = await RelationStore.relation_parent_txn(txn, parent_id)
    if parent is not None and parent.room_id != head.room_id:
        raise MatrixError(400, "M_UNKNOWN", "Relations must be in the same room")
    if rel_type == "m.annotation" and await RelationStore.has_annotation_txn(
        txn, head.room_id, parent_id, request.sender, request.type, relates["key"]
    ):
        raise MatrixError(400, "M_DUPLICATE_ANNOTATION", "You already sent this annotation")
    if rel_type == "m.thread" and parent is not None and parent.relation_type is not None:
        raise MatrixError(400, "M_UNKNOWN", "Cannot start a thread from an event with a relation")


def parse_position(token: str) -> Position:
    """The position a `from`/`to` token names, or 400 M_INVALID_PARAM."""
    try:
        parsed = parse_pagination_token(token)
    except InvalidToken:
        raise invalid_param("Unknown pagination token") from None
    if isinstance(parsed, TopologicalToken):
        return Position(parsed.stream, parsed.topological)
    return Position(parsed.events)


@dataclass(frozen=True)
class RelationsPage:
    events: list[Event]
    next_batch: str | None
    prev_batch: str | None
    # Set when the client said whether to recurse (spec: then mandatory).
    recursion_depth: int | None


@dataclass(frozen=True)
class ThreadsPage:
    roots: list[Event]
    next_batch: str | None


class Relations:
    def __init__(self, storage: Storage, rooms: Rooms) -> None:
        self.events = storage.events
        self.store = storage.relations
        self.rooms = rooms

    async def children(
        self,
        user_id: str,
        room_id: str,
        parent_id: str,
        *,
        relation_type: str | None = None,
        event_type: str | None = None,
        from_token: str | None = None,
        to_token: str | None = None,
        limit: int,
        forwards: bool = False,
        recurse: bool | None = None,
    ) -> RelationsPage:
        """The visible children of an event the user may see, one page at a time."""
        start = parse_position(from_token) if from_token is not None else None
        end = parse_position(to_token) if to_token is not None else None
        parent = await self._visible_parent(user_id, room_id, parent_id)
        depth = MAX_RECURSION_DEPTH if recurse else 1
        # One row more than asked says whether another page exists.
        rows = await self.store.children(
            room_id,
            parent.event_id,
            relation_type=relation_type,
            event_type=event_type,
            start=start,
            end=end,
            forwards=forwards,
            limit=limit + 1,
            depth=depth,
        )
        page = rows[:limit]
        next_batch = str(_gap_past(page[-1], forwards)) if len(rows) > limit else None
        found = await self.events.get_events(r.event_id for r in page)
        events = [found[r.event_id] for r in page if r.event_id in found]
        return RelationsPage(
            await filter_events_for_user(self.events, user_id, events),
            next_batch,
            from_token,
            None if recurse is None else depth,
        )

    async def _visible_parent(self, user_id: str, room_id: str, parent_id: str) -> Event:
        """The parent event, or 404 when it is unknown or hidden from the user (spec)."""
        try:
            return await self.rooms.visible_event(user_id, room_id, parent_id)
        except MatrixError as err:
            if err.errcode == "M_FORBIDDEN":
                raise not_found("Event not found") from None
            raise

    async def threads(
        self,
        user_id: str,
        room_id: str,
        *,
        participated: bool = False,
        from_token: str | None = None,
        limit: int,
    ) -> ThreadsPage:
        """The room's thread roots the user may see, latest activity first."""
        before = parse_position(from_token) if from_token is not None else None
        self.rooms.check_room_id(room_id)
        # Spec: an unknown room is a 403, like one the user cannot see.
        if not await self.rooms.room_exists(room_id):
            raise forbidden("You are not allowed to view this room")
        await self.rooms.check_can_read(user_id, room_id)
        rows = await self.store.threads(
            room_id,
            participant=user_id if participated else None,
            before=before,
            limit=limit + 1,
        )
        page = rows[:limit]
        next_batch = (
            str(StreamToken(page[-1].latest_stream_ordering - 1))
            if len(rows) > limit
            else None
        )
        found = await self.events.get_events(r.root_id for r in page)
        roots = [found[r.root_id] for r in page if r.root_id in found]
        return ThreadsPage(await filter_events_for_user(self.events, user_id, roots), next_batch)


def _gap_past(event: RelatedEvent, forwards: bool) -> TopologicalToken:
    """The gap just beyond `event` in the direction of travel."""
    stream = event.stream_ordering if forwards else event.stream_ordering - 1
    return TopologicalToken(event.topological_ordering, stream)
