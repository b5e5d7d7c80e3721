"""GET /sync: everything that changed for a user between two stream tokens.

An initial sync (no `since`) returns every room the user is in with its
state and latest events. An incremental sync returns what changed in
(since, now]: rooms with new events get their new timeline (limited, with
the state at the start of the timeline as a delta against `since`, when
more happened than the filter's limit); rooms the user newly joined get
their full state; invites, knocks and leaves appear once. With
`use_state_after` (MSC4222) rooms carry the state at the END of their
timeline under `state_after` instead of `state`. With a `timeout`
and nothing to say, the request waits on the notifier for a change that
concerns the user. docs/sync.md tells the whole story.

Reads are batched: one range read finds the rooms with new events, events
come from the cache, state groups are cached, member counts and heroes for
all rooms come from a couple of queries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from storage.events import Membership, StateMap
from storage.history import EventMatch
from storage.streams import current_positions

from ..e2ee.keys import SIGNED_CURVE25519
from ..events.model import Event
from ..rooms.visibility import filter_events_for_user
from .filters import DEFAULT_TIMELINE_LIMIT, Filter, RoomEventFilter, only_fields
from .notifier import Waiter
from .tokens import StreamToken, TopologicalToken

if TYPE_CHECKING:
    from ..accounts.auth import Requester
    from ..app import HomeServer

MEMBER = "m.room.member"
# The state an invite or knock shows of the room (stripped state).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)
MAX_TIMEOUT_MS = 5 * 60 * 1000
# MSC4222: the response key of a room's state at the END of its timeline,
# stable and unstable, named after the query parameter that asked for it.
STATE_AFTER = "state_after"
UNSTABLE_STATE_AFTER = "org.matrix.msc4222.state_after"
Built = TypeVar("Built")


@dataclass
class _RoomTimeline:
    events: list[Event]
    limited: bool
    prev_batch: str


@dataclass(frozen=True)
class SyncRequest:
    """Who is syncing, from which device, with which filter, and under
    which key rooms carry their state: "state" (at the start of the
    timeline) or a `state_after` name (at its end, MSC4222)."""

    user_id: str
    device_id: str
    filter: Filter
    state_key: str = "state"
    # The users whose events (but state events) and invites are not shown.
    ignored: frozenset[str] = frozenset()

    @property
    def state_after(self) -> bool:
        return self.state_key != "state"


@dataclass
class SyncResult:
    next_batch: StreamToken
    body: dict[str, Any] = field(default_factory=dict)
    has_news: bool = False


def _joined_ids(memberships: list[Membership]) -> set[str]:
    return {m.room_id for m in memberships if m.membership == "join"}


def _moved(since: StreamToken | None, now: StreamToken, stream: str) -> bool:
    """Whether `stream` can have anything new: positions only grow, so an
    unmoved stream needs no query."""
    return since is None or getattr(since, stream) < getattr(now, stream)


class SyncHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.events = hs.storage.events
        self.store = hs.storage.sync
        self.notifier = hs.notifier
        # user -> the rooms they were joined to at their last sync: what a
        # long-poll waits on before it has read the rooms again.
        self._joined_hint: dict[str, set[str]] = {}
        # user -> their membership rows, as every sync reads them. A member
        # event notifies its target (`users`) in every process, and changes
        # learnt without saying whom they concern clear everything, so the
        # rows are dropped whenever they may have changed; `_generation`
        # keeps a read that raced with a change from being stored.
        self._membership_rows: dict[str, list[Membership]] = {}
        self._generation = 0
        self.notifier.observers.append(self._observe)

    def _observe(self, stream: str | None, users: tuple[str, ...] | None) -> None:
        if stream is None or users is None:
            self._generation += 1
            self._membership_rows.clear()
        elif stream == "events" and users:
            self._generation += 1
            for user_id in users:
                self._membership_rows.pop(user_id, None)

    async def _membership_rows_of(self, user_id: str) -> list[Membership]:
        rows = self._membership_rows.get(user_id)
        if rows is None:
            generation = self._generation
            rows = await self.events.rooms_for_user(user_id, ("join", "invite", "knock", "leave", "ban"))
            if generation == self._generation:
                self._membership_rows[user_id] = rows
        return rows

    async def sync(
        self,
        requester: Requester,
        since: StreamToken | None,
        sync_filter: Filter,
        *,
        timeout_ms: int = 0,
        full_state: bool = False,
        set_presence: str | None = None,
        state_key: str = "state",
        closing: asyncio.Event | None = None,
    ) -> dict[str, Any]:
        """The sync response body. With a `timeout_ms` and nothing to report,
        waits for news until the timeout, or until `closing` is set.
        `state_key` is "state", or STATE_AFTER / UNSTABLE_STATE_AFTER for
        the state at the end of each timeline (MSC4222) under that key."""
        user_id = requester.user_id
        request = SyncRequest(user_id, requester.device_id, sync_filter, state_key)
        await self.hs.presence.set_from_sync(user_id, set_presence)
        if since is not None:
            since = await self.catch_up(since)
        if since is None or full_state:
            # Nothing to wait for. The token is taken before the rooms are
            # read, so every change up to it is in what is read.
            now = self.notifier.current_token()
            memberships = await self.memberships(user_id, now)
            return await self._finish(request, await self._build(request, memberships, since, now, full_state))
        deadline = time.monotonic() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        result = await self.wait_for_news(
            user_id,
            deadline,
            lambda now, memberships: self._build(request, memberships, since, now, full_state),
            lambda built: built.has_news,
            closing,
        )
        return await self._finish(request, result)

    async def wait_for_news(
        self,
        user_id: str,
        deadline: float,
        build: Callable[[StreamToken, list[Membership]], Awaitable[Built]],
        has_news: Callable[[Built], bool],
        closing: asyncio.Event | None = None,
    ) -> Built:
        """`build(now, memberships)` at the current token; while what it built
        has no news and `deadline` (a monotonic time) is ahead, wait for a
        change that concerns the user and build again. Ends early, with the
        last build, when `closing` is set. (GET /sync and sliding sync.)"""
        # The rooms to wait on: those of the user's last sync, where known
        # (checked below against the rooms read after the token is taken).
        rooms = self._joined_hint.get(user_id)
        if rooms is None:
            rooms = _joined_ids(await self.memberships(user_id, self.notifier.current_token()))
        while True:
            # Registered before the token is taken: a change notified before
            # this is within the token (so in this build), one notified after
            # it wakes the waiter if it is in `rooms` or concerns the user
            # (a room joined since `rooms` was read does, through the user).
            waiter = Waiter(user_id, rooms)
            self.notifier.register(waiter)
            try:
                now = self.notifier.current_token()
                memberships = await self.memberships(user_id, now)
                joined = _joined_ids(memberships)
                self._joined_hint[user_id] = joined
                if not joined <= rooms:
                    # The waiter misses a room the user is in: wait on the right ones.
                    rooms = joined
                    continue
                result = await build(now, memberships)
                remaining = deadline - time.monotonic()
                if has_news(result) or remaining <= 0 or (closing is not None and closing.is_set()):
                    return result
                woken = await waiter.wait(remaining, closing)
                if not woken or (closing is not None and closing.is_set()):
                    # Timed out, or closing: an empty answer moves the client's token on.
                    return result
            finally:
                self.notifier.unregister(waiter)
            # Woken: recompute, with the rooms the user is in now.
            rooms = joined
            await asyncio.sleep(0)

    async def _finish(self, request: SyncRequest, result: SyncResult) -> dict[str, Any]:
        """The body to send: with the device's key counts, which change
        without a stream position (another user's claim), so they are read
        for every response, but not for builds that are not sent."""
        counts: dict[str, int] = {}
        fallback: list[str] = []
        if request.device_id:
            counts, fallback = await self.hs.e2ee_keys.key_counts(request.user_id, request.device_id)
        result.body["device_one_time_keys_count"] = {SIGNED_CURVE25519: 0, **counts}
        result.body["device_unused_fallback_key_types"] = fallback
        return result.body

    async def memberships(self, user_id: str, now: StreamToken) -> list[Membership]:
        """The user's memberships as they stood at `now`.

        Rows read after the token was taken may hold changes past it: those
        are walked back to the membership in force at the token, so a change
        is reported by the sync whose range holds it, never by two or none.
        """
        rows = await self._membership_rows_of(user_id)
        later = {m.room_id: m.event_id for m in rows if m.stream_ordering > now.events}
        if not later:
            return rows
        _chains, at_now = await self._member_history(later, now.events)
        adjusted = [m for m in rows if m.room_id not in later]
        for m in rows:
            if m.room_id in at_now:
                event, stream = at_now[m.room_id]
                adjusted.append(
                    dataclasses.replace(
                        m, membership=event.membership or "leave", event_id=event.event_id, stream_ordering=stream
                    )
                )
        return adjusted

    async def _member_history(
        self, current: dict[str, str], bound: int
    ) -> tuple[dict[str, list[Event]], dict[str, tuple[Event, int]]]:
        """For each room of `current` (room -> the user's member event), the
        user's member events after stream position `bound`, newest first,
        and the one in force at `bound` with its position (absent if none).
        Follows `replaces_state`, one batched read per step back."""
        chains: dict[str, list[Event]] = {room_id: [] for room_id in current}
        at_bound: dict[str, tuple[Event, int]] = {}
        pending = dict(current)
        while pending:
            ids = list(pending.values())
            found = await self.events.get_events(ids)
            positions = await self.events.get_positions(ids)
            step: dict[str, str] = {}
            for room_id, event_id in pending.items():
                event, position = found.get(event_id), positions.get(event_id)
                if event is None or position is None:
                    continue
                stream = position[0].stream_ordering
                if stream <= bound:
                    at_bound[room_id] = (event, stream)
                    continue
                chains[room_id].append(event)
                if event.replaces_state is not None:
                    step[room_id] = event.replaces_state
            pending = step
        return chains, at_bound

    async def _newly_joined(self, changed: list[Membership], since: int) -> set[str]:
        """Of the joined rooms whose membership changed after `since`, those the
        client has not seen the user joined to throughout: joined, or left and
        rejoined. A profile change (join -> join) is not one of them."""
        if not changed:
            return set()
        chains, at_since = await self._member_history({m.room_id: m.event_id for m in changed}, since)
        newly = set()
        for m in changed:
            before = at_since.get(m.room_id)
            if before is None or before[0].membership != "join" or any(event.membership != "join" for event in chains[m.room_id]):
                newly.add(m.room_id)
        return newly

    async def catch_up(self, since: StreamToken) -> StreamToken:
        """`since`, once this process knows of everything before it.

        Behind a load balancer a client may bring a token from a process that
        has committed a change this one has not heard of yet: read the
        committed positions, so our answer is never behind the client's
        token (which would hand it the same events again). A token still
        ahead of what the database has committed was not handed out by this
        server; it is brought back to what exists.
        """
        names = StreamToken.stream_names()
        now = self.notifier.current_token()
        if all(getattr(since, n) <= getattr(now, n) for n in names):
            return since
        self.notifier.advance(await current_positions(self.hs.db))
        now = self.notifier.current_token()
        return StreamToken(**{n: min(getattr(since, n), getattr(now, n)) for n in names})

    # ---------------------------------------------------------------- build

    async def _build(
        self,
        request: SyncRequest,
        memberships: list[Membership],
        since: StreamToken | None,
        now: StreamToken,
        full_state: bool,
    ) -> SyncResult:
        user_id = request.user_id
        # Read for every build: a change to the list applies at once (spec).
        request = dataclasses.replace(request, ignored=await self.hs.account_data.ignored_users(user_id))
        sync_filter = request.filter
        room_filter = sync_filter.room
        from_events = since.events if since is not None else 0
        visible = [m for m in memberships if room_filter.allows_room(m.room_id)]
        joined = [m for m in visible if m.membership == "join"]
        joined_ids = [m.room_id for m in joined]

        # Rooms whose sections must be computed, and whether their members changed.
        if since is None or full_state:
            changed_events = dict.fromkeys(joined_ids, True)
        else:
            changed_events = await self.store.rooms_with_events(joined_ids, from_events, now.events)
        # Memberships that changed in (since, now]: invites, knocks and leaves
        # to report once, and joins (but not profile changes) that need full state.
        changed_membership = {
            m.room_id for m in visible if since is not None and from_events < m.stream_ordering <= now.events
        }
        newly = (
            await self._newly_joined([m for m in joined if m.room_id in changed_membership], from_events)
            if since is not None
            else set()
        )

        ephemeral = await self._ephemeral(user_id, joined_ids, since, now)
        global_data, room_data = await self.account_data_updates(user_id, since, now)
        # The summary is sent when it can have changed: new to the client, or members changed.
        summaries = await self.store.member_summaries(
            [r for r in joined_ids if r in newly or changed_events.get(r, False)], user_id
        )

        join_sections: dict[str, Any] = {}
        for membership in joined:
            room_id = membership.room_id
            full = since is None or full_state or room_id in newly
            section: dict[str, Any] = {}
            if full or room_id in changed_events:
                # A room new to the client gets its recent history; full_state
                # keeps the timeline to what happened since `since`.
                timeline_since = None if since is None or room_id in newly else since
                timeline_section, state_events = await self._room_timeline_and_state(
                    request, room_id, timeline_since, now, None, full_state=full,
                    heroes=summaries[room_id][2] if room_id in summaries else (),
                )
                if full or timeline_section["events"] or timeline_section["limited"] or state_events["events"]:
                    # (Not when the filter left out every new event and no state changed.)
                    section["timeline"] = timeline_section
                    section[request.state_key] = state_events
            if room_id in summaries:
                joined_count, invited_count, heroes = summaries[room_id]
                section["summary"] = {
                    "m.heroes": heroes,
                    "m.joined_member_count": joined_count,
                    "m.invited_member_count": invited_count,
                }
            ephemeral_events = [
                e for e in ephemeral.get(room_id, []) if room_filter.ephemeral.matches_json(room_id, e)
            ]
            data_events = [
                e for e in room_data.get(room_id, []) if room_filter.account_data.matches_json(room_id, e)
            ]
            if ephemeral_events:
                section["ephemeral"] = {"events": ephemeral_events}
            if data_events:
                section["account_data"] = {"events": data_events}
            if not full and not section.keys() & {"timeline", "ephemeral", "account_data"}:
                continue
            join_sections[room_id] = section
        # Counts of the rooms in the answer (they change only with events and
        # receipts, which put the room in it).
        unread = await self._unread(user_id, list(join_sections))
        for room_id, section in join_sections.items():
            counts = unread.get(room_id)
            if counts is not None:
                self._add_counts(section, counts, room_filter.timeline)
            self._fill_room(section, request.state_key)

        invite_sections, knock_sections, leave_sections = {}, {}, {}
        for membership in visible:
            if since is None:
                wanted = membership.membership not in ("leave", "ban") or room_filter.include_leave
            else:
                # full_state repeats standing invites and knocks, not every room ever left.
                wanted = membership.room_id in changed_membership or (
                    full_state and membership.membership in ("invite", "knock")
                )
            if not wanted:
                continue
            if membership.membership == "invite":
                invite = await self.events.get_event(membership.event_id)
                if invite is not None and invite.sender in request.ignored:
                    continue  # never shown (spec: Ignoring Users)
                invite_sections[membership.room_id] = {
                    "invite_state": {"events": await self.stripped_state(membership)}
                }
            elif membership.membership == "knock":
                knock_sections[membership.room_id] = {
                    "knock_state": {"events": await self.stripped_state(membership)}
                }
            elif membership.membership in ("leave", "ban"):
                timeline_section, state_events = await self._room_timeline_and_state(
                    request, membership.room_id, since, now, membership, full_state=since is None or full_state
                )
                leave_sections[membership.room_id] = {
                    "timeline": timeline_section,
                    request.state_key: state_events,
                    "account_data": {
                        "events": [
                            e
                            for e in room_data.get(membership.room_id, [])
                            if room_filter.account_data.matches_json(membership.room_id, e)
                        ]
                    },
                }

        presence_events = (
            sync_filter.presence.apply(
                await self.hs.presence.get_updates(user_id, since.presence if since else 0, now.presence)
            )
            if _moved(since, now, "presence")
            else []
        )
        global_data = sync_filter.account_data.apply(global_data)
        e2ee = await self._e2ee(request, memberships, since, now, changed_events, changed_membership)
        next_batch = dataclasses.replace(now, to_device=e2ee.pop("_to_device_upto"))

        body: dict[str, Any] = {
            "next_batch": str(next_batch),
            "rooms": {
                "join": join_sections,
                "invite": invite_sections,
                "knock": knock_sections,
                "leave": leave_sections,
            },
            "account_data": {"events": global_data},
            "presence": {"events": presence_events},
            **e2ee,
        }
        if sync_filter.event_fields is not None:
            self._project(body, sync_filter.event_fields)
        has_news = bool(
            join_sections or invite_sections or knock_sections or leave_sections
            or global_data or presence_events
            or body["to_device"]["events"] or body["device_lists"]["changed"] or body["device_lists"]["left"]
        )
        return SyncResult(next_batch, body, has_news)

    async def _e2ee(
        self,
        request: SyncRequest,
        memberships: list[Membership],
        since: StreamToken | None,
        now: StreamToken,
        changed_events: dict[str, bool],
        changed_membership: set[str],
    ) -> dict[str, Any]:
        """to_device and device_lists (and, under "_to_device_upto", where
        the to_device stream continues)."""
        messages: list[dict[str, Any]] = []
        upto = now.to_device
        if request.device_id:
            messages, upto = await self.hs.to_device.for_sync(request.user_id, request.device_id, since, now)
        changed: set[str] = set()
        left: set[str] = set()
        members_moved = bool(changed_membership) or any(changed_events.values())
        if since is not None and (_moved(since, now, "device_lists") or members_moved):
            changed, left = await self.hs.device_lists.changes(
                request.user_id, memberships, since, now, members_moved=members_moved
            )
        return {
            "to_device": {"events": messages},
            "device_lists": {"changed": sorted(changed), "left": sorted(left)},
            "_to_device_upto": upto,
        }

    @staticmethod
    def _fill_room(section: dict[str, Any], state_key: str) -> dict[str, Any]:
        """Every key of a joined room, so clients never have to guess."""
        section.setdefault("timeline", {"events": [], "limited": False})
        section.setdefault(state_key, {"events": []})
        section.setdefault("ephemeral", {"events": []})
        section.setdefault("account_data", {"events": []})
        section.setdefault("unread_notifications", {"notification_count": 0, "highlight_count": 0})
        return section

    @staticmethod
    def _add_counts(section: dict[str, Any], counts: dict[str, Any], timeline: RoomEventFilter) -> None:
        threads = counts.get("threads", {})
        if timeline.unread_thread_notifications:
            section["unread_notifications"] = {
                "notification_count": counts["notification_count"],
                "highlight_count": counts["highlight_count"],
            }
            if threads:
                section["unread_thread_notifications"] = threads
        else:
            # Without the option, thread notifications count towards the room.
            section["unread_notifications"] = {
                "notification_count": counts["notification_count"]
                + sum(t["notification_count"] for t in threads.values()),
                "highlight_count": counts["highlight_count"]
                + sum(t["highlight_count"] for t in threads.values()),
            }

    # ------------------------------------------------------------- per room

    async def _room_timeline_and_state(
        self,
        request: SyncRequest,
        room_id: str,
        since: StreamToken | None,
        now: StreamToken,
        left: Membership | None,
        *,
        full_state: bool,
        heroes: Sequence[str] = (),
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A room's timeline section and its state section.

        The timeline holds the events after `since` (the latest ones when
        None); `left` ends it at the user's leave. The state is the state at
        the start of the timeline: all of it with `full_state`, otherwise
        what changed since `since` that the timeline does not show. With
        `state_after` (MSC4222) it is the state at the END of the timeline:
        all of it with `full_state`, otherwise every entry that differs from
        the state at `since`, whether the timeline shows it or not.
        """
        user_id = request.user_id
        timeline_filter, state_filter = request.filter.room.timeline, request.filter.room.state
        upper = now.events if left is None else min(now.events, left.stream_ordering)
        lower = since.events if since is not None else 0
        limit = timeline_filter.limit or DEFAULT_TIMELINE_LIMIT
        match = timeline_filter.match_for(room_id)
        rows = await self.store.recent_events(room_id, lower, upper, limit + 1, match)
        limited = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        found = await self.events.get_events(r.event_id for r in rows)
        events = [found[r.event_id] for r in rows if r.event_id in found]
        timeline = await self.visible(request, events, joined=left is None)
        if left is not None and events and events[-1].event_id == left.event_id and (
            not timeline or timeline[-1].event_id != left.event_id
        ):
            # Users always see their own leave (a rejected invite, a retracted
            # knock), or the room would never leave their list.
            timeline.append(events[-1])
        if rows:
            first_key = rows[0].key
            prev_batch = str(TopologicalToken(first_key[0], first_key[1] - 1))
        else:
            prev_batch = str(StreamToken(upper))

        full = full_state or since is None
        if request.state_after:
            # The state after the timeline's last event: with every event of
            # the range in `rows` (no filter), the newest row's group.
            if rows and match == EventMatch():
                state = await self.events.get_state_group(rows[-1].state_group)
            else:
                state = await self.state_at(room_id, upper)
        elif rows:
            state = await self._state_before(rows[0].state_group, events[0] if events else None)
        else:
            state = await self.state_at(room_id, upper)
        # Against what the client had.
        if full_state or since is None:
            delta = state
        elif request.state_after or limited or match != EventMatch():
            # Events the timeline leaves out (the gap, or the filter's) may
            # have changed the state: the client learns it here. With
            # state_after the timeline's own state events count for nothing
            # (the client applies only state_after), so the delta is always
            # taken, which also carries what state resolution decided.
            before = await self.state_at(room_id, since.events)
            delta = {k: v for k, v in state.items() if before.get(k) != v}
        else:
            delta = {}
        if state_filter.lazy_load_members or timeline_filter.lazy_load_members:
            delta = self._lazy_members(delta, state, timeline, user_id, heroes, full=full,
                                       limited=limited or request.state_after)
        if request.state_after:
            state_ids = list(delta.values())
        else:
            timeline_ids = {e.event_id for e in timeline}
            state_ids = [v for v in delta.values() if v not in timeline_ids]
        state_found = await self.events.get_events(state_ids)
        state_events = [state_found[i] for i in state_ids if i in state_found]
        state_events = [e for e in state_events if state_filter.matches(e)]
        timeline_json = {
            "events": await self.serialize(request, timeline),
            "limited": limited,
            "prev_batch": prev_batch,
        }
        return timeline_json, {"events": await self.serialize(request, state_events)}

    @staticmethod
    def _lazy_members(
        delta: StateMap,
        state: StateMap,
        timeline: list[Event],
        user_id: str,
        heroes: Sequence[str],
        *,
        full: bool,
        limited: bool,
    ) -> StateMap:
        """The state to send when members are lazy-loaded (spec: Lazy-loading room members).

        Member events only for the timeline's senders (taken from `state`,
        the state sent, at the timeline's start or end, redundant or not),
        the user's own and the summary's heroes' when the room is new to the
        client or its full state was asked for (the spec requires the
        heroes': clients name the room after them; a later hero joins in a
        member event the client gets anyway), and, in a limited timeline (or
        with state_after, where the timeline's member events do not count),
        every member change in `delta`.
        """
        senders = {e.sender for e in timeline}
        if full:
            senders.add(user_id)
            senders.update(heroes)
        kept = {
            k: v for k, v in delta.items() if k[0] != MEMBER or k[1] in senders or (limited and not full)
        }
        for sender in senders:
            key = (MEMBER, sender)
            if key in state:
                kept[key] = state[key]
        return kept

    async def state_at(self, room_id: str, stream: int) -> StateMap:
        """The room's state after its last event at or before `stream`."""
        group = await self.store.state_group_at_stream(room_id, stream)
        return await self.events.get_state_group(group) if group is not None else {}

    async def _state_before(self, group: int, first: Event | None) -> StateMap:
        """The state just before `first`, from the state group after it."""
        state = dict(await self.events.get_state_group(group))
        if first is not None and first.is_state:
            if first.replaces_state is not None:
                state[first.state_tuple] = first.replaces_state
            else:
                state.pop(first.state_tuple, None)
        return state

    async def visible(self, request: SyncRequest, events: list[Event], *, joined: bool) -> list[Event]:
        if not events:
            return []
        return await filter_events_for_user(
            self.events, request.user_id, events, joined_now={events[0].room_id: joined},
            ignored=request.ignored,
        )

    async def serialize(self, request: SyncRequest, events: list[Event]) -> list[dict[str, Any]]:
        if request.filter.event_format == "federation":
            return [{**e.pdu, "event_id": e.event_id} for e in events]
        return await self.hs.serializer.serialize(
            events, device=(request.user_id, request.device_id), include_room_id=False
        )

    async def stripped_state(self, membership: Membership) -> list[dict[str, Any]]:
        """What an invitee or knocker sees of the room: a few state events, stripped."""
        positions = await self.events.get_positions([membership.event_id])
        if membership.event_id not in positions:
            return []
        state = await self.events.get_state_group(positions[membership.event_id][1])
        wanted = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        wanted.append(membership.event_id)
        found = await self.events.get_events(wanted)
        return [
            {"type": e.type, "state_key": e.state_key, "content": e.content, "sender": e.sender}
            for e in (found[i] for i in wanted if i in found)
        ]

    # ------------------------------------------------- other streams' data

    async def _ephemeral(
        self, user_id: str, room_ids: list[str], since: StreamToken | None, now: StreamToken
    ) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {}
        typing = (
            await self.hs.typing.get_updates(room_ids, since.typing if since else 0, now.typing)
            if _moved(since, now, "typing")
            else {}
        )
        receipts = (
            await self.hs.receipts.get_updates(
                room_ids, user_id, since.receipts if since else 0, now.receipts
            )
            if _moved(since, now, "receipts")
            else {}
        )
        for updates in (typing, receipts):
            for room_id, event in updates.items():
                result.setdefault(room_id, []).append(event)
        return result

    async def account_data_updates(
        self, user_id: str, since: StreamToken | None, now: StreamToken
    ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        if not _moved(since, now, "account_data"):
            return [], {}
        from_pos = since.account_data if since else 0
        global_data, room_data = await self.hs.account_data.get_updates(
            user_id, from_pos, now.account_data
        )
        # Push rules are account data the server keeps (m.push_rules).
        if since is None or await self.hs.push.rules_changed_since(user_id, from_pos, now.account_data):
            global_data = [*global_data, await self.hs.push.push_rules_account_data(user_id)]
        return global_data, room_data

    async def _unread(self, user_id: str, room_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not room_ids:
            return {}
        return await self.hs.push.unread_counts(user_id, room_ids)

    # ---------------------------------------------------------- projection

    @staticmethod
    def _project(body: dict[str, Any], fields: tuple[str, ...]) -> None:
        """Apply the filter's `event_fields` to every room event in the body."""
        for kind in body["rooms"].values():
            for section in kind.values():
                for key in ("timeline", "state", STATE_AFTER, UNSTABLE_STATE_AFTER):
                    part = section.get(key)
                    if part is not None:
                        part["events"] = [only_fields(e, fields) for e in part["events"]]

