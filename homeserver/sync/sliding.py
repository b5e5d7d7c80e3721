"""Simplified Sliding Sync (MSC4186): the room list a client sees through a window.

A client names lists (filters plus a range over the user's rooms ordered by
latest activity) and room subscriptions, each with a room config (timeline
limit, required state). The response carries the rooms those select that
are new to the connection or changed since it last saw them, each list's
count, and what the extensions asked for (to-device, E2EE, account data,
receipts, typing). `pos` names what the connection has been sent: per room,
up to which stream position ("live": up to the token in `pos` itself) and
with which timeline limit and required state, so a room that left the
window and comes back gets what it missed, and a widened config gets the
events or state the client lacks. Connections are stored (schema 0018), so
any process behind a load balancer continues any of them.

Two dialects, one handler: the MSC's (`/_matrix/client/v4/sync`) and
Synapse's and the clients' of today (`/unstable/org.matrix.simplified_msc3575/sync`:
`pos`/`timeout` in the query, `ranges`, required state as [type, state_key]
pairs, `invite_state`, notification counts). docs/sliding-sync.md tells it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.events import Membership, StateMap
from storage.history import EventMatch
from storage.sync import RoomActivity

from ..e2ee.keys import SIGNED_CURVE25519
from ..errors import MatrixError, invalid_param
from .filters import Filter
from .handler import MAX_TIMEOUT_MS, MEMBER, SyncRequest
from .tokens import InvalidToken, StreamToken, TopologicalToken

if TYPE_CHECKING:
    from ..accounts.auth import Requester
    from ..app import HomeServer

MAX_LISTS = 100
MAX_SUBSCRIPTIONS = 100
MAX_REQUIRED_STATE = 200
# The server's cap on timeline_limit.
MAX_TIMELINE_LIMIT = 100
MAX_CONN_ID = 255
# Rooms of one response built at once.
ROOM_CONCURRENCY = 8
# "Proper" activity (MSC4186 bump_stamp).
BUMP_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)
PRESENCE_STATES = ("online", "unavailable", "offline")
EXTENSIONS = ("to_device", "e2ee", "account_data", "receipts", "typing")
_POS = re.compile(r"([0-9]{1,18})\.(s[0-9_]+)")
WILDCARD = "*"
LAZY = "$LAZY"
ME = "$ME"


def unknown_pos(why: str) -> MatrixError:
    return MatrixError(400, "M_UNKNOWN_POS", why)


def parse_pos(value: str) -> tuple[int, StreamToken]:
    """`<position ID>.<stream token>`: raises InvalidToken."""
    m = _POS.fullmatch(value)
    if m is None:
        raise InvalidToken(f"not a sliding sync position: {value!r}")
    return int(m.group(1)), StreamToken.parse(m.group(2))


# ------------------------------------------------------------------ request


@dataclass(frozen=True)
class RequiredState:
    """Which state a room config returns: (type, state_key) patterns, None
    matching anything; `$ME` stands for the syncing user."""

    include: frozenset[tuple[str | None, str | None]] = frozenset()
    exclude: frozenset[tuple[str | None, str | None]] = frozenset()
    lazy: bool = False

    @classmethod
    def parse(cls, value: Any) -> RequiredState:
        if isinstance(value, list):
            # Synapse's: [[type, state_key], ...] with "*" and "$LAZY".
            if len(value) > MAX_REQUIRED_STATE:
                raise invalid_param(f"required_state may list at most {MAX_REQUIRED_STATE} entries")
            include: set[tuple[str | None, str | None]] = set()
            lazy = False
            for pair in value:
                if (
                    not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(p, str) for p in pair)
                ):
                    raise invalid_param("required_state entries must be [type, state_key] pairs of strings")
                event_type, state_key = pair
                if event_type == MEMBER and state_key == LAZY:
                    lazy = True
                    continue
                include.add((None if event_type == WILDCARD else event_type,
                             None if state_key == WILDCARD else state_key))
            return cls(frozenset(include), frozenset(), lazy)
        if not isinstance(value, dict):
            raise invalid_param("required_state must be an object")
        lazy = value.get("lazy_members", False)
        if not isinstance(lazy, bool):
            raise invalid_param("required_state.lazy_members must be a boolean")
        return cls(cls._elements(value, "include"), cls._elements(value, "exclude"), lazy)

    @staticmethod
    def _elements(value: dict[str, Any], name: str) -> frozenset[tuple[str | None, str | None]]:
        elements = value.get(name, [])
        if not isinstance(elements, list) or len(elements) > MAX_REQUIRED_STATE:
            raise invalid_param(f"required_state.{name} must be a list of at most {MAX_REQUIRED_STATE} entries")
        found = set()
        for element in elements:
            if not isinstance(element, dict):
                raise invalid_param(f"required_state.{name} entries must be objects")
            event_type, state_key = element.get("type"), element.get("state_key")
            if not isinstance(event_type, str | None) or not isinstance(state_key, str | None):
                raise invalid_param(f"required_state.{name} type and state_key must be strings")
            found.add((event_type, state_key))
        return frozenset(found)

    def matches(self, key: tuple[str, str], user_id: str) -> bool:
        return self._any(self.include, key, user_id) and not self._any(self.exclude, key, user_id)

    @staticmethod
    def _any(patterns: Iterable[tuple[str | None, str | None]], key: tuple[str, str], user_id: str) -> bool:
        for event_type, state_key in patterns:
            if event_type is not None and event_type != key[0]:
                continue
            if state_key is not None and (user_id if state_key == ME else state_key) != key[1]:
                continue
            return True
        return False

    def expands(self, old: RequiredState) -> bool:
        """Whether this may return state `old` does not: a pattern `old`
        neither covers nor (for removed excludes) lets through, or lazy
        members where `old` returned no members."""
        if any(not old._covers(p) for p in self.include):
            return True
        if self.include and old.exclude - self.exclude:
            return True
        return self.lazy and not old.lazy and not old._covers((MEMBER, None))

    def _covers(self, pattern: tuple[str | None, str | None]) -> bool:
        """Whether everything `pattern` matches is returned (never excluded)."""

        def within(outer: tuple[str | None, str | None], inner: tuple[str | None, str | None]) -> bool:
            return all(o is None or o == i for o, i in zip(outer, inner))

        def overlaps(a: tuple[str | None, str | None], b: tuple[str | None, str | None]) -> bool:
            return all(x is None or y is None or x == y for x, y in zip(a, b))

        return any(within(q, pattern) for q in self.include) and not any(
            overlaps(e, pattern) for e in self.exclude
        )

    def union(self, other: RequiredState) -> RequiredState:
        """Returns what either returns: the union of includes, with an
        exclude kept only where both exclude (over-returning is allowed)."""
        if self == other:
            return self
        return RequiredState(self.include | other.include, self.exclude & other.exclude, self.lazy or other.lazy)

    def to_json(self) -> list[Any]:
        return [sorted(map(list, self.include), key=str), sorted(map(list, self.exclude), key=str), self.lazy]

    @classmethod
    def from_json(cls, value: list[Any]) -> RequiredState:
        return cls(frozenset(map(tuple, value[0])), frozenset(map(tuple, value[1])), value[2])


@dataclass(frozen=True)
class RoomConfig:
    timeline_limit: int
    required_state: RequiredState

    @classmethod
    def parse(cls, value: Any, where: str) -> RoomConfig:
        if not isinstance(value, dict):
            raise invalid_param(f"{where} must be an object")
        limit = value.get("timeline_limit", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise invalid_param(f"{where}.timeline_limit must be a non-negative integer")
        return cls(min(limit, MAX_TIMELINE_LIMIT), RequiredState.parse(value.get("required_state", [])))

    def combine(self, other: RoomConfig | None) -> RoomConfig:
        if other is None:
            return self
        return RoomConfig(
            max(self.timeline_limit, other.timeline_limit), self.required_state.union(other.required_state)
        )

    def to_json(self) -> list[Any]:
        return [self.timeline_limit, self.required_state.to_json()]

    @classmethod
    def from_json(cls, value: list[Any]) -> RoomConfig:
        return cls(value[0], RequiredState.from_json(value[1]))


@dataclass(frozen=True)
class ListConfig:
    config: RoomConfig
    ranges: tuple[tuple[int, int], ...] | None
    filters: dict[str, Any]

    @classmethod
    def parse(cls, name: str, value: Any) -> ListConfig:
        where = f"lists.{name}"
        config = RoomConfig.parse(value, where)
        ranges: list[Any] | None = None
        if "range" in value:
            ranges = [value["range"]]
        elif "ranges" in value:
            ranges = value["ranges"]
            if not isinstance(ranges, list) or len(ranges) > MAX_LISTS:
                raise invalid_param(f"{where}.ranges must be a list of [start, end] ranges")
        parsed = None
        if ranges is not None:
            parsed = []
            for r in ranges:
                if (
                    not isinstance(r, list) or len(r) != 2
                    or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in r)
                    or r[0] > r[1]
                ):
                    raise invalid_param(f"{where}: a range is [start, end], 0 <= start <= end")
                parsed.append((r[0], r[1]))
        filters = value.get("filters", {})
        if not isinstance(filters, dict):
            raise invalid_param(f"{where}.filters must be an object")
        for flag in ("is_dm", "is_encrypted", "is_invite", "is_invited"):
            if flag in filters and not isinstance(filters[flag], bool | None):
                raise invalid_param(f"{where}.filters.{flag} must be a boolean")
        for names in ("spaces", "tags", "not_tags"):
            if names in filters and not (
                isinstance(filters[names], list) and all(isinstance(x, str) for x in filters[names])
            ):
                raise invalid_param(f"{where}.filters.{names} must be a list of strings")
        for types in ("room_types", "not_room_types"):
            if types in filters and not (
                isinstance(filters[types], list) and all(isinstance(x, str | None) for x in filters[types])
            ):
                raise invalid_param(f"{where}.filters.{types} must be a list of strings and nulls")
        return cls(config, tuple(parsed) if parsed is not None else None, filters)


@dataclass
class SlidingRequest:
    conn_id: str = ""
    pos: str | None = None
    timeout_ms: int = 0
    set_presence: str | None = None
    lists: dict[str, ListConfig] = field(default_factory=dict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    unsubscribe: list[str] = field(default_factory=list)
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any], query: Mapping[str, str]) -> SlidingRequest:
        """The request, from the body (MSC4186) and, as clients of Synapse's
        implementation send them, `pos`, `timeout` and `set_presence` in the query."""
        request = cls()
        conn_id = body.get("conn_id", "")
        if conn_id is None:
            conn_id = ""
        if not isinstance(conn_id, str) or len(conn_id) > MAX_CONN_ID:
            raise invalid_param(f"conn_id must be a string of at most {MAX_CONN_ID} characters")
        request.conn_id = conn_id
        pos = body.get("pos", query.get("pos"))
        if pos is not None and not isinstance(pos, str):
            raise invalid_param("pos must be a string")
        request.pos = pos or None
        timeout: Any = body.get("timeout", query.get("timeout", 0))
        if isinstance(timeout, str):
            if not timeout.isdigit() or len(timeout) > 12:
                raise invalid_param("timeout must be a non-negative integer")
            timeout = int(timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
            raise invalid_param("timeout must be a non-negative integer")
        request.timeout_ms = min(timeout, MAX_TIMEOUT_MS)
        presence = body.get("set_presence", query.get("set_presence"))
        if presence is not None and presence not in PRESENCE_STATES:
            raise invalid_param("set_presence must be online, unavailable or offline")
        request.set_presence = presence
        lists = body.get("lists") or {}
        if not isinstance(lists, dict) or len(lists) > MAX_LISTS:
            raise invalid_param(f"lists must be an object of at most {MAX_LISTS} lists")
        for name, value in lists.items():
            if not name or len(name) > 255:
                raise invalid_param("list names must be 1 to 255 characters")
            request.lists[name] = ListConfig.parse(name, value)
        subscriptions = body.get("room_subscriptions") or {}
        if not isinstance(subscriptions, dict) or len(subscriptions) > MAX_SUBSCRIPTIONS:
            raise invalid_param(f"room_subscriptions must be an object of at most {MAX_SUBSCRIPTIONS} rooms")
        for room_id, value in subscriptions.items():
            request.subscriptions[room_id] = RoomConfig.parse(value, f"room_subscriptions.{room_id}")
        unsubscribe = body.get("unsubscribe_rooms") or []
        if not isinstance(unsubscribe, list) or not all(isinstance(r, str) for r in unsubscribe):
            raise invalid_param("unsubscribe_rooms must be a list of room IDs")
        request.unsubscribe = unsubscribe
        extensions = body.get("extensions") or {}
        if not isinstance(extensions, dict):
            raise invalid_param("extensions must be an object")
        for name, value in extensions.items():
            if name not in EXTENSIONS:
                continue  # unknown extensions are ignored
            if not isinstance(value, dict):
                raise invalid_param(f"extensions.{name} must be an object")
            if "enabled" in value and not isinstance(value["enabled"], bool | None):
                raise invalid_param(f"extensions.{name}.enabled must be a boolean")
            request.extensions[name] = value
        return request


# ------------------------------------------------------------- connection


@dataclass
class RoomStatus:
    """What a connection has of a room: events up to `upto` (None: up to the
    token of the connection's position), with which limit and state config."""

    upto: int | None
    timeline_limit: int
    required_state: RequiredState
    is_dm: bool
    # The membership it was sent with: after an invite or knock (stripped
    # state only) the room is new to the connection when joined.
    membership: str

    def to_json(self) -> list[Any]:
        return [self.upto, self.timeline_limit, self.required_state.to_json(), self.is_dm, self.membership]

    @classmethod
    def from_json(cls, value: list[Any]) -> RoomStatus:
        return cls(value[0], value[1], RequiredState.from_json(value[2]), value[3], value[4])


@dataclass
class Connection:
    rooms: dict[str, RoomStatus] = field(default_factory=dict)
    list_counts: dict[str, int] = field(default_factory=dict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rooms": {r: s.to_json() for r, s in self.rooms.items()},
            "lists": self.list_counts,
            "subs": {r: c.to_json() for r, c in self.subscriptions.items()},
            "ext": self.extensions,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Connection:
        return cls(
            {r: RoomStatus.from_json(s) for r, s in value["rooms"].items()},
            value["lists"],
            {r: RoomConfig.from_json(c) for r, c in value["subs"].items()},
            value["ext"],
        )


@dataclass
class _Build:
    body: dict[str, Any]
    connection: Connection
    next_token: StreamToken
    has_news: bool


# ------------------------------------------------------------------ handler


class SlidingSyncHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.sync = hs.sync_handler
        self.events = hs.storage.events
        self.store = hs.storage.sync
        self.connections = hs.storage.sliding_sync
        self.notifier = hs.notifier

    async def sliding_sync(
        self, requester: Requester, request: SlidingRequest, *, legacy: bool, closing: asyncio.Event | None = None
    ) -> dict[str, Any]:
        user_id, device_id = requester.user_id, requester.device_id or ""
        await self.hs.presence.set_from_sync(user_id, request.set_presence)
        since: StreamToken | None = None
        connection = Connection()
        stored: dict[str, Any] | None = None
        pos_id: int | None = None
        if request.pos is not None:
            try:
                pos_id, since = parse_pos(request.pos)
            except InvalidToken:
                raise unknown_pos("Unknown pos") from None
            stored = await self.connections.load(pos_id, user_id, device_id, request.conn_id)
            if stored is None:
                raise unknown_pos("Unknown or expired pos: start the connection again")
            connection = Connection.from_json(stored)
            since = await self.sync.catch_up(since)
        # Sticky: subscriptions until unsubscribed, extension settings until changed.
        for room_id in request.unsubscribe:
            connection.subscriptions.pop(room_id, None)
        connection.subscriptions.update(request.subscriptions)
        for room_id in list(connection.subscriptions)[:-MAX_SUBSCRIPTIONS]:
            del connection.subscriptions[room_id]  # the oldest beyond the cap
        for name, config in request.extensions.items():
            # (A to_device `since` is this request's alone.)
            connection.extensions[name] = {
                **connection.extensions.get(name, {}), **{k: v for k, v in config.items() if k != "since"}
            }

        # A new connection answers at once; a continued one waits for news.
        deadline = time.monotonic() + (request.timeout_ms / 1000 if since is not None else 0)
        build = await self.sync.wait_for_news(
            user_id,
            deadline,
            lambda now, memberships: self._build(requester, request, connection, memberships, since, now, legacy),
            lambda built: built.has_news,
            closing,
        )
        state = build.connection.to_json()
        if pos_id is None or state != stored:
            pos_id = await self.connections.save(
                user_id, device_id, request.conn_id, state, new_connection=since is None
            )
        return {"pos": f"{pos_id}.{build.next_token}", **build.body}

    # ---------------------------------------------------------------- build

    async def _build(
        self,
        requester: Requester,
        request: SlidingRequest,
        before: Connection,
        memberships: list[Membership],
        since: StreamToken | None,
        now: StreamToken,
        legacy: bool,
    ) -> _Build:
        user_id = requester.user_id
        connection = Connection(
            {r: dataclasses.replace(s) for r, s in before.rooms.items()},
            {},
            before.subscriptions,
            before.extensions,
        )
        sync_request = SyncRequest(
            user_id, requester.device_id or "", Filter(), ignored=await self.hs.account_data.ignored_users(user_id)
        )
        account_data = _AccountData(self.hs, user_id, now)

        # The server's list: every room the user may see, newest activity first
        # (not read by a connection that wants no rooms, as Element X's for encryption).
        candidates: list[Membership] = []
        direct: set[str] = set()
        activity: dict[str, RoomActivity] = {}
        if request.lists or connection.subscriptions:
            candidates, direct = await self._candidates(
                sync_request, memberships, before, _direct_rooms(await account_data.direct())
            )
            activity = await self.store.room_activity(
                [m.room_id for m in candidates if m.membership == "join"], now.events, BUMP_TYPES
            )
        by_room = {m.room_id: m for m in candidates}

        def recency(m: Membership) -> int:
            if m.membership == "join" and m.room_id in activity:
                return activity[m.room_id].stream
            return m.stream_ordering

        ordered = sorted(candidates, key=lambda m: (-recency(m), m.room_id))

        # The rooms the lists and subscriptions select, with their combined config.
        selected: dict[str, RoomConfig] = {}
        in_lists: dict[str, list[str]] = {}
        lists_body: dict[str, Any] = {}
        facts = await self._facts(request.lists.values(), ordered)
        if any("tags" in spec.filters or "not_tags" in spec.filters for spec in request.lists.values()):
            _global, by_room_data = await account_data.everything()
            facts["tags"] = {room_id: _tags(events) for room_id, events in by_room_data.items()}
        for name, spec in request.lists.items():
            matching = [m for m in ordered if _passes(spec.filters, m, direct, facts)]
            connection.list_counts[name] = len(matching)
            lists_body[name] = {"count": len(matching)}
            window = matching
            if spec.ranges is not None:
                indexes = sorted({i for lo, hi in spec.ranges for i in range(lo, min(hi, len(matching) - 1) + 1)})
                window = [matching[i] for i in indexes]
            for m in window:
                selected[m.room_id] = spec.config.combine(selected.get(m.room_id))
                in_lists.setdefault(m.room_id, []).append(name)
        for room_id, config in connection.subscriptions.items():
            if room_id in by_room:
                selected[room_id] = config.combine(selected.get(room_id))

        # Where the connection is in each room it has, and which of those changed since.
        sent_upto = {
            room_id: status.upto if status.upto is not None else since.events if since is not None else 0
            for room_id, status in before.rooms.items()
        }
        had = [r for r in selected if r in before.rooms]
        changed = await self._changed([r for r in had if by_room[r].membership == "join"], sent_upto, now)
        changed |= await self._own_receipt_rooms(user_id, had, since, now)
        joined_selected = [r for r in selected if by_room[r].membership == "join"]
        summaries = await self.store.member_summaries(joined_selected, user_id)

        rooms_body: dict[str, Any] = {}
        fresh: list[str] = []  # rooms sent whole: the extensions send their data whole too
        # Rooms are built ROOM_CONCURRENCY at a time: mostly waiting on the
        # database, whose pool serves several at once.
        slots = asyncio.Semaphore(ROOM_CONCURRENCY)

        async def build_room(room_id: str, config: RoomConfig) -> dict[str, Any] | None:
            async with slots:
                return await self._room(
                    sync_request, by_room[room_id], config, before.rooms.get(room_id),
                    sent_upto.get(room_id, 0), since, now,
                    changed=room_id in changed, is_dm=room_id in direct, legacy=legacy,
                    summary=summaries.get(room_id), activity=activity.get(room_id),
                )

        built = await asyncio.gather(*(build_room(r, c) for r, c in selected.items()))
        for (room_id, config), room in zip(selected.items(), built):
            membership = by_room[room_id]
            status = before.rooms.get(room_id)
            if room is None:
                # Nothing new: the connection has the room up to now, under this config.
                kept = connection.rooms[room_id]
                kept.upto, kept.required_state = None, config.required_state
                continue
            if room_id in in_lists:
                room["lists"] = in_lists[room_id]
            rooms_body[room_id] = room
            if room.get("initial") or (status is not None and status.upto is not None):
                fresh.append(room_id)
            keep_limit = status is not None and not room.get("limited") and not room.get("initial")
            connection.rooms[room_id] = RoomStatus(
                None,
                max(status.timeline_limit, config.timeline_limit) if keep_limit and status else config.timeline_limit,
                config.required_state,
                room_id in direct,
                membership.membership,
            )
        # Rooms the connection had that are not selected now stay where they were.
        for room_id, status in connection.rooms.items():
            if room_id not in selected and status.upto is None:
                status.upto = sent_upto[room_id]
        if legacy:
            counts = await self.hs.push.unread_counts(user_id, [r for r in rooms_body if r in joined_selected])
            for room_id, c in counts.items():
                threads = list(c.get("threads", {}).values())
                rooms_body[room_id]["notification_count"] = c["notification_count"] + sum(
                    t["notification_count"] for t in threads
                )
                rooms_body[room_id]["highlight_count"] = c["highlight_count"] + sum(
                    t["highlight_count"] for t in threads
                )

        given = request.extensions.get("to_device", {}).get("since")
        extensions, next_token, extension_news = await self._extensions(
            sync_request, connection.extensions, given, memberships, selected, joined_selected, fresh,
            since, now, account_data,
        )
        body: dict[str, Any] = {"lists": lists_body, "rooms": rooms_body, "extensions": extensions}
        has_news = bool(rooms_body) or extension_news or connection.list_counts != before.list_counts
        return _Build(body, connection, next_token, has_news)

    async def _candidates(
        self, request: SyncRequest, memberships: list[Membership], connection: Connection, direct: set[str]
    ) -> tuple[list[Membership], set[str]]:
        """The rooms the user's lists range over: joined, invited, knocked,
        kicked or banned from; left by themselves only where this connection
        was sent the room (it knows it left). Invites from ignored users are
        never shown. With them, the DM rooms: m.direct's and the invites
        marked is_direct."""
        ended = [m for m in memberships if m.membership in ("leave", "ban", "invite")]
        found = await self.events.get_events(m.event_id for m in ended)
        result = []
        direct = set(direct)
        for m in memberships:
            event = found.get(m.event_id)
            if m.membership == "invite" and event is not None:
                if event.sender in request.ignored:
                    continue
                if event.content.get("is_direct") is True:
                    direct.add(m.room_id)
            left_themselves = m.membership == "leave" and (event is None or event.sender == m.user_id)
            if left_themselves and m.room_id not in connection.rooms:
                continue
            result.append(m)
        return result, direct

    async def _facts(self, lists: Iterable[ListConfig], ordered: list[Membership]) -> dict[str, Any]:
        """What the lists' filters need to know of the rooms, read only when a filter asks."""
        wanted = set().union(*(spec.filters.keys() for spec in lists))
        facts: dict[str, Any] = {}
        room_ids = [m.room_id for m in ordered]
        if wanted & {"is_encrypted", "room_types", "not_room_types"}:
            state = await self.events.get_current_state_ids_for_rooms(room_ids, ["m.room.create", "m.room.encryption"])
            creates = await self.events.get_events(s[("m.room.create", "")] for s in state.values() if ("m.room.create", "") in s)
            facts["encrypted"] = {r for r, s in state.items() if ("m.room.encryption", "") in s}
            facts["room_type"] = {}
            for r, s in state.items():
                create = creates.get(s.get(("m.room.create", ""), ""))
                room_type = create.content.get("type") if create is not None else None
                facts["room_type"][r] = room_type if isinstance(room_type, str) else None
        if "spaces" in wanted:
            spaces = {s for spec in lists for s in spec.filters.get("spaces") or ()}
            joined = {m.room_id for m in ordered if m.membership == "join"}
            children: dict[str, set[str]] = {}
            for space in spaces & joined:
                state = await self.events.get_current_state_ids(space)
                ids = [e for (t, _k), e in state.items() if t == "m.space.child"]
                found = await self.events.get_events(ids)
                children[space] = {
                    e.state_key for e in found.values()
                    if isinstance(e.content.get("via"), list) and e.content["via"]
                }
            facts["children"] = children
        return facts

    async def _changed(self, room_ids: list[str], from_of: dict[str, int], now: StreamToken) -> set[str]:
        """Of these joined rooms, those with events after the connection's position in them."""
        by_from: dict[int, list[str]] = {}
        for room_id in room_ids:
            by_from.setdefault(from_of[room_id], []).append(room_id)
        changed: set[str] = set()
        for lower, rooms in by_from.items():
            changed.update(await self.store.rooms_with_events(rooms, lower, now.events))
        return changed

    async def _own_receipt_rooms(
        self, user_id: str, room_ids: list[str], since: StreamToken | None, now: StreamToken
    ) -> set[str]:
        """Rooms where the user's own read receipt moved since `since`: their
        notification counts changed."""
        if since is None or not room_ids or since.receipts >= now.receipts:
            return set()
        updates = await self.hs.receipts.get_updates(room_ids, user_id, since.receipts, now.receipts)
        return {
            room_id for room_id, event in updates.items()
            if any(user_id in users for receipt in event["content"].values() for users in receipt.values())
        }

    # ------------------------------------------------------------- per room

    async def _room(
        self,
        request: SyncRequest,
        membership: Membership,
        config: RoomConfig,
        status: RoomStatus | None,
        sent_upto: int,
        since: StreamToken | None,
        now: StreamToken,
        *,
        changed: bool,
        is_dm: bool,
        legacy: bool,
        summary: tuple[int, int, list[str]] | None,
        activity: RoomActivity | None,
    ) -> dict[str, Any] | None:
        """The room's entry, or None when the connection has it all."""
        room_id, kind = membership.room_id, membership.membership
        user_id = request.user_id
        bump_stamp = membership.stream_ordering
        if kind == "join" and activity is not None:
            bump_stamp = activity.bump_stream or activity.stream
        if kind in ("invite", "knock"):
            if status is not None and membership.stream_ordering <= sent_upto:
                return None
            room: dict[str, Any] = {
                "initial": True,
                "invite_state" if legacy else "stripped_state": await self.sync.stripped_state(membership),
                "membership": kind,
                "bump_stamp": bump_stamp,
            }
            if is_dm:
                room["is_dm"] = True
            return room

        # Joined, or left with the history seen until then.
        initial = status is None or status.membership in ("invite", "knock")
        lower = 0 if initial else sent_upto
        upper = now.events if kind == "join" else min(now.events, membership.stream_ordering)
        if kind != "join":
            changed = membership.stream_ordering > lower
        old = status if not initial else None
        expanded = old is not None and config.timeline_limit > old.timeline_limit
        state_expanded = old is not None and config.required_state.expands(old.required_state)
        dm_changed = old is not None and old.is_dm != is_dm
        if not (initial or changed or expanded or state_expanded or dm_changed):
            return None

        limit = config.timeline_limit
        rows = []
        if limit:
            rows = await self.store.recent_events(
                room_id, 0 if initial or expanded else lower, upper, limit + 1, EventMatch()
            )
        limited = len(rows) > limit if limit else (changed and not initial)
        rows = list(reversed(rows[:limit]))
        found = await self.events.get_events(r.event_id for r in rows)
        timeline = await self.sync.visible(
            request, [found[r.event_id] for r in rows if r.event_id in found], joined=kind == "join"
        )
        num_live = 0
        if since is not None:
            live = {r.event_id for r in rows if r.key[1] > since.events}
            num_live = sum(1 for e in timeline if e.event_id in live)

        # required_state: all that the config asks for on an initial entry;
        # later, what changed (deleted entries as stubs) and what a widened
        # config newly asks for; with lazy members, the members the timeline
        # shows, and every member change when the timeline is not limited.
        if kind == "join" and activity is not None and activity.state_group is not None:
            state = await self.events.get_state_group(activity.state_group)  # (read at `now`)
        else:
            state = await self.sync.state_at(room_id, upper)
        rs = config.required_state
        wanted: dict[tuple[str, str], str | None] = {}
        differs: set[tuple[str, str]] = set()
        if initial:
            wanted = {k: v for k, v in state.items() if rs.matches(k, user_id)}
        else:
            if changed:
                earlier = await self.sync.state_at(room_id, lower)
                differs = {k for k in state.keys() | earlier.keys() if state.get(k) != earlier.get(k)}
                for key in differs:
                    if rs.matches(key, user_id) or (rs.lazy and key[0] == MEMBER and not limited):
                        wanted[key] = state.get(key)
            if state_expanded and old is not None:
                for key, value in state.items():
                    if rs.matches(key, user_id) and not old.required_state.matches(key, user_id):
                        wanted[key] = value
        if rs.lazy:
            for event in timeline:
                for member in (event.sender, event.state_key if event.type == MEMBER else None):
                    if member is not None and (MEMBER, member) in state:
                        wanted[(MEMBER, member)] = state[(MEMBER, member)]
        state_found = await self.events.get_events(v for v in wanted.values() if v is not None)
        required_state = await self.sync.serialize(
            request, [state_found[v] for v in wanted.values() if v is not None and v in state_found]
        )
        required_state.extend({"type": k[0], "state_key": k[1]} for k, v in wanted.items() if v is None)

        room = {"membership": kind, "bump_stamp": bump_stamp}
        if initial:
            room["initial"] = True
        for field_name, event_type, content_key in (("name", "m.room.name", "name"), ("avatar", "m.room.avatar", "url")):
            key = (event_type, "")
            if initial or key in differs:
                value = await self._content_string(state.get(key), content_key)
                if value is not None or not initial:
                    room[field_name] = value
        if summary is not None:
            joined_count, invited_count, heroes = summary
            room["joined_count"] = joined_count
            room["invited_count"] = invited_count
            if (initial or changed) and ("m.room.name", "") not in state:
                room["heroes"] = await self._heroes(heroes, state)
        if is_dm or dm_changed:
            room["is_dm"] = is_dm
        if required_state:
            room["required_state"] = required_state
        room["timeline"] = await self.sync.serialize(request, timeline)
        if rows:
            first = rows[0].key
            room["prev_batch"] = str(TopologicalToken(first[0], first[1] - 1))
        else:
            room["prev_batch"] = str(StreamToken(upper))
        if limited:
            room["limited"] = True
        room["num_live"] = num_live
        if expanded:
            room["unstable_expanded_timeline" if legacy else "expanded_timeline"] = True
        return room

    async def _content_string(self, event_id: str | None, key: str) -> str | None:
        event = await self.events.get_event(event_id) if event_id else None
        value = event.content.get(key) if event is not None else None
        return value if isinstance(value, str) and value else None

    async def _heroes(self, user_ids: list[str], state: StateMap) -> list[dict[str, Any]]:
        found = await self.events.get_events(state[(MEMBER, u)] for u in user_ids if (MEMBER, u) in state)
        heroes = []
        for user_id in user_ids:
            hero: dict[str, Any] = {"user_id": user_id}
            event = found.get(state.get((MEMBER, user_id), ""))
            if event is not None:
                for src, dst in (("displayname", "displayname"), ("avatar_url", "avatar_url")):
                    value = event.content.get(src)
                    if isinstance(value, str):
                        hero[dst] = value
            heroes.append(hero)
        return heroes

    # ------------------------------------------------------------ extensions

    async def _extensions(
        self,
        request: SyncRequest,
        configs: dict[str, dict[str, Any]],
        to_device_since: Any,
        memberships: list[Membership],
        selected: dict[str, RoomConfig],
        joined: list[str],
        fresh: list[str],
        since: StreamToken | None,
        now: StreamToken,
        account_data: _AccountData,
    ) -> tuple[dict[str, Any], StreamToken, bool]:
        """The extensions' sections, the token to continue from, and whether
        any has news. Per-room data covers the selected rooms: whole for
        `fresh` ones (new to the connection, or back after a while), changes
        since `since` for the others."""
        user_id, device_id = request.user_id, request.device_id
        body: dict[str, Any] = {}
        news = False
        next_token = now

        def enabled(name: str) -> bool:
            return bool(configs.get(name, {}).get("enabled"))

        if enabled("to_device") and device_id:
            acknowledged: StreamToken | None = since
            if isinstance(to_device_since, str) and to_device_since.isdigit() and len(to_device_since) <= 18:
                acknowledged = dataclasses.replace(since or StreamToken(0), to_device=int(to_device_since))
            messages, upto = await self.hs.to_device.for_sync(user_id, device_id, acknowledged, now)
            next_token = dataclasses.replace(now, to_device=upto)
            body["to_device"] = {"next_batch": str(upto), "events": messages}
            news = news or bool(messages)
        if enabled("e2ee"):
            section: dict[str, Any] = {}
            if since is not None:
                changed, left = await self.hs.device_lists.changes(user_id, memberships, since, now)
                if changed or left:
                    section["device_lists"] = {"changed": sorted(changed), "left": sorted(left)}
                    news = True
            counts: dict[str, int] = {}
            fallback: list[str] = []
            if device_id:
                counts, fallback = await self.hs.e2ee_keys.key_counts(user_id, device_id)
            section["device_one_time_keys_count"] = {SIGNED_CURVE25519: 0, **counts}
            section["device_unused_fallback_key_types"] = fallback
            body["e2ee"] = section
        following = [r for r in selected if r not in fresh]
        if enabled("account_data"):
            room_data: dict[str, list[dict[str, Any]]] = {}
            if since is None:
                all_global, _rooms = await account_data.everything()
                global_data = [*all_global, await self.hs.push.push_rules_account_data(user_id)]
            else:
                global_data, room_data = await self.sync.account_data_updates(user_id, since, now)
            rooms = {r: room_data[r] for r in following if r in room_data}
            if fresh:
                _global, all_rooms = await account_data.everything()
                rooms.update({r: all_rooms[r] for r in fresh if r in all_rooms})
            body["account_data"] = {"global": global_data, "rooms": rooms}
            news = news or bool(global_data or rooms)
        joined_set = set(joined)
        for name, service in (("receipts", self.hs.receipts), ("typing", self.hs.typing)):
            if not enabled(name):
                continue
            position = getattr(now, name)
            updates: dict[str, Any] = {}
            whole = [r for r in fresh if r in joined_set]
            if whole:
                updates.update(await _ephemeral(service, name, whole, user_id, 0, position))
            moving = [r for r in following if r in joined_set]
            if since is not None and moving:
                updates.update(await _ephemeral(service, name, moving, user_id, getattr(since, name), position))
            body[name] = {"rooms": updates}
            news = news or bool(updates)
        return body, next_token, news


async def _ephemeral(service: Any, name: str, rooms: list[str], user_id: str, lower: int, upper: int) -> dict[str, Any]:
    """A room's receipts or typing in (lower, upper]."""
    if name == "receipts":
        return await service.get_updates(rooms, user_id, lower, upper)
    return await service.get_updates(rooms, lower, upper)


# ------------------------------------------------------------------ filters


class _AccountData:
    """The user's account data as of a token, read only as far as needed:
    m.direct alone for most builds, everything for an initial one."""

    def __init__(self, hs: HomeServer, user_id: str, now: StreamToken) -> None:
        self.hs, self.user_id, self.now = hs, user_id, now
        self._everything: tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]] | None = None

    async def direct(self) -> Any:
        if self._everything is not None:
            return next((e["content"] for e in self._everything[0] if e["type"] == "m.direct"), None)
        return await self.hs.storage.account_data.get(self.user_id, "", "m.direct")

    async def everything(self) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        if self._everything is None:
            self._everything = await self.hs.account_data.get_updates(self.user_id, 0, self.now.account_data)
        return self._everything


def _direct_rooms(content: Any) -> set[str]:
    """The rooms m.direct names."""
    if not isinstance(content, dict):
        return set()
    return {
        room_id for rooms in content.values() if isinstance(rooms, list)
        for room_id in rooms if isinstance(room_id, str)
    }


def _tags(room_data: list[dict[str, Any]]) -> set[str]:
    for event in room_data:
        if event["type"] == "m.tag" and isinstance(event["content"].get("tags"), dict):
            return set(event["content"]["tags"])
    return set()


def _passes(filters: dict[str, Any], m: Membership, direct: set[str], facts: dict[str, Any]) -> bool:
    room_id = m.room_id
    is_dm = filters.get("is_dm")
    if is_dm is not None and (room_id in direct) != is_dm:
        return False
    is_invited = filters.get("is_invited", filters.get("is_invite"))
    if is_invited is not None and (m.membership == "invite") != is_invited:
        return False
    is_encrypted = filters.get("is_encrypted")
    if is_encrypted is not None and (room_id in facts["encrypted"]) != is_encrypted:
        return False
    if "room_types" in filters or "not_room_types" in filters:
        room_type = facts["room_type"].get(room_id)
        if room_type in (filters.get("not_room_types") or ()):
            return False
        if filters.get("room_types") is not None and room_type not in filters["room_types"]:
            return False
    if filters.get("spaces") is not None:
        children = facts["children"]
        if not any(room_id in children.get(space, ()) for space in filters["spaces"]):
            return False
    if filters.get("tags") is not None or filters.get("not_tags") is not None:
        tags = facts["tags"].get(room_id, set())
        if tags & set(filters.get("not_tags") or ()):
            return False
        if filters.get("tags") is not None and not tags & set(filters["tags"]):
            return False
    return True
