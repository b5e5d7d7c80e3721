"""The push service: push rules, push actions for new events, unread counts, pushers.

When events are persisted, `on_events` (a room-writer listener that runs
before /sync is woken, so counts arrive with the event) evaluates every
local recipient's push rules, stores the actions that notify, and pokes the
recipients' pushers. Users' compiled rulesets are cached (one query loads
every missing member's rules) and dropped when the user changes them.

Recipients, the member count and power levels are those of the room state
after the event (its state group), so a member who joined later or had left
is not notified; users who ignore the sender (`m.ignored_user_list`) are
not either. What a state group says is cached (state groups never change).

Push actions of redacted events are removed, so they stop counting. A
background task, run by one process at a time, deletes the actions older
than `keep_read_actions_ms` that their user has read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from storage import Storage
from storage.cache import LRUCache
from storage.events import Membership
from storage.push import Notification, PushAction, Pusher, PushRuleNotFound

from ..errors import MatrixError, invalid_param
from ..events.model import Event
from ..net import AddressPolicy
from ..rooms.power_levels import CREATE_KEY, POWER_LEVELS_KEY, PowerLevels
from ..rooms.visibility import filter_events_for_user
from ..rooms.writer import SentEvent
from ..sync.notifier import Notifier
from ..util import cancel_task, now_ms
from .evaluator import CompiledRule, EventContext, RuleSet, compile_ruleset, evaluate
from .pushers import PusherPool, take_ownership
from ..ephemeral.account_data import AccountData
from .rules import (
    DEFAULT_RULES,
    PushRule,
    check_kind,
    check_new_rule_id,
    merge_rules,
    rule_not_found,
    ruleset_json,
    validate_actions,
    validate_rule_body,
)

logger = logging.getLogger(__name__)

MAIN_THREAD = "main"
# Spec: follow relations at most this far to find an event's thread.
MAX_THREAD_HOPS = 3
MEMBER = "m.room.member"
_MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")


@dataclass(frozen=True)
class _StateView:
    """What evaluation needs of one state group."""

    joined_count: int
    # Joined local users and their display names.
    local_members: dict[str, str | None]
    power_levels: PowerLevels | None


class PushService:
    # Read actions older than this (milliseconds) are deleted, every
    # `prune_interval` seconds; tests change them.
    keep_read_actions_ms = 30 * 24 * 3600 * 1000
    prune_interval = 3600.0

    def __init__(
        self, storage: Storage, notifier: Notifier, server_name: str, policy: AddressPolicy, account_data: AccountData
    ) -> None:
        self.db = storage.db
        self.store = storage.push
        self.events = storage.events
        self.account_data = account_data
        self.notifier = notifier
        self.server_name = server_name
        self.pushers = PusherPool(storage.db, self.store, self.events, policy)
        self._state_views: LRUCache[int, _StateView] = LRUCache("push_state_views", 1000)
        self._prune_task: asyncio.Task[None] | None = None
        self._rulesets: LRUCache[str, RuleSet] = LRUCache("push_rulesets", 100_000)
        self._invalidations = 0
        # Rule changes (by any process) up to this account-data position are
        # reflected in the cache.
        self._rules_seen = 0
        self._default_ruleset = compile_ruleset(merge_rules(()))

    async def start(self) -> None:
        self._rules_seen = await self.store.latest_rule_change()
        await self.pushers.start()
        self._prune_task = asyncio.create_task(self._prune_regularly(), name="push action pruning")

    async def stop(self) -> None:
        await cancel_task(self._prune_task)
        self._prune_task = None
        await self.pushers.stop()

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    # ----------------------------------------------------------------- rules

    async def get_rules(self, user_id: str) -> list[PushRule]:
        """The user's whole ruleset, in evaluation order."""
        return merge_rules((await self.store.get_rules_for_users([user_id]))[user_id])

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The `global` ruleset as clients see it."""
        return ruleset_json(await self.get_rules(user_id), user_id)

    async def push_rules_account_data(self, user_id: str) -> dict[str, Any]:
        """The user's `m.push_rules` account-data event for /sync."""
        return {"type": "m.push_rules", "content": {"global": await self.ruleset(user_id)}}

    async def rules_changed_since(self, user_id: str, from_pos: int, to_pos: int) -> bool:
        """Whether the user's rules changed at an account-data position in (from_pos, to_pos]."""
        position = await self.store.rules_stream_id(user_id)
        return position is not None and from_pos < position <= to_pos

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> PushRule:
        check_kind(kind)
        for rule in await self.get_rules(user_id):
            if rule.kind == kind and rule.rule_id == rule_id:
                return rule
        raise rule_not_found()

    async def put_rule(
        self, user_id: str, kind: str, rule_id: str, body: dict[str, Any],
        *, before: str | None = None, after: str | None = None,
    ) -> None:
        check_kind(kind)
        check_new_rule_id(kind, rule_id)
        rule = validate_rule_body(kind, body)
        for anchor in (before, after):
            if anchor is not None and anchor.startswith("."):
                raise MatrixError(400, "M_UNKNOWN", "Rules cannot be placed relative to server-default rules")
        try:
            position = await self.store.put_rule(
                user_id, kind, rule_id, conditions=rule.conditions, pattern=rule.pattern,
                actions=rule.actions, before=before, after=after,
            )
        except PushRuleNotFound as err:
            raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {err}") from None
        self._changed(user_id, position)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        check_kind(kind)
        if (kind, rule_id) in DEFAULT_RULES:
            raise invalid_param("Server-default rules cannot be deleted")
        try:
            position = await self.store.delete_rule(user_id, kind, rule_id)
        except PushRuleNotFound:
            raise rule_not_found() from None
        self._changed(user_id, position)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._set_attribute(user_id, kind, rule_id, enabled=enabled)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        await self._set_attribute(user_id, kind, rule_id, actions=validate_actions(actions))

    async def _set_attribute(self, user_id: str, kind: str, rule_id: str, **value: Any) -> None:
        check_kind(kind)
        if rule_id.startswith(".") and (kind, rule_id) not in DEFAULT_RULES:
            raise rule_not_found()
        try:
            position = await self.store.set_rule_attribute(user_id, kind, rule_id, **value)
        except PushRuleNotFound:
            raise rule_not_found() from None
        self._changed(user_id, position)

    def _changed(self, user_id: str, position: int) -> None:
        self._forget_rulesets([user_id])
        self.notifier.on_new("account_data", position, users=(user_id,))

    def _forget_rulesets(self, user_ids: Collection[str]) -> None:
        if user_ids:
            self._invalidations += 1
        for user_id in user_ids:
            self._rulesets.invalidate(user_id)

    async def rulesets_for(self, user_ids: Sequence[str]) -> dict[str, RuleSet]:
        """Compiled rulesets, from the cache or (for all the missing users) one query.
        Rulesets changed meanwhile, here or by another process, are dropped first."""
        changed, seen = await self.store.changed_rule_owners(self._rules_seen)
        self._rules_seen = max(self._rules_seen, seen)
        self._forget_rulesets(changed)
        found: dict[str, RuleSet] = {}
        missing = []
        for user_id in user_ids:
            ruleset = self._rulesets.get(user_id)
            if ruleset is None:
                missing.append(user_id)
            else:
                found[user_id] = ruleset
        if missing:
            invalidations = self._invalidations
            for user_id, rows in (await self.store.get_rules_for_users(missing)).items():
                ruleset = compile_ruleset(merge_rules(rows)) if rows else self._default_ruleset
                found[user_id] = ruleset
                # A change committed while we read may not be in `rows`: do not cache those.
                if invalidations == self._invalidations:
                    self._rulesets.set(user_id, ruleset)
        return found

    # ----------------------------------------------------------- evaluation

    async def on_events(self, sent: list[SentEvent]) -> None:
        """Room-writer listener: store push actions for new events, drop those of
        the events they redact, then poke pushers."""
        by_room: dict[str, list[Event]] = {}
        positions: dict[str, int] = {}
        for item in sent:
            if not item.event.rejected:
                by_room.setdefault(item.event.room_id, []).append(item.event)
                positions[item.event.event_id] = item.position.stream_ordering
        try:
            actions = []
            for room_id, events in by_room.items():
                actions.extend(await self._evaluate_room(room_id, events, positions))
            await self.store.add_push_actions(actions)
            for room_id, events in by_room.items():
                redacted = [e.redacts for e in events if e.redacts is not None]
                if redacted:
                    await self.store.remove_push_actions(room_id, redacted)
        except Exception:
            # The events are committed; a push failure must not fail the send.
            logger.exception("evaluating push rules failed")
            return
        if any(a.notif for a in actions):
            self.pushers.on_new_actions()

    async def _evaluate_room(
        self, room_id: str, events: list[Event], positions: dict[str, int]
    ) -> list[PushAction]:
        views = await self._state_views_of(room_id, events)
        events = [e for e in events if e.event_id in views]
        candidates = {
            e.event_id: self._recipients(e, views[e.event_id].local_members) for e in events
        }
        everyone = list({u for r in candidates.values() for u in r})
        ignoring = await self.account_data.ignored_by(everyone)
        recipients_of = {
            e.event_id: [u for u in candidates[e.event_id] if e.sender not in ignoring.get(u, ())]
            for e in events
        }
        rulesets = await self.rulesets_for(list({u for r in recipients_of.values() for u in r}))
        now = now_ms()
        actions: list[PushAction] = []
        for event in events:
            view = views[event.event_id]
            ctx = EventContext(event, view.joined_count, view.power_levels, view.local_members)
            matched: list[tuple[str, CompiledRule]] = []
            for user_id in recipients_of[event.event_id]:
                rule = evaluate(rulesets[user_id], ctx, user_id)
                if rule is not None and rule.actions:
                    matched.append((user_id, rule))
            if not matched:
                continue
            thread_id = await self._thread_of(event)
            actions.extend(
                PushAction(
                    room_id, event.event_id, user_id, positions[event.event_id], thread_id,
                    rule.actions, rule.notify, rule.highlight, now,
                )
                for user_id, rule in matched
            )
        return actions

    def _recipients(self, event: Event, joined_local: dict[str, str | None]) -> list[str]:
        """Local joined members but the sender, plus the local target of an invite."""
        users = [u for u in joined_local if u != event.sender]
        target = event.state_key
        if (
            event.membership == "invite"
            and target
            and target != event.sender
            and target not in joined_local
            and self.is_local(target)
        ):
            users.append(target)
        return users

    async def _state_views_of(self, room_id: str, events: list[Event]) -> dict[str, _StateView]:
        """For each event (by ID): what the room state after it says."""
        groups = {
            event_id: group
            for event_id, (_position, group) in (await self.events.get_positions([e.event_id for e in events])).items()
        }
        views = {g: v for g in set(groups.values()) if (v := self._state_views.get(g)) is not None}
        missing = set(groups.values()) - views.keys()
        if missing:
            current = {m.user_id: m for m in await self.events.members_of_room(room_id, _MEMBERSHIPS)}
            for group in missing:
                views[group] = await self._state_view(group, current)
                self._state_views.set(group, views[group])
        return {event_id: views[group] for event_id, group in groups.items()}

    async def _state_view(self, group: int, current: dict[str, Membership]) -> _StateView:
        """Read a state group's members and power levels. Member events that are
        still the current ones are known from `current` (the room's membership
        rows); only the others are loaded."""
        state = await self.events.get_state_group(group)
        member_events = {key[1]: event_id for key, event_id in state.items() if key[0] == MEMBER}
        known = {
            user_id: (row.membership, row.displayname)
            for user_id, event_id in member_events.items()
            if (row := current.get(user_id)) is not None and row.event_id == event_id
        }
        levels_keys = [k for k in (CREATE_KEY, POWER_LEVELS_KEY) if k in state]
        found = await self.events.get_events(
            [*(e for u, e in member_events.items() if u not in known), *(state[k] for k in levels_keys)]
        )
        for user_id, event_id in member_events.items():
            event = found.get(event_id)
            if user_id not in known and event is not None:
                name = event.content.get("displayname")
                known[user_id] = (event.membership or "leave", name if isinstance(name, str) else None)
        joined = {u: name for u, (membership, name) in known.items() if membership == "join"}
        levels_state = {k: found[state[k]] for k in levels_keys if state[k] in found}
        return _StateView(
            len(joined),
            {u: name for u, name in joined.items() if self.is_local(u)},
            PowerLevels.from_state(levels_state) if CREATE_KEY in levels_state else None,
        )

    async def _thread_of(self, event: Event) -> str:
        """The thread the event belongs to: its m.thread root, found through at most
        three relations (spec), else the main timeline."""
        relates = event.content.get("m.relates_to")
        if not isinstance(relates, dict) or not isinstance(relates.get("event_id"), str):
            return MAIN_THREAD
        parent = relates["event_id"]
        if relates.get("rel_type") == "m.thread":
            return parent
        for _hop in range(MAX_THREAD_HOPS):
            found = (await self.store.relation_parents([parent])).get(parent)
            if found is None:
                return MAIN_THREAD
            thread_id, relates_to = found
            if thread_id is not None:
                return thread_id
            if relates_to is None:
                return MAIN_THREAD
            parent = relates_to
        return MAIN_THREAD

    # --------------------------------------------------------------- counts

    async def unread_counts(self, user_id: str, room_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """For each room: the unread notification and highlight counts of its main
        timeline, and of each thread (by root) under "threads"; the room's total is
        their sum. Rooms without unread notifications get zeros."""
        raw = await self.store.unread_counts(user_id, room_ids)
        result: dict[str, dict[str, Any]] = {}
        for room_id in room_ids:
            threads = raw.get(room_id, {})
            main_notifications, main_highlights = threads.get(MAIN_THREAD, (0, 0))
            result[room_id] = {
                "notification_count": main_notifications,
                "highlight_count": main_highlights,
                "threads": {
                    thread_id: {"notification_count": n, "highlight_count": h}
                    for thread_id, (n, h) in threads.items()
                    if thread_id != MAIN_THREAD
                },
            }
        return result

    async def notifications(
        self, user_id: str, *, before: int | None, limit: int, only_highlight: bool
    ) -> tuple[list[tuple[Notification, Event]], int | None]:
        """A page of the user's notifications with their (visible) events, and the
        position to continue from (None at the end)."""
        page = await self.store.get_notifications(
            user_id, before=before, limit=limit, only_highlight=only_highlight
        )
        found = await self.events.get_events([n.event_id for n in page])
        ignored = await self.account_data.ignored_users(user_id)
        # The user's own invite is theirs to see (sync shows it too), whatever
        # the room's history visibility, unless an ignored user sent it;
        # everything else is filtered.
        own_invites = {
            e.event_id: e
            for e in found.values()
            if e.membership == "invite" and e.state_key == user_id and e.sender not in ignored
        }
        others = [e for e in found.values() if e.membership != "invite" or e.state_key != user_id]
        visible = {
            **own_invites,
            **{
                e.event_id: e
                for e in await filter_events_for_user(self.events, user_id, others, ignored=ignored)
            },
        }
        entries = [(n, visible[n.event_id]) for n in page if n.event_id in visible]
        next_before = page[-1].push_position if len(page) == limit else None
        return entries, next_before

    # ---------------------------------------------------------- housekeeping

    async def prune_push_actions(self) -> int:
        """Delete the read actions older than `keep_read_actions_ms`; how many."""
        return await self.store.prune_read_push_actions(now_ms() - self.keep_read_actions_ms)

    async def _prune_regularly(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                # One process at a time (any one: the work is the same).
                ownership = await take_ownership(self.db, "homeserver_push_pruning")
                if ownership is None:
                    continue
                try:
                    deleted = await self.prune_push_actions()
                finally:
                    await ownership.release()
                logger.info("deleted %d read push actions", deleted)
            except Exception:
                logger.exception("pruning push actions failed")

    # -------------------------------------------------------------- pushers

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        return await self.store.get_pushers([user_id])

    async def set_pusher(self, pusher: Pusher, *, append: bool) -> None:
        """Create or update a pusher; the pool starts it when its user is next notified."""
        stored, removed = await self.store.set_pusher(pusher, append=append)
        for old in (stored, *removed):
            await self.pushers.remove(old.key)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self.store.delete_pusher(app_id, pushkey, user_id)
        await self.pushers.remove((app_id, pushkey, user_id))
