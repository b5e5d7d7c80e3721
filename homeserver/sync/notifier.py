"""The notifier: wakes the long-polling syncs a change concerns, and only those.

Writers call `on_new(stream, position, rooms=..., users=...)` once their
transaction has committed. The notifier records the stream's new position
(the sync token everyone gets next) and wakes the waiters registered for
those rooms or users. A sync registers its waiter BEFORE it reads, so a
change that lands between its read and its wait still wakes it.

`publishers` are told of every local change; the PostgreSQL bridge uses
that to NOTIFY other processes, whose notifiers it feeds in turn.
`observers` are told of every change, local or from another process, by
stream and users (None: anything may have changed), so caches of per-user
data can drop what changed wherever it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Gauge

from .tokens import StreamToken

SYNC_WAITERS = Gauge("homeserver_sync_waiters", "Long-polling /sync requests waiting")

Publisher = Callable[[str, int, tuple[str, ...], tuple[str, ...]], Any]
Observer = Callable[[str | None, tuple[str, ...] | None], None]


class Waiter:
    """One long-poll's interest: a user and the rooms they are in."""

    def __init__(self, user_id: str, room_ids: Iterable[str]) -> None:
        self.user_id = user_id
        self.room_ids = set(room_ids)
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float, interrupt: asyncio.Event | None = None) -> bool:
        """True if woken (or `interrupt` is set), False on timeout."""
        if interrupt is None:
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
                return True
            except TimeoutError:
                return False
        waits = (asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(interrupt.wait()))
        try:
            done, _pending = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()
        return bool(done)


class Notifier:
    def __init__(self, positions: dict[str, int]) -> None:
        self.positions = dict(positions)
        self.publishers: list[Publisher] = []
        self.observers: list[Observer] = []
        self._by_user: dict[str, set[Waiter]] = {}
        self._by_room: dict[str, set[Waiter]] = {}

    def current_token(self) -> StreamToken:
        return StreamToken(**{name: self.positions.get(name, 0) for name in StreamToken.stream_names()})

    def on_new(
        self,
        stream: str,
        position: int,
        *,
        rooms: Iterable[str] = (),
        users: Iterable[str] = (),
        local: bool = True,
    ) -> None:
        """A change at `position` of `stream` committed; wake whoever it concerns."""
        if position > self.positions.get(stream, 0):
            self.positions[stream] = position
        rooms, users = tuple(rooms), tuple(users)
        for observe in self.observers:
            observe(stream, users)
        for room_id in rooms:
            for waiter in self._by_room.get(room_id, ()):
                waiter.wake()
        for user_id in users:
            for waiter in self._by_user.get(user_id, ()):
                waiter.wake()
        if local:
            for publish in self.publishers:
                publish(stream, position, rooms, users)

    def advance(self, positions: Mapping[str, int]) -> None:
        """Raise (never lower) the known positions to `positions`, waking
        nobody. Changes learnt this way say not whom they concern, so the
        observers hear that anything may have changed."""
        raised = False
        for stream, position in positions.items():
            if position > self.positions.get(stream, 0):
                self.positions[stream] = position
                raised = True
        if raised:
            for observe in self.observers:
                observe(None, None)

    def wake_all(self, positions: Mapping[str, int]) -> None:
        """Advance `positions` and wake every waiter: for changes learnt without
        knowing whom they concern (an oversized remote change, a reconnect that
        may have missed some). Never published: it only ever comes from outside."""
        self.advance(positions)
        for observe in self.observers:
            observe(None, None)  # (also when no position moved: a reconnect may have missed some)
        for waiters in list(self._by_user.values()):
            for waiter in waiters:
                waiter.wake()

    def register(self, waiter: Waiter) -> None:
        self._by_user.setdefault(waiter.user_id, set()).add(waiter)
        for room_id in waiter.room_ids:
            self._by_room.setdefault(room_id, set()).add(waiter)
        SYNC_WAITERS.inc()

    def unregister(self, waiter: Waiter) -> None:
        _discard(self._by_user, waiter.user_id, waiter)
        for room_id in waiter.room_ids:
            _discard(self._by_room, room_id, waiter)
        SYNC_WAITERS.dec()


def _discard(index: dict[str, set[Waiter]], key: str, waiter: Waiter) -> None:
    waiters = index.get(key)
    if waiters is not None:
        waiters.discard(waiter)
        if not waiters:
            del index[key]
