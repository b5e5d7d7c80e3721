"""What the room and media admin API reads and writes: the room list and
details, blocked rooms, room deletions and purges, and media administration.

The room list is one query: the rooms, their current state's name, alias,
join rules etc. pivoted out of the events' JSON, and member and state
counts, each aggregated once over all rooms and joined in. Reading fields of
the event JSON differs between the engines (SQLite `json_extract`,
PostgreSQL `jsonb`); PostgreSQL cannot read JSON holding `\\u0000` as text,
so an event containing one reads as having none of these fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .engines import Database, Transaction, batches, placeholders
from .events import EventStore
from .search import SearchStore

# The largest OFFSET/LIMIT passed on (an INTEGER on every engine).
MAX_PAGE_VALUE = 2**31 - 1
# Rows deleted per transaction when a room is purged.
PURGE_BATCH = 500

# order_by of the room list -> (what to sort by, whether dir=f sorts ascending).
ROOM_ORDERS: dict[str, tuple[str, bool]] = {
    "name": ("s.name", True),
    "alphabetical": ("s.name", True),
    "canonical_alias": ("s.canonical_alias", True),
    "joined_members": ("COALESCE(m.joined, 0)", False),
    "size": ("COALESCE(m.joined, 0)", False),
    "joined_local_members": ("COALESCE(m.joined_local, 0)", False),
    "version": ("r.room_version", False),
    "creator": ("r.creator", True),
    "encryption": ("s.encryption", True),
    "federatable": ("CASE WHEN s.not_federatable = 0 THEN 0 ELSE 1 END", True),
    "public": ("r.is_public", True),
    "join_rules": ("s.join_rules", True),
    "guest_access": ("s.guest_access", True),
    "history_visibility": ("s.history_visibility", True),
    "state_events": ("COALESCE(c.n, 0)", False),
}

# order_by of a user's media list -> column.
MEDIA_ORDERS = {
    "media_id": "media_id",
    "upload_name": "upload_name",
    "created_ts": "created_ts",
    "last_access_ts": "created_ts",  # not tracked: the creation time stands in
    "media_length": "media_length",
    "media_type": "content_type",
    "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "media_id",  # nothing is protected from quarantine
}

# (state event type, field of its content, result column) pivoted out of current state.
_STATE_FIELDS = (
    ("m.room.name", "name", "name"),
    ("m.room.canonical_alias", "alias", "canonical_alias"),
    ("m.room.encryption", "algorithm", "encryption"),
    ("m.room.join_rules", "join_rule", "join_rules"),
    ("m.room.guest_access", "guest_access", "guest_access"),
    ("m.room.history_visibility", "history_visibility", "history_visibility"),
    ("m.room.topic", "topic", "topic"),
    ("m.room.avatar", "url", "avatar"),
    ("m.room.create", "type", "room_type"),
)
_STATE_TYPES = tuple(dict.fromkeys(t for t, _f, _c in _STATE_FIELDS))
# Fields a redaction keeps: the rest read as absent once their event is redacted.
_KEPT_BY_REDACTION = ("m.room.create", "m.room.join_rules", "m.room.history_visibility")

ROOM_COLUMNS = (
    "room_id", "version", "creator", "public", "name", "canonical_alias", "encryption",
    "join_rules", "guest_access", "history_visibility", "topic", "avatar", "room_type",
    "federatable", "joined_members", "joined_local_members", "state_events",
)


def _content_text(dialect: str, field: str) -> str:
    """SQL for `content.<field>` of event `e` if it is a string, else NULL."""
    if dialect == "postgres":
        path = f"'{{content,{field}}}'"
        return (
            "CASE WHEN strpos(e.json, '\\u0000') = 0"
            f" AND jsonb_typeof(e.json::jsonb #> {path}) = 'string'"
            f" THEN e.json::jsonb #>> {path} END"
        )
    path = f"'$.\"content\".\"{field}\"'"
    return f"CASE WHEN json_type(e.json, {path}) = 'text' THEN json_extract(e.json, {path}) END"


def _federate_false(dialect: str) -> str:
    """SQL true when the create event `e` says `"m.federate": false`."""
    if dialect == "postgres":
        return (
            "strpos(e.json, '\\u0000') = 0"
            " AND (e.json::jsonb #> '{content,m.federate}') = 'false'::jsonb"
        )
    return "json_type(e.json, '$.\"content\".\"m.federate\"') = 'false'"


def _rooms_from(dialect: str, server_name: str, room_id: str | None) -> tuple[str, list[Any]]:
    """The FROM clause of room rows (aliases r, s and the counts), and its parameters.

    With `room_id`, every aggregate reads that room only.
    """
    pivots = []
    for event_type, field, column in _STATE_FIELDS:
        kept = "" if event_type in _KEPT_BY_REDACTION else " AND e.redacted_by IS NULL"
        pivots.append(
            f"MAX(CASE WHEN cs.type = '{event_type}'{kept} THEN {_content_text(dialect, field)} END)"
            f" AS {column}"
        )
    pivots.append(
        f"MIN(CASE WHEN cs.type = 'm.room.create' AND {_federate_false(dialect)} THEN 0 END)"
        " AS not_federatable"
    )
    one_room = " AND cs.room_id = ?" if room_id is not None else ""
    one_member_room = " AND room_id = ?" if room_id is not None else ""
    one_state_room = " WHERE room_id = ?" if room_id is not None else ""
    sql = (
        " FROM rooms r"
        " LEFT JOIN (SELECT cs.room_id, " + ", ".join(pivots) +
        " FROM current_state_events cs JOIN events e ON e.event_id = cs.event_id"
        f" WHERE cs.state_key = '' AND cs.type IN ({placeholders(len(_STATE_TYPES))}){one_room}"
        " GROUP BY cs.room_id) s ON s.room_id = r.room_id"
        " LEFT JOIN (SELECT room_id, COUNT(*) AS joined,"
        " SUM(CASE WHEN SUBSTR(user_id, LENGTH(user_id) - LENGTH(?) + 1) = ? THEN 1 ELSE 0 END)"
        " AS joined_local"
        f" FROM room_memberships WHERE membership = 'join'{one_member_room}"
        " GROUP BY room_id) m ON m.room_id = r.room_id"
        " LEFT JOIN (SELECT room_id, COUNT(*) AS n FROM current_state_events"
        f"{one_state_room} GROUP BY room_id) c ON c.room_id = r.room_id"
    )
    suffix = ":" + server_name
    params: list[Any] = [*_STATE_TYPES]
    if room_id is not None:
        params.append(room_id)
    params += [suffix, suffix]
    if room_id is not None:
        params += [room_id, room_id]
    return sql, params


_ROOM_SELECT = (
    "SELECT r.room_id, r.room_version, r.creator, r.is_public, s.name, s.canonical_alias,"
    " s.encryption, s.join_rules, s.guest_access, s.history_visibility, s.topic, s.avatar,"
    " s.room_type, CASE WHEN s.not_federatable = 0 THEN 0 ELSE 1 END AS federatable,"
    " COALESCE(m.joined, 0) AS joined_members, COALESCE(m.joined_local, 0) AS joined_local_members,"
    " COALESCE(c.n, 0) AS state_events"
)


def _room_row(row: Sequence[Any]) -> dict[str, Any]:
    entry = dict(zip(ROOM_COLUMNS, row))
    entry["public"] = bool(entry["public"])
    entry["federatable"] = bool(entry["federatable"])
    for key in ("joined_members", "joined_local_members", "state_events"):
        entry[key] = int(entry[key])
    return entry


@dataclass(frozen=True)
class RoomDeletion:
    delete_id: str
    room_id: str
    status: str
    error: str | None
    result: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "delete_id": self.delete_id,
            "room_id": self.room_id,
            "status": self.status,
            "shutdown_room": self.result,
        }
        if self.error is not None:
            body["error"] = self.error
        return body


_MEDIA_COLUMNS = (
    "media_id, user_id, created_ts, upload_ts, content_type, upload_name, media_length,"
    " sha256, quarantined_by"
)


@dataclass(frozen=True)
class MediaInfo:
    media_id: str
    user_id: str
    created_ts: int
    upload_ts: int | None
    content_type: str | None
    upload_name: str | None
    media_length: int | None
    sha256: str | None
    quarantined_by: str | None

    def to_json(self) -> dict[str, Any]:
        """As Synapse lists a user's media."""
        return {
            "media_id": self.media_id,
            "created_ts": self.created_ts,
            "last_access_ts": None,
            "media_length": self.media_length,
            "media_type": self.content_type,
            "upload_name": self.upload_name,
            "quarantined_by": self.quarantined_by,
            "safe_from_quarantine": False,
        }


class AdminRoomStore:
    def __init__(self, db: Database, events: EventStore, search: SearchStore) -> None:
        self.db = db
        self.events = events
        self.search = search

    # ------------------------------------------------------------ the list

    async def list_rooms(
        self,
        server_name: str,
        *,
        order_by: str,
        ascending: bool,
        offset: int,
        limit: int,
        search_term: str | None = None,
        public: bool | None = None,
        empty: bool | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of rooms (see ROOM_COLUMNS) and how many rooms match in all."""
        from_sql, params = _rooms_from(self.db.dialect, server_name, None)
        conditions: list[str] = []
        if search_term:
            find = "strpos" if self.db.dialect == "postgres" else "instr"
            conditions.append(
                f"({find}(LOWER(s.name), ?) > 0 OR {find}(LOWER(s.canonical_alias), ?) > 0"
                f" OR {find}(r.room_id, ?) > 0)"
            )
            params += [search_term.lower(), search_term.lower(), search_term]
        if public is not None:
            conditions.append("r.is_public = ?")
            params.append(public)
        if empty is not None:
            conditions.append("COALESCE(m.joined, 0) = 0" if empty else "COALESCE(m.joined, 0) > 0")
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        column, natural = ROOM_ORDERS[order_by]
        direction = "ASC" if natural == ascending else "DESC"
        order = (
            f" ORDER BY CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, {column} {direction},"
            " r.room_id ASC"
        )

        async def read(txn: Transaction) -> tuple[list[dict[str, Any]], int]:
            total = await txn.fetchval(f"SELECT COUNT(*){from_sql}{where}", params)
            rows = await txn.fetchall(
                f"{_ROOM_SELECT}{from_sql}{where}{order} LIMIT ? OFFSET ?",
                (*params, min(limit, MAX_PAGE_VALUE), min(offset, MAX_PAGE_VALUE)),
            )
            return [_room_row(r) for r in rows], int(total or 0)

        return await self.db.run("admin_list_rooms", read)

    async def room_details(self, server_name: str, room_id: str) -> dict[str, Any] | None:
        """One room as the list shows it, with its local devices and whether it is forgotten."""
        from_sql, params = _rooms_from(self.db.dialect, server_name, room_id)
        suffix = ":" + server_name

        async def read(txn: Transaction) -> dict[str, Any] | None:
            row = await txn.fetchone(f"{_ROOM_SELECT}{from_sql} WHERE r.room_id = ?", (*params, room_id))
            if row is None:
                return None
            entry = _room_row(row)
            entry["joined_local_devices"] = int(
                await txn.fetchval(
                    "SELECT COUNT(*) FROM room_memberships m JOIN devices d ON d.user_id = m.user_id"
                    " WHERE m.room_id = ? AND m.membership = 'join'",
                    (room_id,),
                )
                or 0
            )
            remembered = await txn.fetchone(
                "SELECT 1 FROM room_memberships WHERE room_id = ? AND NOT forgotten"
                " AND SUBSTR(user_id, LENGTH(user_id) - LENGTH(?) + 1) = ? LIMIT 1",
                (room_id, suffix, suffix),
            )
            entry["forgotten"] = remembered is None
            return entry

        return await self.db.run("admin_room_details", read)

    # ------------------------------------------------------------ blocking

    async def block_room(self, room_id: str, user_id: str, now: int) -> None:
        await self.db.execute(
            "block_room",
            "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            (room_id, user_id, now),
        )

    async def unblock_room(self, room_id: str) -> None:
        await self.db.execute("unblock_room", "DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,))

    async def room_blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None if it is not blocked."""
        return await self.db.fetchval(
            "room_blocked_by", "SELECT user_id FROM blocked_rooms WHERE room_id = ?", (room_id,)
        )

    # ------------------------------------------------------------- aliases

    async def move_aliases(self, room_id: str, new_room_id: str) -> list[str]:
        """Point the room's aliases at another room; returns them."""

        async def move(txn: Transaction) -> list[str]:
            rows = await txn.fetchall(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias", (room_id,)
            )
            await txn.execute(
                "UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, room_id)
            )
            return [r[0] for r in rows]

        return await self.db.run("move_room_aliases", move)

    async def delete_aliases(self, room_id: str) -> None:
        await self.db.execute(
            "delete_room_aliases", "DELETE FROM room_aliases WHERE room_id = ?", (room_id,)
        )

    # ------------------------------------------------------------- deletions

    async def add_deletion(self, deletion: RoomDeletion, now: int) -> None:
        await self.db.execute(
            "add_room_deletion",
            "INSERT INTO room_deletions (delete_id, room_id, status, error, result, started_ts,"
            " updated_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                deletion.delete_id, deletion.room_id, deletion.status, deletion.error,
                json.dumps(deletion.result), now, now,
            ),
        )

    async def update_deletion(self, deletion: RoomDeletion, now: int) -> None:
        await self.db.execute(
            "update_room_deletion",
            "UPDATE room_deletions SET status = ?, error = ?, result = ?, updated_ts = ?"
            " WHERE delete_id = ?",
            (deletion.status, deletion.error, json.dumps(deletion.result), now, deletion.delete_id),
        )

    async def get_deletion(self, delete_id: str, since: int) -> RoomDeletion | None:
        """A deletion still running, or finished after `since`."""
        row = await self.db.fetchone(
            "get_room_deletion",
            "SELECT delete_id, room_id, status, error, result FROM room_deletions"
            " WHERE delete_id = ? AND (status IN ('scheduled', 'active') OR updated_ts > ?)",
            (delete_id, since),
        )
        return _deletion(row) if row else None

    async def deletions_for_room(self, room_id: str, since: int) -> list[RoomDeletion]:
        rows = await self.db.fetchall(
            "room_deletions_for_room",
            "SELECT delete_id, room_id, status, error, result FROM room_deletions"
            " WHERE room_id = ? AND (status IN ('scheduled', 'active') OR updated_ts > ?)"
            " ORDER BY started_ts, delete_id",
            (room_id, since),
        )
        return [_deletion(r) for r in rows]

    async def prune_deletions(self, before: int) -> None:
        await self.db.execute(
            "prune_room_deletions",
            "DELETE FROM room_deletions WHERE updated_ts < ? AND status IN ('complete', 'failed')",
            (before,),
        )

    # --------------------------------------------------------------- purging

    async def purge_room(self, room_id: str) -> None:
        """Delete every row of the room but its block and its deletion records.

        First, in one transaction holding the room's write lock, what makes
        the room current for anyone (current state, memberships, forward
        extremities, aliases, receipts, typing, push actions, room account
        data, thread summaries), so no member's /sync or write sees a
        half-purged room; then the events and state groups, a batch per
        transaction; the `rooms` row last, so an interrupted purge can be
        run again.
        """

        async def detach(txn: Transaction) -> None:
            await EventStore.lock_room_txn(txn, self.db.dialect, room_id)
            for table in (
                "current_state_events", "room_memberships", "event_forward_extremities",
                "room_aliases", "receipts", "typing", "event_push_actions", "account_data",
                "hierarchy_sessions", "threads", "thread_participants",
            ):
                await txn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))

        await self.db.run("purge_room_detach", detach, read_committed=True)

        async def purge_events(txn: Transaction) -> int:
            rows = await txn.fetchall(
                "SELECT event_id FROM events WHERE room_id = ? ORDER BY stream_ordering LIMIT ?",
                (room_id, PURGE_BATCH),
            )
            ids = [r[0] for r in rows]
            if not ids:
                return 0
            for event_id in ids:
                await self.search.unindex_event_txn(txn, event_id)
            marks = placeholders(len(ids))
            for table in ("event_edges", "event_auth", "events"):
                await txn.execute(f"DELETE FROM {table} WHERE event_id IN ({marks})", ids)

            def uncache() -> None:
                for event_id in ids:
                    self.events.invalidate_event(event_id)

            txn.call_after(uncache)
            return len(ids)

        while await self.db.run("purge_room_events", purge_events):
            pass

        async def purge_state_groups(txn: Transaction) -> int:
            rows = await txn.fetchall(
                "SELECT id FROM state_groups WHERE room_id = ? LIMIT ?", (room_id, PURGE_BATCH)
            )
            ids = [r[0] for r in rows]
            if ids:
                marks = placeholders(len(ids))
                await txn.execute(f"DELETE FROM state_group_entries WHERE state_group IN ({marks})", ids)
                await txn.execute(f"DELETE FROM state_groups WHERE id IN ({marks})", ids)
            return len(ids)

        while await self.db.run("purge_room_state_groups", purge_state_groups):
            pass
        await self.db.execute("purge_room_row", "DELETE FROM rooms WHERE room_id = ?", (room_id,))
        self.events.uncache_room(room_id)


def _deletion(row: Sequence[Any]) -> RoomDeletion:
    delete_id, room_id, status, error, result = row
    return RoomDeletion(delete_id, room_id, status, error, json.loads(result))


class AdminMediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_media(self, media_id: str) -> MediaInfo | None:
        row = await self.db.fetchone(
            "admin_get_media", f"SELECT {_MEDIA_COLUMNS} FROM local_media WHERE media_id = ?", (media_id,)
        )
        return MediaInfo(*row) if row else None

    async def user_media(
        self, user_id: str, *, order_by: str, ascending: bool, offset: int, limit: int
    ) -> tuple[list[MediaInfo], int]:
        """A page of the user's media, and how many they have."""
        column = MEDIA_ORDERS[order_by]
        direction = "ASC" if ascending else "DESC"

        async def read(txn: Transaction) -> tuple[list[MediaInfo], int]:
            total = await txn.fetchval("SELECT COUNT(*) FROM local_media WHERE user_id = ?", (user_id,))
            rows = await txn.fetchall(
                f"SELECT {_MEDIA_COLUMNS} FROM local_media WHERE user_id = ?"
                f" ORDER BY CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, {column} {direction},"
                " media_id ASC LIMIT ? OFFSET ?",
                (user_id, min(limit, MAX_PAGE_VALUE), min(offset, MAX_PAGE_VALUE)),
            )
            return [MediaInfo(*r) for r in rows], int(total or 0)

        return await self.db.run("admin_user_media", read)

    async def set_quarantined_by(self, media_id: str, user_id: str | None) -> bool:
        """Quarantine (`user_id`: who) or release (None) the media; False if there is none.

        Releasing releases every media ID with the same content, which the
        quarantine of any of them covers.
        """

        async def update(txn: Transaction) -> bool:
            sha256 = await txn.fetchone(
                "SELECT sha256 FROM local_media WHERE media_id = ?", (media_id,)
            )
            if sha256 is None:
                return False
            if user_id is not None:
                await txn.execute(
                    "UPDATE local_media SET quarantined_by = ? WHERE media_id = ?", (user_id, media_id)
                )
            else:
                await txn.execute(
                    "UPDATE local_media SET quarantined_by = NULL WHERE media_id = ?"
                    " OR (sha256 IS NOT NULL AND sha256 = ?)",
                    (media_id, sha256[0]),
                )
            return True

        return await self.db.run("set_media_quarantine", update)

    async def is_quarantined(self, media_id: str, sha256: str | None) -> bool:
        """Whether the media, or other media with the same content, is quarantined."""
        row = await self.db.fetchone(
            "media_quarantined",
            "SELECT 1 FROM local_media WHERE quarantined_by IS NOT NULL"
            " AND (media_id = ? OR sha256 = ?) LIMIT 1",
            (media_id, sha256),
        )
        return row is not None

    async def delete_media(self, media_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete media IDs and the thumbnails of content no media ID has any more.

        Returns the IDs deleted, and the content files (sha256s) no row
        refers to any more, for the caller to remove from disk.
        """

        async def delete(txn: Transaction) -> tuple[list[str], list[str]]:
            deleted: list[str] = []
            shas: set[str] = set()
            for batch in batches(list(media_ids)):
                marks = placeholders(len(batch))
                rows = await txn.fetchall(
                    f"SELECT media_id, sha256 FROM local_media WHERE media_id IN ({marks})", batch
                )
                await txn.execute(f"DELETE FROM local_media WHERE media_id IN ({marks})", batch)
                deleted += [r[0] for r in rows]
                shas |= {r[1] for r in rows if r[1] is not None}
            orphans = [s for s in sorted(shas) if not await _sha_used_as_media(txn, s)]
            candidates = set(orphans)
            for batch in batches(orphans):
                marks = placeholders(len(batch))
                rows = await txn.fetchall(
                    f"SELECT thumbnail_sha256 FROM media_thumbnails WHERE sha256 IN ({marks})", batch
                )
                candidates |= {r[0] for r in rows}
                await txn.execute(f"DELETE FROM media_thumbnails WHERE sha256 IN ({marks})", batch)
            unused = [
                s for s in sorted(candidates)
                if not await _sha_used_as_media(txn, s)
                and await txn.fetchone(
                    "SELECT 1 FROM media_thumbnails WHERE thumbnail_sha256 = ? LIMIT 1", (s,)
                ) is None
            ]
            order = {media_id: i for i, media_id in enumerate(media_ids)}
            return sorted(deleted, key=order.__getitem__), unused

        return await self.db.run("admin_delete_media", delete)


async def _sha_used_as_media(txn: Transaction, sha256: str) -> bool:
    return await txn.fetchone("SELECT 1 FROM local_media WHERE sha256 = ? LIMIT 1", (sha256,)) is not None
