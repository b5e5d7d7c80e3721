"""Presence (spec: Presence): online, unavailable or offline, and a status message.

A user's presence is shown to themselves and to the users they share a
joined room with. Syncing marks a user online (or idle, with
`set_presence=unavailable`) and records that they were seen; so does
activity (sending an event, a receipt or read markers), which brings an
offline or idle user online, as Synapse's "bump active time" does; users
not seen for `OFFLINE_AFTER_MS` go offline.

Per the spec's `currently_active` rule, while a user stays online and
currently active their last-active time is kept fresh in the database
without telling anyone, so a syncing crowd does not wake everyone's syncs
every minute. A "busy" status is only a status message: v1.19 has no
busy state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from storage.cache import LRUCache
from storage.ephemeral import PresenceChange, PresenceStore, UserPresence

from ..errors import forbidden
from ..rooms.writer import SentEvent
from ..sync.notifier import Notifier
from ..util import cancel_task, now_ms

logger = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline")
# Syncs refresh a user's last-seen (and, online, last-active) time at most this often.
ACTIVE_GRANULARITY_MS = 60_000
# A user neither syncing nor setting their presence this long goes offline.
OFFLINE_AFTER_MS = 5 * 60_000
SWEEP_SECONDS = 30.0


class Presence:
    def __init__(self, store: PresenceStore, notifier: Notifier, *, enabled: bool) -> None:
        self.store = store
        self.notifier = notifier
        self.enabled = enabled
        # This process's last look at each syncing user's presence, so a
        # sync that changes nothing costs no database round trip.
        self._recent: LRUCache[str, UserPresence] = LRUCache("presence_recent", 100_000)
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the API

    async def set_state(self, user_id: str, state: str, status_msg: str | None) -> None:
        """PUT /presence: a new state and status message (absent: cleared)."""
        if not self.enabled:
            return
        now = now_ms()

        def change(current: UserPresence | None) -> tuple[UserPresence, bool]:
            return _apply(current, user_id, state, status_msg, now)

        await self._update(user_id, change)

    async def get_state(self, observer: str, user_id: str) -> dict[str, Any]:
        """GET /presence: for the user themselves or someone sharing a room (else 403)."""
        if observer != user_id and not await self.store.shares_room(observer, user_id):
            raise forbidden("You are not allowed to see their presence")
        found = await self.store.get(user_id) if self.enabled else None
        if found is None:
            return {"presence": "offline"}
        return presence_content(found, now_ms())

    # --------------------------------------------------------------- sync

    async def set_from_sync(self, user_id: str, set_presence: str | None) -> None:
        """A sync began: mark the user online (None) or unavailable; offline leaves them be.

        As the spec words it, `set_presence=offline` means the sync does not
        mark the user online, not that it marks them offline.
        """
        if not self.enabled or set_presence == "offline":
            return
        await self._seen(user_id, set_presence or "online")

    async def user_active(self, user_id: str) -> None:
        """The user did something (sent a message, a receipt): they are online and active.

        Free while this process saw them online and active within
        ACTIVE_GRANULARITY_MS: no database round trip per message.
        """
        if self.enabled:
            await self._seen(user_id, "online")

    async def on_events(self, sent: list[SentEvent]) -> None:
        """A RoomWriter listener: sending an event is activity of its sender, as
        Synapse counts it (non-membership events sent by a client), so neither
        membership (a profile change is carried into every room without the
        user doing anything there) nor the events that create a room."""
        if any(s.event.type == "m.room.create" for s in sent):
            return
        senders = {s.event.sender for s in sent if s.event.type != "m.room.member"}
        for sender in senders:
            await self.user_active(sender)

    async def _seen(self, user_id: str, state: str) -> None:
        now = now_ms()
        if _fresh(self._recent.get(user_id), state, now):
            return

        def change(current: UserPresence | None) -> tuple[UserPresence, bool] | None:
            if current is not None and _fresh(current, state, now):
                self._recent.set(user_id, current)  # another process brought it up to date
                return None
            status_msg = current.status_msg if current else None
            return _apply(current, user_id, state, status_msg, now)

        await self._update(user_id, change)

    async def get_updates(self, user_id: str, from_pos: int, to_pos: int) -> list[dict[str, Any]]:
        """m.presence of the user and their room-mates changed in (from_pos, to_pos].

        Initial sync (from_pos 0) leaves out users who are offline, as Synapse does.
        """
        if not self.enabled or from_pos >= to_pos:
            return []
        now = now_ms()
        changes = await self.store.get_changes(
            user_id, from_pos, to_pos, include_offline=from_pos != 0
        )
        return [
            presence_event(p, now) for p in changes
        ]

    # ------------------------------------------------------------ writing

    async def _update(self, user_id: str, change: PresenceChange) -> None:
        result = await self.store.update(user_id, change)
        if result is None:
            return
        written, position = result
        self._recent.set(user_id, written)
        if position is not None:
            await self._notify(position, [user_id])

    async def _notify(self, position: int, user_ids: list[str]) -> None:
        """Wake the users themselves and everyone sharing a room with them."""
        self.notifier.on_new("presence", position, users=await self.store.room_mates(user_ids))

    # ------------------------------------------------------------ timeouts

    async def time_out(self) -> None:
        """Mark offline the users not seen for OFFLINE_AFTER_MS."""
        timed_out = await self.store.time_out(now_ms() - OFFLINE_AFTER_MS)
        if timed_out is not None:
            position, user_ids = timed_out
            for user_id in user_ids:
                self._recent.invalidate(user_id)
            await self._notify(position, user_ids)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.time_out()
            except Exception:
                logger.exception("failed to time out presence")


def _fresh(current: UserPresence | None, state: str, now: int) -> bool:
    """Whether a sync asking for `state` has nothing to change."""
    return (
        current is not None
        and current.state == state
        and now - current.last_seen_ts < ACTIVE_GRANULARITY_MS
        and (state != "online" or current.currently_active)
    )


def _apply(
    current: UserPresence | None, user_id: str, state: str, status_msg: str | None, now: int
) -> tuple[UserPresence, bool]:
    """The presence once `state` is set at `now` (the user is seen, and active if
    online), and whether clients must be told: a later last-active time alone is
    not news while the user stays currently active."""
    online = state == "online"
    last_active = now if online else (current.last_active_ts if current else 0)
    new = UserPresence(user_id, state, status_msg, last_active, now, online)
    told = current is None or (current.state, current.status_msg, current.currently_active) != (
        new.state, new.status_msg, new.currently_active
    )
    return new, told


def presence_event(presence: UserPresence, now: int) -> dict[str, Any]:
    """The m.presence event of a user's presence at `now`."""
    return {"type": "m.presence", "sender": presence.user_id, "content": presence_content(presence, now)}


def presence_content(presence: UserPresence, now: int) -> dict[str, Any]:
    """The m.presence content, shaped as Synapse shapes it (currently_active only when online)."""
    content: dict[str, Any] = {"presence": presence.state}
    if presence.last_active_ts:
        content["last_active_ago"] = max(0, now - presence.last_active_ts)
    if presence.status_msg:
        content["status_msg"] = presence.status_msg
    if presence.state == "online":
        content["currently_active"] = presence.currently_active
    return content
