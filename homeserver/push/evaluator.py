"""Compiled push-rule evaluation: one event against every member's ruleset, fast.

Rules are compiled once into condition objects (glob patterns to regular
expressions, property paths to key tuples), and a user's compiled ruleset
is cached by the push service. Evaluating an event for a room's members is
then cheap because almost every condition (the event's type, msgtype, the
member count, the sender's power) is the same for every member: those are
computed once per event and remembered. Only a few depend on the member
(the invite target, `m.mentions.user_ids`, the display name); a ruleset's
outcome is remembered per combination of those, so a room of 1000 members
on the default rules costs a handful of rule walks, not 1000.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events.model import Event
from ..rooms.power_levels import PowerLevels
from .rules import USER_ID, PushRule, parse_member_count, tweaks_of

_MISSING = object()
_WORD = "A-Za-z0-9_"
_FLAGS = re.IGNORECASE | re.DOTALL
_GLOB_CHARS = ("*", "?")


# ------------------------------------------------------------------- helpers


def parse_path(key: str) -> tuple[str, ...]:
    """A dot-separated property path, with `\\.` and `\\\\` unescaped (spec appendix)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


@functools.lru_cache(maxsize=8192)
def glob_regex(pattern: str, words: bool) -> re.Pattern[str]:
    """A glob (`*`, `?`) as a case-insensitive regex: whole value, or (`words`) any
    substring starting and ending at a word boundary, as `content.body` matching wants."""
    pattern = re.sub(r"\*+", "*", pattern)  # runs of stars only add backtracking
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        return re.compile(f"(?<![{_WORD}]){body}(?![{_WORD}])", _FLAGS)
    return re.compile(body, _FLAGS)


def glob_matches(pattern: str, value: str, words: bool) -> bool:
    if words:
        return glob_regex(pattern, True).search(value) is not None
    if not any(c in pattern for c in _GLOB_CHARS):
        # The common case (`type`, `msgtype`, a user ID): no regex needed.
        return pattern.lower() == value.lower()
    return glob_regex(pattern, False).fullmatch(value) is not None


@functools.lru_cache(maxsize=8192)
def _literal_words(text: str) -> re.Pattern[str]:
    return re.compile(f"(?<![{_WORD}]){re.escape(text)}(?![{_WORD}])", _FLAGS)


def same_value(a: Any, b: Any) -> bool:
    """Exact JSON equality of scalars: `true` is not `1`, `"1"` is not `1`."""
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------ contexts


@dataclass
class EventContext:
    """One event and the room facts conditions read, with per-event memos."""

    event: Event
    member_count: int
    power_levels: PowerLevels | None = None
    # Members' display names in the room, for `contains_display_name`.
    display_names: Mapping[str, str | None] = field(default_factory=dict)
    _values: dict[tuple[str, ...], Any] = field(default_factory=dict)
    memo: dict[Condition, bool] = field(default_factory=dict)
    outcomes: dict[tuple[int, tuple[bool, ...]], CompiledRule | None] = field(default_factory=dict)
    _sender_level: Any = _MISSING

    def value(self, path: tuple[str, ...]) -> Any:
        """The event's property at `path`, or `_MISSING`."""
        found = self._values.get(path, _MISSING)
        if found is _MISSING and path not in self._values:
            found = self._lookup(path)
            self._values[path] = found
        return found

    def _lookup(self, path: tuple[str, ...]) -> Any:
        head, rest = path[0], path[1:]
        if head == "event_id":
            node: Any = self.event.event_id
        elif head == "room_id":
            node = self.event.room_id
        else:
            node = self.event.pdu.get(head, _MISSING)
        for part in rest:
            if not isinstance(node, dict):
                return _MISSING
            node = node.get(part, _MISSING)
        return node

    def sender_level(self) -> Any:
        if self._sender_level is _MISSING:
            levels = self.power_levels
            self._sender_level = levels.user_level(self.event.sender) if levels else None
        return self._sender_level


# ---------------------------------------------------------------- conditions


class Condition:
    """A compiled condition. `user_dependent` ones are evaluated per member."""

    user_dependent = False

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Never(Condition):
    """An unrecognised (or malformed) condition: never matches (spec)."""

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        return False


@dataclass(frozen=True)
class EventMatch(Condition):
    path: tuple[str, ...]
    pattern: str

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        value = ctx.value(self.path)
        return isinstance(value, str) and glob_matches(
            self.pattern, value, self.path == ("content", "body")
        )


@dataclass(frozen=True)
class UserEventMatch(Condition):
    """`event_match` whose pattern is the ruleset owner's user ID."""

    path: tuple[str, ...]
    user_dependent = True

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        value = ctx.value(self.path)
        return isinstance(value, str) and glob_matches(
            user_id, value, self.path == ("content", "body")
        )


@dataclass(frozen=True)
class PropertyIs(Condition):
    path: tuple[str, ...]
    expected: Any
    # Part of equality: `true` and `1` are equal in Python, never in JSON.
    expected_type: type = type(None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_type", type(self.expected))

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        return same_value(ctx.value(self.path), self.expected)


@dataclass(frozen=True)
class UserPropertyIs(Condition):
    path: tuple[str, ...]
    user_dependent = True

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        return ctx.value(self.path) == user_id


@dataclass(frozen=True)
class PropertyContains(Condition):
    path: tuple[str, ...]
    expected: Any
    expected_type: type = type(None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_type", type(self.expected))

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        values = ctx.value(self.path)
        return isinstance(values, list) and any(same_value(v, self.expected) for v in values)


@dataclass(frozen=True)
class UserPropertyContains(Condition):
    """`event_property_contains` of the owner's user ID (`m.mentions.user_ids`)."""

    path: tuple[str, ...]
    user_dependent = True

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        values = ctx.value(self.path)
        return isinstance(values, list) and user_id in values


@dataclass(frozen=True)
class ContainsDisplayName(Condition):
    user_dependent = True

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        name = ctx.display_names.get(user_id)
        body = ctx.value(("content", "body"))
        if not name or not isinstance(body, str):
            return False
        return _literal_words(name).search(body) is not None


@dataclass(frozen=True)
class RoomMemberCount(Condition):
    op: str
    number: int

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        count, n = ctx.member_count, self.number
        return {
            "==": count == n, "<": count < n, ">": count > n, "<=": count <= n, ">=": count >= n,
        }[self.op]


@dataclass(frozen=True)
class SenderNotificationPermission(Condition):
    key: str

    def matches(self, ctx: EventContext, user_id: str) -> bool:
        level = ctx.sender_level()
        levels = ctx.power_levels
        return level is not None and levels is not None and level >= levels.notification_level(self.key)


def compile_condition(condition: Mapping[str, Any]) -> Condition:
    """A condition's JSON compiled (and shared: equal conditions compile to one object)."""
    return _compile_condition(json.dumps(condition, sort_keys=True))


@functools.lru_cache(maxsize=16384)
def _compile_condition(raw: str) -> Condition:
    condition = json.loads(raw)
    kind, key = condition.get("kind"), condition.get("key")
    if kind == "event_match" and isinstance(key, str) and isinstance(condition.get("pattern"), str):
        if condition["pattern"] == USER_ID:
            return UserEventMatch(parse_path(key))
        return EventMatch(parse_path(key), condition["pattern"])
    if kind in ("event_property_is", "event_property_contains") and isinstance(key, str) and "value" in condition:
        path, value = parse_path(key), condition["value"]
        if kind == "event_property_is":
            return UserPropertyIs(path) if value == USER_ID else PropertyIs(path, value)
        return UserPropertyContains(path) if value == USER_ID else PropertyContains(path, value)
    if kind == "contains_display_name":
        return ContainsDisplayName()
    if kind == "room_member_count" and isinstance(condition.get("is"), str):
        parsed = parse_member_count(condition["is"])
        if parsed is not None:
            return RoomMemberCount(*parsed)
    if kind == "sender_notification_permission" and isinstance(key, str):
        return SenderNotificationPermission(key)
    return Never()


# --------------------------------------------------------------------- rules


@dataclass(frozen=True, eq=False)
class CompiledRule:
    rule_id: str
    conditions: tuple[Condition, ...]
    actions: tuple[Any, ...]

    @functools.cached_property
    def notify(self) -> bool:
        return "notify" in self.actions

    @functools.cached_property
    def highlight(self) -> bool:
        return tweaks_of(self.actions).get("highlight") is True


@dataclass(frozen=True, eq=False)
class RuleSet:
    """A user's enabled rules in evaluation order, compiled."""

    rules: tuple[CompiledRule, ...]
    # The member-dependent conditions anywhere in the rules: their results
    # (with the event) decide the outcome, so outcomes are shared by them.
    user_conditions: tuple[Condition, ...]


def _rule_conditions(rule: PushRule) -> tuple[Condition, ...]:
    if rule.kind == "room":
        return (PropertyIs(("room_id",), rule.rule_id),)
    if rule.kind == "sender":
        return (PropertyIs(("sender",), rule.rule_id),)
    if rule.kind == "content":
        return (EventMatch(("content", "body"), rule.pattern or ""),) if rule.pattern else (Never(),)
    return tuple(compile_condition(c) for c in rule.conditions or ())


def compile_ruleset(rules: Sequence[PushRule]) -> RuleSet:
    compiled = tuple(
        CompiledRule(rule.rule_id, _rule_conditions(rule), rule.actions)
        for rule in rules
        if rule.enabled
    )
    user_conditions = tuple(
        dict.fromkeys(c for rule in compiled for c in rule.conditions if c.user_dependent)
    )
    return RuleSet(compiled, user_conditions)


def evaluate(ruleset: RuleSet, ctx: EventContext, user_id: str) -> CompiledRule | None:
    """The first rule of `ruleset` matching the event for `user_id`, or None."""
    signature = tuple(c.matches(ctx, user_id) for c in ruleset.user_conditions)
    key = (id(ruleset), signature)
    if key in ctx.outcomes:
        return ctx.outcomes[key]
    found = None
    memo = ctx.memo
    for rule in ruleset.rules:
        for condition in rule.conditions:
            if condition.user_dependent:
                ok = condition.matches(ctx, user_id)
            else:
                ok = memo.get(condition)  # type: ignore[assignment]
                if ok is None:
                    ok = memo[condition] = condition.matches(ctx, user_id)
            if not ok:
                break
        else:
            found = rule
            break
    ctx.outcomes[key] = found
    return found
