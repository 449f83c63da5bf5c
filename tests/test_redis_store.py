"""The Redis engine against a real redis-server: records, locks, the shared budget, outages."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.providers import RateLimit
from proxy.redis_store import RedisLimiter, RedisStore
from proxy.tokens import Credential
from tests.redis_server import RedisServer


async def test_records_round_trip_and_list_without_secrets_mixed_in(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        cred = Credential("tok", 100.0, 1.0, "refresh-1", {"X": "y"}, "access")
        await store.put("saison", "m1", cred)
        await store.put("kibo", None, Credential("k", 5.0))
        assert await store.get("saison", "m1") == cred
        assert await store.get("saison", "m2") is None
        items = await store.items()
        assert [(i.provider, i.tenant) for i in items] == [("kibo", None), ("saison", "m1")]
        assert await store.delete("saison", "m1") is True
        assert await store.delete("saison", "m1") is False
    finally:
        await store.close()


async def test_the_fetch_lock_has_one_owner_and_only_the_owner_releases_it(
    redis_server: RedisServer,
) -> None:
    a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        owner = await a.acquire("kibo", None, 5.0)
        assert owner is not None
        assert await b.acquire("kibo", None, 5.0) is None
        await b.release("kibo", None, "not-the-owner")
        assert await b.acquire("kibo", None, 5.0) is None
        await a.release("kibo", None, owner)
        assert await b.acquire("kibo", None, 5.0) is not None
    finally:
        await a.close()
        await b.close()


async def test_a_lock_whose_holder_died_expires_by_itself(redis_server: RedisServer) -> None:
    a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        assert await a.acquire("kibo", "t", 1.0) is not None  # a "dies" holding it
        assert await b.acquire("kibo", "t", 1.0) is None
        await asyncio.sleep(1.1)
        assert await b.acquire("kibo", "t", 1.0) is not None
    finally:
        await a.close()
        await b.close()


async def test_two_limiters_share_one_budget(redis_server: RedisServer) -> None:
    stores = [RedisStore(redis_server.url), RedisStore(redis_server.url)]
    limiters = [RedisLimiter(s) for s in stores]
    try:
        limit = RateLimit(per_second=10, burst=1)
        waits = [await limiters[i % 2].reserve("kibo", limit) for i in range(20)]
        # 20 reservations at 10/s across both: the last waits ~1.9 s, whoever asked
        assert waits[0] == pytest.approx(0.0, abs=0.01)
        assert sorted(waits) == waits
        assert waits[-1] == pytest.approx(1.9, abs=0.1)
        await limiters[0].block("kibo", 9_999_999_999.0)
        assert await limiters[1].blocked_until("kibo") == 9_999_999_999.0
    finally:
        for s in stores:
            await s.close()


async def test_redis_going_away_degrades_to_memory_logs_once_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        caplog.set_level(logging.WARNING, "keyhop.store")
        redis_server.stop()
        assert await store.ping() is False
        assert await store.get("kibo", None) is None
        # a write that cannot land is kept, visible to this process, and replayed later
        await store.put("saison", "m", Credential("t", 10.0, refresh_token="r2"))
        assert (await store.get("saison", "m")) is not None
        owner = await store.acquire("kibo", None, 5.0)
        assert owner is not None and owner.startswith("local:")
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1
        redis_server.start()
        assert await store.ping() is True
        fresh = RedisStore(redis_server.url)
        try:
            replayed = await fresh.get("saison", "m")
            assert replayed is not None and replayed.refresh_token == "r2"
        finally:
            await fresh.close()
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_known_blocked_until_never_waits_and_refreshes_a_stale_read_behind(
    redis_server: RedisServer,
) -> None:
    """The express lane asks on every request: the last read at once (None before the
    first); a read older than BLOCK_REFRESH is renewed with one round trip behind it."""
    from proxy.ratelimit import BLOCK_REFRESH
    from tests.support import Clock

    clock = Clock(1_000.0)
    stores = [RedisStore(redis_server.url), RedisStore(redis_server.url)]
    mine, other = RedisLimiter(stores[0], clock), RedisLimiter(stores[1], clock)
    try:
        assert mine.known_blocked_until("kibo") is None
        assert await mine.blocked_until("kibo") == 0.0
        await other.block("kibo", 5_000.0)
        assert mine.known_blocked_until("kibo") == 0.0  # fresh: no round trip
        clock.advance(BLOCK_REFRESH)
        assert mine.known_blocked_until("kibo") == 0.0  # stale: answered, then renewed
        for _ in range(500):
            if mine.known_blocked_until("kibo") == 5_000.0:
                break
            await asyncio.sleep(0.01)
        assert mine.known_blocked_until("kibo") == 5_000.0
    finally:
        for s in stores:
            await s.close()
