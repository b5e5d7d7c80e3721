"""Device-list changes and to-device messages: what /sync and /keys/changes
tell a client about other devices.

A user's device list changes when a device publishes or loses keys, or
their cross-signing keys change; the change is filed in the device_lists
stream and reported to everyone who shares a room with them. A user who
starts sharing a room with you is "changed" too (you have never seen their
devices); one who no longer shares any is "left".

To-device messages wait in the recipient device's inbox under a position
of the to_device stream; a sync hands out the next batch and, when the
client syncs from the token after it, that batch is deleted (it arrived).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from storage.e2ee import E2EStore
from storage.engines import dump_json
from storage.events import Membership

from ..errors import MatrixError, bad_json
from ..ids import split_user_id
from ..sync.notifier import Notifier
from ..sync.tokens import StreamToken
from ..util import now_ms

if TYPE_CHECKING:
    from storage import Storage

JsonDict = dict[str, Any]
# Messages per /sync response, and about how many bytes of them (at least
# one message goes out); the rest follow in the next sync, in order.
TO_DEVICE_LIMIT = 100
TO_DEVICE_BYTES = 1024 * 1024
# The largest content one to-device message may have (room keys, key
# requests and verification steps are a few KB).
MAX_TO_DEVICE_CONTENT = 64 * 1024


class DeviceLists:
    def __init__(self, storage: Storage, notifier: Notifier) -> None:
        self.store: E2EStore = storage.e2ee
        self.events = storage.events
        self.notifier = notifier

    async def notify(self, user_ids: Collection[str], position: int) -> None:
        """Wake the syncs of everyone sharing a room with these users, and theirs."""
        rooms: set[str] = set()
        for user_id in user_ids:
            rooms.update(m.room_id for m in await self.events.rooms_for_user(user_id))
        self.notifier.on_new("device_lists", position, rooms=rooms, users=user_ids)

    async def changes(
        self,
        user_id: str,
        memberships: Sequence[Membership],
        since: StreamToken,
        now: StreamToken,
        *,
        members_moved: bool = True,
    ) -> tuple[set[str], set[str]]:
        """(changed, left) between the two tokens for a user whose memberships
        at `now` are `memberships`. `members_moved` False promises that no
        member event happened in the user's rooms in between."""
        joined = {m.room_id for m in memberships if m.membership == "join"}
        changed: set[str] = set()
        maybe_left: set[str] = set()
        if since.device_lists < now.device_lists:
            moved, for_viewer = await self.store.users_with_changed_devices(
                user_id, since.device_lists, now.device_lists
            )
            if moved:
                changed |= await self.store.shared_with(user_id, moved)
                if user_id in moved:
                    changed.add(user_id)
            changed |= for_viewer
        mine = [m for m in memberships if since.events < m.stream_ordering <= now.events]
        if members_moved or mine:
            newly_joined = {m.room_id for m in mine if m.membership == "join"}
            rooms_left = {m.room_id for m in mine if m.membership in ("leave", "ban")}
            if newly_joined:
                changed |= await self.store.joined_members(newly_joined)
            if rooms_left:
                maybe_left |= await self.store.joined_members(rooms_left)
            for room_id, other, membership in await self.store.member_changes(since.events, now.events):
                if room_id not in joined or room_id in newly_joined or other == user_id:
                    continue
                if membership == "join":
                    changed.add(other)
                elif membership in ("leave", "ban"):
                    maybe_left.add(other)
        maybe_left.discard(user_id)
        left = maybe_left - await self.store.shared_with(user_id, maybe_left) if maybe_left else set()
        return changed - left, left


class ToDevice:
    def __init__(self, storage: Storage, notifier: Notifier, server_name: str) -> None:
        self.store: E2EStore = storage.e2ee
        self.storage = storage
        self.notifier = notifier
        self.server_name = server_name
        # (user, device) -> the last position handed out and not yet acknowledged.
        self._delivered: dict[tuple[str, str], int] = {}

    async def send(
        self, sender: str, sender_device: str | None, event_type: str, txn_id: str, messages: Any
    ) -> None:
        """Queue `messages` (user -> device or "*" -> content), once per txn_id."""
        if not isinstance(messages, dict):
            raise bad_json("'messages' must be an object")
        wanted: dict[str, dict[str, JsonDict]] = {}
        for user_id, devices in messages.items():
            if not isinstance(devices, dict) or not all(isinstance(c, dict) for c in devices.values()):
                raise bad_json("'messages' must map user IDs to device IDs to objects")
            parts = split_user_id(user_id)
            # Users of other servers would be reached over federation, which
            # this server does not speak yet; their messages are dropped.
            if parts is not None and parts[1] == self.server_name and devices:
                wanted[user_id] = devices
        existing = await self.store.query_devices({u: () for u in wanted})
        rows: list[tuple[str, str, JsonDict]] = []
        for user_id, devices in wanted.items():
            known = existing.get(user_id, {})
            for device_id, content in devices.items():
                targets = list(known) if device_id == "*" else [device_id] if device_id in known else []
                rows.extend((user_id, target, content) for target in targets)
        for devices in wanted.values():
            for content in devices.values():
                if len(dump_json(content)) > MAX_TO_DEVICE_CONTENT:
                    raise MatrixError(
                        413, "M_TOO_LARGE", f"A to-device message may be at most {MAX_TO_DEVICE_CONTENT} bytes"
                    )
        # "*" and a named device may both reach one device: it gets one message.
        unique: dict[tuple[str, str], JsonDict] = {}
        for user_id, device_id, content in rows:
            unique.setdefault((user_id, device_id), content)
        queued = [
            (user_id, device_id, {"type": event_type, "sender": sender, "content": content})
            for (user_id, device_id), content in unique.items()
        ]
        position = await self.store.queue_to_device(
            sender, sender_device or "", event_type, txn_id, queued, now_ms()
        )
        if position is not None:
            self.notifier.on_new("to_device", position, users={u for u, _, _ in queued})

    async def for_sync(
        self, user_id: str, device_id: str, since: StreamToken | None, now: StreamToken
    ) -> tuple[list[JsonDict], int]:
        """The device's next messages and the to_device position to continue
        from: `now`'s, or the last message's when more are waiting.

        Messages up to `since` were received: they are deleted when the
        stream moved (with the read that follows), or at once when this
        process handed them out and knows they are there.
        """
        key = (user_id, device_id)
        acknowledged = since.to_device if since is not None else 0
        if since is not None and since.to_device >= now.to_device:
            delivered = self._delivered.get(key)
            if delivered is not None and acknowledged >= delivered:
                del self._delivered[key]
                await self.store.delete_to_device(user_id, device_id, acknowledged)
            return [], now.to_device
        found = await self.store.to_device_messages(user_id, device_id, acknowledged, now.to_device, TO_DEVICE_LIMIT)
        size = 0
        for i, (_, message) in enumerate(found):
            size += len(dump_json(message))
            if size > TO_DEVICE_BYTES and i > 0:
                del found[i:]
                break
        else:
            if len(found) < TO_DEVICE_LIMIT:
                # Everything up to `now` is in this batch.
                if found:
                    self._delivered[key] = found[-1][0]
                else:
                    self._delivered.pop(key, None)
                return [message for _, message in found], now.to_device
        self._delivered[key] = found[-1][0]
        return [message for _, message in found], found[-1][0]
