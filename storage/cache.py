"""A small LRU cache with Prometheus hit/miss counters.

Used for data that is immutable once written (events, state groups, room
versions) or whose writers invalidate it explicitly.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Hashable, TypeVar

from prometheus_client import Counter

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

CACHE_LOOKUPS = Counter(
    "homeserver_cache_lookups_total", "Cache lookups by cache name and result", ["cache", "result"]
)

_MISSING = object()


class LRUCache(Generic[K, V]):
    def __init__(self, name: str, max_size: int) -> None:
        self.name = name
        self.max_size = max_size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._hits = CACHE_LOOKUPS.labels(name, "hit")
        self._misses = CACHE_LOOKUPS.labels(name, "miss")

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self._misses.inc()
            return default
        self._hits.inc()
        self._data.move_to_end(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_size:
            self._data.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or `load()`'s, stored. Concurrent callers of a
        key being loaded wait for that one load instead of starting theirs
        (many syncs woken by one message read the same range). The load runs
        as a task of its own, so a caller's cancellation does not cancel it
        for the others; a failed load is not cached."""
        entry = self._data.get(key, _MISSING)
        if entry is not _MISSING:
            self._hits.inc()
            self._data.move_to_end(key)
            if isinstance(entry, asyncio.Task):
                return await asyncio.shield(entry)
            return entry  # type: ignore[return-value]
        self._misses.inc()
        task = asyncio.ensure_future(load())
        self.set(key, task)  # type: ignore[arg-type]

        def settle(done: asyncio.Task) -> None:
            if self._data.get(key) is not done:
                return
            if done.cancelled() or done.exception() is not None:
                del self._data[key]
            else:
                self._data[key] = done.result()

        task.add_done_callback(settle)
        return await asyncio.shield(task)

    def invalidate(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
