"""Cross-process wake-ups over PostgreSQL LISTEN/NOTIFY.

Several `homeserver run` processes may share one PostgreSQL database behind
a load balancer. Each process's notifier only hears of its own writes, so
this bridge tells the others: a notifier publisher queues every local change
(always after its commit, as `on_new` is only called then) and, once per
event-loop tick, sends the queue as NOTIFY payloads in one statement. Two
autocommit connections of its own, outside the pool, do the talking: one
sends, so that wake-ups never wait for a pooled connection; the other sits
in LISTEN and feeds the other processes' payloads to the notifier with
`local=False`, so they are not sent on again.

Payload (compact JSON, under PostgreSQL's 8000-byte limit):
`{"o": origin, "c": [[stream, position, rooms, users], ...]}`, where `origin`
is this process's random ID (its own payloads come back and are ignored) and
`rooms`/`users` of null mean "whom this concerns did not fit: wake everyone".

The channel is named after the schema (`current_schema()`), since channels
are per database, not per schema: servers in two schemas of one database
must not wake each other. When the LISTEN connection drops it is reopened
with backoff; notifications sent meanwhile are lost, so the positions are
then re-read from `stream_positions` and every waiter is woken.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import Counter

from storage.engines import PostgresDatabase
from storage.streams import current_positions

from .notifier import Notifier

logger = logging.getLogger(__name__)

NOTIFICATIONS = Counter(
    "homeserver_pg_notifications_total",
    "Stream notifications exchanged with other processes over LISTEN/NOTIFY",
    ["direction"],
)
RECONNECTS = Counter(
    "homeserver_pg_notify_reconnects_total", "Times the LISTEN connection was reopened"
)

CHANNEL_PREFIX = "homeserver_streams"
# PostgreSQL refuses payloads of 8000 bytes or more; leave room to spare.
PAYLOAD_LIMIT = 7900
# A change needing more payloads than this wakes everyone instead.
MAX_CHUNKS = 8
# How long the LISTEN connection may be silent before it is pinged.
PING_INTERVAL = 30.0
PING_TIMEOUT = 10.0
RECONNECT_MIN_DELAY = 0.25
RECONNECT_MAX_DELAY = 30.0

# [stream, position, rooms or None, users or None]
Change = list[Any]


def _dumps(value: Any) -> str:
    # ASCII-only output, so len() is the size in bytes.
    return json.dumps(value, separators=(",", ":"))


def channel_for(schema: str) -> str:
    """The channel of the servers using `schema` (within PostgreSQL's 63-byte names)."""
    name = f"{CHANNEL_PREFIX}_{schema}"
    if len(name.encode()) > 63:
        name = f"{CHANNEL_PREFIX}_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"
    return name


def _merge(
    changes: Iterable[tuple[str, int, Sequence[str], Sequence[str]]],
) -> dict[str, tuple[int, dict[str, None], dict[str, None]]]:
    """Per stream: the highest position and the union of rooms and users (in order)."""
    merged: dict[str, tuple[int, dict[str, None], dict[str, None]]] = {}
    for stream, position, rooms, users in changes:
        previous, all_rooms, all_users = merged.get(stream, (0, {}, {}))
        all_rooms.update(dict.fromkeys(rooms))
        all_users.update(dict.fromkeys(users))
        merged[stream] = (max(previous, position), all_rooms, all_users)
    return merged


def _chunks(
    stream: str, position: int, rooms: Iterable[str], users: Iterable[str], budget: int
) -> list[Change]:
    """The change split so each part fits in `budget` bytes; one "everyone" change
    if that takes more than MAX_CHUNKS parts."""
    base = len(_dumps([stream, position, [], []]))
    everyone: list[Change] = [[stream, position, None, None]]
    chunks: list[Change] = []
    current: Change = [stream, position, [], []]
    size = base
    for index, ids in ((2, rooms), (3, users)):
        for item in ids:
            cost = len(_dumps(item)) + 1
            if base + cost > budget:
                return everyone
            if size + cost > budget:
                chunks.append(current)
                current, size = [stream, position, [], []], base
            current[index].append(item)
            size += cost
    chunks.append(current)
    return everyone if len(chunks) > MAX_CHUNKS else chunks


def encode_changes(
    origin: str, changes: Iterable[tuple[str, int, Sequence[str], Sequence[str]]]
) -> list[str]:
    """NOTIFY payloads (each under PAYLOAD_LIMIT bytes) carrying `changes`."""
    header = len(_dumps({"o": origin, "c": []}))
    budget = PAYLOAD_LIMIT - header
    payloads: list[str] = []
    batch: list[Change] = []
    size = 0
    for stream, (position, rooms, users) in _merge(changes).items():
        for change in _chunks(stream, position, rooms, users, budget - 1):
            cost = len(_dumps(change)) + 1
            if batch and size + cost > budget:
                payloads.append(_dumps({"o": origin, "c": batch}))
                batch, size = [], 0
            batch.append(change)
            size += cost
    if batch:
        payloads.append(_dumps({"o": origin, "c": batch}))
    return payloads


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def decode_changes(payload: str) -> tuple[str, list[Change]]:
    """(origin, changes) of a payload; ValueError if it is malformed."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if not (isinstance(data.get("o"), str) and isinstance(data.get("c"), list)):
        raise ValueError("not a stream notification")
    for change in data["c"]:
        if not (
            isinstance(change, list)
            and len(change) == 4
            and isinstance(change[0], str)
            and type(change[1]) is int
            and (change[2] is None or _is_id_list(change[2]))
            and (change[3] is None or _is_id_list(change[3]))
        ):
            raise ValueError(f"malformed change {change!r}")
    return data["o"], data["c"]


def apply_changes(notifier: Notifier, changes: Iterable[Change]) -> None:
    """Feed another process's changes to the local notifier."""
    for stream, position, rooms, users in changes:
        if rooms is None or users is None:
            notifier.wake_all({stream: position})
        else:
            notifier.on_new(stream, position, rooms=rooms, users=users, local=False)


class PgNotifyBridge:
    """Carries the notifier's local changes to the other processes, and theirs to it."""

    def __init__(self, db: PostgresDatabase, notifier: Notifier) -> None:
        self.db = db
        self.notifier = notifier
        self.origin = secrets.token_hex(8)
        self.channel = ""
        self._listen_conn: Any = None
        self._notify_conn: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._pending: list[tuple[str, int, tuple[str, ...], tuple[str, ...]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def backend_pid(self) -> int | None:
        """The LISTEN connection's server process (for pg_stat_activity), if connected."""
        return self._listen_conn.info.backend_pid if self._listen_conn is not None else None

    async def start(self) -> None:
        """LISTEN (failing if PostgreSQL is unreachable), then keep listening in the background."""
        await self._listen()
        self.notifier.publishers.append(self._publish)
        self._listener = asyncio.create_task(self._listen_forever(), name="pg-notify-listener")

    async def stop(self) -> None:
        """Stop listening; send what is queued first (if PostgreSQL lets us)."""
        self._stopping = True
        if self._publish in self.notifier.publishers:
            self.notifier.publishers.remove(self._publish)
        if self._sender is not None:
            _done, pending = await asyncio.wait([self._sender], timeout=PING_TIMEOUT)
            for task in pending:
                task.cancel()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self._listen_conn = await _close(self._listen_conn)
        self._notify_conn = await _close(self._notify_conn)

    # -------------------------------------------------------------- sending

    def _publish(
        self, stream: str, position: int, rooms: tuple[str, ...], users: tuple[str, ...]
    ) -> None:
        """Notifier publisher: queue the change; the queue is sent on the next tick."""
        self._pending.append((stream, position, rooms, users))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_pending())

    async def _send_pending(self) -> None:
        """Send the queue, one statement per round; what piles up meanwhile goes in the next.

        On a connection of its own, so that wake-ups never queue behind
        requests waiting for a pooled connection.
        """
        delay = RECONNECT_MIN_DELAY
        while self._pending:
            batch, self._pending = self._pending, []
            payloads = encode_changes(self.origin, batch)
            try:
                if self._notify_conn is None:
                    self._notify_conn = await self.db.dedicated_connection("homeserver-notify")
                await self._notify_conn.execute(
                    "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
                    (self.channel, payloads),
                )
            except Exception:  # noqa: BLE001 - any failure: keep the changes, retry
                self._notify_conn = await _close(self._notify_conn)
                if self._stopping:
                    logger.warning("dropping %d stream notifications at shutdown", len(batch))
                    return
                logger.warning("sending stream notifications failed; retrying", exc_info=True)
                # Kept merged (newest position, union of whom it concerns), so
                # the queue stays small however long PostgreSQL is away.
                self._pending = [
                    (stream, position, tuple(rooms), tuple(users))
                    for stream, (position, rooms, users) in _merge(batch + self._pending).items()
                ]
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            NOTIFICATIONS.labels("sent").inc(len(payloads))
            delay = RECONNECT_MIN_DELAY

    # ------------------------------------------------------------ receiving

    async def _listen(self) -> None:
        from psycopg import sql

        conn = await self.db.dedicated_connection("homeserver-listen")
        try:
            cur = await conn.execute("SELECT current_schema()")
            schema = (await cur.fetchone())[0] or "public"
            self.channel = channel_for(schema)
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            await _close(conn)
            raise
        self._listen_conn = conn

    async def _listen_forever(self) -> None:
        delay = RECONNECT_MIN_DELAY
        missed = False
        while True:
            try:
                if self._listen_conn is None:
                    await self._listen()
                    RECONNECTS.inc()
                    logger.info("LISTEN connection reopened")
                if missed:
                    # Notifications sent while nobody listened are gone: re-read
                    # the positions and let every waiter look for itself.
                    self.notifier.wake_all(await current_positions(self.db))
                    missed = False
                delay = RECONNECT_MIN_DELAY
                await self._receive(self._listen_conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever broke
                logger.warning("LISTEN connection lost (%s); reconnecting in %.2fs", exc, delay)
                missed = True
                self._listen_conn = await _close(self._listen_conn)
                await asyncio.sleep(delay * random.uniform(1, 1.5))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _receive(self, conn: Any) -> None:
        """Deliver notifications until the connection fails (raises)."""
        while True:
            async for notify in conn.notifies(timeout=PING_INTERVAL):
                self._deliver(notify.payload)
            # Silent for a while: make sure the connection is still there.
            await asyncio.wait_for(conn.execute("SELECT 1"), PING_TIMEOUT)

    def _deliver(self, payload: str) -> None:
        try:
            origin, changes = decode_changes(payload)
        except ValueError as exc:
            logger.warning("ignoring malformed stream notification: %s", exc)
            return
        if origin == self.origin:
            return
        NOTIFICATIONS.labels("received").inc()
        apply_changes(self.notifier, changes)


async def _close(conn: Any) -> None:
    """Close `conn` if there is one, broken or not; returns None to clear the attribute."""
    if conn is not None:
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
    return None
