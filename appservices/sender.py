"""The transaction sender: pushes each application service the events it is
interested in, as PUT {url}/_matrix/app/v1/transactions/{txnId}.

Nothing is kept only in memory. For each service the database records how
far it has been looked at in every stream (events, and with
`receive_ephemeral` receipts, typing and presence, and to-device messages
when it also opted into those) and the transactions built but not yet
acknowledged. Per service, two small tasks:

- the builder reads each stream from the service's position (positions
  commit in order, so a range read after N sees everything up to N), keeps
  what interests the service, and stores it as the next transaction while
  moving the positions on, in ONE database transaction: a crash loses
  nothing and duplicates nothing. To-device messages of its exclusive
  users' devices are deleted from the inbox in that same transaction (the
  service consumes them; a /sync will not see them);
- the deliverer sends the stored transactions in order, retrying one until
  the service accepts it (same txnId, same body), with exponential backoff
  up to `max_backoff`, then deletes it.

RoomWriter listeners and the notifier's publishers only wake the builders;
every `poll_interval` they also look on their own, which is how events
written by other processes sharing PostgreSQL arrive. Sending runs in one
process only: whichever holds the advisory lock (the pushers' helper).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import Counter, Gauge

from homeserver.ephemeral.presence import presence_event
from homeserver.events.model import Event
from homeserver.push.pushers import Ownership, take_ownership
from homeserver.rooms.writer import SentEvent
from homeserver.util import cancel_task, now_ms
from storage.appservices import AppserviceState, ToDeviceMessage
from storage.streams import current_positions

from .registration import ApplicationService

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)

TRANSACTIONS = Counter(
    "homeserver_appservice_transactions_total",
    "Transactions sent to application services, by service and outcome (sent, failed)",
    ["appservice", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "homeserver_appservice_queued_events",
    "Events (and ephemeral events, to-device messages) in transactions not yet accepted,"
    " per application service",
    ["appservice"],
)
LAST_SENT = Gauge(
    "homeserver_appservice_last_sent_timestamp_seconds",
    "When the application service last accepted a transaction (Unix time)",
    ["appservice"],
)

LOCK_NAME = "homeserver_appservices"
# Spec: Synapse's limit; a transaction carries at most this many events.
MAX_EVENTS_PER_TRANSACTION = 100
# Stream positions of each ephemeral stream read into one transaction.
EPHEMERAL_WINDOW = 100
EPHEMERAL_STREAMS = ("receipts", "typing", "presence")
# Synapse's limit: to-device messages one transaction carries at most (a
# stream position holding more is still sent whole, in one transaction).
MAX_TO_DEVICE_PER_TRANSACTION = 100


class TransactionSender:
    # Seconds; tests shorten them.
    initial_backoff = 1.0
    max_backoff = 300.0
    request_timeout = 60.0
    poll_interval = 1.0
    ownership_retry = 10.0

    def __init__(self, hs: HomeServer, services: list[ApplicationService]) -> None:
        self.hs = hs
        self.services = services
        self.is_owner = False
        self._workers: dict[str, _Worker] = {}
        self._session: aiohttp.ClientSession | None = None
        self._owner_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.services:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout)
        )
        self._owner_task = asyncio.create_task(self._own(), name="appservice sender ownership")

    async def stop(self) -> None:
        await cancel_task(self._owner_task)
        self._owner_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------- wake-ups

    def on_events(self, sent: list[SentEvent]) -> None:
        """RoomWriter listener: new events committed in this process."""
        self.wake()

    def on_stream_change(self, stream: str, position: int, rooms: Any, users: Any) -> None:
        """Notifier publisher: typing, receipts, presence or to-device messages
        changed in this process."""
        if stream in EPHEMERAL_STREAMS or stream == "to_device":
            self.wake()

    def wake(self) -> None:
        for worker in self._workers.values():
            worker.wake()

    # ---------------------------------------------------------- ownership

    async def _own(self) -> None:
        while True:
            try:
                ownership = await take_ownership(self.hs.db, LOCK_NAME)
            except Exception:
                logger.exception("taking application service sender ownership failed")
                ownership = None
            if ownership is not None:
                try:
                    await self._run_as_owner(ownership)
                except Exception:
                    logger.exception("lost application service sender ownership")
                finally:
                    self.is_owner = False
                    workers, self._workers = self._workers, {}
                    for worker in workers.values():
                        await worker.stop()
                    await ownership.release()
            await asyncio.sleep(self.ownership_retry)

    async def _run_as_owner(self, ownership: Ownership) -> None:
        logger.info("this process sends application service transactions")
        self.is_owner = True
        for service in self.services:
            worker = self._workers[service.id] = _Worker(self, service)
            await worker.start()
        while True:
            await asyncio.sleep(self.poll_interval)
            await ownership.check()
            self.wake()  # what other processes wrote

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the sender is not started"
        return self._session


class _Worker:
    """One application service's builder and deliverer."""

    def __init__(self, sender: TransactionSender, service: ApplicationService) -> None:
        self.sender = sender
        self.service = service
        self.hs = sender.hs
        self.store = sender.hs.storage.appservices
        self._wake = asyncio.Event()
        self._queued = asyncio.Event()
        self._state: AppserviceState | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._depth = QUEUE_DEPTH.labels(service.id)

    async def start(self) -> None:
        self._depth.set(await self.store.queued_event_count(self.service.id))
        self._wake.set()  # catch up on what arrived while nobody sent
        self._tasks = [
            asyncio.create_task(self._build_loop(), name=f"appservice {self.service.id} builder"),
            asyncio.create_task(self._deliver_loop(), name=f"appservice {self.service.id} deliverer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_task(task)
        self._tasks = []

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ building

    async def _build_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._build_once():
                    pass
            except Exception:
                logger.exception("building a transaction for %s failed", self.service.id)

    async def _build_once(self) -> bool:
        """Queue what the streams hold past the service's positions; False if nothing was new."""
        service = self.service
        if self._state is None:
            self._state = await self.store.get_state(service.id)
        state = self._state
        positions = dict(state.positions)
        current = await current_positions(self.hs.db)
        rows = await self.store.events_after(positions["events"], MAX_EVENTS_PER_TRANSACTION)
        if rows:
            positions["events"] = rows[-1][0]
        found = await self.hs.storage.events.get_events([e for _, e, rejected in rows if not rejected])
        interest = _Interest(self.hs, service)
        events = [
            found[e] for _, e, _r in rows if e in found and await interest.in_event(found[e])
        ]
        ephemeral: list[dict[str, Any]] = []
        for stream in EPHEMERAL_STREAMS:
            start = positions[stream]
            end = min(current.get(stream, 0), start + EPHEMERAL_WINDOW)
            if end <= start:
                continue
            if service.receive_ephemeral:
                ephemeral.extend(await self._ephemeral(stream, start, end, interest))
            positions[stream] = end
        to_device: list[ToDeviceMessage] = []
        start = positions["to_device"]
        end = min(current.get("to_device", 0), start + EPHEMERAL_WINDOW)
        if end > start:
            if service.sends_to_device:
                to_device, end = await self._to_device(start, end)
            positions["to_device"] = end
        if positions == state.positions:
            return False
        body = None
        if events or ephemeral or to_device:
            content: dict[str, Any] = {"events": await self.hs.serializer.serialize(events)}
            if service.receive_ephemeral:
                content["ephemeral"] = ephemeral
                content["de.sorunome.msc2409.ephemeral"] = ephemeral
            if service.sends_to_device:
                messages = [
                    {**m.message, "to_user_id": m.user_id, "to_device_id": m.device_id} for m in to_device
                ]
                content["to_device"] = messages
                content["de.sorunome.msc2409.to_device"] = messages
            body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        count = len(events) + len(ephemeral) + len(to_device)
        # Its exclusive users' messages are its alone: consumed. Others' stay
        # for their own devices' /sync (and any other service interested).
        consumed = [m for m in to_device if service.is_exclusive_user(m.user_id)]
        queued = await self.store.queue(service.id, state, positions, body, count, now_ms(), consumed)
        if queued is None:
            # Someone else moved the row (a former owner still finishing): start from it.
            self._state = None
            return True
        self._state = queued
        if body is not None:
            self._depth.inc(count)
            self._queued.set()
        return True

    async def _ephemeral(
        self, stream: str, start: int, end: int, interest: _Interest
    ) -> list[dict[str, Any]]:
        """The stream's changes in (start, end] the service is to be sent (spec: ephemeral data)."""
        hs = self.hs
        if stream == "typing":
            changed = await hs.storage.typing.changed_rooms(start, end)
            rooms = [r for r in changed if await interest.in_room(r)]
            updates = await hs.typing.get_updates(rooms, start, end) if rooms else {}
            return [{**edu, "room_id": room_id} for room_id, edu in updates.items()]
        if stream == "receipts":
            changed = await hs.storage.appservices.receipt_rooms(start, end)
            rooms = [r for r in changed if await interest.in_room(r)]
            # Private receipts: only the service's own sender's.
            viewer = self.service.sender
            updates = await hs.receipts.get_updates(rooms, viewer, start, end) if rooms else {}
            return [{**edu, "room_id": room_id} for room_id, edu in updates.items()]
        if not hs.presence.enabled:
            return []
        now = now_ms()
        return [
            presence_event(p, now)
            for p in await hs.storage.appservices.presence_changes(start, end)
            if await interest.in_presence_of(p.user_id)
        ]

    async def _to_device(self, start: int, end: int) -> tuple[list[ToDeviceMessage], int]:
        """The to-device messages in (start, end] for devices of the service's
        users, at most about MAX_TO_DEVICE_PER_TRANSACTION of them, and the
        position up to which they are all the service's messages."""
        store, service = self.store, self.service
        users = [u for u in await store.to_device_recipients(start, end) if service.is_interested_in_user(u)]
        if not users:
            return [], end
        found = await store.to_device_messages(users, start, end)
        if len(found) > MAX_TO_DEVICE_PER_TRANSACTION:
            # Whole positions only: the rest is read from there next time.
            end = found[MAX_TO_DEVICE_PER_TRANSACTION - 1].stream_id
            found = [m for m in found if m.stream_id <= end]
        return found, end

    # ---------------------------------------------------------- delivering

    async def _deliver_loop(self) -> None:
        store, service_id = self.store, self.service.id
        while True:
            try:
                txn = await store.oldest_transaction(service_id)
                if txn is None:
                    self._queued.clear()
                    # Looked again after clearing: a transaction queued in between is not missed.
                    txn = await store.oldest_transaction(service_id)
                    if txn is None:
                        await self._queued.wait()
                        continue
                await self._deliver(txn.txn_id, txn.body)
                await store.delete_transaction(service_id, txn.txn_id)
                self._depth.dec(txn.event_count)
            except Exception:
                logger.exception("delivering to %s failed", service_id)
                await asyncio.sleep(self.sender.initial_backoff)

    async def _deliver(self, txn_id: int, body: str) -> None:
        """Send until the service accepts, backing off exponentially up to the cap."""
        backoff = self.sender.initial_backoff
        while not await self._put(txn_id, body):
            TRANSACTIONS.labels(self.service.id, "failed").inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.sender.max_backoff)
        TRANSACTIONS.labels(self.service.id, "sent").inc()
        LAST_SENT.labels(self.service.id).set(time.time())

    async def _put(self, txn_id: int, body: str) -> bool:
        url = f"{self.service.url}/_matrix/app/v1/transactions/{txn_id}"
        try:
            async with self.sender.session.put(
                url,
                data=body.encode(),
                headers={
                    "Authorization": f"Bearer {self.service.hs_token}",
                    "Content-Type": "application/json",
                },
            ) as resp:
                await resp.read()
                if resp.status // 100 == 2:
                    return True
                logger.info(
                    "application service %s answered %d to txn %d", self.service.id, resp.status, txn_id
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.info("application service %s unreachable: %s", self.service.id, exc)
        return False


class _Interest:
    """Whether a service is interested in events and rooms (spec: namespaces), with
    the per-room answers of one pass cached."""

    def __init__(self, hs: HomeServer, service: ApplicationService) -> None:
        self.hs = hs
        self.service = service
        self._rooms: dict[str, bool] = {}

    async def in_event(self, event: Event) -> bool:
        service = self.service
        if service.is_interested_in_user(event.sender):
            return True
        target = event.state_key if event.type == "m.room.member" else None
        if target and service.is_interested_in_user(target):
            return True
        return await self.in_room(event.room_id)

    async def in_room(self, room_id: str) -> bool:
        """Its room IDs, rooms with one of its aliases, and rooms where one of its users is joined."""
        known = self._rooms.get(room_id)
        if known is not None:
            return known
        service, storage = self.service, self.hs.storage
        interested = (
            service.is_interested_in_room_id(room_id)
            or any(
                service.is_interested_in_alias(alias)
                for alias in await storage.directory.aliases_for_room(room_id)
            )
            or any(
                service.is_interested_in_user(m.user_id)
                for m in await storage.events.members_of_room(room_id)
            )
        )
        self._rooms[room_id] = interested
        return interested

    async def in_presence_of(self, user_id: str) -> bool:
        """Its users, and users sharing a room it is interested in."""
        if self.service.is_interested_in_user(user_id):
            return True
        for membership in await self.hs.storage.events.rooms_for_user(user_id):
            if await self.in_room(membership.room_id):
                return True
        return False
