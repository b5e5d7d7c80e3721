"""A bridge's small persistent state, in one SQLite file.

- the homeserver transactions already handled (they are retried verbatim);
- the hook messages to post (an outbox: a message accepted is posted once,
  even across a restart of the bridge or an outage of the homeserver);
- which earlier message a key (an alert group, an alert) refers to;
- the ghost profiles already set, and the tasks already filed.

The bridge is one process and every statement here is a few rows, so the
calls are plain synchronous sqlite3 on the event loop's thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The homeserver retries a transaction for minutes, not weeks.
KEEP_MS = 7 * 24 * 3_600_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS as_transactions (
    txn_id TEXT PRIMARY KEY,
    received_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL UNIQUE,
    hook TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    event_id TEXT,
    error TEXT,
    created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message_keys (
    key TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT PRIMARY KEY,
    profile TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    event_id TEXT NOT NULL,
    task_hook TEXT NOT NULL,
    link TEXT NOT NULL,
    PRIMARY KEY (event_id, task_hook)
);
"""


@dataclass
class Delivery:
    delivery_id: int
    txn_id: str
    hook: str
    message: dict[str, Any]


class State:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------- homeserver transactions

    def first_seen(self, txn_id: str) -> bool:
        """Record a transaction ID; False if it was handled before."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO as_transactions (txn_id, received_ts) VALUES (?, ?)",
            (txn_id, int(time.time() * 1000)),
        )
        return cur.rowcount == 1

    def prune(self, keep_ms: int = KEEP_MS) -> None:
        """Forget handled transactions and finished deliveries older than `keep_ms`."""
        cutoff = int(time.time() * 1000) - keep_ms
        self.db.execute("DELETE FROM as_transactions WHERE received_ts < ?", (cutoff,))
        self.db.execute("DELETE FROM outbox WHERE status != 'pending' AND created_ts < ?", (cutoff,))

    # ---------------------------------------------------------------- outbox

    def enqueue(self, hook: str, message: dict[str, Any]) -> Delivery:
        """Store a message to post; its transaction ID is fixed here, once."""
        txn_id = "hook-" + uuid.uuid4().hex
        cur = self.db.execute(
            "INSERT INTO outbox (txn_id, hook, message, created_ts) VALUES (?, ?, ?, ?)",
            (txn_id, hook, json.dumps(message), int(time.time() * 1000)),
        )
        return Delivery(int(cur.lastrowid or 0), txn_id, hook, message)

    def next_pending(self) -> Delivery | None:
        row = self.db.execute(
            "SELECT delivery_id, txn_id, hook, message FROM outbox WHERE status = 'pending'"
            " ORDER BY delivery_id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return Delivery(row[0], row[1], row[2], json.loads(row[3]))

    def delivered(self, delivery_id: int, event_id: str) -> None:
        self.db.execute(
            "UPDATE outbox SET status = 'sent', event_id = ? WHERE delivery_id = ?", (event_id, delivery_id)
        )

    def failed(self, delivery_id: int, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET status = 'failed', error = ? WHERE delivery_id = ?", (error, delivery_id)
        )

    def outcome(self, delivery_id: int) -> tuple[str, str | None, str | None]:
        """(status, event_id, error) of a delivery."""
        row = self.db.execute(
            "SELECT status, event_id, error FROM outbox WHERE delivery_id = ?", (delivery_id,)
        ).fetchone()
        return row[0], row[1], row[2]

    # ---------------------------------------------------------- message keys

    def message_for(self, keys: list[str], room_id: str) -> str | None:
        """The event remembered under the first of `keys` that has one in the room."""
        for key in keys:
            row = self.db.execute(
                "SELECT event_id FROM message_keys WHERE key = ? AND room_id = ?", (key, room_id)
            ).fetchone()
            if row is not None:
                return row[0]
        return None

    def remember(self, keys: list[str], forget: list[str], room_id: str, event_id: str) -> None:
        with self.db:
            self.db.execute("BEGIN")
            for key in forget:
                self.db.execute("DELETE FROM message_keys WHERE key = ?", (key,))
            for key in keys:
                if key not in forget:
                    self.db.execute(
                        "INSERT OR IGNORE INTO message_keys (key, room_id, event_id) VALUES (?, ?, ?)",
                        (key, room_id, event_id),
                    )

    # -------------------------------------------------------------- profiles

    def profile_is(self, user_id: str, profile: dict[str, Any]) -> bool:
        row = self.db.execute("SELECT profile FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        return row is not None and json.loads(row[0]) == profile

    def set_profile(self, user_id: str, profile: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO profiles (user_id, profile) VALUES (?, ?)", (user_id, json.dumps(profile))
        )

    # ----------------------------------------------------------------- tasks

    def task_link(self, event_id: str, task_hook: str) -> str | None:
        row = self.db.execute(
            "SELECT link FROM tasks WHERE event_id = ? AND task_hook = ?", (event_id, task_hook)
        ).fetchone()
        return row[0] if row else None

    def add_task(self, event_id: str, task_hook: str, link: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO tasks (event_id, task_hook, link) VALUES (?, ?, ?)", (event_id, task_hook, link)
        )
