"""The workloads: the same client code, the same sizes, against any server.

Each workload sets up what it needs (untimed), times only the part it names,
and returns plain numbers (JSON-ready). Users are split into roles up front
so that one workload's rooms do not leak into another's measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .client import MatrixClient, RequestFailed, User
from .profile import Profiler
from .servers import Server, cpu_seconds, database_cpu_seconds, peak_rss_bytes

T = TypeVar("T")
PASSWORD = "bench-password-1"
FANOUT_TIMEOUT_MS = 30000


@dataclass
class Sizes:
    """How big each workload is (command-line flags override these)."""

    users: int = 60                 # registered, timed (raised to what the other workloads need)
    rooms: int = 20                 # rooms set up with members, timed
    room_members: int = 5           # members per such room, creator included
    messages: int = 2000            # messages in the send-throughput workload
    senders: int = 16               # concurrent senders
    send_rooms: int = 8             # rooms they send into
    fanout_clients: int = 50        # long-polling /sync clients in one room
    fanout_messages: int = 20       # messages sent to them
    fanout_interval: float = 0.5    # seconds between those messages
    sync_rooms: int = 100           # rooms of the user whose initial /sync is timed
    sync_room_messages: int = 3     # messages in each of those rooms
    sync_repeats: int = 3           # initial syncs timed (the median is reported)
    history_events: int = 2000      # messages in the room paged back through
    page_size: int = 50             # events per /messages page
    concurrency: int = 8            # parallel requests in set-up steps
    room_version: str = "12"

    @classmethod
    def quick(cls) -> Sizes:
        return cls(users=8, rooms=4, room_members=3, messages=300, senders=4, send_rooms=2,
                   fanout_clients=5, fanout_messages=5, fanout_interval=0.1, sync_rooms=10,
                   sync_room_messages=2, sync_repeats=2, history_events=200, page_size=50)

    def users_needed(self) -> int:
        # Senders and fan-out clients (+ their sender) come from the front of the
        # list; the user whose initial sync is timed is the last one.
        return max(self.users, self.senders, self.fanout_clients + 1, self.room_members) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating between the nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def gather_limited(limit: int, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs with at most `limit` in flight; results in job order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def timed(samples: list[float], call: Callable[..., Awaitable[T]], *args: Any,
                **kwargs: Any) -> T:
    """Await `call(*args, **kwargs)`, appending the seconds it took to `samples`."""
    start = time.perf_counter()
    result = await call(*args, **kwargs)
    samples.append(time.perf_counter() - start)
    return result


@dataclass
class Context:
    """What every workload gets: the client, the server, the sizes and the users."""

    client: MatrixClient
    server: Server
    sizes: Sizes
    users: list[User]
    profile_dir: Path | None = None  # where py-spy writes, when profiling
    profiles: dict[str, Path] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def measured(self, name: str) -> AsyncIterator[None]:
        """Marks the timed part of a workload: the only part a --profile run samples."""
        if self.profile_dir is None:
            yield
            return
        profiler = Profiler(self.profile_dir / f"profile-{name}.txt")
        profiler.start(self.server.pid)
        await asyncio.sleep(0.5)  # let py-spy attach before the clock starts
        try:
            yield
        finally:
            profiler.stop()
            self.profiles[name] = profiler.path

    async def room_with(self, creator: User, members: Sequence[User],
                        samples: dict[str, list[float]] | None = None) -> str:
        """Create a room and bring `members` in by invite + join (timed into `samples`)."""
        s = samples if samples is not None else {"create": [], "invite": [], "join": []}
        c = self.client
        room_id = await timed(s["create"], c.create_room, creator,
                              room_version=self.sizes.room_version)
        for member in members:
            await timed(s["invite"], c.invite, creator, room_id, member.user_id)
            await timed(s["join"], c.join, member, room_id)
        return room_id


# ---------------------------------------------------------------- workloads


async def register(client: MatrixClient, server: Server, sizes: Sizes) -> tuple[list[User], dict]:
    """Shared-secret registration of every user the run needs (bcrypt dominates on both)."""
    count = sizes.users_needed()
    samples: list[float] = []
    start = time.perf_counter()
    users = await gather_limited(sizes.concurrency, [
        partial(timed, samples, client.register, server.shared_secret, f"user{i}", PASSWORD)
        for i in range(count)
    ])
    elapsed = time.perf_counter() - start
    return users, {
        "users": count, "seconds": round(elapsed, 3), "users_per_s": round(count / elapsed, 2),
        "latency_p50_ms": _ms(percentile(samples, 50)),
    }


async def rooms(ctx: Context) -> dict:
    """Rooms with members: createRoom, then invite + join for each other member."""
    sz, users = ctx.sizes, ctx.users[:-1]  # the last is kept for the initial sync
    samples: dict[str, list[float]] = {"create": [], "invite": [], "join": []}

    def setup(i: int) -> Callable[[], Awaitable[str]]:
        creator = users[i % len(users)]
        members = [users[(i + k) % len(users)] for k in range(1, sz.room_members)]
        return partial(ctx.room_with, creator, members, samples)

    async with ctx.measured("rooms"):
        start = time.perf_counter()
        await gather_limited(sz.concurrency, [setup(i) for i in range(sz.rooms)])
        elapsed = time.perf_counter() - start
    return {
        "rooms": sz.rooms, "members_per_room": sz.room_members, "seconds": round(elapsed, 3),
        "rooms_per_s": round(sz.rooms / elapsed, 2),
        **{f"{op}_p50_ms": _ms(percentile(v, 50)) for op, v in samples.items() if v},
    }


async def send(ctx: Context) -> dict:
    """Message throughput: `senders` users each sending into one of `send_rooms` rooms."""
    sz, c = ctx.sizes, ctx.client
    senders = ctx.users[: sz.senders]
    room_count = min(sz.send_rooms, len(senders))
    room_ids = await gather_limited(sz.concurrency, [
        partial(ctx.room_with, senders[j], senders[room_count + j::room_count])
        for j in range(room_count)
    ])
    remaining = iter(range(sz.messages))
    latencies: list[float] = []

    async def sender(i: int) -> None:
        user, room_id = senders[i], room_ids[i % room_count]
        for n in remaining:
            await timed(latencies, c.send_text, user, room_id, f"message {n}")

    pid = ctx.server.pid
    async with ctx.measured("send"):
        cpu_before, db_before = cpu_seconds(pid), database_cpu_seconds(ctx.server.database)
        start = time.perf_counter()
        await asyncio.gather(*(sender(i) for i in range(len(senders))))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu_before
        db_after = database_cpu_seconds(ctx.server.database)
    result = {
        "messages": sz.messages, "senders": len(senders), "rooms": room_count,
        "seconds": round(elapsed, 3), "messages_per_s": round(sz.messages / elapsed, 1),
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "cpu_s": round(cpu, 3), "cpu_s_per_1000": round(cpu * 1000 / sz.messages, 3),
    }
    if db_before is not None and db_after is not None:
        result["db_cpu_s_per_1000"] = round((db_after - db_before) * 1000 / sz.messages, 3)
    return result


def _timeline(response: dict, room_id: str) -> list[dict]:
    room = response.get("rooms", {}).get("join", {}).get(room_id, {})
    return room.get("timeline", {}).get("events", [])


class FanOutListener:
    """One long-polling /sync client, recording when each numbered message reaches it."""

    def __init__(self, client: MatrixClient, user: User, room_id: str, total: int) -> None:
        self.client, self.user, self.room_id, self.total = client, user, room_id, total
        self.arrivals: dict[int, list[float]] = {}  # seq -> every arrival time
        self.polling = False
        self.syncs = 0

    @property
    def complete(self) -> bool:
        return len(self.arrivals) >= self.total

    async def listen(self, since: str, progress: Callable[[], None]) -> None:
        """Long-poll until the end marker (seq == total) arrives."""
        while True:
            self.polling = True
            response = await self.client.sync(self.user, since=since, timeout_ms=FANOUT_TIMEOUT_MS)
            self.polling = False
            now = time.perf_counter()
            self.syncs += 1
            since = response["next_batch"]
            for event in _timeline(response, self.room_id):
                seq = event.get("content", {}).get("bench_seq")
                if event.get("type") != "m.room.message" or not isinstance(seq, int):
                    continue
                if seq == self.total:
                    return
                self.arrivals.setdefault(seq, []).append(now)
            progress()


async def fanout(ctx: Context) -> dict:
    """Send->arrival latency at `fanout_clients` long-polling /sync clients in one room.

    Each client keeps one /sync (timeout=30 s, with its since token) open; a
    sender sends `fanout_messages` messages spaced `fanout_interval` apart,
    then an end marker once every client has them all (or after 15 s). Every
    delivery is recorded, so misses and duplicates are counted, not assumed.
    """
    sz, c = ctx.sizes, ctx.client
    sender, users = ctx.users[0], ctx.users[1: sz.fanout_clients + 1]
    room_id = await c.create_room(sender, room_version=sz.room_version)
    await gather_limited(sz.concurrency, [
        partial(c.invite, sender, room_id, u.user_id) for u in users])
    await gather_limited(sz.concurrency, [partial(c.join, u, room_id) for u in users])
    initial = await gather_limited(sz.concurrency, [
        partial(c.sync, u, timeout_ms=0) for u in users])

    total = sz.fanout_messages
    listeners = [FanOutListener(c, u, room_id, total) for u in users]
    all_complete = asyncio.Event()

    def progress() -> None:
        if all(listener.complete for listener in listeners):
            all_complete.set()

    tasks = [asyncio.create_task(listener.listen(sync["next_batch"], progress))
             for listener, sync in zip(listeners, initial)]
    # Let every client park its long poll before the first message.
    for _ in range(100):
        if all(listener.polling for listener in listeners):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)

    sent_at: dict[int, float] = {}
    send_latencies: list[float] = []
    try:
        async with ctx.measured("fanout"):
            for seq in range(total):
                started = time.perf_counter()
                sent_at[seq] = started
                await timed(send_latencies, c.send_text, sender, room_id, f"fanout {seq}",
                            {"bench_seq": seq})
                await asyncio.sleep(max(0.0, sz.fanout_interval - (time.perf_counter() - started)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(all_complete.wait(), timeout=15)
        await c.send_text(sender, room_id, "end", {"bench_seq": total})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    latencies = [times[0] - sent_at[seq] for listener in listeners
                 for seq, times in listener.arrivals.items() if seq in sent_at]
    return {
        "clients": len(listeners), "messages": total, "interval_s": sz.fanout_interval,
        "deliveries": len(latencies), "syncs": sum(listener.syncs for listener in listeners),
        "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies, default=float("nan"))),
        "send_p50_ms": _ms(percentile(send_latencies, 50)),
        "missed": sum(total - len(listener.arrivals) for listener in listeners),
        "duplicated": sum(len(times) - 1 for listener in listeners
                          for times in listener.arrivals.values()),
    }


async def initial_sync(ctx: Context) -> dict:
    """A full initial /sync of a user in `sync_rooms` rooms with a few messages each,
    each time from a newly logged-in device."""
    sz, c = ctx.sizes, ctx.client
    reader, others = ctx.users[-1], ctx.users[:-1]

    async def one_room(i: int) -> None:
        # Rooms made by many people, as in life; one creator's concurrent
        # createRooms with equal content would also collide on the v12 room ID.
        creator = others[i % len(others)]
        room_id = await c.create_room(creator, room_version=sz.room_version,
                                      invite=[reader.user_id])
        await c.join(reader, room_id)
        for n in range(sz.sync_room_messages):
            await c.send_text(creator, room_id, f"room {i} message {n}")

    await gather_limited(sz.concurrency, [partial(one_room, i) for i in range(sz.sync_rooms)])
    samples: list[float] = []
    response: dict = {}
    # A new device each time, as a client signing in does; it also keeps
    # Synapse's sync response cache (keyed by device) from answering.
    devices = [await c.login(reader, PASSWORD) for _ in range(sz.sync_repeats)]
    async with ctx.measured("initial_sync"):
        for device in devices:
            response = await timed(samples, c.sync, device, timeout_ms=0)
    joined = response.get("rooms", {}).get("join", {})
    return {
        "rooms": sz.sync_rooms, "messages_per_room": sz.sync_room_messages,
        "seconds": round(statistics.median(samples), 4),
        "first_s": round(samples[0], 4), "samples_s": [round(s, 4) for s in samples],
        "rooms_returned": len(joined),
        "timeline_events": sum(len(r.get("timeline", {}).get("events", [])) for r in joined.values()),
        "state_events": sum(len(r.get("state", {}).get("events", [])) for r in joined.values()),
        "sliding": await _sliding_sync(ctx, reader),
    }


# What Element X asks of each room in its room list (matrix-rust-sdk's defaults).
ROOM_LIST_STATE = [
    ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
    ["m.room.name", ""], ["m.room.topic", ""], ["m.room.avatar", ""], ["m.room.canonical_alias", ""],
    ["m.room.power_levels", ""], ["m.room.join_rules", ""], ["m.room.create", ""],
    ["m.room.history_visibility", ""], ["m.room.tombstone", ""], ["m.room.pinned_events", ""],
    ["m.space.parent", "*"],
]
ROOM_LIST_EXTENSIONS = {name: {"enabled": True}
                        for name in ("to_device", "e2ee", "account_data", "receipts", "typing")}


async def _sliding_sync(ctx: Context, reader: User) -> dict:
    """The same user's room list through Simplified Sliding Sync, as Element X
    starts: the first 20 rooms with their latest event, then the rest. Each
    from a new device; skipped where the server has no sliding sync."""
    sz, c = ctx.sizes, ctx.client

    def request(end: int) -> dict:
        return {"conn_id": "room-list", "extensions": ROOM_LIST_EXTENSIONS, "lists": {"all": {
            "ranges": [[0, end]], "timeline_limit": 1, "required_state": ROOM_LIST_STATE}}}

    first: list[float] = []
    rest: list[float] = []
    rooms = 0
    devices = [await c.login(reader, PASSWORD) for _ in range(sz.sync_repeats)]
    try:
        async with ctx.measured("sliding_sync"):
            for device in devices:
                window = await timed(first, c.sliding_sync, device, request(19))
                more = await timed(rest, c.sliding_sync, device, request(sz.sync_rooms - 1), pos=window["pos"])
                rooms = len(window.get("rooms", {})) + len(more.get("rooms", {}))
    except RequestFailed as e:
        if "HTTP 404" in str(e) or "HTTP 405" in str(e) or "HTTP 400" in str(e):
            return {"skipped": str(e)[:200]}
        raise
    return {"first_window_s": round(statistics.median(first), 4),
            "rest_s": round(statistics.median(rest), 4), "rooms_returned": rooms}


async def pagination(ctx: Context) -> dict:
    """Back-pagination with /messages dir=b through a room of `history_events` messages."""
    sz, c = ctx.sizes, ctx.client
    user = ctx.users[0]
    room_id = await c.create_room(user, room_version=sz.room_version)
    await gather_limited(sz.concurrency, [
        partial(c.send_text, user, room_id, f"history {n}") for n in range(sz.history_events)
    ])
    samples: list[float] = []
    token: str | None = None
    messages = 0
    async with ctx.measured("pagination"):
        while True:
            page = await timed(samples, c.messages, user, room_id, limit=sz.page_size,
                                 from_token=token)
            messages += sum(1 for e in page.get("chunk", []) if e.get("type") == "m.room.message")
            token = page.get("end")
            if not page.get("chunk") or token is None:
                break
    return {
        "events": sz.history_events, "page_size": sz.page_size, "pages": len(samples),
        "messages_seen": messages, "seconds": round(sum(samples), 3),
        "page_ms_p50": _ms(percentile(samples, 50)),
        "page_ms_mean": _ms(statistics.fmean(samples)),
        "page_ms_p99": _ms(percentile(samples, 99)),
    }


async def has_sync(client: MatrixClient, user: User) -> bool:
    """Whether the server answers GET /sync at all (it is optional while being written)."""
    try:
        await client.sync(user, timeout_ms=0)
    except RequestFailed as e:
        if "HTTP 404" in str(e) or "HTTP 405" in str(e):
            return False
        raise
    return True


WORKLOADS = ("rooms", "send", "fanout", "initial_sync", "pagination")


async def run_all(server: Server, sizes: Sizes, log: Callable[[str], None],
                  only: Sequence[str] = WORKLOADS, profile: bool = False) -> dict:
    """The workloads in `only` (after registration, which all need) against one running
    server, in order; returns their results. With `profile`, the timed part of each is
    sampled with py-spy into the server's work directory (see `results["profiles"]`)."""
    results: dict[str, Any] = {"startup_s": round(server.startup_seconds, 2)}
    async with MatrixClient(server.base_url) as client:
        log("register")
        users, results["register"] = await register(client, server, sizes)
        ctx = Context(client, server, sizes, users, server.workdir if profile else None)
        steps: list[tuple[str, Callable[[Context], Awaitable[dict]], bool]] = [
            ("rooms", rooms, False), ("send", send, False), ("fanout", fanout, True),
            ("initial_sync", initial_sync, True), ("pagination", pagination, False),
        ]
        sync_ok = await has_sync(client, users[0])
        for name, workload, needs_sync in steps:
            if name not in only:
                continue
            if needs_sync and not sync_ok:
                results[name] = {"skipped": "the server has no GET /sync"}
                log(f"{name}: skipped (no /sync)")
                continue
            log(name)
            started = time.perf_counter()
            results[name] = await workload(ctx)
            results[name]["wall_s"] = round(time.perf_counter() - started, 2)
    if ctx.profiles:
        results["profiles"] = {name: str(path) for name, path in ctx.profiles.items()}
    results["process"] = {
        "cpu_s_total": round(cpu_seconds(server.pid), 2),
        "peak_rss_mb": round(peak_rss_bytes(server.pid) / 2**20, 1),
    }
    return results
