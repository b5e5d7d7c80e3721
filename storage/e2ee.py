"""End-to-end encryption data: device keys, one-time and fallback keys,
cross-signing keys and their signatures, the device_lists stream and the
to-device inbox.

Keys are stored as the JSON the client uploaded (canonical checks are the
service's job). Changes that other users' clients must hear of take a
position of the `device_lists` stream; queued to-device messages one of the
`to_device` stream. Transactions that take positions run at READ COMMITTED
(see `streams.py`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, dump_json, placeholders
from .streams import next_position_txn

JsonDict = dict[str, Any]



@dataclass(frozen=True)
class Signature:
    target_user_id: str
    target_key_id: str
    signer_user_id: str
    signer_key_id: str
    signature: str


class E2EStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ device keys

    @staticmethod
    async def get_device_keys_txn(txn: Transaction, user_id: str, device_id: str) -> JsonDict | None:
        raw = await txn.fetchval(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        )
        return json.loads(raw) if raw is not None else None

    @staticmethod
    async def set_device_keys_txn(txn: Transaction, user_id: str, device_id: str, keys: JsonDict, now: int) -> None:
        await txn.execute(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, ts = excluded.ts",
            (user_id, device_id, dump_json(keys), now),
        )

    async def query_devices(
        self, wanted: dict[str, Collection[str]]
    ) -> dict[str, dict[str, tuple[JsonDict | None, str | None]]]:
        """For each user (an empty collection meaning every device), the
        devices that exist: device_id -> (their keys or None, display name)."""
        found: dict[str, dict[str, tuple[JsonDict | None, str | None]]] = {u: {} for u in wanted}
        rows = await self.db.fetchall_in(
            "e2e_query_devices",
            "SELECT d.user_id, d.device_id, d.display_name, k.key_json FROM devices d"
            " LEFT JOIN e2e_device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id"
            " WHERE d.user_id IN ({})",
            wanted,
        )
        for user_id, device_id, display_name, key_json in rows:
            devices = wanted[user_id]
            if devices and device_id not in devices:
                continue
            found[user_id][device_id] = (json.loads(key_json) if key_json is not None else None, display_name)
        return found

    async def existing_users(self, user_ids: Sequence[str]) -> set[str]:
        rows = await self.db.fetchall_in("e2e_existing_users", "SELECT user_id FROM users WHERE user_id IN ({})", user_ids)
        return {r[0] for r in rows}

    # ------------------------------------------------------- one-time keys

    @staticmethod
    async def get_one_time_keys_txn(
        txn: Transaction, user_id: str, device_id: str, key_ids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Any]:
        """The stored keys of those (algorithm, key_id) that exist."""
        wanted = set(key_ids)
        found: dict[tuple[str, str], Any] = {}
        for chunk in batches(sorted({k for _, k in wanted})):
            rows = await txn.fetchall(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys"
                f" WHERE user_id = ? AND device_id = ? AND key_id IN ({placeholders(len(chunk))})",
                (user_id, device_id, *chunk),
            )
            for algorithm, key_id, key_json in rows:
                if (algorithm, key_id) in wanted:
                    found[(algorithm, key_id)] = json.loads(key_json)
        return found

    @staticmethod
    async def add_one_time_keys_txn(
        txn: Transaction, user_id: str, device_id: str, keys: Iterable[tuple[str, str, JsonDict]], now: int
    ) -> None:
        await txn.executemany(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, ts)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(user_id, device_id, alg, key_id, dump_json(key), now) for alg, key_id, key in keys],
        )

    @staticmethod
    async def key_counts_txn(txn: Transaction, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """The device's one-time key counts by algorithm and its unused fallback key algorithms."""
        rows = await txn.fetchall(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
            " GROUP BY algorithm"
            " UNION ALL SELECT algorithm, -1 FROM e2e_fallback_keys"
            " WHERE user_id = ? AND device_id = ? AND NOT used",
            (user_id, device_id, user_id, device_id),
        )
        counts = {alg: n for alg, n in rows if n >= 0}
        fallback = sorted(alg for alg, n in rows if n < 0)
        return counts, fallback

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        return await self.db.run("e2e_key_counts", self.key_counts_txn, user_id, device_id)

    async def claim_keys(self, wanted: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, JsonDict]]:
        """Claim one key for each (user, device, algorithm): a one-time key,
        removed as it is handed out, else the fallback key, marked used.
        Returns (user, device, "alg:key_id", key) for those that had one."""

        async def _fn(txn: Transaction) -> list[tuple[str, str, str, JsonDict]]:
            claimed = []
            for user_id, device_id, algorithm in wanted:
                # One statement picks and deletes, so two concurrent claims
                # never get the same key (the loser's row is gone, or locked
                # and skipped on PostgreSQL).
                lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgres" else ""
                row = await txn.fetchone(
                    "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " AND key_id = (SELECT key_id FROM e2e_one_time_keys"
                    " WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    f" ORDER BY key_id LIMIT 1{lock}) RETURNING key_id, key_json",
                    (user_id, device_id, algorithm, user_id, device_id, algorithm),
                )
                if row is None:
                    row = await txn.fetchone(
                        "UPDATE e2e_fallback_keys SET used = TRUE"
                        " WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                        " RETURNING key_id, key_json",
                        (user_id, device_id, algorithm),
                    )
                if row is not None:
                    claimed.append((user_id, device_id, f"{algorithm}:{row[0]}", json.loads(row[1])))
            return claimed

        return await self.db.run("e2e_claim_keys", _fn, read_committed=True)

    @staticmethod
    async def get_fallback_key_txn(
        txn: Transaction, user_id: str, device_id: str, algorithm: str
    ) -> tuple[str, Any] | None:
        """(key_id, key) of the device's fallback key of `algorithm`."""
        row = await txn.fetchone(
            "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?",
            (user_id, device_id, algorithm),
        )
        return (row[0], json.loads(row[1])) if row else None

    @staticmethod
    async def set_fallback_key_txn(
        txn: Transaction, user_id: str, device_id: str, algorithm: str, key_id: str, key: JsonDict
    ) -> None:
        await txn.execute(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
            " VALUES (?, ?, ?, ?, ?, FALSE) ON CONFLICT (user_id, device_id, algorithm)"
            " DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE",
            (user_id, device_id, algorithm, key_id, dump_json(key)),
        )

    # --------------------------------------------------------- cross-signing

    @staticmethod
    async def get_cross_signing_keys_txn(txn: Transaction, user_id: str) -> dict[str, JsonDict]:
        rows = await txn.fetchall(
            "SELECT keytype, key_json FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,)
        )
        return {keytype: json.loads(raw) for keytype, raw in rows}

    async def get_cross_signing_keys(self, user_ids: Sequence[str]) -> dict[str, dict[str, JsonDict]]:
        found: dict[str, dict[str, JsonDict]] = {}
        rows = await self.db.fetchall_in(
            "e2e_cross_signing_keys",
            "SELECT user_id, keytype, key_json FROM e2e_cross_signing_keys WHERE user_id IN ({})",
            user_ids,
        )
        for user_id, keytype, raw in rows:
            found.setdefault(user_id, {})[keytype] = json.loads(raw)
        return found

    @staticmethod
    async def set_cross_signing_key_txn(
        txn: Transaction, user_id: str, keytype: str, public_key: str, key: JsonDict, now: int
    ) -> None:
        await txn.execute(
            "INSERT INTO e2e_cross_signing_keys (user_id, keytype, public_key, key_json, ts)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, keytype) DO UPDATE SET"
            " public_key = excluded.public_key, key_json = excluded.key_json, ts = excluded.ts",
            (user_id, keytype, public_key, dump_json(key), now),
        )

    @staticmethod
    async def add_signatures_txn(txn: Transaction, signatures: Sequence[Signature]) -> None:
        await txn.executemany(
            "INSERT INTO e2e_signatures"
            " (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)"
            " DO UPDATE SET signature = excluded.signature",
            [
                (s.target_user_id, s.target_key_id, s.signer_user_id, s.signer_key_id, s.signature)
                for s in signatures
            ],
        )

    async def get_signatures(self, target_user_ids: Sequence[str]) -> list[Signature]:
        """Every uploaded signature on keys of these users."""
        rows = await self.db.fetchall_in(
            "e2e_signatures",
            "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature"
            " FROM e2e_signatures WHERE target_user_id IN ({})",
            target_user_ids,
        )
        return [Signature(*row) for row in rows]

    # ---------------------------------------------------------- device lists

    @staticmethod
    async def device_list_changed_txn(
        txn: Transaction, user_ids: Collection[str], targeted: Collection[tuple[str, str]] = ()
    ) -> int:
        """File a change of these users' device lists, for everyone sharing a
        room with them, and (user, to_user) changes only `to_user` is to hear
        of; returns the position."""
        position = await next_position_txn(txn, "device_lists")
        await txn.executemany(
            "INSERT INTO device_lists_stream (stream_id, user_id, to_user) VALUES (?, ?, ?)",
            [(position, user_id, None) for user_id in sorted(set(user_ids))]
            + [(position, user_id, to_user) for user_id, to_user in sorted(set(targeted))],
        )
        return position

    async def device_list_changed(self, user_ids: Collection[str]) -> int:
        return await self.db.run(
            "device_list_changed", self.device_list_changed_txn, user_ids, read_committed=True
        )

    async def users_with_changed_devices(self, viewer: str, from_pos: int, to_pos: int) -> tuple[set[str], set[str]]:
        """Users whose device lists changed in (from_pos, to_pos]: those
        changed for everyone, and those changed for `viewer` alone. An
        indexed range read."""
        if from_pos >= to_pos:
            return set(), set()
        rows = await self.db.fetchall(
            "device_lists_changes",
            "SELECT DISTINCT user_id, to_user FROM device_lists_stream"
            " WHERE stream_id > ? AND stream_id <= ? AND (to_user IS NULL OR to_user = ?)",
            (from_pos, to_pos, viewer),
        )
        return {u for u, to in rows if to is None}, {u for u, to in rows if to is not None}

    async def shared_with(self, user_id: str, candidates: Collection[str]) -> set[str]:
        """Those of `candidates` who share a joined room with `user_id`."""
        rows = await self.db.fetchall_in(
            "e2e_shared_with",
            "SELECT DISTINCT m.user_id FROM room_memberships m JOIN room_memberships mine"
            " ON mine.room_id = m.room_id AND mine.user_id = ? AND mine.membership = 'join'"
            " WHERE m.membership = 'join' AND m.user_id IN ({})",
            candidates,
            user_id,
        )
        return {r[0] for r in rows}

    async def member_changes(self, from_stream: int, to_stream: int) -> list[tuple[str, str, str]]:
        """(room, user, current membership) of member events in (from, to]: a
        range read of the events stream."""
        if from_stream >= to_stream:
            return []
        return await self.db.fetchall(
            "e2e_member_changes",
            "SELECT DISTINCT e.room_id, e.state_key, m.membership FROM events e"
            " JOIN room_memberships m ON m.room_id = e.room_id AND m.user_id = e.state_key"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ? AND e.type = 'm.room.member'",
            (from_stream, to_stream),
        )

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        rows = await self.db.fetchall_in(
            "e2e_joined_members",
            "SELECT DISTINCT user_id FROM room_memberships WHERE membership = 'join' AND room_id IN ({})",
            room_ids,
        )
        return {r[0] for r in rows}

    @staticmethod
    async def delete_devices_txn(txn: Transaction, user_id: str, device_ids: Sequence[str]) -> None:
        """Everything E2EE of these devices: keys, signatures on them, queued messages."""
        rows = [(user_id, d) for d in device_ids]
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "device_inbox", "device_inbox_txns"):
            await txn.executemany(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", rows)
        await txn.executemany(
            "DELETE FROM e2e_signatures WHERE target_user_id = ? AND target_key_id = ?", rows
        )

    # -------------------------------------------------------------- to-device

    async def queue_to_device(
        self,
        sender: str,
        sender_device: str,
        event_type: str,
        txn_id: str,
        messages: Sequence[tuple[str, str, JsonDict]],
        now: int,
    ) -> int | None:
        """Queue (user, device, message) rows under one to_device position,
        once per transaction ID. Returns the position, or None when the
        transaction ID was used before (nothing is queued again)."""

        async def _fn(txn: Transaction) -> int | None:
            fresh = await txn.execute(
                "INSERT INTO device_inbox_txns (user_id, device_id, event_type, txn_id, ts)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sender, sender_device, event_type, txn_id, now),
            )
            if not fresh:
                return None
            if not messages:
                return None
            position = await next_position_txn(txn, "to_device")
            await txn.executemany(
                "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json) VALUES (?, ?, ?, ?)",
                [(user_id, device_id, position, dump_json(message)) for user_id, device_id, message in messages],
            )
            return position

        return await self.db.run("queue_to_device", _fn, read_committed=True)

    async def to_device_messages(
        self, user_id: str, device_id: str, acknowledged: int, upto: int, limit: int
    ) -> list[tuple[int, JsonDict]]:
        """Delete the device's messages up to `acknowledged` (the client synced
        past them) and return the next ones up to `upto`, oldest first."""

        async def _fn(txn: Transaction) -> list[tuple[int, JsonDict]]:
            if acknowledged > 0:
                await self._delete_to_device_txn(txn, user_id, device_id, acknowledged)
            rows = await txn.fetchall(
                "SELECT stream_id, message_json FROM device_inbox"
                " WHERE user_id = ? AND device_id = ? AND stream_id > ? AND stream_id <= ?"
                " ORDER BY stream_id LIMIT ?",
                (user_id, device_id, acknowledged, upto, limit),
            )
            return [(stream_id, json.loads(raw)) for stream_id, raw in rows]

        return await self.db.run("to_device_messages", _fn)

    @staticmethod
    async def _delete_to_device_txn(txn: Transaction, user_id: str, device_id: str, upto: int) -> None:
        await txn.execute(
            "DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
            (user_id, device_id, upto),
        )

    async def delete_to_device(self, user_id: str, device_id: str, upto: int) -> None:
        """Delete the device's messages up to `upto` (the client received them)."""
        await self.db.run("delete_to_device", self._delete_to_device_txn, user_id, device_id, upto)
