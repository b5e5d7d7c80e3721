"""The user directory (spec: User directory): finding people to talk to.

A company wants every colleague findable, so by default every local user
is (`user_directory.search_all_users: true`, unlike Synapse's default).
With it off, the spec's minimum applies: users who share a room with the
searcher and users joined to public rooms (public join rule or
world-readable history). Deactivated users are never listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage import Storage
from storage.user_directory import DirectoryEntry

from .query import all_words_query

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True)
class DirectoryResults:
    results: list[DirectoryEntry]
    limited: bool


class UserDirectory:
    def __init__(self, storage: Storage, *, enabled: bool, search_all_users: bool) -> None:
        self.store = storage.user_directory
        self.enabled = enabled
        self.search_all_users = search_all_users

    async def search(self, searcher: str, term: str, limit: int) -> DirectoryResults:
        """Users whose localpart or display name words start with each word of `term`."""
        if not self.enabled:
            return DirectoryResults([], False)
        # A full user ID is looked for by its localpart: the server name is in every ID.
        if term.startswith("@") and ":" in term:
            term = term[1:].partition(":")[0]
        found = await self.store.search(
            searcher, all_words_query(term), limit + 1, search_all_users=self.search_all_users
        )
        return DirectoryResults(found[:limit], len(found) > limit)
