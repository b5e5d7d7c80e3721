"""Media administration for the admin API (homeserver/api/admin_rooms.py), as Synapse does it.

- Listing and deleting a local user's media, deleting one media ID.
- Quarantine: a quarantined media ID, and every media ID with the same
  content (an upload of it again included), answers 404 to downloads and
  thumbnails (`MediaRepository.get_uploaded` asks `is_quarantined`); the
  files stay on disk. Releasing one releases them all.
- Files are content-addressed and shared by every media ID (and
  thumbnail) with the same bytes: a file is removed from disk only once no
  media ID and no thumbnail row refers to it any more.

This server keeps no remote media, so remote media IDs are never found.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from storage import Storage
from storage.admin_rooms import MediaInfo

from ..errors import invalid_param, not_found
from ..events.validation import is_server_name
from ..ids import split_user_id
from ..media.repository import MediaRepository

logger = logging.getLogger(__name__)

MAX_MEDIA_ID_LENGTH = 255


class MediaAdmin:
    def __init__(self, storage: Storage, repository: MediaRepository, server_name: str) -> None:
        self.storage = storage
        self.store = storage.admin_media
        self.repository = repository
        self.server_name = server_name

    async def require_local_user(self, user_id: str) -> None:
        """400 for a remote or malformed user ID, 404 for an unknown local one."""
        parsed = split_user_id(user_id)
        if parsed is None or parsed[1] != self.server_name:
            raise invalid_param("Can only look up local users")
        if not await self.storage.users.user_exists(user_id):
            raise not_found("Unknown user")

    async def get(self, server_name: str, media_id: str) -> MediaInfo:
        """The local media, or 404 (remote media is never stored here)."""
        if not is_server_name(server_name):
            raise invalid_param("Invalid server name")
        if not media_id or len(media_id) > MAX_MEDIA_ID_LENGTH:
            raise invalid_param("Invalid media ID")
        media = await self.store.get_media(media_id) if server_name == self.server_name else None
        if media is None:
            raise not_found("Unknown media")
        return media

    async def set_quarantine(
        self, admin_user_id: str, server_name: str, media_id: str, on: bool
    ) -> None:
        await self.get(server_name, media_id)
        await self.store.set_quarantined_by(media_id, admin_user_id if on else None)
        logger.info(
            "%s %s mxc://%s/%s",
            admin_user_id,
            "quarantined" if on else "released",
            server_name,
            media_id,
        )

    async def delete_one(self, server_name: str, media_id: str) -> list[str]:
        if is_server_name(server_name) and server_name != self.server_name:
            raise invalid_param("Can only delete local media")
        media = await self.get(server_name, media_id)
        return await self.delete([media.media_id])

    async def delete(self, media_ids: Sequence[str]) -> list[str]:
        """Delete media IDs (and files nothing refers to any more); returns the IDs deleted."""
        deleted, unused = await self.store.delete_media(media_ids)
        files = self.repository.files

        def remove() -> None:
            for sha256 in unused:
                files.path_for(sha256).unlink(missing_ok=True)

        await asyncio.to_thread(remove)
        return deleted
