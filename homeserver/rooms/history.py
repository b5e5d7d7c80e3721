"""Reading a room's history: /messages, /context, /members, timestamp_to_event.

Every event handed out passes history visibility (`filter_events_for_user`),
which also hides what the reader's ignored users sent.
A user who left (or was banned) sees the room as it was when they left:
pages, contexts and member lists stop at their leave event. Pages are
range reads in (topological_ordering, stream_ordering) order; the filter's
event fields are applied in SQL, visibility afterwards, so a page the user
may mostly not see is refilled a few times rather than handed back empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage import Storage
from storage.history import START_KEY, EventMatch, Key

from ..errors import forbidden, not_found
from ..events.model import Event
from ..sync.filters import RoomEventFilter
from ..sync.tokens import PaginationToken, TopologicalToken
from .service import Rooms
from .visibility import filter_events_for_user, is_ignored

if TYPE_CHECKING:
    from ..ephemeral.account_data import AccountData

DEFAULT_LIMIT = 10
# Reads per page when history visibility hides what was read.
_MAX_ROUNDS = 3
_TIMESTAMP_BATCH = 50
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
MEMBER = "m.room.member"


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class MessagesPage:
    chunk: list[Event]
    start: str
    # None when there is nothing further to read in this direction.
    end: str | None
    state: list[Event]


@dataclass(frozen=True)
class EventContext:
    event: Event
    events_before: list[Event]
    events_after: list[Event]
    state: list[Event]
    start: str
    end: str


@dataclass(frozen=True)
class _Reader:
    """Who is reading a room, and how far they may read."""

    user_id: str
    membership: str | None
    # For a user who left or was banned: the position of that event.
    left_at: Key | None
    ignored: frozenset[str] = frozenset()
    # A server admin reading through the admin API: sees every event.
    sees_all: bool = False

    @property
    def joined(self) -> bool:
        return self.membership == "join"


@dataclass(frozen=True)
class _Page:
    """The visible events of one read, and where it stopped."""

    events: list[Event]
    # The position after the last event read, to continue from.
    position: Key
    more: bool


def _token(key: Key) -> str:
    return str(TopologicalToken(*key))


class RoomHistory:
    def __init__(self, storage: Storage, rooms: Rooms, account_data: AccountData) -> None:
        self.events = storage.events
        self.history = storage.history
        self.account_data = account_data
        self.rooms = rooms

    # ------------------------------------------------------------ helpers

    async def _reader(self, user_id: str, room_id: str) -> _Reader:
        """403 unless the user may read the room (Rooms.check_can_read)."""
        membership = await self.rooms.check_can_read(user_id, room_id)
        ignored = await self.account_data.ignored_users(user_id)
        if membership is None:
            return _Reader(user_id, None, None, ignored)
        left_at = None
        if membership.membership in ("leave", "ban"):
            position, _group = (await self.events.get_positions([membership.event_id]))[
                membership.event_id
            ]
            left_at = (position.topological_ordering, position.stream_ordering)
        return _Reader(user_id, membership.membership, left_at, ignored)

    async def _key(self, room_id: str, token: PaginationToken) -> Key:
        if isinstance(token, TopologicalToken):
            return token.key
        return await self.history.key_at_stream(room_id, token.events)

    async def _visible(self, reader: _Reader, room_id: str, events: list[Event]) -> list[Event]:
        if reader.sees_all:
            return events
        return await filter_events_for_user(
            self.events, reader.user_id, events, joined_now={room_id: reader.joined}, ignored=reader.ignored
        )

    async def _page(
        self,
        reader: _Reader,
        room_id: str,
        from_key: Key,
        to_key: Key | None,
        *,
        backwards: bool,
        limit: int,
        match: EventMatch,
    ) -> _Page:
        """Up to `limit` events the reader may see, read from `from_key` on."""
        visible: list[Event] = []
        position = from_key
        for _ in range(_MAX_ROUNDS):
            want = limit - len(visible)
            rows = await self.history.timeline(
                room_id, position, to_key, backwards=backwards, limit=want + 1, match=match
            )
            more = len(rows) > want
            rows = rows[:want]
            if rows:
                topological, stream = rows[-1].key
                # Backwards, the gap before an event is the one after (t, s - 1).
                position = (topological, stream - 1) if backwards else (topological, stream)
            found = await self.events.get_events([r.event_id for r in rows])
            visible += await self._visible(
                reader, room_id, [found[r.event_id] for r in rows if r.event_id in found]
            )
            if not more or len(visible) >= limit:
                return _Page(visible, position, more)
        return _Page(visible, position, True)

    async def _state_at(self, event_ids: Sequence[str]) -> dict[str, dict[tuple[str, str], str]]:
        """The room state after each event."""
        positions = await self.events.get_positions(event_ids)
        return {
            event_id: await self.events.get_state_group(group)
            for event_id, (_position, group) in positions.items()
        }

    async def _sender_members(self, events: list[Event]) -> list[Event]:
        """Each sender's m.room.member event as of their newest event in `events`."""
        newest: dict[str, str] = {}
        for event in events:  # oldest first: later events overwrite
            newest[event.sender] = event.event_id
        states = await self._state_at(list(set(newest.values())))
        ids = [
            states[event_id][(MEMBER, sender)]
            for sender, event_id in newest.items()
            if (MEMBER, sender) in states.get(event_id, {})
        ]
        found = await self.events.get_events(ids)
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    # ----------------------------------------------------------- /messages

    async def messages(
        self,
        user_id: str,
        room_id: str,
        *,
        backwards: bool,
        from_token: PaginationToken | None,
        to_token: PaginationToken | None,
        limit: int | None,
        event_filter: RoomEventFilter,
        as_admin: bool = False,
    ) -> MessagesPage:
        """A page of history; `as_admin` (the admin API) reads every event of any room."""
        if as_admin:
            await self.rooms.require_room(room_id)
            reader = _Reader(user_id, None, None, sees_all=True)
        else:
            reader = await self._reader(user_id, room_id)
        given = await self._key(room_id, from_token) if from_token is not None else None
        if given is not None:
            from_key = given
        elif backwards:
            from_key = reader.left_at or await self.history.latest_key(room_id)
        else:
            from_key = START_KEY
        to_key = await self._key(room_id, to_token) if to_token is not None else None
        if reader.left_at is not None:
            if backwards:
                from_key = min(from_key, reader.left_at)
            else:
                to_key = min(to_key, reader.left_at) if to_key is not None else reader.left_at
        # `start` is the `from` given, unless there was none or it was clamped to the leave.
        echo = from_token is not None and from_key == given
        start = str(from_token) if echo else _token(from_key)
        page = await self._page(
            reader, room_id, from_key, to_key,
            backwards=backwards,
            limit=limit if limit is not None else event_filter.limit or DEFAULT_LIMIT,
            match=event_filter.match_for(room_id),
        )
        state: list[Event] = []
        if event_filter.lazy_load_members and page.events:
            chronological = page.events[::-1] if backwards else page.events
            state = await self._sender_members(chronological)
        return MessagesPage(
            page.events, start, _token(page.position) if page.more else None, state
        )

    # ------------------------------------------------------------ /context

    async def context(
        self, user_id: str, room_id: str, event_id: str, limit: int, event_filter: RoomEventFilter
    ) -> EventContext:
        # Like /messages, a non-member is refused outright (403); an event
        # the member may not see is one that does not exist (404).
        reader = await self._reader(user_id, room_id)
        event = await self.rooms.visible_event(user_id, room_id, event_id)
        if is_ignored(event, reader.ignored):
            raise not_found("Event not found")
        position, _group = (await self.events.get_positions([event_id]))[event_id]
        topological, stream = position.topological_ordering, position.stream_ordering
        match = event_filter.match_for(room_id)
        before = await self._page(
            reader, room_id, (topological, stream - 1), None,
            backwards=True, limit=limit // 2, match=match,
        )
        after = await self._page(
            reader, room_id, (topological, stream), reader.left_at,
            backwards=False, limit=limit - limit // 2, match=match,
        )
        last = after.events[-1] if after.events else event
        state_ids = (await self._state_at([last.event_id]))[last.event_id]
        if event_filter.lazy_load_members:
            senders = {e.sender for e in (*before.events, event, *after.events)}
            state_ids = {k: v for k, v in state_ids.items() if k[0] != MEMBER or k[1] in senders}
        found = await self.events.get_events(state_ids.values())
        state = [e for e in found.values() if event_filter.matches(e)]
        return EventContext(
            event, before.events, after.events, state,
            start=_token(before.position), end=_token(after.position),
        )

    # ------------------------------------------------------------ /members

    async def members(
        self,
        user_id: str,
        room_id: str,
        *,
        at: PaginationToken | None,
        membership: str | None,
        not_membership: str | None,
    ) -> list[Event]:
        """Member events as of `at` (default: now, or when the user left).

        `membership` and `not_membership` combine with "or", as the spec says.
        """
        reader = await self._reader(user_id, room_id)
        if reader.membership == "invite":
            raise forbidden("Join the room to see its members")
        wanted: set[str] = set(MEMBERSHIPS)
        if membership is not None or not_membership is not None:
            wanted = {membership} if membership is not None else set()
            if not_membership is not None:
                wanted |= set(MEMBERSHIPS) - {not_membership}
        key = await self._key(room_id, at) if at is not None else None
        if reader.left_at is not None:
            key = min(key, reader.left_at) if key is not None else reader.left_at
        if key is None:
            current = await self.events.members_of_room(room_id, sorted(wanted))
            found = await self.events.get_events(m.event_id for m in current)
            return [found[m.event_id] for m in current if m.event_id in found]
        rows = await self.history.timeline(room_id, key, None, backwards=True, limit=1)
        if not rows:
            return []
        state = await self.events.get_state_group(rows[0].state_group)
        found = await self.events.get_events(v for (t, _k), v in state.items() if t == MEMBER)
        return [e for e in found.values() if e.membership in wanted]

    async def joined_members(self, user_id: str, room_id: str) -> dict[str, dict[str, str]]:
        """Joined users and their room profiles; only for joined users (spec)."""
        reader = await self._reader(user_id, room_id)
        if not reader.joined:
            raise forbidden("You are not joined to this room")
        joined: dict[str, dict[str, str]] = {}
        for member in await self.events.members_of_room(room_id, ("join",)):
            profile = {}
            if member.displayname is not None:
                profile["display_name"] = member.displayname
            if member.avatar_url is not None:
                profile["avatar_url"] = member.avatar_url
            joined[member.user_id] = profile
        return joined

    # -------------------------------------------------- timestamp_to_event

    async def event_at_timestamp(
        self, user_id: str, room_id: str, ts: int, *, forwards: bool
    ) -> Event:
        """The visible event nearest `ts` in the given direction, or 404."""
        reader = await self._reader(user_id, room_id)
        after: tuple[int, int] | None = None
        for _ in range(_MAX_ROUNDS):
            rows = await self.history.events_near_timestamp(
                room_id, ts, forwards=forwards, after=after, limit=_TIMESTAMP_BATCH
            )
            found = await self.events.get_events([r[0] for r in rows])
            visible = await self._visible(
                reader, room_id, [found[r[0]] for r in rows if r[0] in found]
            )
            if visible:
                return visible[0]
            if len(rows) < _TIMESTAMP_BATCH:
                break
            after = (rows[-1][1], rows[-1][2])
        direction = "forward" if forwards else "backward"
        raise not_found(f"Unable to find event from {ts} in {direction} direction")
