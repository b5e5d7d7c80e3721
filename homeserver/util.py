"""Small helpers used across the server."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import string
import time

_ALPHABET = string.ascii_uppercase


def now_ms() -> int:
    return int(time.time() * 1000)


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string carrying `nbytes` of entropy."""
    return secrets.token_urlsafe(nbytes)


def random_device_id() -> str:
    """Ten upper-case letters, as Synapse makes them (about 47 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(10))


def hash_token(token: str) -> str:
    """The digest under which a token is stored; tokens themselves never are."""
    return hashlib.sha256(token.encode()).hexdigest()


async def cancel_task(task: asyncio.Task | None) -> None:
    """Stop a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
