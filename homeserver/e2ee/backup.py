"""Server-side key backups (spec: End-to-end encryption, Server-side key backups).

Each user has backup versions numbered 1, 2, ... (numbers are never reused,
even after a deletion); the current one is the newest not deleted, and only
it accepts keys. The server stores the encrypted keys with the metadata the
client gives, and keeps the better of two uploads of one session by the
spec's rule (`should_replace`). Every version has an etag that changes
whenever its keys do, and a count of its keys.

Each request runs in one transaction; those that write hold the user's
lock, so one user's writes (checking the version, comparing and writing the
keys, counting) never interleave (see `storage/key_backup.py`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from storage import Storage
from storage.engines import Transaction
from storage.key_backup import BackupVersion, RoomKey, RoomKeys

from ..errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from ..http import body_dict, body_str

JsonDict = dict[str, Any]
T = TypeVar("T")

MEGOLM_BACKUP_V1 = "m.megolm_backup.v1.curve25519-aes-sha2"
# Our versions are integers: anything else names no backup (as in Synapse).
_VERSION = re.compile(r"[0-9]{1,18}")
# The largest integer canonical JSON allows.
_MAX_INT = 2**53 - 1
MAX_ID_LENGTH = 255
MAX_ALGORITHM_LENGTH = 255


def parse_version(version: str) -> int:
    """A version from a path or query: 404 when it cannot name one of ours."""
    if not _VERSION.fullmatch(version):
        raise not_found("Unknown backup version")
    return int(version)


def _check_id(value: str, what: str) -> None:
    if not value:
        raise invalid_param(f"{what} may not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise invalid_param(f"{what} may not contain NUL characters")


def _check_room_id(room_id: str) -> None:
    _check_id(room_id, "Room ID")
    if not room_id.startswith("!"):
        raise invalid_param(f"Invalid room ID: {room_id!r}")


def _count(key: JsonDict, field: str, where: str) -> int:
    if field not in key:
        raise missing_param(f"Missing '{field}' in {where}")
    value = key[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise bad_json(f"'{field}' in {where} must be a non-negative integer")
    return value


def parse_key(key: Any, where: str = "the key") -> RoomKey:
    """A `KeyBackupData` object from a request body."""
    if not isinstance(key, dict):
        raise bad_json(f"{where} must be a JSON object")
    first_message_index = _count(key, "first_message_index", where)
    forwarded_count = _count(key, "forwarded_count", where)
    if "is_verified" not in key:
        raise missing_param(f"Missing 'is_verified' in {where}")
    if not isinstance(key["is_verified"], bool):
        raise bad_json(f"'is_verified' in {where} must be true or false")
    if "session_data" not in key:
        raise missing_param(f"Missing 'session_data' in {where}")
    if not isinstance(key["session_data"], dict):
        raise bad_json(f"'session_data' in {where} must be a JSON object")
    return RoomKey(first_message_index, forwarded_count, key["is_verified"], key["session_data"])


def parse_room(body: Any, where: str = "the request") -> dict[str, RoomKey]:
    """A `RoomKeyBackup` object (`{"sessions": {...}}`): session ID -> key."""
    if not isinstance(body, dict):
        raise bad_json(f"{where} must be a JSON object")
    sessions = body_dict(body, "sessions")
    for session_id in sessions:
        _check_id(session_id, "Session ID")  # before an error message quotes it
    return {
        session_id: parse_key(key, f"session {session_id!r}") for session_id, key in sessions.items()
    }


def parse_rooms(body: JsonDict) -> RoomKeys:
    """The body of PUT /room_keys/keys (`{"rooms": {...}}`): room ID -> session ID -> key."""
    rooms = body_dict(body, "rooms")
    for room_id in rooms:
        _check_room_id(room_id)  # before an error message quotes it
    return {room_id: parse_room(room, f"room {room_id!r}") for room_id, room in rooms.items()}


def should_replace(current: RoomKey, new: RoomKey) -> bool:
    """Whether an upload replaces the stored key of its session (spec order:
    verified beats unverified, then the lower first_message_index wins, then
    the lower forwarded_count; on a tie the stored key stays)."""
    if current.is_verified != new.is_verified:
        return new.is_verified
    if current.first_message_index != new.first_message_index:
        return new.first_message_index < current.first_message_index
    return new.forwarded_count < current.forwarded_count


def key_json(key: RoomKey) -> JsonDict:
    return {
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": key.session_data,
    }


def _check_version_body(body: JsonDict) -> tuple[str, JsonDict]:
    """The algorithm and auth_data of a version's body."""
    algorithm = body_str(body, "algorithm", max_length=MAX_ALGORITHM_LENGTH)
    if not algorithm:
        raise invalid_param("'algorithm' may not be empty")
    auth_data = body_dict(body, "auth_data")
    if algorithm == MEGOLM_BACKUP_V1:
        # The spec's AuthData for this algorithm.
        body_str(auth_data, "public_key")
        if not isinstance(auth_data.get("signatures", {}), dict):
            raise bad_json("'signatures' in 'auth_data' must be a JSON object")
    return algorithm, auth_data


def _updated(etag: int, count: int) -> JsonDict:
    return {"etag": str(etag), "count": count}


class KeyBackup:
    def __init__(self, storage: Storage) -> None:
        self.db = storage.db
        self.store = storage.key_backup

    async def _existing_txn(self, txn: Transaction, user_id: str, version: int) -> BackupVersion:
        info = await self.store.get_version_txn(txn, user_id, version)
        if info is None:
            raise not_found("Unknown backup version")
        return info

    async def _write(
        self, name: str, user_id: str, fn: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """Run `fn(txn, *args)` in a transaction holding the user's lock."""

        async def _locked(txn: Transaction) -> T:
            await self.store.lock_user_txn(txn, self.db.dialect, user_id)
            return await fn(txn, *args)

        return await self.db.run(name, _locked, read_committed=True)

    # ------------------------------------------------------------ versions

    async def create_version(self, user_id: str, body: JsonDict) -> str:
        algorithm, auth_data = _check_version_body(body)
        version = await self._write(
            "create_room_keys_version",
            user_id,
            self.store.create_version_txn,
            user_id,
            algorithm,
            auth_data,
        )
        return str(version)

    async def get_version(self, user_id: str, version: str | None) -> JsonDict:
        """The version (None: the current one) with its key count and etag."""
        number = parse_version(version) if version is not None else None

        async def _fn(txn: Transaction) -> JsonDict:
            if number is None:
                info = await self.store.current_version_txn(txn, user_id)
                if info is None:
                    raise not_found("No current backup version")
            else:
                info = await self._existing_txn(txn, user_id, number)
            return {
                "algorithm": info.algorithm,
                "auth_data": info.auth_data,
                "count": await self.store.count_keys_txn(txn, user_id, info.version),
                "etag": str(info.etag),
                "version": str(info.version),
            }

        return await self.db.run("get_room_keys_version", _fn)

    async def update_version(self, user_id: str, version: str, body: JsonDict) -> None:
        """Replace the version's auth_data; its algorithm may not change."""
        algorithm, auth_data = _check_version_body(body)
        if "version" in body and body["version"] != version:
            raise invalid_param("The version in the body does not match the one in the path")
        number = parse_version(version)

        async def _fn(txn: Transaction) -> None:
            info = await self._existing_txn(txn, user_id, number)
            if info.algorithm != algorithm:
                raise invalid_param("Algorithm does not match")
            await self.store.update_auth_data_txn(txn, user_id, number, auth_data)

        await self._write("update_room_keys_version", user_id, _fn)

    async def delete_version(self, user_id: str, version: str) -> None:
        """Delete the version and its keys (again: a no-op)."""
        number = parse_version(version)
        if not await self._write(
            "delete_room_keys_version", user_id, self.store.delete_version_txn, user_id, number
        ):
            raise not_found("Unknown backup version")

    # ---------------------------------------------------------------- keys

    async def upload_keys(self, user_id: str, version: str, rooms: RoomKeys) -> JsonDict:
        """Store keys in the current version, keeping the better key of each
        session already there; returns the version's etag and key count."""
        for room_id, sessions in rooms.items():
            _check_room_id(room_id)
            for session_id in sessions:
                _check_id(session_id, "Session ID")
        number = parse_version(version)

        async def _fn(txn: Transaction) -> JsonDict:
            current = await self.store.current_version_txn(txn, user_id)
            if current is None or current.version != number:
                await self._existing_txn(txn, user_id, number)
                assert current is not None  # a version exists, so a current one does
                raise MatrixError(
                    403,
                    "M_WRONG_ROOM_KEYS_VERSION",
                    "Wrong backup version.",
                    current_version=str(current.version),
                )
            stored = await self.store.get_sessions_txn(txn, user_id, number, rooms)
            changes = [
                (room_id, session_id, key)
                for room_id, sessions in rooms.items()
                for session_id, key in sessions.items()
                if (old := stored.get(room_id, {}).get(session_id)) is None
                or should_replace(old, key)
            ]
            etag = current.etag
            if changes:
                etag = await self.store.bump_etag_txn(txn, user_id, number)
                await self.store.put_keys_txn(txn, user_id, number, changes)
            return _updated(etag, await self.store.count_keys_txn(txn, user_id, number))

        return await self._write("upload_room_keys", user_id, _fn)

    async def get_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> RoomKeys:
        """The version's keys: all, one room's (room_id) or one session's (both)."""
        number = self._check_selection(version, room_id, session_id)

        async def _fn(txn: Transaction) -> RoomKeys:
            await self._existing_txn(txn, user_id, number)
            return await self.store.get_keys_txn(txn, user_id, number, room_id, session_id)

        return await self.db.run("get_room_keys", _fn)

    async def delete_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> JsonDict:
        """Delete the version's keys: all, one room's or one session's; returns
        the version's etag and key count."""
        number = self._check_selection(version, room_id, session_id)

        async def _fn(txn: Transaction) -> JsonDict:
            info = await self._existing_txn(txn, user_id, number)
            etag = info.etag
            if await self.store.delete_keys_txn(txn, user_id, number, room_id, session_id):
                etag = await self.store.bump_etag_txn(txn, user_id, number)
            return _updated(etag, await self.store.count_keys_txn(txn, user_id, number))

        return await self._write("delete_room_keys", user_id, _fn)

    @staticmethod
    def _check_selection(version: str, room_id: str | None, session_id: str | None) -> int:
        if room_id is not None:
            _check_room_id(room_id)
        if session_id is not None:
            _check_id(session_id, "Session ID")
        return parse_version(version)
