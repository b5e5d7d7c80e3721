"""Message search (spec: Server Side Search, the `room_events` category).

The store reads hits in order (best or newest first) from the rooms the
user is, or was, in; each hit then passes history visibility
(`filter_events_for_user`), so a user never finds what they could not
read in the room: nothing from before they could see it, nothing from
after they left. Hidden hits are skipped and the next ones read, a few
rounds at most, so a page is rarely short.

`count` is worked out the same way: the visible hits read from the top, up
to COUNT_LIMIT, never a count taken in SQL before visibility (that told a
late joiner how many hidden messages held a word, which spells them out a
prefix at a time). The page is cut from those hits when they reach past
it, so counting costs one read, not two.

Sizes are capped: MAX_LIMIT results a page, MAX_CONTEXT_LIMIT context
events each way per result, MAX_CONTEXT_EVENTS in a response.

Pagination is by position, not offset: a `next_batch` names the last hit
read (its rank and stream ordering, or its stream ordering for `recent`),
and the next page starts after it, so pages never repeat a result. A
group's `next_batch` continues that group alone (one room, one sender).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from storage import Storage
from storage.search import KEY_TYPES, SearchHit, SearchScope, searchable_text

from ..errors import invalid_param
from ..events.model import Event, StateKey
from ..rooms.history import RoomHistory
from ..rooms.visibility import filter_events_for_user
from ..sync.filters import RoomEventFilter
from ..sync.tokens import MAX_POSITION, InvalidToken, TopologicalToken
from .query import parse_search_term

DEFAULT_LIMIT = 10
# The most results a page holds, whatever the filter's `limit`.
MAX_LIMIT = 100
DEFAULT_CONTEXT_LIMIT = 5
# The most context events per result each way, and per response in all.
MAX_CONTEXT_LIMIT = 20
MAX_CONTEXT_EVENTS = 500
# `count` counts visible hits up to this many.
COUNT_LIMIT = 500
GROUP_KEYS = ("room_id", "sender")
ORDERS = ("rank", "recent")
# Store reads per page when history visibility hides hits, and how many
# hits beyond twice the page's remainder each read takes.
_MAX_ROUNDS = 5
_READ_AHEAD = 10
MEMBER = "m.room.member"

# A hit's place in the order: (rank, stream_ordering) by rank, stream_ordering by recency.
Cursor = tuple[float, int] | int


@dataclass(frozen=True)
class Batch:
    """Where a page starts: the `next_batch` a client hands back."""

    order_by: str
    after: Cursor
    # (group key, group value) when continuing one group.
    group: tuple[str, str] | None = None

    def __str__(self) -> str:
        value = {"o": self.order_by, "a": self.after, "g": self.group}
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> Batch:
        """Raises InvalidToken for anything this server did not hand out."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            value = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):
            raise InvalidToken("not a search token") from None
        if not isinstance(value, dict) or value.get("o") not in ORDERS:
            raise InvalidToken("not a search token")
        after, group = value.get("a"), value.get("g")

        def position(n: Any) -> bool:
            return type(n) is int and 0 <= n <= MAX_POSITION

        def rank(n: Any) -> bool:
            return type(n) is float and math.isfinite(n)

        if value["o"] == "rank":
            if not (
                isinstance(after, list) and len(after) == 2 and rank(after[0]) and position(after[1])
            ):
                raise InvalidToken("not a search token")
            after = (after[0], after[1])
        elif not position(after):
            raise InvalidToken("not a search token")
        if group is not None:
            if not (
                isinstance(group, list)
                and len(group) == 2
                and group[0] in GROUP_KEYS
                and isinstance(group[1], str)
            ):
                raise InvalidToken("not a search token")
            group = (group[0], group[1])
        return cls(value["o"], after, group)


@dataclass(frozen=True)
class RoomEventsCriteria:
    """The `room_events` category of a search request, validated."""

    search_term: str
    keys: tuple[str, ...] = tuple(KEY_TYPES)
    event_filter: RoomEventFilter = dataclasses.field(default_factory=RoomEventFilter)
    order_by: str = "rank"
    # None: no context asked for.
    before_limit: int | None = None
    after_limit: int | None = None
    include_profile: bool = False
    include_state: bool = False
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    events_before: list[Event]
    events_after: list[Event]
    start: str
    end: str
    # user ID -> {displayname, avatar_url}, when asked for.
    profile_info: dict[str, dict[str, str]] | None


@dataclass(frozen=True)
class Result:
    rank: float
    event: Event
    context: Context | None


@dataclass(frozen=True)
class Group:
    results: list[str]
    order: int
    next_batch: str | None


@dataclass(frozen=True)
class RoomEventsResults:
    results: list[Result]
    count: int
    highlights: list[str]
    next_batch: str | None
    # group key -> group value -> group
    groups: dict[str, dict[str, Group]]
    # room ID -> state events, when asked for
    state: dict[str, list[Event]] | None


def _cursor(hit: SearchHit, by_rank: bool) -> Cursor:
    return (hit.rank, hit.stream_ordering) if by_rank else hit.stream_ordering


class MessageSearch:
    def __init__(self, storage: Storage, history: RoomHistory, language: str) -> None:
        self.store = storage.search
        self.store.language = language
        self.events = storage.events
        self.history = history

    async def start(self) -> None:
        await self.store.check_language()

    def _scope(self, user_id: str, criteria: RoomEventsCriteria, batch: Batch | None) -> SearchScope:
        event_filter = criteria.event_filter
        rooms = event_filter.rooms
        match = event_filter.match
        if batch is not None and batch.group is not None:
            key, value = batch.group
            if key == "room_id":
                rooms = (value,) if event_filter.allows_room(value) else ()
            else:
                senders = match.senders
                allowed = senders is None or value in senders
                match = dataclasses.replace(match, senders=(value,) if allowed else ())
        return SearchScope(
            user_id=user_id,
            query=parse_search_term(criteria.search_term),
            types=[KEY_TYPES[k] for k in dict.fromkeys(criteria.keys)],
            match=match,
            rooms=rooms,
            not_rooms=event_filter.not_rooms,
        )

    async def room_events(
        self, user_id: str, criteria: RoomEventsCriteria, batch: Batch | None
    ) -> RoomEventsResults:
        if batch is not None and batch.order_by != criteria.order_by:
            raise invalid_param("next_batch belongs to a search in another order")
        by_rank = criteria.order_by == "rank"
        scope = self._scope(user_id, criteria, batch)
        limit = min(criteria.event_filter.limit or DEFAULT_LIMIT, MAX_LIMIT)
        joined = {m.room_id: True for m in await self.events.rooms_for_user(user_id)}
        # The count: the visible hits from the top, up to COUNT_LIMIT. The page
        # is cut from them when they reach past it, else read on its own.
        counted, _end, uncounted = await self._read_visible(
            user_id, joined, scope, by_rank, None, COUNT_LIMIT
        )
        start = batch.after if batch is not None else None
        rest = [(h, e) for h, e in counted if start is None or _cursor(h, by_rank) < start]
        if len(rest) >= limit:
            found, more = rest[:limit], len(rest) > limit or uncounted
            after: Cursor | None = _cursor(found[-1][0], by_rank)
        elif not uncounted:
            found, after, more = rest, None, False
        else:
            found, after, more = await self._read_visible(user_id, joined, scope, by_rank, start, limit)
        group = batch.group if batch is not None else None
        next_batch = str(Batch(criteria.order_by, after, group)) if more and after is not None else None
        texts = {h.stream_ordering: searchable_text(e) or "" for h, e in found}
        highlights = await self.store.highlights(scope.query, texts)
        contexts = await self._contexts(user_id, criteria, [e for _h, e in found])
        results = [
            Result(hit.rank, event, contexts.get(event.event_id)) for hit, event in found
        ]
        return RoomEventsResults(
            results=results,
            count=len(counted),
            highlights=sorted({w.lower() for w in highlights} | set(scope.query.words)),
            next_batch=next_batch,
            groups=self._groups(criteria, found, by_rank, more),
            state=await self._room_states(user_id, {e.room_id for _h, e in found})
            if criteria.include_state
            else None,
        )

    async def _read_visible(
        self,
        user_id: str,
        joined: dict[str, bool],
        scope: SearchScope,
        by_rank: bool,
        after: Cursor | None,
        limit: int,
    ) -> tuple[list[tuple[SearchHit, Event]], Cursor | None, bool]:
        """Up to `limit` hits the user may see, read from `after` on; where the
        reading stopped; whether there may be more.

        `joined`: the rooms the user is joined to now (for history visibility).
        """
        found: list[tuple[SearchHit, Event]] = []
        more = False
        for _ in range(_MAX_ROUNDS):
            # Read past the page's end: some hits may be hidden from this user.
            size = (limit - len(found)) * 2 + _READ_AHEAD
            hits = await self.store.search(scope, by_rank=by_rank, after=after, limit=size + 1)
            more = len(hits) > size
            hits = hits[:size]
            events = await self.events.get_events(h.event_id for h in hits)
            visible = {
                e.event_id
                for e in await filter_events_for_user(
                    self.events, user_id, [events[h.event_id] for h in hits if h.event_id in events],
                    joined_now=joined,
                )
            }
            for hit in hits:
                if len(found) == limit:
                    more = True  # hits left unread: the next page starts at them
                    break
                after = _cursor(hit, by_rank)
                if hit.event_id in visible:
                    found.append((hit, events[hit.event_id]))
            if not more or len(found) >= limit:
                break
        return found, after, more

    def _groups(
        self,
        criteria: RoomEventsCriteria,
        found: list[tuple[SearchHit, Event]],
        by_rank: bool,
        more: bool,
    ) -> dict[str, dict[str, Group]]:
        groups: dict[str, dict[str, Group]] = {}
        for key in dict.fromkeys(criteria.group_by):
            members: dict[str, list[tuple[SearchHit, Event]]] = {}
            for hit, event in found:
                members.setdefault(getattr(event, key), []).append((hit, event))
            groups[key] = {
                value: Group(
                    results=[e.event_id for _h, e in items],
                    order=order,
                    # A group may go on when the page does; its token continues it alone.
                    next_batch=str(
                        Batch(criteria.order_by, _cursor(items[-1][0], by_rank), (key, value))
                    )
                    if more
                    else None,
                )
                for order, (value, items) in enumerate(members.items(), start=1)
            }
        return groups

    # ------------------------------------------------------------ context

    async def _contexts(
        self, user_id: str, criteria: RoomEventsCriteria, events: list[Event]
    ) -> dict[str, Context]:
        if criteria.before_limit is None or not events:
            return {}
        # (Each at most MAX_CONTEXT_LIMIT: the request's reading sees to that.)
        before_limit = criteria.before_limit
        after_limit = criteria.after_limit or 0
        # Shared out evenly when the page's contexts would exceed MAX_CONTEXT_EVENTS.
        wanted = len(events) * (before_limit + after_limit)
        if wanted > MAX_CONTEXT_EVENTS:
            before_limit = before_limit * MAX_CONTEXT_EVENTS // wanted
            after_limit = after_limit * MAX_CONTEXT_EVENTS // wanted
        positions = await self.events.get_positions(e.event_id for e in events)
        contexts: dict[str, Context] = {}
        for event in events:
            position, _group = positions[event.event_id]
            at = (position.topological_ordering, position.stream_ordering)
            before = await self._around(user_id, event, (at[0], at[1] - 1), True, before_limit, criteria)
            after = await self._around(user_id, event, at, False, after_limit, criteria)
            # The gap before the earliest event shown, and the one after the latest.
            first_id = before[-1].event_id if before else event.event_id
            last_id = after[-1].event_id if after else event.event_id
            edges = await self.events.get_positions([first_id, last_id])
            first, last = edges[first_id][0], edges[last_id][0]
            profiles = None
            if criteria.include_profile:
                senders = {e.sender for e in (*before, event, *after)}
                profiles = await self._profiles_at(last_id, senders)
            contexts[event.event_id] = Context(
                events_before=before,
                events_after=after,
                start=str(TopologicalToken(first.topological_ordering, first.stream_ordering - 1)),
                end=str(TopologicalToken(last.topological_ordering, last.stream_ordering)),
                profile_info=profiles,
            )
        return contexts

    async def _around(
        self,
        user_id: str,
        event: Event,
        key: tuple[int, int],
        backwards: bool,
        limit: int,
        criteria: RoomEventsCriteria,
    ) -> list[Event]:
        """Up to `limit` events the user may see before or after `key`, as /messages reads them."""
        if limit <= 0:
            return []
        page = await self.history.messages(
            user_id, event.room_id,
            backwards=backwards, from_token=TopologicalToken(*key), to_token=None,
            limit=limit, event_filter=criteria.event_filter,
        )
        return page.chunk

    async def _profiles_at(self, event_id: str, senders: set[str]) -> dict[str, dict[str, str]]:
        """Each sender's display name and avatar in the room state after `event_id`."""
        _position, group = (await self.events.get_positions([event_id]))[event_id]
        state = await self.events.get_state_group(group)
        keys: list[StateKey] = [(MEMBER, s) for s in senders]
        members = await self.events.get_events(state[k] for k in keys if k in state)
        profiles: dict[str, dict[str, str]] = {}
        for member in members.values():
            assert member.state_key is not None
            profile = {
                field: member.content[field]
                for field in ("displayname", "avatar_url")
                if isinstance(member.content.get(field), str)
            }
            profiles[member.state_key] = profile
        return profiles

    # -------------------------------------------------------------- state

    async def _room_states(self, user_id: str, room_ids: set[str]) -> dict[str, list[Event]]:
        """Each room's current state; for a room the user left, its state when they left."""
        states: dict[str, list[Event]] = {}
        for room_id in sorted(room_ids):
            membership = await self.events.get_membership(room_id, user_id)
            if membership is not None and membership.membership in ("leave", "ban"):
                positions = await self.events.get_positions([membership.event_id])
                _position, group = positions[membership.event_id]
                ids = await self.events.get_state_group(group)
            else:
                ids = await self.events.get_current_state_ids(room_id)
            found = await self.events.get_events(ids.values())
            states[room_id] = list(found.values())
        return states
