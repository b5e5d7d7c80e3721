"""Receipts and read markers (spec: Receipts, Read and unread markers).

A receipt only moves forward: one for an event earlier in the room than
the user's current receipt of that type and thread is ignored, as Synapse
does. `m.read.private` receipts are shown to their sender alone.
`m.fully_read` is not a receipt but room account data, moved through the
same endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.ephemeral import ReceiptStore
from storage.events import EventStore

from ..errors import invalid_param
from ..events.model import Event
from ..rooms.service import Rooms
from ..sync.notifier import Notifier
from ..util import now_ms
from . import require_joined
from .account_data import FULLY_READ, AccountData

READ = "m.read"
READ_PRIVATE = "m.read.private"
RECEIPT_TYPES = (READ, READ_PRIVATE)
MAIN_THREAD = "main"


def _thread_of(event: Event) -> str | None:
    """The thread root an event directly replies in, if any."""
    relates = event.content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread":
        root = relates.get("event_id")
        return root if isinstance(root, str) else None
    return None


def check_thread_id(thread_id: Any, event: Event) -> str:
    """The receipt's thread ('' if unthreaded), or 400 if it cannot be the event's.

    Only an event that directly replies in a thread is known for certain to
    be in it; events related to it less directly are given the benefit of
    the doubt.
    """
    if thread_id is None:
        return ""
    if not isinstance(thread_id, str) or not thread_id:
        raise invalid_param("thread_id field must be a non-empty string")
    if thread_id != MAIN_THREAD and not thread_id.startswith("$"):
        raise invalid_param("thread_id must be 'main' or the event ID of a thread root")
    in_thread = _thread_of(event)
    if in_thread is not None and in_thread != thread_id:
        raise invalid_param(f"{event.event_id} is in thread {in_thread}, not {thread_id}")
    return thread_id


class Receipts:
    def __init__(
        self,
        store: ReceiptStore,
        events: EventStore,
        rooms: Rooms,
        account_data: AccountData,
        notifier: Notifier,
    ) -> None:
        self.store = store
        self.events = events
        self.rooms = rooms
        self.account_data = account_data
        self.notifier = notifier

    async def send_receipt(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: Any
    ) -> None:
        """POST /receipt: a receipt, or (m.fully_read) the read marker."""
        if receipt_type not in (*RECEIPT_TYPES, FULLY_READ):
            raise invalid_param(
                f"Receipt type must be one of {', '.join((*RECEIPT_TYPES, FULLY_READ))}"
            )
        if receipt_type == FULLY_READ and thread_id is not None:
            raise invalid_param(f"thread_id is not compatible with {FULLY_READ}")
        await require_joined(self.rooms, user_id, room_id)
        event = await self.rooms.visible_event(user_id, room_id, event_id)
        if receipt_type == FULLY_READ:
            await self.account_data.set_fully_read(user_id, room_id, event_id)
        else:
            await self._advance(user_id, room_id, receipt_type, event, check_thread_id(thread_id, event))

    async def set_read_markers(self, user_id: str, room_id: str, markers: dict[str, str]) -> None:
        """POST /read_markers: {m.fully_read, m.read, m.read.private: event ID}, each optional.

        Every event is checked before anything moves.
        """
        await require_joined(self.rooms, user_id, room_id)
        events = {
            kind: await self.rooms.visible_event(user_id, room_id, event_id)
            for kind, event_id in markers.items()
        }
        for kind, event in events.items():
            if kind == FULLY_READ:
                await self.account_data.set_fully_read(user_id, room_id, event.event_id)
            else:
                await self._advance(user_id, room_id, kind, event, "")

    async def _advance(
        self, user_id: str, room_id: str, receipt_type: str, event: Event, thread_id: str
    ) -> None:
        positions = await self.events.get_positions([event.event_id])
        position = await self.store.advance(
            room_id,
            receipt_type,
            user_id,
            thread_id,
            event.event_id,
            positions[event.event_id][0].stream_ordering,
            {"ts": now_ms()},
        )
        if position is not None:
            self.notifier.on_new("receipts", position, rooms=(room_id,))

    async def get_updates(
        self, room_ids: Sequence[str], user_id: str, from_pos: int, to_pos: int
    ) -> dict[str, dict[str, Any]]:
        """An m.receipt per room for receipts in (from_pos, to_pos] (0: every current receipt).

        The format holds one receipt per event, type and user: where a user's
        unthreaded and threaded receipts are on the same event, the
        unthreaded one, which covers every thread, is shown.
        """
        if from_pos >= to_pos:
            return {}
        by_room: dict[str, dict[str, Any]] = {}
        for receipt in await self.store.get_changes(
            room_ids, from_pos, to_pos, private_type=READ_PRIVATE, viewer=user_id
        ):
            content = by_room.setdefault(receipt.room_id, {})
            users = content.setdefault(receipt.event_id, {}).setdefault(receipt.receipt_type, {})
            shown = users.get(receipt.user_id)
            if shown is not None and "thread_id" not in shown:
                continue
            entry = dict(receipt.data)
            if receipt.thread_id:
                entry["thread_id"] = receipt.thread_id
            users[receipt.user_id] = entry
        return {
            room_id: {"type": "m.receipt", "content": content} for room_id, content in by_room.items()
        }
