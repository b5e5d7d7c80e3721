"""Password hashing with bcrypt, compatible with Synapse's stored hashes.

bcrypt at cost 12 takes a couple of hundred milliseconds of CPU, so hashing
runs in a worker thread: the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import unicodedata

import bcrypt


def _secret(password: str, pepper: str) -> bytes:
    # Synapse normalises (NFKC) before hashing, so the same password typed on
    # different keyboards matches, and so do hashes imported from Synapse.
    # bcrypt reads at most 72 bytes; older bcrypt releases (and so hashes
    # Synapse made) silently truncated, newer ones refuse longer input.
    return (unicodedata.normalize("NFKC", password) + pepper).encode("utf-8")[:72]


class PasswordHasher:
    def __init__(self, rounds: int = 12, pepper: str = "") -> None:
        self.rounds = rounds
        self.pepper = pepper

    def _hash(self, password: str) -> str:
        return bcrypt.hashpw(
            _secret(password, self.pepper), bcrypt.gensalt(self.rounds)
        ).decode("ascii")

    def _check(self, password: str, stored_hash: str) -> bool:
        try:
            return bcrypt.checkpw(_secret(password, self.pepper), stored_hash.encode("ascii"))
        except ValueError:  # not a bcrypt hash
            return False

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self._hash, password)

    async def check(self, password: str, stored_hash: str | None) -> bool:
        if not stored_hash:
            return False
        return await asyncio.get_running_loop().run_in_executor(
            None, self._check, password, stored_hash
        )
