"""Media bytes on local disk, named by their sha256.

Layout under `media_store_path`:

    content/ab/cd/abcd...   one file per distinct content (uploads and thumbnails)
    tmp/                    uploads being received; renamed into content/ when done

No path here is ever built from what a client sent: the only names are
hex digests we computed and random temporary names. A file is written to
tmp/, flushed to disk, then renamed into place, so content/ only ever holds
complete files; content that is already there is not written twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import StreamReader

_CHUNK = 256 * 1024


class TooLarge(Exception):
    """The body grew past the limit while it was being received."""


class Empty(Exception):
    """The body had no bytes at all."""


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    length: int


class MediaFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._content = root / "content"
        self._tmp = root / "tmp"

    def ensure_dirs(self) -> None:
        self._content.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._content / sha256[:2] / sha256[2:4] / sha256

    async def receive(self, stream: StreamReader, limit: int) -> StoredFile:
        """Stream a request body to disk while hashing it, at most `limit` bytes.

        Raises TooLarge as soon as more than `limit` bytes have arrived, and
        Empty if none did; nothing is kept then.
        """
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            length = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in stream.iter_chunked(_CHUNK):
                    length += len(chunk)
                    if length > limit:
                        raise TooLarge()
                    digest.update(chunk)
                    out.write(chunk)
                if length == 0:
                    raise Empty()
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            stored = StoredFile(digest.hexdigest(), length)
            await asyncio.to_thread(self._move_into_place, tmp, stored.sha256)
            return stored
        finally:
            tmp.unlink(missing_ok=True)

    def store_bytes(self, data: bytes) -> StoredFile:
        """Store `data` (a thumbnail, a fetched image); blocking, for a worker thread."""
        stored = StoredFile(hashlib.sha256(data).hexdigest(), len(data))
        if self.path_for(stored.sha256).exists():
            return stored
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="thumb-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            self._move_into_place(tmp, stored.sha256)
        finally:
            tmp.unlink(missing_ok=True)
        return stored

    def _move_into_place(self, tmp: Path, sha256: str) -> None:
        final = self.path_for(sha256)
        if final.exists():
            return  # the same bytes are already stored: share them
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        # The rename itself must survive a crash: the database row that
        # refers to the file is committed right after.
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
