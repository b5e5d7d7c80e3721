"""The user directory: local users found by their user ID and display name.

The word index over `profiles` is maintained by the database (see
schema/0013_user_directory*.sql), so it is current the moment a profile
is written, by whichever code writes it. Who may be found is decided
here, per query, from tables that are current too: `users` (deactivated
and support users are never listed) and `room_memberships` (who shares a
room with the searcher; who is joined to a public room). Only the users
whose names match are checked against memberships, never every user.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.search.query import SearchQuery

from .engines import Database
from .search import tsquery_sql


@dataclass(frozen=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _public_room_value(self, key: str) -> str:
        """SQL reading `content.<key>` of the state event `e`."""
        if self.db.dialect == "postgres":
            return f"((e.json::jsonb) -> 'content' ->> '{key}')"
        return f"json_extract(e.json, '$.content.{key}')"

    async def search(
        self, searcher: str, query: SearchQuery, limit: int, *, search_all_users: bool
    ) -> list[DirectoryEntry]:
        """Up to `limit` users whose localpart or display name words start
        with every word of `query`, best match first."""
        if query.is_empty:
            return []
        params: list[object] = []
        if self.db.dialect == "postgres":
            tsquery = tsquery_sql("simple", query)
            sql = (
                "SELECT p.user_id, p.displayname, p.avatar_url,"
                f" ts_rank_cd(p.directory_vector, {tsquery}) AS score"
                " FROM profiles p JOIN users u ON u.user_id = p.user_id"
                f" WHERE p.directory_vector @@ {tsquery}"
            )
        else:
            sql = (
                "SELECT p.user_id, p.displayname, p.avatar_url,"
                " -bm25(user_directory_search) AS score"
                " FROM user_directory_search"
                " JOIN user_directory d ON d.id = user_directory_search.rowid"
                " JOIN profiles p ON p.user_id = d.user_id JOIN users u ON u.user_id = p.user_id"
                " WHERE user_directory_search MATCH ?"
            )
            params.append(query.to_fts5())
        sql += " AND NOT u.deactivated AND (u.user_type IS NULL OR u.user_type <> 'support')"
        if not search_all_users:
            join_rule = self._public_room_value("join_rule")
            visibility = self._public_room_value("history_visibility")
            sql += (
                " AND (p.user_id IN ("
                "  SELECT theirs.user_id FROM room_memberships mine"
                "  JOIN room_memberships theirs ON theirs.room_id = mine.room_id"
                "  WHERE mine.user_id = ? AND mine.membership = 'join'"
                "  AND theirs.membership = 'join')"
                " OR EXISTS ("
                "  SELECT 1 FROM room_memberships m"
                "  JOIN current_state_events cs ON cs.room_id = m.room_id AND cs.state_key = ''"
                "  JOIN events e ON e.event_id = cs.event_id"
                "  WHERE m.user_id = p.user_id AND m.membership = 'join' AND ("
                f"   (cs.type = 'm.room.join_rules' AND {join_rule} = 'public')"
                f"   OR (cs.type = 'm.room.history_visibility' AND {visibility} = 'world_readable'))))"
            )
            params.append(searcher)
        sql += (
            " ORDER BY score DESC, p.displayname IS NULL, p.avatar_url IS NULL, p.user_id LIMIT ?"
        )
        rows = await self.db.fetchall("search_user_directory", sql, (*params, limit))
        return [DirectoryEntry(r[0], r[1], r[2]) for r in rows]
