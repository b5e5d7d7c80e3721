"""The media repository: uploads (direct and asynchronous), downloads and thumbnails.

Uploads stream to disk while being hashed and counted (never held whole in
memory), and are refused with 413 M_TOO_LARGE the moment they pass
max_upload_size. Content is stored once per sha256 (`files.MediaFiles`);
`storage.media.MediaStore` maps media IDs and thumbnails onto it.
Thumbnails are made in worker threads, at the configured sizes when an
image is uploaded, and at the requested size too with dynamic_thumbnails.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import string
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiohttp import ClientPayloadError, StreamReader
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Counter

from storage.media import LocalMedia, MediaStore, Thumbnail

from ..config import Config
from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..events.validation import is_server_name
from .files import Empty, MediaFiles, StoredFile, TooLarge
from .headers import base_type
from .thumbnailer import (
    THUMBNAILABLE_TYPES,
    CannotThumbnail,
    ImageInfo,
    ImageTooLarge,
    choose_size,
    make_thumbnail,
    probe,
    target_size,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

UPLOADED_BYTES = Counter("homeserver_media_uploaded_bytes_total", "Bytes of media uploaded")
UPLOADS = Counter("homeserver_media_uploads_total", "Media uploads stored")

_MEDIA_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_MEDIA_ID_LENGTH = 24
# How long a download of not-yet-uploaded media waits: the spec's default, Synapse's cap.
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
# Even when waiting to be woken, look at the database this often: the
# upload may arrive at another process sharing it.
_POLL_SECONDS = 1.0
# Thumbnails decode images: at most this many at once.
_THUMBNAIL_THREADS = 2


def cannot_thumbnail() -> MatrixError:
    return MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")


@dataclass(frozen=True)
class Served:
    """A file to send: where it is, and what to call it."""

    path: Path
    content_type: str
    filename: str | None


class MediaRepository:
    def __init__(self, config: Config, store: MediaStore) -> None:
        self.config = config
        self.server_name = config.server_name
        self.store = store
        self.files = MediaFiles(config.resolve_path(config.media_store_path))
        # media_id -> set when its asynchronous upload completes here.
        self._uploaded: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._thumbnail_slots = asyncio.Semaphore(_THUMBNAIL_THREADS)
        # Hook (the admin API, homeserver/admin/media.py): whether a server
        # admin quarantined the media ID or its content; such media is not served.
        self.is_quarantined: Callable[[str, str | None], Awaitable[bool]] | None = None

    def start(self) -> None:
        self.files.ensure_dirs()

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    # ---------------------------------------------------------------- uploads

    def check_length(self, content_length: int | None) -> None:
        """Refuse a body by its declared length, before reading any of it."""
        if content_length is not None and content_length > self.config.max_upload_size:
            raise self._too_large()
        if content_length == 0:
            raise invalid_param("The upload is empty")

    def _too_large(self) -> MatrixError:
        return MatrixError(
            413,
            "M_TOO_LARGE",
            f"Upload request body is too large (the limit is {self.config.max_upload_size} bytes)",
        )

    async def _receive(self, user_id: str, body: StreamReader) -> StoredFile:
        try:
            stored = await self.files.receive(body, self.config.max_upload_size)
        except TooLarge:
            raise self._too_large() from None
        except Empty:
            raise invalid_param("The upload is empty") from None
        except (ConnectionError, ClientPayloadError, HttpProcessingError) as err:
            # The client went away mid-upload; nothing was kept.
            logger.info("upload by %s interrupted: %s", user_id, err)
            raise MatrixError(400, "M_UNKNOWN", "The upload was interrupted") from None
        UPLOADED_BYTES.inc(stored.length)
        UPLOADS.inc()
        return stored

    async def upload(
        self, user_id: str, body: StreamReader, content_type: str, upload_name: str | None
    ) -> str:
        """Store a new upload; returns its mxc:// URI."""
        stored = await self._receive(user_id, body)
        return await self._add(user_id, stored, content_type, upload_name)

    async def store_content(
        self, user_id: str, data: bytes, content_type: str, upload_name: str | None
    ) -> str:
        """Store content the server fetched itself (a URL preview's image); returns its URI."""
        stored = await asyncio.to_thread(self.files.store_bytes, data)
        return await self._add(user_id, stored, content_type, upload_name)

    async def _add(
        self, user_id: str, stored: StoredFile, content_type: str, upload_name: str | None
    ) -> str:
        media_id = _new_media_id()
        await self.store.store_local_media(
            media_id, user_id, _now(), content_type, upload_name, stored.length, stored.sha256
        )
        await self._pregenerate_thumbnails(stored.sha256, content_type)
        return self.mxc(media_id)

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for a later upload; returns its URI and expiry."""
        now = _now()
        expires = now + self.config.unused_expiration_time
        media_id = _new_media_id()
        earliest = await self.store.create_pending_media(
            media_id, user_id, now, expires, self.config.max_pending_media_uploads
        )
        if earliest is not None:
            raise MatrixError(
                429,
                "M_LIMIT_EXCEEDED",
                "You have too many uploads pending",
                retry_after_ms=max(earliest - now, 0),
            )
        return self.mxc(media_id), expires

    async def check_can_upload_to(self, user_id: str, server_name: str, media_id: str) -> None:
        """Refuse an upload to a reserved media ID before any of its body is read."""
        self._check_local(server_name, media_id)
        media = await self.store.get_local_media(media_id)
        if media is None or (not media.uploaded and _expired(media)):
            raise not_found("Unknown media ID, or its reservation has expired")
        if media.user_id != user_id:
            raise forbidden("You may only upload to media IDs you created")
        if media.uploaded:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media ID already has content")

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        body: StreamReader,
        content_type: str,
        upload_name: str | None,
    ) -> None:
        await self.check_can_upload_to(user_id, server_name, media_id)
        stored = await self._receive(user_id, body)
        done = await self.store.complete_pending_media(
            media_id, _now(), content_type, upload_name, stored.length, stored.sha256
        )
        if not done:
            # Someone else's upload won the race, or the reservation lapsed meanwhile.
            await self.check_can_upload_to(user_id, server_name, media_id)
            raise not_found("Unknown media ID, or its reservation has expired")
        event = self._uploaded.pop(media_id, None)
        if event is not None:
            event.set()
        await self._pregenerate_thumbnails(stored.sha256, content_type)

    # -------------------------------------------------------------- downloads

    def _check_local(self, server_name: str, media_id: str) -> None:
        if not is_server_name(server_name):
            raise invalid_param("Invalid server name")
        if not _MEDIA_ID.fullmatch(media_id):
            raise invalid_param("Invalid media ID")
        if server_name != self.server_name:
            # No federation yet: remote media cannot be fetched.
            raise not_found("Remote media is not available on this server")

    async def get_uploaded(self, server_name: str, media_id: str, timeout_ms: int) -> LocalMedia:
        """The media, waiting up to `timeout_ms` for a reserved ID to be uploaded to."""
        self._check_local(server_name, media_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout_ms, MAX_TIMEOUT_MS) / 1000
        while True:
            media = await self.store.get_local_media(media_id)
            if media is None or (not media.uploaded and _expired(media)):
                raise not_found("Media not found")
            if media.uploaded:
                if self.is_quarantined is not None and await self.is_quarantined(
                    media.media_id, media.sha256
                ):
                    raise not_found("Media not found")
                return media
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            event = self._uploaded.get(media_id)
            if event is None:
                event = self._uploaded[media_id] = asyncio.Event()
            try:
                await asyncio.wait_for(event.wait(), min(remaining, _POLL_SECONDS))
            except TimeoutError:
                pass

    def download(self, media: LocalMedia, filename: str | None) -> Served:
        assert media.sha256 is not None and media.content_type is not None
        return Served(
            self.files.path_for(media.sha256), media.content_type, filename or media.upload_name
        )

    # ------------------------------------------------------------- thumbnails

    async def thumbnail(
        self, media: LocalMedia, width: int, height: int, method: str, animated: bool
    ) -> Served:
        """The thumbnail to send for a request: never smaller than asked unless the image is."""
        assert media.sha256 is not None and media.content_type is not None
        if base_type(media.content_type) not in THUMBNAILABLE_TYPES:
            raise cannot_thumbnail()
        original = self.files.path_for(media.sha256)
        if not original.is_file():
            logger.error("media file %s is missing from the media store", original)
            raise not_found("Media not found")
        info = await self._image_work(probe, original, self.config.max_image_pixels)
        animate = animated and info.animated
        if info.width <= width and info.height <= height and (animate or not info.animated):
            # Smaller than asked: the spec has the original sent as it is.
            return Served(original, media.content_type, None)
        size, chosen_method = self._size_for(info, width, height, method)
        thumb = await self._get_or_make(media.sha256, size, chosen_method, animate)
        return Served(self.files.path_for(thumb.thumbnail_sha256), thumb.content_type, None)

    def _size_for(
        self, info: ImageInfo, width: int, height: int, method: str
    ) -> tuple[tuple[int, int], str]:
        configured = self.config.thumbnail_sizes
        if self.config.dynamic_thumbnails or not configured:
            return target_size(info, width, height, method), method
        candidates = sorted(
            {(*target_size(info, s.width, s.height, s.method), s.method) for s in configured}
        )
        t_w, t_h, chosen_method = choose_size(
            candidates, target_size(info, width, height, method), method
        )
        return (t_w, t_h), chosen_method

    async def _get_or_make(
        self, sha256: str, size: tuple[int, int], method: str, animated: bool
    ) -> Thumbnail:
        width, height = size
        thumb = await self.store.get_thumbnail(sha256, width, height, method, animated)
        if thumb is not None and self.files.path_for(thumb.thumbnail_sha256).exists():
            return thumb
        encoded = await self._image_work(
            make_thumbnail,
            self.files.path_for(sha256),
            size,
            method,
            animated,
            self.config.max_image_pixels,
        )
        stored = await asyncio.to_thread(self.files.store_bytes, encoded.data)
        thumb = Thumbnail(
            sha256, width, height, method, animated, encoded.content_type, stored.sha256,
            stored.length,
        )
        await self.store.store_thumbnail(thumb)
        return thumb

    async def _image_work(self, fn: Callable[..., T], *args: object) -> T:
        async with self._thumbnail_slots:
            try:
                return await asyncio.to_thread(fn, *args)
            except CannotThumbnail:
                raise cannot_thumbnail() from None
            except ImageTooLarge:
                raise MatrixError(
                    413, "M_TOO_LARGE", "The image is too large for the server to thumbnail"
                ) from None

    async def _pregenerate_thumbnails(self, sha256: str, content_type: str) -> None:
        """Make the configured sizes of a newly uploaded image; an image we cannot read has none."""
        if base_type(content_type) not in THUMBNAILABLE_TYPES:
            return
        original = self.files.path_for(sha256)
        try:
            info = await self._image_work(probe, original, self.config.max_image_pixels)
            sizes = {
                (target_size(info, s.width, s.height, s.method), s.method)
                for s in self.config.thumbnail_sizes
            }
            for size, method in sorted(sizes):
                await self._get_or_make(sha256, size, method, False)
        except MatrixError as err:
            logger.info("no thumbnails for %s (%s): %s", sha256, content_type, err.error)


def _now() -> int:
    return int(time.time() * 1000)


def _expired(media: LocalMedia) -> bool:
    return media.unused_expires_ts is not None and media.unused_expires_ts <= _now()


def _new_media_id() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(_MEDIA_ID_LENGTH))
