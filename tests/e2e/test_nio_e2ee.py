"""End-to-end encryption with matrix-nio (vodozemac underneath), on both engines.

Each person is a nio client with its own Olm account in an encryption store
under tmp_path, driving /sync by hand so every step is observable: device
keys and one-time keys go up with keys/upload, an encrypted room's messages
are Megolm ciphertext whose session keys travel as Olm-encrypted to-device
messages (keys/query, keys/claim, sendToDevice, /sync to_device), and both
people decrypt each other. The one-time key counts in /sync follow every
claim and upload; /sync device_lists announces a new device, a signed-out
device and a departure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import nio
import pytest
from nio import AsyncClient, AsyncClientConfig, MatrixRoom

if TYPE_CHECKING:
    from ..conftest import TestServer

PASSWORD = "a long enough password"
ALICE, BOB = "@alice:test.local", "@bob:test.local"
MEGOLM = "m.megolm.v1.aes-sha2"


def _ok(resp: Any, expected: type) -> Any:
    assert isinstance(resp, expected), resp
    return resp


@dataclass
class Person:
    """A signed-in nio client with an encryption store; syncs only when told to."""

    client: AsyncClient
    decrypted: dict[str, tuple[str, str]] = field(default_factory=dict)  # event ID -> (sender, body)
    undecryptable: list[str] = field(default_factory=list)
    otk_counts: list[int | None] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)

    def on_message(self, room: MatrixRoom, event: nio.RoomMessageText) -> None:
        if event.decrypted:
            self.decrypted[event.event_id] = (event.sender, event.body)

    def on_undecryptable(self, room: MatrixRoom, event: nio.MegolmEvent) -> None:
        self.undecryptable.append(event.event_id)

    async def sync(self) -> nio.SyncResponse:
        resp = _ok(await self.client.sync(timeout=0), nio.SyncResponse)
        self.otk_counts.append(resp.device_key_count.signed_curve25519)
        self.changed.update(resp.device_list.changed)
        self.left.update(resp.device_list.left)
        return resp

    async def sync_until(self, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await self.sync()
            await asyncio.sleep(0.01)

    async def send(self, room_id: str, body: str) -> str:
        content = {"msgtype": "m.text", "body": body}
        # Devices nobody verified still get the room key, as in most clients.
        resp = await self.client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)
        return _ok(resp, nio.RoomSendResponse).event_id


async def _person(server: TestServer, store: Path, user: str, device_name: str) -> Person:
    store.mkdir()
    client = AsyncClient(
        server.url, user, store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    _ok(await client.login(PASSWORD, device_name=device_name), nio.LoginResponse)
    person = Person(client)
    client.add_event_callback(person.on_message, nio.RoomMessageText)
    client.add_event_callback(person.on_undecryptable, nio.MegolmEvent)
    return person


@pytest.fixture
async def people(server: TestServer, tmp_path: Path) -> AsyncIterator[dict[str, Person]]:
    if not nio.crypto.ENCRYPTION_ENABLED:
        if os.environ.get("CI") == "true":
            pytest.fail("matrix-nio[e2e] (vodozemac) is required when CI=true")
        pytest.skip("matrix-nio was installed without its e2e extra (vodozemac)")
    await server.register_user("alice", PASSWORD)
    await server.register_user("bob", PASSWORD)
    people = {
        "alice": await _person(server, tmp_path / "alice", "alice", "alice's nio"),
        "bob": await _person(server, tmp_path / "bob", "bob", "bob's nio"),
    }
    try:
        yield people
    finally:
        for person in people.values():
            await person.client.close()


async def _upload_keys(person: Person) -> int:
    """keys/upload: the device keys and a full set of one-time keys; the count the server holds."""
    client = person.client
    assert client.should_upload_keys
    uploaded = _ok(await client.keys_upload(), nio.KeysUploadResponse)
    assert uploaded.signed_curve25519_count == client.olm.account.max_one_time_keys
    return uploaded.signed_curve25519_count


async def test_encrypted_chat_with_olm_and_megolm(
    server: TestServer, people: dict[str, Person], tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    full = {}
    for name, person in people.items():
        full[name] = await _upload_keys(person)
        await person.sync()
        # /sync reports the one-time keys the server holds for the device.
        assert person.otk_counts[-1] == full[name]
        assert not person.client.should_upload_keys

    created = _ok(
        await alice.client.room_create(
            name="Encrypted", invite=[BOB], initial_state=[nio.EnableEncryptionBuilder().as_dict()]
        ),
        nio.RoomCreateResponse,
    )
    room_id = created.room_id
    await bob.sync_until(lambda: room_id in bob.client.invited_rooms, "bob's invite")
    _ok(await bob.client.join(room_id), nio.JoinResponse)
    await alice.sync_until(
        lambda: BOB in getattr(alice.client.rooms.get(room_id), "users", ()), "alice seeing bob join"
    )
    await bob.sync_until(lambda: room_id in bob.client.rooms, "bob's join")
    assert alice.client.rooms[room_id].encrypted and bob.client.rooms[room_id].encrypted

    # keys/query: bob finds alice's device with the identity keys her Olm account has.
    assert bob.client.should_query_keys
    queried = _ok(await bob.client.keys_query(), nio.KeysQueryResponse)
    alice_device = alice.client.device_id
    assert set(queried.device_keys[ALICE]) == {alice_device}
    assert bob.client.device_store[ALICE][alice_device].keys == {
        "ed25519": alice.client.olm.account.identity_keys["ed25519"],
        "curve25519": alice.client.olm.account.identity_keys["curve25519"],
    }

    # alice writes first: her client queries bob's keys, claims one of his
    # one-time keys, and sends him the Megolm key inside an Olm message.
    first = await alice.send(room_id, "hello bob, this is encrypted")
    # The server only ever holds ciphertext.
    stored = await server.get(
        f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(first)}", token=bob.client.access_token
    )
    assert stored.status == 200, stored.body
    assert stored.body["type"] == "m.room.encrypted" and stored.body["content"]["algorithm"] == MEGOLM
    assert "hello" not in str(stored.body)
    await bob.sync_until(lambda: first in bob.decrypted, "bob decrypting alice's message")
    assert bob.decrypted[first] == (ALICE, "hello bob, this is encrypted")
    assert alice.client.device_store[BOB][bob.client.device_id].ed25519 == (
        bob.client.olm.account.identity_keys["ed25519"]
    )
    # The claim used up one of bob's one-time keys.
    assert bob.otk_counts[-1] == full["bob"] - 1

    # bob answers: he has an Olm session with alice's device already, so no claim.
    reply = await bob.send(room_id, "hello alice, got it")
    await alice.sync_until(lambda: reply in alice.decrypted, "alice decrypting bob's reply")
    assert alice.decrypted[reply] == (BOB, "hello alice, got it")
    assert alice.otk_counts[-1] == full["alice"]
    assert not alice.undecryptable and not bob.undecryptable

    # keys/claim by hand: each claim hands out a different one-time key, signed
    # by the device, and the owner's /sync counts it down.
    claimed_ids = []
    for expected_left in (full["alice"] - 1, full["alice"] - 2):
        claim = _ok(await bob.client.keys_claim({ALICE: [alice_device]}), nio.KeysClaimResponse)
        assert not claim.failures
        ((key_id, key),) = claim.one_time_keys[ALICE][alice_device].items()
        assert key_id.startswith("signed_curve25519:")
        assert f"ed25519:{alice_device}" in key["signatures"][ALICE]
        claimed_ids.append(key_id)
        await alice.sync()
        assert alice.otk_counts[-1] == expected_left
    assert claimed_ids[0] != claimed_ids[1]
    # Once a sync moves on (nio ignores a repeated next_batch), nio sees the
    # lower count and uploads replacements, which tops the count back up.
    note = await bob.send(room_id, "took two of your keys")
    await alice.sync_until(lambda: note in alice.decrypted, "alice decrypting bob's note")
    assert alice.client.should_upload_keys
    topped = _ok(await alice.client.keys_upload(), nio.KeysUploadResponse)
    assert topped.signed_curve25519_count == full["alice"]
    await alice.sync()
    assert alice.otk_counts[-1] == full["alice"]

    # A second device of bob's: alice's /sync lists bob under device_lists.changed,
    # and what she sends next reaches the new device too.
    alice.changed.clear()
    laptop = await _person(server, tmp_path / "bob-laptop", "bob", "bob's other nio")
    try:
        await _upload_keys(laptop)
        await laptop.sync()
        await alice.sync_until(lambda: BOB in alice.changed, "bob's new device in alice's device_lists")
        # As nio's sync_forever does: query the changed users' keys again.
        assert alice.client.should_query_keys
        queried = _ok(await alice.client.keys_query(), nio.KeysQueryResponse)
        assert set(queried.device_keys[BOB]) == {bob.client.device_id, laptop.client.device_id}
        later = await alice.send(room_id, "for both of bob's devices")
        await laptop.sync_until(lambda: later in laptop.decrypted, "bob's laptop decrypting")
        await bob.sync_until(lambda: later in bob.decrypted, "bob's phone decrypting")
        assert laptop.decrypted[later] == bob.decrypted[later] == (ALICE, "for both of bob's devices")
        # Sent before it existed: the laptop cannot read the first message.
        assert first not in laptop.decrypted

        # Signing the laptop out deletes its keys: device_lists.changed again,
        # and keys/query lists bob's phone alone.
        alice.changed.clear()
        _ok(await laptop.client.logout(), nio.LogoutResponse)
        await alice.sync_until(lambda: BOB in alice.changed, "the laptop's sign-out in alice's device_lists")
        queried = _ok(await alice.client.keys_query(), nio.KeysQueryResponse)
        assert set(queried.device_keys[BOB]) == {bob.client.device_id}
    finally:
        await laptop.client.close()

    # bob leaves the only room they share: alice's /sync says so in device_lists.left.
    _ok(await bob.client.room_leave(room_id), nio.RoomLeaveResponse)
    await alice.sync_until(lambda: BOB in alice.left, "bob in alice's device_lists.left")
