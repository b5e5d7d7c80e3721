"""Several processes on one PostgreSQL database: wake-ups over LISTEN/NOTIFY.

The payload encoding is tested on its own; the bridge with two HomeServers
in this process (one event loop, two notifiers, two LISTEN connections); and
the whole with two real `homeserver run` processes behind no load balancer
but the test, which sends on one and long-polls /sync on the other.
PostgreSQL only: SQLite is one process by construction.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml
from prometheus_client import REGISTRY

from homeserver.api.admin import registration_mac
from homeserver.app import HomeServer
from homeserver.sync.notifier import Notifier, Waiter
from homeserver.sync.pgnotify import (
    PAYLOAD_LIMIT,
    apply_changes,
    channel_for,
    decode_changes,
    encode_changes,
)
from storage.streams import next_position_txn

from . import postgres
from .conftest import SHARED_SECRET, TEST_BCRYPT_ROUNDS, _require_postgres, make_config

ROOT = Path(__file__).resolve().parent.parent
SENDS = 50
NOTIFICATIONS_SENT = ("homeserver_pg_notifications_total", {"direction": "sent"})
RECONNECTS = ("homeserver_pg_notify_reconnects_total", {})
# Every message of a burst in one timeline, none cut off by a limited one.
TIMELINE_FILTER = json.dumps({"room": {"timeline": {"limit": 100}}})


def _counter(sample: tuple[str, dict[str, str]]) -> float:
    return REGISTRY.get_sample_value(*sample) or 0.0


def _percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[math.ceil(0.99 * len(ordered)) - 1] * 1000


# ------------------------------------------------------------------ payloads


def _decoded(payloads: list[str]) -> list[list[Any]]:
    changes = []
    for payload in payloads:
        assert len(payload.encode()) <= PAYLOAD_LIMIT < 8000
        origin, found = decode_changes(payload)
        assert origin == "me"
        changes.extend(found)
    return changes


def test_a_tick_of_changes_is_one_payload_per_stream_merged() -> None:
    payloads = encode_changes(
        "me",
        [
            ("events", 7, ("!a",), ()),
            ("events", 9, ("!b",), ("@u:x",)),
            ("events", 8, ("!a",), ()),
            ("receipts", 3, ("!a",), ()),
        ],
    )
    assert len(payloads) == 1
    assert _decoded(payloads) == [["events", 9, ["!a", "!b"], ["@u:x"]], ["receipts", 3, ["!a"], []]]


def test_a_long_list_is_split_into_payloads_under_the_limit() -> None:
    users = [f"@user{i:05d}:example.com" for i in range(1000)]
    changes = _decoded(encode_changes("me", [("device_lists", 5, (), tuple(users))]))
    assert len(changes) > 1
    assert all(c[:2] == ["device_lists", 5] and c[2] == [] for c in changes)
    assert [u for c in changes for u in c[3]] == users


def test_a_change_too_big_to_send_wakes_everyone() -> None:
    users = tuple(f"@user{i:05d}:example.com" for i in range(5000))
    assert _decoded(encode_changes("me", [("device_lists", 5, (), users)])) == [
        ["device_lists", 5, None, None]
    ]
    assert _decoded(encode_changes("me", [("events", 2, ("!" + "r" * 9000,), ())])) == [
        ["events", 2, None, None]
    ]


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        '{"o": "x"}',
        '{"o": 1, "c": []}',
        '{"o": "x", "c": [["events", "1", [], []]]}',
        '{"o": "x", "c": [["events", 1, [], [2]]]}',
        '{"o": "x", "c": [["events", 1, []]]}',
        '{"o": "x", "c": [["events", true, [], []]]}',
    ],
)
def test_malformed_payloads_are_refused(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_changes(payload)


async def test_remote_changes_wake_only_whom_they_concern() -> None:
    notifier = Notifier({"events": 1})
    published: list[Any] = []
    notifier.publishers.append(lambda *change: published.append(change))
    in_room, other = Waiter("@a:x", ["!r"]), Waiter("@b:x", ["!s"])
    notifier.register(in_room)
    notifier.register(other)
    apply_changes(notifier, [["events", 5, ["!r"], []]])
    assert await in_room.wait(0.01) and not await other.wait(0.01)
    assert notifier.positions["events"] == 5
    assert published == []  # a remote change is not sent on again
    in_room.clear()
    apply_changes(notifier, [["events", 4, None, None]])
    assert await in_room.wait(0.01) and await other.wait(0.01)
    assert notifier.positions["events"] == 5  # positions never go back


def test_channel_names_fit_postgres_identifiers() -> None:
    assert channel_for("public") == "homeserver_streams_public"
    long = channel_for("s" * 63)
    assert len(long) <= 63 and long != channel_for("s" * 62)


# ------------------------------------------------- two servers in one process


@pytest.fixture
def pg_database(postgres_dsn: str | None) -> Iterator[dict[str, Any]]:
    """`database` config for a fresh schema that several servers share."""
    schema = postgres.Schema(_require_postgres(postgres_dsn))
    try:
        yield {"name": "psycopg", "args": schema.database_args()}
    finally:
        schema.drop()


@pytest.fixture
async def pair(tmp_path: Path, pg_database: dict[str, Any]) -> AsyncIterator[tuple[HomeServer, HomeServer]]:
    servers = [HomeServer(make_config(tmp_path, pg_database)) for _ in range(2)]
    started: list[HomeServer] = []
    try:
        for hs in servers:
            await hs.start()
            started.append(hs)
        yield servers[0], servers[1]
    finally:
        for hs in reversed(started):
            await hs.stop()


async def _room(hs: HomeServer, creator: str) -> str:
    return await hs.rooms.create_room(creator, {"preset": "public_chat"})


async def test_a_send_on_one_server_wakes_the_other(pair: tuple[HomeServer, HomeServer]) -> None:
    a, b = pair
    assert a.pg_notify is not None and b.pg_notify is not None
    assert a.pg_notify.channel == b.pg_notify.channel
    alice = "@alice:test.local"
    room_id = await _room(a, alice)
    waiter = Waiter("@bob:test.local", [room_id])
    b.notifier.register(waiter)
    try:
        await asyncio.sleep(0.1)  # the room's own events have woken or passed B by now
        before = _counter(NOTIFICATIONS_SENT)
        latencies = []
        for i in range(SENDS):
            waiter.clear()
            await a.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": f"{i}"})
            sent = time.perf_counter()
            assert await waiter.wait(0.2), f"send {i} did not wake the other server within 200 ms"
            received = time.perf_counter()
            latencies.append(received - sent)
            assert b.notifier.positions["events"] == a.notifier.positions["events"]
        p50, p99 = _percentiles(latencies)
        print(f"\nin-process wake-up after commit over {SENDS} sends: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        # Counted once the NOTIFY returns, which can be after B has heard it.
        for _ in range(100):
            if _counter(NOTIFICATIONS_SENT) - before >= SENDS:
                break
            await asyncio.sleep(0.01)
        assert _counter(NOTIFICATIONS_SENT) - before >= SENDS
    finally:
        b.notifier.unregister(waiter)


async def test_an_invite_wakes_the_invitee_on_the_other_server(pair: tuple[HomeServer, HomeServer]) -> None:
    a, b = pair
    room_id = await _room(a, "@alice:test.local")
    await a.accounts.register("bob", None, inhibit_login=True)
    # Bob is in no room yet: only the user index can find him.
    waiter = Waiter("@bob:test.local", [])
    b.notifier.register(waiter)
    try:
        await asyncio.sleep(0.1)
        waiter.clear()
        await a.rooms.update_membership("@alice:test.local", room_id, "@bob:test.local", "invite")
        assert await waiter.wait(1)
    finally:
        b.notifier.unregister(waiter)


async def test_a_claim_on_one_server_refreshes_the_key_counts_of_the_other(
    pair: tuple[HomeServer, HomeServer],
) -> None:
    a, b = pair
    alice = "@alice:test.local"
    await a.accounts.register("alice", None, inhibit_login=True)
    await a.storage.db.execute(
        "device", "INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'D', 0)", (alice,)
    )
    await a.e2ee_keys.upload(alice, "D", {"one_time_keys": {"signed_curve25519:A": "a2V5", "signed_curve25519:B": "a2V5"}})
    assert await b.e2ee_keys.key_counts(alice, "D") == ({"signed_curve25519": 2}, [])  # now cached on B
    await a.e2ee_keys.claim({alice: {"D": "signed_curve25519"}})
    for _ in range(100):
        if await b.e2ee_keys.key_counts(alice, "D") == ({"signed_curve25519": 1}, []):
            break
        await asyncio.sleep(0.01)
    assert await b.e2ee_keys.key_counts(alice, "D") == ({"signed_curve25519": 1}, [])


async def test_oversized_and_split_changes_reach_the_other_server(
    pair: tuple[HomeServer, HomeServer],
) -> None:
    a, b = pair
    many = [f"@user{i:05d}:test.local" for i in range(600)]
    last, unrelated = Waiter(many[-1], []), Waiter("@nobody:test.local", [])
    b.notifier.register(last)
    b.notifier.register(unrelated)
    try:
        position = await a.db.run("pos", next_position_txn, "device_lists", read_committed=True)
        a.notifier.on_new("device_lists", position, users=many)  # split over several payloads
        assert await last.wait(1)
        assert not await unrelated.wait(0.1)
        assert b.notifier.positions["device_lists"] == position

        position = await a.db.run("pos", next_position_txn, "device_lists", read_committed=True)
        too_many = [f"@{i}{u[1:]}" for i in range(10) for u in many]
        a.notifier.on_new("device_lists", position, users=too_many)  # too big: everyone
        assert await unrelated.wait(1)
        assert b.notifier.positions["device_lists"] == position
    finally:
        b.notifier.unregister(last)
        b.notifier.unregister(unrelated)


async def test_a_dropped_listen_connection_reconnects_and_catches_up(
    pair: tuple[HomeServer, HomeServer], postgres_dsn: str
) -> None:
    a, b = pair
    assert b.pg_notify is not None
    alice = "@alice:test.local"
    room_id = await _room(a, alice)
    waiter = Waiter("@bob:test.local", [room_id])
    b.notifier.register(waiter)
    try:
        await asyncio.sleep(0.1)
        waiter.clear()
        old_pid = b.pg_notify.backend_pid
        reconnects = _counter(RECONNECTS)
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        while b.pg_notify.backend_pid == old_pid:  # until B has seen it go
            await asyncio.sleep(0.005)
        assert b.pg_notify.backend_pid is None  # and is waiting to reconnect
        # Sent while B is not listening: its notification is lost.
        await a.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "missed"})
        assert await waiter.wait(5), "the catch-up after reconnecting did not wake the waiter"
        assert b.notifier.positions["events"] == a.notifier.positions["events"]
        assert _counter(RECONNECTS) == reconnects + 1
        assert b.pg_notify.backend_pid not in (None, old_pid)
        # And it listens again.
        waiter.clear()
        await a.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "heard"})
        assert await waiter.wait(1)
    finally:
        b.notifier.unregister(waiter)


# ------------------------------------------------ two `homeserver run` processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunProcess:
    """`python -m homeserver run -c <config>` on a port of its own."""

    def __init__(self, tmp_path: Path, name: str, database: dict[str, Any]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server_name": "test.local",
                    "listeners": [
                        {"port": self.port, "bind_addresses": ["127.0.0.1"],
                         "resources": [{"names": ["client", "metrics"]}]}
                    ],
                    "database": database,
                    # The same key, as every process of one server must sign alike.
                    "signing_key_path": str(tmp_path / "signing.key"),
                    "media_store_path": str(tmp_path / "media"),
                    "registration_shared_secret": SHARED_SECRET,
                    "bcrypt_rounds": TEST_BCRYPT_ROUNDS,
                }
            )
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "homeserver", "run", "-c", str(config)],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                async with http.get(self.url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        pytest.fail(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    def __init__(self, http: aiohttp.ClientSession, server: RunProcess, token: str | None = None) -> None:
        self.http, self.server, self.token = http, server, token

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(
            method, self.server.url + path, json=body, headers=headers, params=params or None
        ) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw and raw[:1] in b"{[" else raw.decode())

    async def ok(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        status, result = await self.request(method, path, body, **params)
        assert status == 200, (method, path, status, result)
        return result

    def on(self, server: RunProcess) -> Client:
        return Client(self.http, server, self.token)

    async def register(self, localpart: str) -> Client:
        password = "correct horse battery"
        nonce = (await self.ok("GET", "/_synapse/admin/v1/register"))["nonce"]
        body = await self.ok(
            "POST",
            "/_synapse/admin/v1/register",
            {"nonce": nonce, "username": localpart, "password": password, "admin": False,
             "mac": registration_mac(SHARED_SECRET, nonce, localpart, password, False, None)},
        )
        return Client(self.http, self.server, body["access_token"])

    async def send(self, room_id: str, body: str) -> str:
        result = await self.ok(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body}",
            {"msgtype": "m.text", "body": body},
        )
        return result["event_id"]

    async def sync(self, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms), "filter": TIMELINE_FILTER}
        if since is not None:
            params["since"] = since
        return await self.ok("GET", "/_matrix/client/v3/sync", **params)


def _bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [
        e["content"]["body"]
        for e in room.get("timeline", {}).get("events", [])
        if e["type"] == "m.room.message"
    ]


async def _metric(client: Client, name: str) -> float:
    status, text = await client.request("GET", "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
    )


@pytest.fixture
async def processes(
    tmp_path: Path, pg_database: dict[str, Any]
) -> AsyncIterator[tuple[RunProcess, RunProcess]]:
    one = RunProcess(tmp_path, "one", pg_database)
    two = RunProcess(tmp_path, "two", pg_database)
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(one.wait_ready(http), two.wait_ready(http))
        yield one, two
    finally:
        one.stop()
        two.stop()


async def _sync_until(
    client: Client, since: str, room_id: str, wanted: set[str], timeout: float = 10
) -> tuple[list[str], str]:
    """Every message body incremental syncs return until `wanted` are all seen, and the next token."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not wanted <= set(seen) and time.monotonic() < deadline:
        result = await client.sync(since, timeout_ms=1000)
        seen.extend(_bodies(result, room_id))
        since = result["next_batch"]
    return seen, since


async def test_two_run_processes_wake_each_others_syncs(processes: tuple[RunProcess, RunProcess]) -> None:
    one, two = processes
    async with aiohttp.ClientSession() as http:
        anonymous = Client(http, one)
        alice = await anonymous.register("alice")
        bob = await anonymous.register("bob")
        created = await alice.ok("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
        room_id = created["room_id"]
        await bob.on(two).ok("POST", f"/_matrix/client/v3/join/{room_id}", {})
        bob_two = bob.on(two)
        since = (await bob_two.sync())["next_batch"]

        # A long-poll on process two returns as soon as process one commits.
        latencies = []
        for i in range(SENDS):
            poll = asyncio.create_task(bob_two.sync(since, timeout_ms=30000))
            await asyncio.sleep(0.3 if i == 0 else 0.02)  # let it park on the notifier
            while poll.done():
                # Woken by something else than a message (alice's presence
                # goes online after her first message): park again.
                assert _bodies(poll.result(), room_id) == []
                since = poll.result()["next_batch"]
                poll = asyncio.create_task(bob_two.sync(since, timeout_ms=30000))
                await asyncio.sleep(0.02)
            await alice.send(room_id, f"m{i}")
            sent = time.perf_counter()
            result = await asyncio.wait_for(poll, 1)
            latencies.append(time.perf_counter() - sent)
            bodies, since = _bodies(result, room_id), result["next_batch"]
            if bodies != [f"m{i}"]:  # woken by something else: the message must still come, once
                more, since = await _sync_until(bob_two, since, room_id, {f"m{i}"}, 2)
                bodies += more
            assert bodies == [f"m{i}"]
        p50, p99 = _percentiles(latencies)
        print(f"\ncross-process /sync wake-up over {SENDS} sends: p50 {p50:.2f} ms, p99 {p99:.2f} ms")

        # Sent at once on both processes: each seen exactly once, on either process.
        start = {
            (who, where.server.port): (await where.sync())["next_batch"]
            for who, client in (("alice", alice), ("bob", bob))
            for where in (client.on(one), client.on(two))
        }
        sends = [alice.send(room_id, f"a{i}") for i in range(10)]
        sends += [bob_two.send(room_id, f"b{i}") for i in range(10)]
        await asyncio.gather(*sends)
        wanted = {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)}
        for who, client in (("alice", alice), ("bob", bob)):
            for where in (one, two):
                seen, _ = await _sync_until(client.on(where), start[(who, where.port)], room_id, wanted)
                assert sorted(seen) == sorted(wanted), (who, where.port, seen)

        # Behind a load balancer: each request of one sync loop on either process.
        since = (await bob.sync())["next_batch"]
        sends = [alice.send(room_id, f"c{i}") for i in range(10)]
        sends += [bob_two.send(room_id, f"d{i}") for i in range(10)]
        wanted = {f"c{i}" for i in range(10)} | {f"d{i}" for i in range(10)}
        seen: list[str] = []
        deadline = time.monotonic() + 10
        sending = asyncio.gather(*sends)
        turn = 0
        while not wanted <= set(seen) and time.monotonic() < deadline:
            result = await bob.on((one, two)[turn % 2]).sync(since, timeout_ms=200)
            seen.extend(_bodies(result, room_id))
            since = result["next_batch"]
            turn += 1
        await sending
        assert sorted(seen) == sorted(wanted), seen

        assert await _metric(alice, 'homeserver_pg_notifications_total{direction="sent"}') > 0
        assert await _metric(bob_two, 'homeserver_pg_notifications_total{direction="received"}') > 0



async def test_an_invite_on_one_process_reaches_a_sync_on_the_other(processes: tuple[RunProcess, RunProcess]) -> None:
    """Process two caches bob's rooms between his syncs; a membership change
    made on process one drops that cache there too."""
    one, two = processes
    async with aiohttp.ClientSession() as http:
        anonymous = Client(http, one)
        alice = await anonymous.register("alice")
        bob = await anonymous.register("bob")
        bob_two = bob.on(two)
        since = (await bob_two.sync())["next_batch"]
        since = (await bob_two.sync(since))["next_batch"]  # (rows cached by now)
        room_id = (await alice.ok("POST", "/_matrix/client/v3/createRoom", {}))["room_id"]
        await alice.ok("POST", f"/_matrix/client/v3/rooms/{room_id}/invite", {"user_id": "@bob:test.local"})
        deadline = time.monotonic() + 5
        invited = False
        while not invited and time.monotonic() < deadline:
            body = await bob_two.sync(since, timeout_ms=1000)
            invited = room_id in body.get("rooms", {}).get("invite", {})
            since = body["next_batch"]
        assert invited


async def test_a_sliding_sync_connection_continues_on_either_process(
    processes: tuple[RunProcess, RunProcess],
) -> None:
    """Behind a load balancer: the positions of one sliding sync connection
    are stored in the database, so each request may go to either process;
    a long-poll on one wakes for a send on the other; nothing is missed or repeated."""
    one, two = processes
    path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
    request = {"conn_id": "room-list", "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 50,
                                                          "required_state": []}}}
    async with aiohttp.ClientSession() as http:
        anonymous = Client(http, one)
        alice = await anonymous.register("alice")
        bob = await anonymous.register("bob")
        room_id = (await alice.ok("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
        await bob.on(two).ok("POST", f"/_matrix/client/v3/join/{room_id}", {})
        pos = (await bob.on(one).ok("POST", path, request))["pos"]

        def bodies(body: dict[str, Any]) -> list[str]:
            room = body["rooms"].get(room_id, {})
            return [e["content"]["body"] for e in room.get("timeline", []) if e["type"] == "m.room.message"]

        # A long-poll on process two, woken by a send through process one.
        poll = asyncio.create_task(bob.on(two).ok("POST", path, request, pos=pos, timeout="20000"))
        await asyncio.sleep(0.3)
        assert not poll.done()
        await alice.on(one).send(room_id, "across")
        woken = await asyncio.wait_for(poll, 5)
        assert bodies(woken) == ["across"]
        pos = woken["pos"]

        sending = asyncio.gather(*[alice.on(one).send(room_id, f"a{i}") for i in range(10)],
                                 *[alice.on(two).send(room_id, f"b{i}") for i in range(10)])
        wanted = {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)}
        seen: list[str] = []
        turn = 0
        deadline = time.monotonic() + 15
        while not wanted <= set(seen) and time.monotonic() < deadline:
            where = (one, two)[turn % 2]
            turn += 1
            body = await bob.on(where).ok("POST", path, request, pos=pos, timeout="1000")
            seen.extend(bodies(body))
            pos = body["pos"]
        await sending
        assert sorted(seen) == sorted(wanted), seen
