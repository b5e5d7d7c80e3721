"""Creating rooms and sending events into them: the write side of the DAG.

Every write to a room goes through `RoomWriter.write`: inside ONE database
transaction holding the room's lock it reads the forward extremities and
the state they lead to, builds each event (prev_events, auth_events, depth),
checks it against the auth rules, signs it, and persists the event, its
edges, its state group, the current state and membership. Writes to one
room are thereby serialized (across processes too, by a PostgreSQL advisory
lock); different rooms proceed in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from signedjson.key import SigningKey

from storage import Storage
from storage.engines import Transaction
from storage.events import EventPosition, EventStore, StateMap

from ..errors import MatrixError
from ..events.builder import build_event
from ..events.model import ROOM_VERSIONS, Event, RoomVersion, StateKey
from ..util import now_ms
from .auth import AuthError, auth_types_for_event, check_auth_rules
from .state_res import resolve_state

logger = logging.getLogger(__name__)

CREATE_KEY: StateKey = ("m.room.create", "")


@dataclass
class RoomHead:
    """The tip of a room's graph inside a write: what the next event builds on."""

    room_id: str
    room_version: RoomVersion
    prev_event_ids: list[str]
    depth: int
    state_group: int | None
    state: StateMap
    # Events looked up while writing, by ID (auth events mostly).
    events: dict[str, Event] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRequest:
    """One event to send: what the client (or the server) asks for."""

    type: str
    sender: str
    content: dict[str, Any]
    state_key: str | None = None
    txn_id: str | None = None
    device_id: str | None = None
    # Extra top-level PDU fields (e.g. `redacts` before v11).
    extra: dict[str, Any] = field(default_factory=dict)
    # Set by an application service (MSC3316 timestamp massaging); else now.
    origin_server_ts: int | None = None


@dataclass(frozen=True)
class NewRoom:
    """A room being created: its first request must be its m.room.create."""

    room_version: RoomVersion
    creator: str
    is_public: bool
    # None for v12+, where the room ID is derived from the create event.
    room_id: str | None


@dataclass(frozen=True)
class SentEvent:
    event: Event
    position: EventPosition
    # True when a retried transaction ID returned the event sent before.
    deduplicated: bool = False


# A service-level check run inside the write's transaction, before each event
# is built; it must read through `txn` (another transaction would deadlock SQLite).
WriteCheck = Callable[[Transaction, RoomHead, EventRequest], Awaitable[None]]

# Called after commit with every event a write persisted, in order.
EventListener = Callable[[list[SentEvent]], Awaitable[None] | None]


def _same_request(event: Event, request: EventRequest) -> bool:
    """Whether a retried transaction asks for what `event` already is (for a redaction: the same target)."""
    if event.type == "m.room.redaction":
        return event.redacts == request.content.get("redacts", request.extra.get("redacts"))
    return True


class RoomWriter:
    def __init__(self, storage: Storage, server_name: str, signing_key: SigningKey) -> None:
        self.storage = storage
        self.events: EventStore = storage.events
        self.server_name = server_name
        self.signing_key = signing_key
        self._locks: dict[str, asyncio.Lock] = {}
        self.listeners: list[EventListener] = []

    # --------------------------------------------------------------- locks

    def _lock(self, room_id: str) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = asyncio.Lock()
        return lock

    def _release(self, room_id: str, lock: asyncio.Lock) -> None:
        if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
            self._locks.pop(room_id, None)

    # --------------------------------------------------------------- heads

    async def _load_head(self, txn: Transaction, room_id: str) -> RoomHead:
        version_id = await txn.fetchval("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
        if version_id is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        room_version = ROOM_VERSIONS[version_id]
        extremities = await EventStore.forward_extremities_txn(txn, room_id)
        meta = await EventStore.event_meta_txn(txn, extremities)
        depth = max((d for d, _g in meta.values()), default=0)
        groups = [g for _d, g in meta.values()]
        if len(groups) == 1:
            group = groups[0]
            state = await self.events.state_group_txn(txn, group)
        else:
            state_sets = [await self.events.state_group_txn(txn, g) for g in groups]

            async def get_events(ids: Any) -> dict[str, Event]:
                return await self.events.get_events_txn(txn, ids)

            state = await resolve_state(room_version, state_sets, get_events)
            group = None  # resolved state gets a group of its own when it changes
        return RoomHead(room_id, room_version, extremities, depth, group, dict(state))

    # -------------------------------------------------------------- writing

    async def write(
        self,
        room_id: str | None,
        requests: Sequence[EventRequest],
        *,
        new_room: NewRoom | None = None,
        check: WriteCheck | None = None,
    ) -> list[SentEvent]:
        """Build, authorise and persist `requests` in order, atomically.

        With `new_room`, the room is created (for createRoom) instead of
        loaded; `check` runs service-level checks (beyond the auth rules)
        against the state each event would be sent in.
        """
        if new_room is not None:
            # Nobody else can write to a room that does not exist yet.
            sent = await self.storage.db.run(
                "create_room", self._write_txn, None, requests, new_room, check,
                read_committed=True,
            )
        else:
            assert room_id is not None
            lock = self._lock(room_id)
            async with lock:
                try:
                    sent = await self.storage.db.run(
                        "send_events", self._write_txn, room_id, requests, None, check,
                        read_committed=True,
                    )
                finally:
                    self._release(room_id, lock)
        fresh = [s for s in sent if not s.deduplicated]
        if fresh:
            for listener in self.listeners:
                result = listener(fresh)
                if result is not None:
                    await result
        return sent

    async def _write_txn(
        self,
        txn: Transaction,
        room_id: str | None,
        requests: Sequence[EventRequest],
        new_room: NewRoom | None,
        check: WriteCheck | None,
    ) -> list[SentEvent]:
        if new_room is not None:
            head = RoomHead(new_room.room_id or "", new_room.room_version, [], 0, None, {})
        else:
            assert room_id is not None
            await EventStore.lock_room_txn(txn, self.storage.db.dialect, room_id)
            head = await self._load_head(txn, room_id)
        sent = []
        for request in requests:
            if request.txn_id is not None and request.device_id is not None:
                existing = await txn.fetchone(
                    "SELECT event_id, stream_ordering, topological_ordering FROM events"
                    " WHERE room_id = ? AND sender = ? AND device_id = ? AND txn_id = ? AND type = ?",
                    (head.room_id, request.sender, request.device_id, request.txn_id, request.type),
                )
                if existing is not None:
                    event_id, stream, topo = existing
                    event = (await self.events.get_events_txn(txn, [event_id]))[event_id]
                    if not _same_request(event, request):
                        # Redacting another event with a used transaction ID: answering
                        # with the earlier redaction would report one that never happened.
                        raise MatrixError(
                            400, "M_INVALID_PARAM", "This transaction ID was already used for another event"
                        )
                    sent.append(SentEvent(event, EventPosition(stream, topo), deduplicated=True))
                    continue
            if check is not None:
                await check(txn, head, request)
            event = await self._build_checked(txn, head, request)
            if new_room is not None and not sent:
                head.room_id = event.room_id  # derived from the create event in v12
                await EventStore.insert_room_txn(
                    txn, head.room_id, new_room.room_version.identifier, new_room.creator,
                    event.origin_server_ts, new_room.is_public,
                )
            sent.append(await self._persist(txn, head, event, request))
        return sent

    async def _build_checked(self, txn: Transaction, head: RoomHead, request: EventRequest) -> Event:
        version = head.room_version
        auth_keys = auth_types_for_event(
            version, request.type, request.sender, request.state_key, request.content
        )
        auth_ids = [head.state[k] for k in auth_keys if k in head.state]
        wanted = set(auth_ids)
        if CREATE_KEY in head.state:
            wanted.add(head.state[CREATE_KEY])
        missing = [i for i in wanted if i not in head.events]
        if missing:
            head.events.update(await self.events.get_events_txn(txn, missing))
        fields: dict[str, Any] = {
            "type": request.type,
            "sender": request.sender,
            "content": request.content,
            **request.extra,
        }
        if request.state_key is not None:
            fields["state_key"] = request.state_key
        if not (request.type == "m.room.create" and version.hashed_room_ids):
            fields["room_id"] = head.room_id
        # Raises EventValidationError (a MatrixError) for malformed or oversized events.
        event = build_event(
            version,
            fields,
            prev_event_ids=head.prev_event_ids,
            auth_event_ids=auth_ids,
            depth=head.depth + 1,
            server_name=self.server_name,
            signing_key=self.signing_key,
            origin_server_ts=now_ms() if request.origin_server_ts is None else request.origin_server_ts,
        )
        auth_state = {k: head.events[head.state[k]] for k in auth_keys if k in head.state}
        if CREATE_KEY in head.state:
            auth_state[CREATE_KEY] = head.events[head.state[CREATE_KEY]]
        elif request.type != "m.room.create":
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        try:
            check_auth_rules(event, auth_state)
        except AuthError as err:
            raise MatrixError(403, "M_FORBIDDEN", str(err)) from None
        return event

    async def _persist(
        self, txn: Transaction, head: RoomHead, event: Event, request: EventRequest
    ) -> SentEvent:
        replaces = None
        state_group = head.state_group
        if event.is_state:
            key = event.state_tuple
            replaces = head.state.get(key)
            head.state[key] = event.event_id
            state_group = await self.events.store_state_group_txn(
                txn,
                event.room_id,
                head.state_group,
                {key: event.event_id} if head.state_group is not None else dict(head.state),
            )
        assert state_group is not None
        position = await self.events.persist_event_txn(
            txn,
            event,
            state_group,
            txn_id=request.txn_id,
            device_id=request.device_id,
            replaces_state=replaces,
        )
        if event.is_state:
            await EventStore.update_current_state_txn(txn, event, position.stream_ordering)
        if event.redacts is not None:
            # Local redactions are only sent once the service has checked the
            # sender may redact the target (see Rooms.redact), so they apply.
            await self.events.mark_redacted_txn(txn, event.redacts, event.event_id)
        head.events[event.event_id] = event
        head.prev_event_ids = [event.event_id]
        head.depth = event.depth
        head.state_group = state_group
        return SentEvent(event, position)
