"""Account data (spec: Client Config), room tags and the fully read marker.

Global account data is stored under room ID ''. Tags are the room account
data event `m.tag`; the fully read marker is `m.fully_read`, which only the
read-markers API may move, and only forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from storage.ephemeral import AccountDataStore
from storage.events import EventStore

from ..errors import MatrixError, invalid_param, not_found
from ..rooms.visibility import IGNORED_USER_LIST, ignored_in
from ..sync.notifier import Notifier

JsonDict = dict[str, Any]
# The new content given the current one (None: absent), or None to write nothing.
Change = Callable[[JsonDict | None], JsonDict | None]

TAG = "m.tag"
FULLY_READ = "m.fully_read"
PUSH_RULES = "m.push_rules"
# Types the server manages: clients read them but may not set them (spec).
SERVER_MANAGED = (FULLY_READ, PUSH_RULES)
MAX_TAG_BYTES = 255


def _tags_of(content: JsonDict | None) -> JsonDict:
    tags = (content or {}).get("tags")
    return dict(tags) if isinstance(tags, dict) else {}


def _replace_if(seen: JsonDict | None, event_id: str) -> Change:
    """A change to the marker at `event_id` that applies only if it is still `seen`."""

    def change(current: JsonDict | None) -> JsonDict | None:
        return {"event_id": event_id} if current == seen else None

    return change


class AccountData:
    def __init__(self, store: AccountDataStore, events: EventStore, notifier: Notifier) -> None:
        self.store = store
        self.events = events
        self.notifier = notifier
        # user -> whom they ignore, which every /sync and /messages filters
        # by: dropped when the user's account data changes in any process
        # (the notifier's observers); `_generation` keeps a read that raced
        # with a change from being stored.
        self._ignored: dict[str, frozenset[str]] = {}
        self._generation = 0
        notifier.observers.append(self._observe)

    def _observe(self, stream: str | None, users: tuple[str, ...] | None) -> None:
        if stream is None or users is None:
            self._generation += 1
            self._ignored.clear()
        elif stream == "account_data":
            self._generation += 1
            for user_id in users:
                self._ignored.pop(user_id, None)

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        """The users `user_id` ignores (m.ignored_user_list)."""
        return (await self.ignored_by([user_id]))[user_id]

    async def ignored_by(self, user_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """Whom each of these users ignores: from the cache, the rest in one read."""
        found = {u: self._ignored[u] for u in user_ids if u in self._ignored}
        missing = [u for u in user_ids if u not in found]
        if missing:
            generation = self._generation
            contents = await self.store.get_global_for_users(missing, IGNORED_USER_LIST)
            loaded = {u: ignored_in(contents.get(u)) for u in missing}
            if generation == self._generation:
                self._ignored.update(loaded)
            found.update(loaded)
        return found

    async def get(self, user_id: str, room_id: str, data_type: str) -> JsonDict:
        """The content of one account data event (room_id '' for global); 404 if unset."""
        content = await self.store.get(user_id, room_id, data_type)
        if content is None:
            raise not_found("Room account data not found" if room_id else "Account data not found")
        return content

    async def set(self, user_id: str, room_id: str, data_type: str, content: JsonDict) -> None:
        """Set account data a client may set (405 M_BAD_JSON for the server's own types)."""
        if data_type in SERVER_MANAGED:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API")
        await self._write(user_id, room_id, data_type, lambda _current: content)

    async def get_updates(
        self, user_id: str, from_pos: int, to_pos: int
    ) -> tuple[list[JsonDict], dict[str, list[JsonDict]]]:
        """Global and per-room account data events changed in (from_pos, to_pos] (0: all)."""
        global_data: list[JsonDict] = []
        rooms: dict[str, list[JsonDict]] = {}
        if from_pos >= to_pos:
            return global_data, rooms
        for change in await self.store.get_changes(user_id, from_pos, to_pos):
            event = {"type": change.type, "content": change.content}
            if change.room_id:
                rooms.setdefault(change.room_id, []).append(event)
            else:
                global_data.append(event)
        return global_data, rooms

    # ---------------------------------------------------------------- tags

    async def get_tags(self, user_id: str, room_id: str) -> JsonDict:
        return _tags_of(await self.store.get(user_id, room_id, TAG))

    async def add_tag(self, user_id: str, room_id: str, tag: str, content: JsonDict) -> None:
        if not tag or len(tag.encode()) > MAX_TAG_BYTES:
            raise invalid_param(f"A tag must be 1 to {MAX_TAG_BYTES} bytes long")
        order = content.get("order")
        if order is not None and (
            isinstance(order, bool) or not isinstance(order, (int, float)) or not 0 <= order <= 1
        ):
            raise invalid_param("'order' must be a number from 0 to 1")

        def add(current: JsonDict | None) -> JsonDict:
            return {"tags": {**_tags_of(current), tag: content}}

        await self._write(user_id, room_id, TAG, add)

    async def remove_tag(self, user_id: str, room_id: str, tag: str) -> None:
        """Remove a tag; removing one the room does not have is not an error."""

        def remove(current: JsonDict | None) -> JsonDict | None:
            tags = _tags_of(current)
            if tag not in tags:
                return None
            del tags[tag]
            return {"tags": tags}

        await self._write(user_id, room_id, TAG, remove)

    # ---------------------------------------------------- fully read marker

    async def set_fully_read(self, user_id: str, room_id: str, event_id: str) -> None:
        """Move the marker to `event_id` if that is later in the room than where it is.

        The caller has checked the event is in the room and visible. Written
        as compare-and-set: a concurrent move makes us compare again.
        """
        while True:
            current = await self.store.get(user_id, room_id, FULLY_READ)
            current_id = (current or {}).get("event_id")
            if current_id == event_id or not await self._is_after(event_id, current_id):
                return
            if await self._write(user_id, room_id, FULLY_READ, _replace_if(current, event_id)):
                return

    async def _is_after(self, event_id: str, other_id: Any) -> bool:
        """Whether `event_id` comes after `other_id` in the room (anything beats no marker)."""
        if not isinstance(other_id, str):
            return True
        positions = await self.events.get_positions([event_id, other_id])
        if other_id not in positions:
            return True
        new, old = positions[event_id][0], positions[other_id][0]
        return (new.topological_ordering, new.stream_ordering) > (
            old.topological_ordering, old.stream_ordering
        )

    async def _write(self, user_id: str, room_id: str, data_type: str, change: Change) -> bool:
        position = await self.store.update(user_id, room_id, data_type, change)
        if position is None:
            return False
        self.notifier.on_new("account_data", position, users=(user_id,))
        return True
