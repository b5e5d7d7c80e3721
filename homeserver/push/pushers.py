"""HTTP pushers: deliver users' notifications to their push gateways.

Pushers must run in one process only, or every notification would be sent
once per process: the process holding a PostgreSQL advisory lock (on a
connection of its own) owns them all; the others retry to take over every
`ownership_retry` seconds. (SQLite means one process: it always owns.)

The owner learns of new push actions from this process directly and, for
those other processes stored, by looking every `poll_interval` seconds: one
indexed query says whose actions arrived, and only those users' pushers
are (re)loaded and poked. Each pusher is a small task that sends its user's
unread notifying actions, in the order they were stored, to the gateway's
`/_matrix/push/v1/notify`, and records how far it got. A failing gateway is
retried with exponential backoff (spec: "retry for a reasonable amount of
time"); a notification still failing after `give_up_after` seconds is
skipped. A pushkey the gateway lists in `rejected` loses its pusher.

The gateway URL is the user's to choose, so requests go only to the
addresses `ip_range_blacklist`/`ip_range_whitelist` allow (homeserver/net.py:
never a private or otherwise non-public one unless whitelisted), without
following redirects; a notification for a gateway at a refused address is
skipped, not retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp
from prometheus_client import Counter
from yarl import URL

from storage.engines import Database, PostgresDatabase
from storage.events import EventStore
from storage.push import PushAction, Pusher, PushStore

from ..net import AddressPolicy, BlockedAddress, checking_connector, was_blocked
from ..util import cancel_task
from .rules import tweaks_of

logger = logging.getLogger(__name__)

PUSHES = Counter("homeserver_pushes_total", "Notifications sent to push gateways, by outcome", ["outcome"])

NOTIFY_PATH = "/_matrix/push/v1/notify"
_BATCH = 20
_ROOM_STATE = (("m.room.name", ""), ("m.room.canonical_alias", ""))
_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(%s || '.' || current_schema()))"


class Ownership(Protocol):
    async def check(self) -> None:
        """Raise if ownership was lost."""

    async def release(self) -> None: ...


class _SoleProcess:
    """SQLite: this process is the only one."""

    async def check(self) -> None:
        return None

    async def release(self) -> None:
        return None


class _AdvisoryLock:
    """A session advisory lock, held as long as its connection lives."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def check(self) -> None:
        await self.conn.execute("SELECT 1")

    async def release(self) -> None:
        await self.conn.close()


async def take_ownership(db: Database, name: str = "homeserver_pushers") -> Ownership | None:
    """Ownership of the background work `name` (pushers by default), if no other process holds it."""
    if not isinstance(db, PostgresDatabase):
        return _SoleProcess()
    try:
        conn = await db.dedicated_connection(name.replace("_", "-"))
    except Exception as exc:  # noqa: BLE001 - retried later
        logger.warning("cannot connect to take %s ownership: %s", name, exc)
        return None
    try:
        cur = await conn.execute(_LOCK_SQL, (name,))
        held = (await cur.fetchone())[0]
    except Exception:
        await conn.close()
        raise
    if not held:
        await conn.close()
        return None
    return _AdvisoryLock(conn)


class PusherPool:
    """Every pusher of this server (while this process owns them), each with its own task."""

    # Seconds; tests shorten them.
    initial_backoff = 1.0
    max_backoff = 3600.0
    give_up_after = 24 * 3600.0
    request_timeout = 30.0
    poll_interval = 1.0
    ownership_retry = 10.0

    def __init__(self, db: Database, store: PushStore, events: EventStore, policy: AddressPolicy) -> None:
        self.db = db
        self.store = store
        self.events = events
        self.policy = policy
        self.is_owner = False
        self._pushers: dict[tuple[str, str, str], HttpPusher] = {}
        self._by_user: dict[str, set[tuple[str, str, str]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._owner_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=checking_connector(self.policy),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            trust_env=False,
        )
        self._owner_task = asyncio.create_task(self._own(), name="pusher ownership")

    async def stop(self) -> None:
        if self._owner_task is not None:
            self._owner_task.cancel()
            await asyncio.gather(self._owner_task, return_exceptions=True)
            self._owner_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "pusher pool is not started"
        return self._session

    def on_new_actions(self) -> None:
        """This process stored new push actions: look for whose, now."""
        self._wake.set()

    async def remove(self, key: tuple[str, str, str]) -> None:
        """Stop a pusher (it is restarted from the database when next needed)."""
        http = self._pushers.pop(key, None)
        if http is None:
            return
        keys = self._by_user.get(http.pusher.user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[http.pusher.user_id]
        await http.stop()

    # ------------------------------------------------------------ ownership

    async def _own(self) -> None:
        while True:
            try:
                ownership = await take_ownership(self.db)
            except Exception:
                logger.exception("taking pusher ownership failed")
                ownership = None
            if ownership is not None:
                try:
                    await self._run_as_owner(ownership)
                except Exception:
                    logger.exception("lost pusher ownership")
                finally:
                    self.is_owner = False
                    for key in list(self._pushers):
                        await self.remove(key)
                    await ownership.release()
            await asyncio.sleep(self.ownership_retry)

    async def _run_as_owner(self, ownership: Ownership) -> None:
        logger.info("this process sends push notifications")
        self.is_owner = True
        position = await self.store.push_position()
        for pusher in await self.store.get_pushers():
            self._start(pusher).poke()  # catch up on what arrived while nobody pushed
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await ownership.check()
            users, position = await self.store.users_with_push_actions(position)
            if users:
                await self._dispatch(users)

    async def _dispatch(self, users: set[str]) -> None:
        """Poke these users' pushers, (re)starting those set or changed since they were loaded."""
        stored = {p.key: p for p in await self.store.get_pushers(sorted(users))}
        for user_id in users:
            for key in list(self._by_user.get(user_id, ())):
                if key not in stored:
                    await self.remove(key)  # deleted by another process
        for key, pusher in stored.items():
            running = self._pushers.get(key)
            if running is None or not running.pusher.same_settings(pusher):
                await self.remove(key)
                running = self._start(pusher)
            running.poke()

    def _start(self, pusher: Pusher) -> HttpPusher:
        http = self._pushers[pusher.key] = HttpPusher(self, pusher)
        self._by_user.setdefault(pusher.user_id, set()).add(pusher.key)
        return http


class HttpPusher:
    def __init__(self, pool: PusherPool, pusher: Pusher) -> None:
        self.pool = pool
        self.pusher = pusher
        self.last_push_position = pusher.last_push_position
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def poke(self) -> None:
        if self._stopped:
            return
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"pusher {self.pusher.pushkey[:16]}")

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not asyncio.current_task():
            await cancel_task(task)

    async def _run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send_pending()
            except Exception:
                logger.exception("pusher %s of %s failed", self.pusher.app_id, self.pusher.user_id)

    async def _send_pending(self) -> None:
        store, p = self.pool.store, self.pusher
        while True:
            actions = await store.unread_push_actions(p.user_id, after=self.last_push_position, limit=_BATCH)
            if not actions:
                return
            for action in actions:
                if not await self._deliver(action):
                    return  # the gateway rejected the pushkey: the pusher is gone
                self.last_push_position = action.push_position
                if not await store.advance_pusher(p.app_id, p.pushkey, p.user_id, action.push_position):
                    return  # deleted meanwhile

    async def _deliver(self, action: PushAction) -> bool:
        """Send one notification, retrying with backoff; False if the pushkey was rejected."""
        body = await self._notification(action)
        if body is None:
            return True
        backoff, started = self.pool.initial_backoff, asyncio.get_running_loop().time()
        while True:
            try:
                rejected = await self._post(body)
            except BlockedAddress as exc:
                PUSHES.labels("blocked").inc()
                logger.warning("not pushing %s to %s: %s", action.event_id, self.pusher.user_id, exc)
                return True
            if rejected is not None:
                PUSHES.labels("sent").inc()
                if self.pusher.pushkey in rejected:
                    logger.info("push gateway rejected pushkey of %s; removing the pusher", self.pusher.user_id)
                    await self.pool.store.delete_pusher(self.pusher.app_id, self.pusher.pushkey, self.pusher.user_id)
                    await self.pool.remove(self.pusher.key)
                    return False
                return True
            PUSHES.labels("failed").inc()
            if asyncio.get_running_loop().time() - started > self.pool.give_up_after:
                logger.warning("giving up pushing %s to %s", action.event_id, self.pusher.user_id)
                return True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.pool.max_backoff)

    async def _post(self, body: dict[str, Any]) -> list[str] | None:
        """POST to the gateway: the `rejected` pushkeys, or None on any failure;
        BlockedAddress if the gateway is at an address that may not be connected to."""
        url = str(self.pusher.data.get("url"))
        if not self.pool.policy.allows_host(URL(url).host or ""):
            raise BlockedAddress(f"the push gateway {url} is at a blocked address")
        try:
            async with self.pool.session.post(url, json=body, allow_redirects=False) as resp:
                if resp.status // 100 != 2:
                    logger.info("push gateway %s answered %d", url, resp.status)
                    return None
                answer = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            if was_blocked(exc):
                raise BlockedAddress(f"the push gateway {url} resolves only to blocked addresses") from None
            logger.info("push gateway %s failed: %s", url, exc)
            return None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            logger.info("push gateway %s failed: %s", url, exc)
            return None
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        return [k for k in rejected if isinstance(k, str)] if isinstance(rejected, list) else []

    async def _notification(self, action: PushAction) -> dict[str, Any] | None:
        """The /notify body for an action (spec: Push Gateway API); None if the event is gone."""
        events = self.pool.events
        event = await events.get_event(action.event_id)
        if event is None:
            return None
        tweaks = tweaks_of(action.actions)
        data = {k: v for k, v in self.pusher.data.items() if k != "url"}
        device = {
            "app_id": self.pusher.app_id,
            "pushkey": self.pusher.pushkey,
            "pushkey_ts": self.pusher.pushkey_ts // 1000,
            "data": data,
            "tweaks": tweaks,
        }
        unread = await self.pool.store.total_unread(self.pusher.user_id)
        notification: dict[str, Any] = {
            "event_id": event.event_id,
            "room_id": event.room_id,
            "prio": "high"
            if event.type == "m.room.encrypted" or tweaks.get("highlight") or tweaks.get("sound")
            else "low",
            "counts": {"unread": unread} if unread else {},
            "devices": [device],
        }
        if data.get("format") == "event_id_only":
            return {"notification": notification}
        keys = [*_ROOM_STATE, ("m.room.member", event.sender)]
        state = await events.get_events((await events.get_current_state_ids(event.room_id, keys)).values())
        by_type = {e.type: e for e in state.values()}
        notification["type"] = event.type
        notification["sender"] = event.sender
        if event.redacted_by is None:
            notification["content"] = event.content
        extras = {
            "sender_display_name": _string(by_type.get("m.room.member"), "displayname"),
            "room_name": _string(by_type.get("m.room.name"), "name"),
            "room_alias": _string(by_type.get("m.room.canonical_alias"), "alias"),
        }
        notification.update({k: v for k, v in extras.items() if v})
        if event.type == "m.room.member":
            notification["user_is_target"] = event.state_key == self.pusher.user_id
        return {"notification": notification}


def _string(event: Any, key: str) -> str | None:
    value = event.content.get(key) if event is not None else None
    return value if isinstance(value, str) else None
