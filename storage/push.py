"""Push storage: users' push rules, push actions (unread counts, /notifications) and pushers.

A push action is what a recipient's push rules decided for one event; the
unread counts are the actions after the recipient's read receipt (the
`receipts` table of 0005_streams.sql), read for many rooms in one query.
Rule changes are filed under the account-data stream, so /sync resends
`m.push_rules`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, dump_json, placeholders
from .streams import next_position_txn


# The receipts that mark notifications read (spec: either, whichever is further ahead).
_READ_TYPES = "('m.read', 'm.read.private')"


def _mark(room: str, user: str, thread: str) -> str:
    """SQL for the stream ordering a user has read up to in a room and thread ('' = unthreaded)."""
    return (
        "COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts r"
        f" WHERE r.room_id = {room} AND r.user_id = {user} AND r.thread_id = {thread}"
        f" AND r.receipt_type IN {_READ_TYPES}), 0)"
    )


# An action is unread once after both the unthreaded receipt and its thread's
# receipt ('main' for the main timeline). The unthreaded mark is applied in the
# join so each room is an index range scan from it.
_UNREAD_IN_THREAD = f"a.stream_ordering > {_mark('a.room_id', 'a.user_id', 'a.thread_id')}"
_UNREAD = f"a.stream_ordering > {_mark('a.room_id', 'a.user_id', chr(39) * 2)} AND {_UNREAD_IN_THREAD}"


class PushRuleNotFound(LookupError):
    """The rule (or the before/after rule) does not exist."""



@dataclass(frozen=True)
class StoredRule:
    """A row of `push_rules`: a user's own rule, or (rule ID starting with a
    dot) the user's override of a server-default rule's `enabled`/`actions`,
    where None keeps the default."""

    kind: str
    rule_id: str
    priority: int
    conditions: tuple[dict[str, Any], ...] | None
    pattern: str | None
    actions: tuple[Any, ...] | None
    enabled: bool | None

    @property
    def is_default_override(self) -> bool:
        return self.rule_id.startswith(".")


@dataclass(frozen=True)
class PushAction:
    """One recipient's push action for an event (`push_position` 0 until stored)."""

    room_id: str
    event_id: str
    user_id: str
    stream_ordering: int
    thread_id: str
    actions: Sequence[Any]
    notif: bool
    highlight: bool
    received_ts: int
    push_position: int = 0


@dataclass(frozen=True)
class Notification:
    room_id: str
    event_id: str
    push_position: int
    actions: list[Any]
    highlight: bool
    received_ts: int
    read: bool


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None
    pushkey_ts: int
    last_push_position: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.app_id, self.pushkey, self.user_id)

    def same_settings(self, other: Pusher) -> bool:
        """Whether `other` is this pusher as set, however far each has sent."""
        return dataclasses.replace(other, last_push_position=self.last_push_position) == self


_RULE_COLUMNS = "user_id, kind, rule_id, priority, conditions, pattern, actions, enabled"
_PUSHER_COLUMNS = (
    "user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang,"
    " data, device_id, pushkey_ts, last_push_position"
)


def _rule_from_row(row: Sequence[Any]) -> tuple[str, StoredRule]:
    user_id, kind, rule_id, priority, conditions, pattern, actions, enabled = row
    return user_id, StoredRule(
        kind,
        rule_id,
        priority,
        tuple(json.loads(conditions)) if conditions is not None else None,
        pattern,
        tuple(json.loads(actions)) if actions is not None else None,
        bool(enabled) if enabled is not None else None,
    )


def _pusher_from_row(row: Sequence[Any]) -> Pusher:
    values = list(row)
    values[8] = json.loads(values[8])
    return Pusher(*values)


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---------------------------------------------------------------- rules

    async def get_rules_for_users(self, user_ids: Sequence[str]) -> dict[str, list[StoredRule]]:
        """Every given user's rule rows (users without any map to [])."""
        found: dict[str, list[StoredRule]] = {u: [] for u in user_ids}
        for batch in batches(user_ids):
            rows = await self.db.fetchall(
                "get_push_rules",
                f"SELECT {_RULE_COLUMNS} FROM push_rules WHERE user_id IN ({placeholders(len(batch))})",
                batch,
            )
            for row in rows:
                user_id, rule = _rule_from_row(row)
                found[user_id].append(rule)
        return found

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        conditions: Sequence[dict[str, Any]] | None,
        pattern: str | None,
        actions: Sequence[Any],
        before: str | None,
        after: str | None,
    ) -> int:
        """Create or replace a user rule, placed before/after another user rule
        (new rules otherwise go first; updated ones keep their place).
        Returns its account-data position; PushRuleNotFound if `before`/`after` is unknown."""

        async def txn_fn(txn: Transaction) -> int:
            # First: the stream row's lock serializes this user's rule writes.
            position = await next_position_txn(txn, "account_data")
            rows = await txn.fetchall(
                "SELECT rule_id FROM push_rules WHERE user_id = ? AND kind = ?"
                " AND substr(rule_id, 1, 1) <> '.' ORDER BY priority, rule_id",
                (user_id, kind),
            )
            order = [r[0] for r in rows]
            existing = rule_id in order
            anchor = before if before is not None else after
            if anchor is not None and (anchor not in order or anchor == rule_id):
                raise PushRuleNotFound(anchor)
            index = order.index(rule_id) if existing else 0
            order = [r for r in order if r != rule_id]
            if before is not None:
                index = order.index(before)
            elif after is not None:
                index = order.index(after) + 1
            order.insert(index, rule_id)
            await txn.execute(
                f"INSERT INTO push_rules ({_RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, TRUE)"
                " ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET"
                " conditions = excluded.conditions, pattern = excluded.pattern, actions = excluded.actions",
                (
                    user_id, kind, rule_id, index,
                    dump_json(list(conditions)) if conditions is not None else None,
                    pattern, dump_json(list(actions)),
                ),
            )
            await txn.executemany(
                "UPDATE push_rules SET priority = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                [(i, user_id, kind, r) for i, r in enumerate(order)],
            )
            await self._changed_txn(txn, user_id, position)
            return position

        return await self.db.run("put_push_rule", txn_fn, read_committed=True)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> int:
        """Delete a user rule; its account-data position, or PushRuleNotFound."""

        async def txn_fn(txn: Transaction) -> int:
            position = await next_position_txn(txn, "account_data")
            deleted = await txn.execute(
                "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
                (user_id, kind, rule_id),
            )
            if not deleted:
                raise PushRuleNotFound(rule_id)  # rolls the position back
            await self._changed_txn(txn, user_id, position)
            return position

        return await self.db.run("delete_push_rule", txn_fn, read_committed=True)

    async def set_rule_attribute(
        self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None,
        actions: Sequence[Any] | None = None,
    ) -> int:
        """Set `enabled` or `actions` of a rule: a user rule must exist
        (PushRuleNotFound); a server-default rule (the caller checked it is one)
        gets an override row. Returns the account-data position."""
        column, value = ("enabled", enabled) if enabled is not None else ("actions", dump_json(list(actions or ())))

        async def txn_fn(txn: Transaction) -> int:
            position = await next_position_txn(txn, "account_data")
            if rule_id.startswith("."):
                await txn.execute(
                    f"INSERT INTO push_rules (user_id, kind, rule_id, {column}) VALUES (?, ?, ?, ?)"
                    f" ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET {column} = excluded.{column}",
                    (user_id, kind, rule_id, value),
                )
            elif not await txn.execute(
                f"UPDATE push_rules SET {column} = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                (value, user_id, kind, rule_id),
            ):
                raise PushRuleNotFound(rule_id)
            await self._changed_txn(txn, user_id, position)
            return position

        return await self.db.run("set_push_rule_" + column, txn_fn, read_committed=True)

    @staticmethod
    async def _changed_txn(txn: Transaction, user_id: str, position: int) -> None:
        await txn.execute(
            "INSERT INTO push_rules_stream (user_id, stream_id) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id",
            (user_id, position),
        )

    async def rules_stream_id(self, user_id: str) -> int | None:
        """The account-data position of the user's latest rule change (None: never changed)."""
        return await self.db.fetchval(
            "push_rules_stream_id", "SELECT stream_id FROM push_rules_stream WHERE user_id = ?", (user_id,)
        )

    # --------------------------------------------------------- push actions

    async def add_push_actions(self, actions: Sequence[PushAction]) -> None:
        """Store actions, each event's under a new position of the 'push_actions' stream."""
        if not actions:
            return

        async def txn_fn(txn: Transaction) -> None:
            positions: dict[str, int] = {}
            for action in actions:
                if action.event_id not in positions:
                    positions[action.event_id] = await next_position_txn(txn, "push_actions")
            # Recipients matching the same rule share its actions: encode each once.
            encoded: dict[int, str] = {}
            rows = [
                (
                    a.user_id, positions[a.event_id], a.room_id, a.event_id, a.stream_ordering,
                    a.thread_id,
                    encoded.get(id(a.actions)) or encoded.setdefault(id(a.actions), dump_json(list(a.actions))),
                    a.notif, a.highlight, a.received_ts,
                )
                for a in actions
            ]
            await txn.executemany(
                "INSERT INTO event_push_actions (user_id, push_position, room_id, event_id,"
                " stream_ordering, thread_id, actions, notif, highlight, received_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self.db.run("add_push_actions", txn_fn, read_committed=True)

    async def push_position(self) -> int:
        """How far the 'push_actions' stream has reached."""
        return await self.db.fetchval(
            "push_position", "SELECT position FROM stream_positions WHERE stream = 'push_actions'"
        ) or 0

    async def users_with_push_actions(self, after: int) -> tuple[set[str], int]:
        """Users with notifying actions stored after push position `after`, and the
        position read up to (positions commit in order, so nothing is left behind)."""
        rows = await self.db.fetchall(
            "users_with_push_actions",
            "SELECT user_id, MAX(push_position) FROM event_push_actions"
            " WHERE push_position > ? AND notif GROUP BY user_id",
            (after,),
        )
        return {user_id for user_id, _p in rows}, max((p for _u, p in rows), default=after)

    async def latest_rule_change(self) -> int:
        return await self.db.fetchval(
            "latest_rule_change", "SELECT COALESCE(MAX(stream_id), 0) FROM push_rules_stream"
        ) or 0

    async def changed_rule_owners(self, after: int) -> tuple[set[str], int]:
        """Users whose rules changed after account-data position `after`, and the latest position."""
        rows = await self.db.fetchall(
            "changed_rule_owners",
            "SELECT user_id, stream_id FROM push_rules_stream WHERE stream_id > ?",
            (after,),
        )
        return {user_id for user_id, _p in rows}, max((p for _u, p in rows), default=after)

    async def relation_parents(self, event_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """For each event: (its m.thread root, the event it relates to), to place it in a thread."""
        ids = list(event_ids)
        found: dict[str, tuple[str | None, str | None]] = {}
        for batch in batches(ids):
            rows = await self.db.fetchall(
                "relation_parents",
                "SELECT event_id, thread_id, relates_to_id FROM events"
                f" WHERE event_id IN ({placeholders(len(batch))})",
                batch,
            )
            found.update({e: (t, r) for e, t, r in rows})
        return found

    async def unread_counts(
        self, user_id: str, room_ids: Sequence[str]
    ) -> dict[str, dict[str, tuple[int, int]]]:
        """Unread (notification, highlight) counts per room and thread ('main' or a root)."""
        counts: dict[str, dict[str, tuple[int, int]]] = {}
        for batch in batches(room_ids):
            rows = await self.db.fetchall(
                "unread_counts",
                f"WITH wanted (room_id) AS (VALUES {', '.join('(?)' for _ in batch)})"
                " SELECT a.room_id, a.thread_id, COUNT(*),"
                " SUM(CASE WHEN a.highlight THEN 1 ELSE 0 END)"
                " FROM wanted w JOIN event_push_actions a"
                "  ON a.user_id = ? AND a.room_id = w.room_id"
                f"  AND a.stream_ordering > {_mark('w.room_id', '?', chr(39) * 2)}"
                f" WHERE a.notif AND {_UNREAD_IN_THREAD}"
                " GROUP BY a.room_id, a.thread_id",
                (*batch, user_id, user_id),
            )
            for room_id, thread_id, notifications, highlights in rows:
                counts.setdefault(room_id, {})[thread_id] = (int(notifications), int(highlights or 0))
        return counts

    async def total_unread(self, user_id: str) -> int:
        """Unread notifications across the user's joined rooms (a pusher's badge)."""
        return await self.db.fetchval(
            "total_unread",
            "SELECT COUNT(*) FROM room_memberships m JOIN event_push_actions a"
            " ON a.user_id = m.user_id AND a.room_id = m.room_id"
            f" AND a.stream_ordering > {_mark('m.room_id', 'm.user_id', chr(39) * 2)}"
            f" WHERE m.user_id = ? AND m.membership = 'join' AND a.notif AND {_UNREAD_IN_THREAD}",
            (user_id,),
        ) or 0

    async def get_notifications(
        self, user_id: str, *, before: int | None, limit: int, only_highlight: bool
    ) -> list[Notification]:
        """The user's notifications, newest first, stored before push position `before`."""
        conditions = ["a.user_id = ?", "a.notif"]
        params: list[Any] = [user_id]
        if before is not None:
            conditions.append("a.push_position < ?")
            params.append(before)
        if only_highlight:
            conditions.append("a.highlight")
        rows = await self.db.fetchall(
            "get_notifications",
            "SELECT a.room_id, a.event_id, a.push_position, a.actions, a.highlight, a.received_ts,"
            f" CASE WHEN {_UNREAD} THEN 0 ELSE 1 END"
            f" FROM event_push_actions a WHERE {' AND '.join(conditions)}"
            " ORDER BY a.push_position DESC LIMIT ?",
            (*params, limit),
        )
        return [
            Notification(room_id, event_id, position, json.loads(actions), bool(highlight), ts, bool(read))
            for room_id, event_id, position, actions, highlight, ts, read in rows
        ]

    async def unread_push_actions(self, user_id: str, *, after: int, limit: int) -> list[PushAction]:
        """The user's unread notifying actions stored after push position `after`, in
        the order they were stored (what a pusher sends)."""
        rows = await self.db.fetchall(
            "unread_push_actions",
            "SELECT a.room_id, a.event_id, a.user_id, a.stream_ordering, a.thread_id, a.actions,"
            " a.notif, a.highlight, a.received_ts, a.push_position FROM event_push_actions a"
            f" WHERE a.user_id = ? AND a.push_position > ? AND a.notif AND {_UNREAD}"
            " ORDER BY a.push_position LIMIT ?",
            (user_id, after, limit),
        )
        return [
            PushAction(r, e, u, s, t, json.loads(a), bool(n), bool(h), ts, p)
            for r, e, u, s, t, a, n, h, ts, p in rows
        ]

    async def remove_push_actions(self, room_id: str, event_ids: Sequence[str]) -> None:
        """Delete every recipient's actions for these events of the room (redacted ones)."""
        rows = await self.db.fetchall(
            "redacted_event_positions",
            f"SELECT event_id, stream_ordering FROM events WHERE event_id IN ({placeholders(len(event_ids))})"
            " AND room_id = ?",
            (*event_ids, room_id),
        )

        async def txn_fn(txn: Transaction) -> None:
            # Every recipient has a membership row in the room: with it, each
            # user's actions are an index lookup.
            await txn.executemany(
                "DELETE FROM event_push_actions WHERE user_id IN"
                " (SELECT user_id FROM room_memberships WHERE room_id = ?)"
                " AND room_id = ? AND stream_ordering = ? AND event_id = ?",
                [(room_id, room_id, stream, event_id) for event_id, stream in rows],
            )

        if rows:
            await self.db.run("remove_push_actions", txn_fn)

    async def prune_read_push_actions(self, received_before: int, batch: int = 1000) -> int:
        """Delete actions received before `received_before` (ms) that their user
        has read, walking the actions in the order stored, a batch at a time
        (each one a short transaction), until the ones received later. Returns
        how many were deleted."""
        deleted, after = 0, 0
        while True:
            rows = await self.db.fetchall(
                "push_actions_by_position",
                "SELECT push_position, received_ts FROM event_push_actions"
                " WHERE push_position > ? ORDER BY push_position LIMIT ?",
                (after, batch),
            )
            if not rows:
                return deleted
            last = rows[-1][0]
            deleted += await self.db.execute(
                "prune_push_actions",
                "DELETE FROM event_push_actions AS a WHERE a.push_position > ? AND a.push_position <= ?"
                f" AND a.received_ts < ? AND NOT ({_UNREAD})",
                (after, last, received_before),
            )
            if rows[-1][1] >= received_before:
                return deleted
            after = last

    # -------------------------------------------------------------- pushers

    async def get_pushers(self, user_ids: Sequence[str] | None = None) -> list[Pusher]:
        """These users' pushers, or (None) every pusher."""
        if user_ids is None:
            rows = await self.db.fetchall("get_all_pushers", f"SELECT {_PUSHER_COLUMNS} FROM pushers")
            return [_pusher_from_row(r) for r in rows]
        found: list[Pusher] = []
        for batch in batches(user_ids):
            rows = await self.db.fetchall(
                "get_pushers",
                f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE user_id IN ({placeholders(len(batch))})"
                " ORDER BY pushkey_ts",
                batch,
            )
            found.extend(_pusher_from_row(r) for r in rows)
        return found

    async def set_pusher(self, pusher: Pusher, *, append: bool) -> tuple[Pusher, list[Pusher]]:
        """Create or update a pusher; unless `append`, remove other users' pushers with
        its app ID and pushkey. A new pusher starts from the actions stored after now.
        Returns (the stored pusher, the pushers removed)."""

        async def txn_fn(txn: Transaction) -> tuple[Pusher, list[Pusher]]:
            removed: list[Pusher] = []
            if not append:
                rows = await txn.fetchall(
                    f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id),
                )
                removed = [_pusher_from_row(r) for r in rows]
                await txn.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id),
                )
            start = await txn.fetchval(
                "SELECT position FROM stream_positions WHERE stream = 'push_actions'"
            )
            row = await txn.fetchone(
                "INSERT INTO pushers (" + _PUSHER_COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name,"
                " device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data,"
                " device_id = excluded.device_id, pushkey_ts = excluded.pushkey_ts"
                f" RETURNING {_PUSHER_COLUMNS}",
                (
                    pusher.user_id, pusher.app_id, pusher.pushkey, pusher.kind,
                    pusher.app_display_name, pusher.device_display_name, pusher.profile_tag,
                    pusher.lang, dump_json(pusher.data), pusher.device_id, pusher.pushkey_ts,
                    start or 0,
                ),
            )
            assert row is not None
            return _pusher_from_row(row), removed

        return await self.db.run("set_pusher", txn_fn)

    async def delete_pusher(self, app_id: str, pushkey: str, user_id: str) -> bool:
        return bool(
            await self.db.execute(
                "delete_pusher",
                "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id = ?",
                (app_id, pushkey, user_id),
            )
        )

    async def advance_pusher(self, app_id: str, pushkey: str, user_id: str, push_position: int) -> bool:
        """Record that the pusher has sent up to `push_position`; False if it is gone."""
        return bool(
            await self.db.execute(
                "advance_pusher",
                "UPDATE pushers SET last_push_position = ? WHERE app_id = ? AND pushkey = ? AND user_id = ?",
                (push_position, app_id, pushkey, user_id),
            )
        )
