"""GET /hierarchy: a page of a space's tree of rooms, as the requester may see it.

The walk is depth-first in the spec's order of children (as Synapse walks
it: a stack, each space's children pushed in reverse), skips rooms it has
already seen (spaces may form cycles) and rooms the requester may not see,
and stops after `limit` rooms; what is left of the walk is saved as a
pagination session under the `next_batch` token. Room state is read in
batches: the rooms next on the stack are summarised together.
"""

from __future__ import annotations

from typing import Any

from storage import Storage
from storage.spaces import HierarchySession

from ..errors import forbidden, invalid_param
from ..events.model import Event
from ..util import now_ms, random_token
from .service import Rooms
from .summary import OPEN_JOIN_RULES, RoomSummary, summarise_rooms

DEFAULT_LIMIT = MAX_LIMIT = 50
# Rooms looked at per request, shown or not: bounds the work of a space
# full of rooms the requester may not see.
MAX_ROOMS_EXAMINED = 500
# How many rooms of the stack are summarised in one read.
PREFETCH = 100
SESSION_TTL_MS = 5 * 60 * 1000


def is_accessible(summary: RoomSummary, membership: str | None, joined_rooms: set[str]) -> bool:
    """The spec's rooms a user may see in a hierarchy (GET /hierarchy, `rooms`)."""
    if summary.world_readable:
        return True
    if membership == "ban":
        return False
    if membership in ("join", "invite") or summary.join_rule in OPEN_JOIN_RULES:
        return True
    return any(room_id in joined_rooms for room_id in summary.allowed_room_ids)


def children_to_follow(summary: RoomSummary, suggested_only: bool) -> list[Event]:
    """The children the walk follows: none unless this is a space."""
    if not summary.is_space:
        return []
    if suggested_only:
        return [c for c in summary.children if c.content.get("suggested") is True]
    return summary.children


def hierarchy_entry(summary: RoomSummary, children: list[Event]) -> dict[str, Any]:
    """A `rooms` entry: the published-rooms chunk plus what the hierarchy adds."""
    body = summary.chunk()
    extra = {
        "room_version": summary.state.get("m.room.create", {}).get("room_version", "1"),
        "encryption": summary.state.get("m.room.encryption", {}).get("algorithm"),
        "allowed_room_ids": summary.allowed_room_ids or None,
    }
    body.update({k: v for k, v in extra.items() if isinstance(v, (str, list))})
    body["children_state"] = [
        {
            "type": child.type,
            "state_key": child.state_key,
            "content": child.content,
            "sender": child.sender,
            "origin_server_ts": child.origin_server_ts,
        }
        for child in children
    ]
    return body


class RoomHierarchy:
    def __init__(self, storage: Storage, rooms: Rooms) -> None:
        self.storage = storage
        self.events = storage.events
        self.rooms = rooms

    async def get_hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool = False,
        max_depth: int | None = None,
        limit: int | None = None,
        from_token: str | None = None,
    ) -> dict[str, Any]:
        """One page of the tree under `room_id`: `{"rooms": [...], "next_batch"?: token}`."""
        self.rooms.check_room_id(room_id)
        if limit is not None and limit <= 0:
            raise invalid_param("limit must be a positive integer")
        if max_depth is not None and max_depth < 0:
            raise invalid_param("max_depth must be a non-negative integer")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        walk = _Walk(self, user_id, suggested_only, max_depth)
        await walk.load_memberships()
        if from_token is not None:
            await walk.resume(room_id, from_token)
        else:
            walk.queue = [(room_id, 0)]
        root = (await walk.summaries([room_id])).get(room_id)
        if root is None or not walk.accessible(root):
            raise forbidden("You are not allowed to see this room")
        rooms = await walk.run(limit)
        response: dict[str, Any] = {"rooms": rooms}
        if walk.queue:
            response["next_batch"] = await walk.save(room_id)
        return response


class _Walk:
    """One request's walk of the tree: the stack, the rooms seen, the summaries read."""

    def __init__(
        self, hierarchy: RoomHierarchy, user_id: str, suggested_only: bool, max_depth: int | None
    ) -> None:
        self.hierarchy = hierarchy
        self.user_id = user_id
        self.suggested_only = suggested_only
        self.max_depth = max_depth
        # (room ID, depth); the next room to show is the last.
        self.queue: list[tuple[str, int]] = []
        self.processed: set[str] = set()
        self.memberships: dict[str, str] = {}
        self.joined: set[str] = set()
        self._summaries: dict[str, RoomSummary | None] = {}

    async def load_memberships(self) -> None:
        found = await self.hierarchy.events.rooms_for_user(self.user_id, ("join", "invite", "ban"))
        self.memberships = {m.room_id: m.membership for m in found}
        self.joined = {room_id for room_id, m in self.memberships.items() if m == "join"}

    def accessible(self, summary: RoomSummary) -> bool:
        return is_accessible(summary, self.memberships.get(summary.room_id), self.joined)

    async def summaries(self, room_ids: list[str]) -> dict[str, RoomSummary | None]:
        missing = [r for r in dict.fromkeys(room_ids) if r not in self._summaries]
        if missing:
            found = await summarise_rooms(self.hierarchy.events, missing, with_children=True)
            for room_id in missing:
                self._summaries[room_id] = found.get(room_id)
        return {room_id: self._summaries[room_id] for room_id in room_ids}

    async def resume(self, room_id: str, token: str) -> None:
        session = await self.hierarchy.storage.spaces.get_hierarchy_session(
            token, now_ms() - SESSION_TTL_MS
        )
        if session is None:
            raise invalid_param("Unknown or expired pagination token")
        if (session.user_id, session.room_id, session.suggested_only, session.max_depth) != (
            self.user_id,
            room_id,
            self.suggested_only,
            self.max_depth,
        ):
            raise invalid_param("suggested_only and max_depth cannot change on paginated requests")
        self.queue = [(r, d) for r, d in session.state["queue"]]
        self.processed = set(session.state["processed"])

    async def save(self, room_id: str) -> str:
        token = random_token(16)
        now = now_ms()
        session = HierarchySession(
            self.user_id,
            room_id,
            self.suggested_only,
            self.max_depth,
            {"queue": self.queue, "processed": sorted(self.processed)},
        )
        await self.hierarchy.storage.spaces.save_hierarchy_session(
            token, session, now, now - SESSION_TTL_MS
        )
        return token

    async def run(self, limit: int) -> list[dict[str, Any]]:
        rooms: list[dict[str, Any]] = []
        examined = 0
        while self.queue and len(rooms) < limit and examined < MAX_ROOMS_EXAMINED:
            room_id, depth = self.queue.pop()
            if room_id in self.processed:
                continue
            examined += 1
            self.processed.add(room_id)
            if room_id not in self._summaries:
                upcoming = [r for r, _d in self.queue[-PREFETCH:] if r not in self.processed]
                await self.summaries([room_id, *reversed(upcoming)])
            summary = self._summaries[room_id]
            if summary is None or not self.accessible(summary):
                continue
            children = children_to_follow(summary, self.suggested_only)
            rooms.append(hierarchy_entry(summary, children))
            if self.max_depth is None or depth < self.max_depth:
                for child in reversed(children):
                    child_id = child.state_tuple[1]
                    if child_id not in self.processed:
                        self.queue.append((child_id, depth + 1))
        # Rooms already shown need no further page.
        while self.queue and self.queue[-1][0] in self.processed:
            self.queue.pop()
        return rooms
