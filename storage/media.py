"""The media repository's metadata: local media IDs and their thumbnails.

The bytes themselves are files named by their sha256 (homeserver/media/files.py);
these rows say which media ID (and which thumbnail) is which content.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engines import Database, Transaction

_MEDIA_COLUMNS = (
    "media_id, user_id, created_ts, unused_expires_ts, upload_ts,"
    " content_type, upload_name, media_length, sha256"
)


@dataclass(frozen=True)
class LocalMedia:
    media_id: str
    user_id: str  # who created or uploaded it
    created_ts: int
    unused_expires_ts: int | None  # set while an async upload is pending
    upload_ts: int | None  # None until the content is uploaded
    content_type: str | None
    upload_name: str | None
    media_length: int | None
    sha256: str | None

    @property
    def uploaded(self) -> bool:
        return self.upload_ts is not None


@dataclass(frozen=True)
class Thumbnail:
    sha256: str  # of the content it was made from
    width: int
    height: int
    method: str
    animated: bool
    content_type: str
    thumbnail_sha256: str
    length: int


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_local_media(self, media_id: str) -> LocalMedia | None:
        row = await self.db.fetchone(
            "get_local_media",
            f"SELECT {_MEDIA_COLUMNS} FROM local_media WHERE media_id = ?",
            (media_id,),
        )
        return LocalMedia(*row) if row else None

    async def store_local_media(
        self,
        media_id: str,
        user_id: str,
        now: int,
        content_type: str,
        upload_name: str | None,
        media_length: int,
        sha256: str,
    ) -> None:
        await self.db.execute(
            "store_local_media",
            f"INSERT INTO local_media ({_MEDIA_COLUMNS}) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            (media_id, user_id, now, now, content_type, upload_name, media_length, sha256),
        )

    async def create_pending_media(
        self, media_id: str, user_id: str, now: int, expires_ts: int, max_pending: int
    ) -> int | None:
        """Reserve `media_id` for a later upload by `user_id`.

        Returns None when done, or, if the user already has `max_pending`
        unexpired reservations, the time the earliest of them lapses.
        """

        async def txn_fn(txn: Transaction) -> int | None:
            pending = await txn.fetchall(
                "SELECT unused_expires_ts FROM local_media"
                " WHERE user_id = ? AND upload_ts IS NULL AND unused_expires_ts > ?"
                " ORDER BY unused_expires_ts LIMIT ?",
                (user_id, now, max_pending),
            )
            if len(pending) >= max_pending:
                return pending[0][0]
            await txn.execute(
                "INSERT INTO local_media (media_id, user_id, created_ts, unused_expires_ts)"
                " VALUES (?, ?, ?, ?)",
                (media_id, user_id, now, expires_ts),
            )
            return None

        return await self.db.run("create_pending_media", txn_fn)

    async def complete_pending_media(
        self,
        media_id: str,
        now: int,
        content_type: str,
        upload_name: str | None,
        media_length: int,
        sha256: str,
    ) -> bool:
        """Fill in a reserved media ID; False if it was uploaded to (or lapsed) meanwhile."""
        changed = await self.db.execute(
            "complete_pending_media",
            "UPDATE local_media SET upload_ts = ?, unused_expires_ts = NULL, content_type = ?,"
            " upload_name = ?, media_length = ?, sha256 = ?"
            " WHERE media_id = ? AND upload_ts IS NULL AND unused_expires_ts > ?",
            (now, content_type, upload_name, media_length, sha256, media_id, now),
        )
        return changed == 1

    async def get_thumbnail(
        self, sha256: str, width: int, height: int, method: str, animated: bool
    ) -> Thumbnail | None:
        row = await self.db.fetchone(
            "get_thumbnail",
            "SELECT content_type, thumbnail_sha256, length FROM media_thumbnails"
            " WHERE sha256 = ? AND width = ? AND height = ? AND method = ? AND animated = ?",
            (sha256, width, height, method, animated),
        )
        if row is None:
            return None
        return Thumbnail(sha256, width, height, method, animated, *row)

    async def store_thumbnail(self, thumbnail: Thumbnail) -> None:
        """Record a thumbnail; one already recorded for the same key is kept."""
        await self.db.execute(
            "store_thumbnail",
            "INSERT INTO media_thumbnails (sha256, width, height, method, animated,"
            " content_type, thumbnail_sha256, length) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sha256, width, height, method, animated) DO NOTHING",
            (
                thumbnail.sha256,
                thumbnail.width,
                thumbnail.height,
                thumbnail.method,
                thumbnail.animated,
                thumbnail.content_type,
                thumbnail.thumbnail_sha256,
                thumbnail.length,
            ),
        )
