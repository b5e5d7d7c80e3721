"""The LRU cache's get_or_load: one load per key however many wait for it."""

from __future__ import annotations

import asyncio

import pytest

from storage.cache import LRUCache


async def test_concurrent_callers_share_one_load():
    cache: LRUCache[str, int] = LRUCache("test_shared", 10)
    loads = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal loads
        loads += 1
        await release.wait()
        return 42

    waiting = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*waiting) == [42] * 20
    assert loads == 1
    assert await cache.get_or_load("k", load) == 42 and loads == 1


async def test_a_failed_load_is_not_cached():
    cache: LRUCache[str, int] = LRUCache("test_failed", 10)
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return 7

    with pytest.raises(RuntimeError):
        await cache.get_or_load("k", flaky)
    assert "k" not in cache
    assert await cache.get_or_load("k", flaky) == 7


async def test_one_cancelled_caller_does_not_cancel_the_others():
    cache: LRUCache[str, int] = LRUCache("test_cancel", 10)
    release = asyncio.Event()

    async def load() -> int:
        await release.wait()
        return 1

    first = asyncio.create_task(cache.get_or_load("k", load))
    second = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert cache.get("k") == 1


async def test_eviction_keeps_the_newest():
    cache: LRUCache[int, int] = LRUCache("test_evict", 2)
    for i in range(3):
        assert await cache.get_or_load(i, lambda i=i: asyncio.sleep(0, result=i)) == i
    assert 0 not in cache and 1 in cache and 2 in cache
