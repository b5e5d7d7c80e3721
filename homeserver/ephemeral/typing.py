"""Typing notifications (spec: Typing Notifications).

Typing marks live in the database, so every process sharing it sees the
same set. Only a change to a room's set takes a position of the typing
stream: renewing a mark before it runs out merely moves its expiry, as in
Synapse. A background task ends marks as they expire, so syncs see the
stop even when the client never sends one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

from storage.ephemeral import TypingStore

from ..rooms.service import Rooms
from ..sync.notifier import Notifier
from ..util import cancel_task, now_ms
from . import require_joined

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
# Synapse's cap: a client cannot claim to type for longer than this.
MAX_TIMEOUT_MS = 120_000
# Marks set by other processes are noticed within this long of expiring.
POLL_SECONDS = 5.0


class TypingNotifications:
    def __init__(self, store: TypingStore, rooms: Rooms, notifier: Notifier) -> None:
        self.store = store
        self.rooms = rooms
        self.notifier = notifier
        self._wakeup = asyncio.Event()
        # When the expiry task next looks (ms); while it is looking, never.
        self._wake_at = math.inf
        self._task: asyncio.Task[None] | None = None

    async def set_typing(self, user_id: str, room_id: str, typing: bool, timeout_ms: int) -> None:
        """Start (for `timeout_ms`, capped) or stop the user's typing in a room they are in."""
        await require_joined(self.rooms, user_id, room_id)
        if typing:
            now = now_ms()
            expires = now + min(timeout_ms, MAX_TIMEOUT_MS)
            position = await self.store.start(room_id, user_id, expires, now)
            if expires < self._wake_at:
                self._wakeup.set()  # the expiry task must look sooner than it planned
        else:
            position = await self.store.stop(room_id, user_id)
        if position is not None:
            self.notifier.on_new("typing", position, rooms=(room_id,))

    async def get_updates(
        self, room_ids: Sequence[str], from_pos: int, to_pos: int
    ) -> dict[str, dict[str, Any]]:
        """m.typing for each room whose typing set changed in (from_pos, to_pos].

        Initial sync (from_pos 0): the rooms where someone is typing. The
        set is always the current one.
        """
        if from_pos >= to_pos:
            return {}
        if from_pos == 0:
            rooms = list(room_ids)
        else:
            changed = await self.store.changed_rooms(from_pos, to_pos)
            rooms = [room_id for room_id in room_ids if room_id in changed]
            if not rooms:
                return {}
        typing = await self.store.typing_users(rooms, now_ms())
        if from_pos == 0:
            rooms = list(typing)
        return {
            room_id: {"type": "m.typing", "content": {"user_ids": typing.get(room_id, [])}}
            for room_id in rooms
        }

    # ------------------------------------------------------------- expiry

    async def expire(self) -> None:
        """End the marks that have run out, and wake the syncs of their rooms."""
        expired = await self.store.expire(now_ms())
        if expired is not None:
            position, room_ids = expired
            self.notifier.on_new("typing", position, rooms=room_ids)

    def start(self) -> None:
        self._task = asyncio.create_task(self._expiry_loop())

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def _expiry_loop(self) -> None:
        while True:
            # A mark started while we look must make us look again.
            self._wake_at = math.inf
            self._wakeup.clear()
            delay = POLL_SECONDS
            try:
                await self.expire()
                next_expiry = await self.store.next_expiry()
                if next_expiry is not None:
                    # A little past the expiry, so the sweep then finds it due.
                    delay = min(delay, max(0.0, (next_expiry - now_ms()) / 1000) + 0.01)
            except Exception:
                logger.exception("failed to expire typing notifications")
            self._wake_at = now_ms() + delay * 1000
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                pass
