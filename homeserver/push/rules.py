"""Push rules: the spec's server-default rules, a user's ruleset, and rule validation.

A user's ruleset is the server-default rules (with the user's enabled and
actions overrides) merged with the rules the user defined, in the order the
spec evaluates them: `.m.rule.master` first, then per kind the user's rules
before the server-default ones (override, content, room, sender, underride).
The default rules are written exactly as the spec (v1.19) lists them;
`USER_ID` stands for "[the user's Matrix ID]" and is filled in per user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from storage.push import StoredRule

from ..errors import MatrixError, invalid_param, missing_param

KINDS = ("override", "content", "room", "sender", "underride")
MASTER_RULE_ID = ".m.rule.master"

# Stands for the ruleset owner's user ID in the server-default rules.
USER_ID = "[the user's Matrix ID]"

# Historical actions clients and servers MUST ignore (spec: Historical Actions).
IGNORED_ACTIONS = ("dont_notify", "coalesce")
MAX_RULE_ID_LENGTH = 255
# Enough for any real rule; bounds the work one rule costs at every event.
MAX_CONDITIONS = 20
MAX_PATTERN_LENGTH = 1024
_MEMBER_COUNT = re.compile(r"(==|<=|>=|<|>)?([0-9]{1,15})")
_CONDITION_KINDS = (
    "event_match",
    "event_property_is",
    "event_property_contains",
    "contains_display_name",
    "room_member_count",
    "sender_notification_permission",
)
_MAX_SAFE_INT = 2**53 - 1


@dataclass(frozen=True)
class PushRule:
    """One rule as clients see it. `conditions` is set for override/underride
    rules only and `pattern` for content rules only."""

    kind: str
    rule_id: str
    actions: tuple[Any, ...]
    default: bool = False
    enabled: bool = True
    conditions: tuple[dict[str, Any], ...] | None = None
    pattern: str | None = None

    def to_json(self, user_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "rule_id": self.rule_id,
            "default": self.default,
            "enabled": self.enabled,
            "actions": list(self.actions),
        }
        if self.conditions is not None:
            body["conditions"] = [_for_user(c, user_id) for c in self.conditions]
        if self.pattern is not None:
            body["pattern"] = self.pattern
        return body


def _for_user(condition: dict[str, Any], user_id: str) -> dict[str, Any]:
    return {k: (user_id if v == USER_ID else v) for k, v in condition.items()}


def _rule(kind: str, rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True) -> PushRule:
    return PushRule(kind, rule_id, tuple(actions), True, enabled, tuple(conditions))


_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


DEFAULT_OVERRIDE_RULES: tuple[PushRule, ...] = (
    _rule("override", MASTER_RULE_ID, [], [], enabled=False),
    _rule("override", ".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
    _rule(
        "override",
        ".m.rule.invite_for_me",
        [
            _match("type", "m.room.member"),
            _match("content.membership", "invite"),
            _match("state_key", USER_ID),
        ],
        ["notify", _SOUND_DEFAULT],
    ),
    _rule("override", ".m.rule.member_event", [_match("type", "m.room.member")], []),
    _rule(
        "override",
        ".m.rule.is_user_mention",
        [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": USER_ID}],
        ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
    ),
    _rule(
        "override",
        ".m.rule.is_room_mention",
        [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        ["notify", _HIGHLIGHT],
    ),
    _rule(
        "override",
        ".m.rule.tombstone",
        [_match("type", "m.room.tombstone"), _match("state_key", "")],
        ["notify", _HIGHLIGHT],
    ),
    _rule("override", ".m.rule.reaction", [_match("type", "m.reaction")], []),
    _rule(
        "override",
        ".m.rule.room.server_acl",
        [_match("type", "m.room.server_acl"), _match("state_key", "")],
        [],
    ),
    _rule(
        "override",
        ".m.rule.suppress_edits",
        [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
        [],
    ),
)

DEFAULT_UNDERRIDE_RULES: tuple[PushRule, ...] = (
    _rule(
        "underride",
        ".m.rule.call",
        [_match("type", "m.call.invite")],
        ["notify", {"set_tweak": "sound", "value": "ring"}],
    ),
    _rule(
        "underride",
        ".m.rule.encrypted_room_one_to_one",
        [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
        ["notify", _SOUND_DEFAULT],
    ),
    _rule(
        "underride",
        ".m.rule.room_one_to_one",
        [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
        ["notify", _SOUND_DEFAULT],
    ),
    _rule("underride", ".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
    _rule("underride", ".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
)

DEFAULT_RULES: dict[tuple[str, str], PushRule] = {
    (r.kind, r.rule_id): r for r in (*DEFAULT_OVERRIDE_RULES, *DEFAULT_UNDERRIDE_RULES)
}


def tweaks_of(actions: Iterable[Any]) -> dict[str, Any]:
    """The `set_tweak` actions as a dict; a highlight tweak without a value is true (spec)."""
    return {
        a["set_tweak"]: a.get("value", True) if a["set_tweak"] == "highlight" else a.get("value")
        for a in actions
        if isinstance(a, dict) and isinstance(a.get("set_tweak"), str)
    }


# ------------------------------------------------------------------ rulesets


def merge_rules(stored: Iterable[StoredRule]) -> list[PushRule]:
    """A user's whole ruleset in evaluation order, from their `push_rules` rows."""
    own: dict[str, list[StoredRule]] = {kind: [] for kind in KINDS}
    overrides: dict[tuple[str, str], StoredRule] = {}
    for row in stored:
        if row.is_default_override:
            overrides[(row.kind, row.rule_id)] = row
        elif row.kind in own:
            own[row.kind].append(row)

    def default(rule: PushRule) -> PushRule:
        row = overrides.get((rule.kind, rule.rule_id))
        if row is None:
            return rule
        return replace(
            rule,
            enabled=rule.enabled if row.enabled is None else row.enabled,
            actions=rule.actions if row.actions is None else row.actions,
        )

    def user(kind: str) -> list[PushRule]:
        rows = sorted(own[kind], key=lambda r: r.priority)
        return [
            PushRule(kind, r.rule_id, r.actions or (), False, r.enabled is not False, r.conditions, r.pattern)
            for r in rows
        ]

    master, *default_overrides = DEFAULT_OVERRIDE_RULES
    return [
        default(master),
        *user("override"),
        *map(default, default_overrides),
        *user("content"),
        *user("room"),
        *user("sender"),
        *user("underride"),
        *map(default, DEFAULT_UNDERRIDE_RULES),
    ]


def ruleset_json(rules: Sequence[PushRule], user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The `global` ruleset as GET /pushrules/ and `m.push_rules` show it."""
    ruleset: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for rule in rules:
        ruleset[rule.kind].append(rule.to_json(user_id))
    return ruleset


# ---------------------------------------------------------------- validation


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise invalid_param(f"Unknown push rule kind: {kind!r}")


def check_new_rule_id(kind: str, rule_id: str) -> None:
    """A rule ID a client may create (PUT): never a server-default one."""
    if rule_id.startswith("."):
        raise invalid_param("Rule IDs starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise invalid_param("Rule IDs may not contain '/' or '\\'")
    if not rule_id or len(rule_id) > MAX_RULE_ID_LENGTH:
        raise invalid_param(f"Rule IDs must be 1 to {MAX_RULE_ID_LENGTH} characters")
    if kind == "room" and not rule_id.startswith("!"):
        raise invalid_param("The rule ID of a room rule is the room's ID")
    if kind == "sender" and not rule_id.startswith("@"):
        raise invalid_param("The rule ID of a sender rule is the sender's user ID")


def validate_actions(actions: Any) -> tuple[Any, ...]:
    """Actions a client sent, with the historical ones stripped (spec: MUST ignore)."""
    if not isinstance(actions, list):
        raise invalid_param("'actions' must be a list")
    kept: list[Any] = []
    for action in actions:
        if action in IGNORED_ACTIONS:
            continue
        if action == "notify" or isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            kept.append(action)
        else:
            raise invalid_param(f"Unrecognised push rule action: {action!r}")
    return tuple(kept)


def _is_scalar(value: Any) -> bool:
    """A non-compound canonical JSON value: string, safe integer, boolean or null."""
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT


def validate_condition(condition: Any) -> dict[str, Any]:
    """A condition a client sent. Unknown kinds are kept (they never match, per spec);
    known kinds must carry their parameters."""
    if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
        raise invalid_param("Each condition must be an object with a string 'kind'")
    kind = condition["kind"]
    if kind not in _CONDITION_KINDS:
        return condition
    keyed = ("event_match", "event_property_is", "event_property_contains", "sender_notification_permission")
    if kind in keyed and (not isinstance(condition.get("key"), str) or not condition["key"]):
        raise invalid_param(f"A {kind} condition needs a string 'key'")
    if kind == "event_match":
        pattern = condition.get("pattern")
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
            raise invalid_param("An event_match condition needs a string 'pattern'")
    elif kind in ("event_property_is", "event_property_contains"):
        if "value" not in condition or not _is_scalar(condition["value"]):
            raise invalid_param(
                f"A {kind} condition needs a 'value' that is a string, integer, boolean or null"
            )
    elif kind == "room_member_count":
        is_ = condition.get("is")
        if not isinstance(is_, str) or not _MEMBER_COUNT.fullmatch(is_):
            raise invalid_param("A room_member_count condition needs 'is': a number optionally prefixed by ==, <, >, >= or <=")
    return condition


def parse_member_count(is_: str) -> tuple[str, int] | None:
    """`room_member_count`'s `is` as (operator, number); None if malformed."""
    m = _MEMBER_COUNT.fullmatch(is_)
    return (m.group(1) or "==", int(m.group(2))) if m else None


@dataclass(frozen=True)
class RuleBody:
    actions: tuple[Any, ...]
    conditions: tuple[dict[str, Any], ...] | None
    pattern: str | None


def validate_rule_body(kind: str, body: dict[str, Any]) -> RuleBody:
    """The body of PUT /pushrules/global/{kind}/{ruleId}, checked for that kind."""
    if "actions" not in body:
        raise missing_param("Missing parameter: actions")
    actions = validate_actions(body["actions"])
    conditions = pattern = None
    if kind in ("override", "underride"):
        raw = body.get("conditions", [])
        if not isinstance(raw, list):
            raise invalid_param("'conditions' must be a list")
        if len(raw) > MAX_CONDITIONS:
            raise invalid_param(f"A rule may have at most {MAX_CONDITIONS} conditions")
        conditions = tuple(validate_condition(c) for c in raw)
    elif kind == "content":
        if "pattern" not in body:
            raise missing_param("Content rules need a 'pattern'")
        pattern = body["pattern"]
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_LENGTH:
            raise invalid_param("'pattern' must be a non-empty string")
    return RuleBody(actions, conditions, pattern)


def rule_not_found() -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", "The push rule was not found.")
