"""CredentialManager (proxy/token_cache.py) with a fake flow runner and no HTTP: unknown
tenants cost nothing (issue 12 item 6), locks live only while used, one fetch per key."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import pytest

from proxy.auth import CredentialFlow
from proxy.config import ProviderConfig
from proxy.errors import CredentialError, NotConnected
from proxy.store import MemoryStore
from proxy.token_cache import RECHECK, CredentialManager
from proxy.tokens import Credential
from tests.conftest import make_config
from tests.support import Clock


class CountingStore(MemoryStore):
    """The memory store, counting the calls that write (a lock taken is a write too)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.writes = 0

    async def put(self, *args: Any) -> None:
        self.writes += 1
        await super().put(*args)

    async def expire(self, *args: Any) -> None:
        self.writes += 1
        await super().expire(*args)

    async def delete(self, *args: Any) -> bool:
        self.writes += 1
        return await super().delete(*args)

    async def acquire(self, *args: Any) -> str | None:
        self.writes += 1
        return await super().acquire(*args)

    async def release(self, *args: Any) -> None:
        self.writes += 1
        await super().release(*args)


def provider(kind: str) -> ProviderConfig:
    auth: dict[str, Any]
    if kind == "authorization_code":
        auth = {"preset": "saison", "auth": {"client_id": "c", "client_secret": "s" * 16}}
        auth["auth"]["token_url"] = "https://127.0.0.1:9/auth/token"
        auth["auth"]["authorize_url"] = "https://127.0.0.1:9/authorize"
    else:
        auth = {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://127.0.0.1:9/token",
                "client_id": "c",
                "client_secret": "s" * 16,
            },
            "tenants": True,
        }
    config = make_config(
        {
            "providers": {"p": auth},
            "routes": [{"prefix": "/p", "upstream": "https://127.0.0.1:9", "provider": "p"}],
        }
    )
    return config.providers["p"]


class Runner:
    def __init__(self, clock: Clock, delay: float = 0.0) -> None:
        self.calls = 0
        self.clock = clock
        self.delay = delay

    async def __call__(self, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
        self.calls += 1
        next(flow)
        await asyncio.sleep(self.delay)
        flow.close()
        now = self.clock()
        return Credential(f"tok-{self.calls}", now + 3600, now)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


async def test_unknown_tenants_of_a_login_provider_leave_no_state_no_lock_and_no_store_write(
    clock: Clock,
) -> None:
    store = CountingStore(clock)
    runner = Runner(clock)
    manager = CredentialManager(store, runner, clock=clock)
    saison = provider("authorization_code")
    for i in range(2000):
        with pytest.raises(NotConnected):
            await manager.get(saison, f"member-{i}")
    assert store.writes == 0
    assert runner.calls == 0
    assert manager._locks == {}
    assert manager.states == {}


async def test_100000_unknown_tenants_leave_memory_flat(clock: Clock) -> None:
    store = CountingStore(clock)
    manager = CredentialManager(store, Runner(clock), clock=clock)
    saison = provider("authorization_code")

    async def name(first: int, count: int) -> None:
        for i in range(first, first + count):
            with pytest.raises(NotConnected):
                await manager.get(saison, f"member-{i}")

    await name(0, 5_000)  # warm up: interned strings, caches
    gc.collect()
    before = sys.getallocatedblocks()
    await name(5_000, 100_000)
    gc.collect()
    grown = sys.getallocatedblocks() - before
    # one object kept per tenant would be 100,000 blocks
    assert grown < 2_000, grown
    assert (manager._locks, manager.states) == ({}, {})
    assert store.writes == 0


async def test_a_key_lock_is_kept_while_a_fetch_runs_and_forgotten_after(clock: Clock) -> None:
    store = CountingStore(clock)
    runner = Runner(clock, delay=0.1)
    manager = CredentialManager(store, runner, clock=clock)
    cc = provider("client_credentials")
    tasks = [asyncio.create_task(manager.get(cc, "shop-1")) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert list(manager._locks) == [("p", "shop-1")]
    assert manager._locks[("p", "shop-1")].users == 50
    results = await asyncio.gather(*tasks)
    assert runner.calls == 1  # one fetch for 50 concurrent requests (SPEC 4.4)
    assert {credential.token for credential, _ in results} == {"tok-1"}
    assert manager._locks == {}


async def test_a_cancelled_waiter_gives_its_share_of_the_lock_back(clock: Clock) -> None:
    manager = CredentialManager(CountingStore(clock), Runner(clock, delay=0.1), clock=clock)
    cc = provider("client_credentials")
    first = asyncio.create_task(manager.get(cc, "a"))
    second = asyncio.create_task(manager.get(cc, "a"))
    await asyncio.sleep(0.02)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    await first
    assert manager._locks == {}


async def test_a_tenant_that_fetched_keeps_its_state_for_providers_view(clock: Clock) -> None:
    store = CountingStore(clock)
    manager = CredentialManager(store, Runner(clock), clock=clock)
    cc = provider("client_credentials")
    await manager.get(cc, "shop-1")
    assert list(manager.states) == [("p", "shop-1")]
    assert manager.states[("p", "shop-1")].fetches == 1
    assert store.writes > 0  # the lock and the new credential


class RefusingRunner(Runner):
    """Issues one token, then the token endpoint refuses."""

    async def __call__(self, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
        if self.calls:
            self.calls += 1
            flow.close()
            raise CredentialError("token endpoint of p refused: invalid_client", provider="p")
        return await super().__call__(provider, flow)


async def test_renew_fetches_a_new_credential_at_once(clock: Clock) -> None:
    runner = Runner(clock)
    manager = CredentialManager(CountingStore(clock), runner, clock=clock)
    cc = provider("client_credentials")
    first, _ = await manager.get(cc, "shop-1")
    renewed, failure = await manager.renew(cc, "shop-1")
    assert failure is None
    assert (first.token, renewed.token, runner.calls) == ("tok-1", "tok-2", 2)
    assert (await manager.get(cc, "shop-1"))[0].token == "tok-2"


async def test_a_refused_renew_keeps_the_current_credential_in_use(clock: Clock) -> None:
    runner = RefusingRunner(clock)
    manager = CredentialManager(CountingStore(clock), runner, clock=clock)
    cc = provider("client_credentials")
    first, _ = await manager.get(cc, "shop-1")
    kept, failure = await manager.renew(cc, "shop-1")
    assert failure is not None and "invalid_client" in failure
    assert kept.token == first.token == "tok-1"
    assert (await manager.get(cc, "shop-1"))[0].token == "tok-1"  # still served


# -- the in-memory answer (the express lane's) -------------------------------------------------


async def test_a_credential_answered_from_memory_is_dropped_with_its_key_when_refused(
    clock: Clock,
) -> None:
    runner = Runner(clock)
    manager = CredentialManager(CountingStore(clock), runner, clock=clock)
    cc = provider("client_credentials")
    first, _ = await manager.get(cc, "shop-1")
    assert manager.in_memory(cc, "shop-1") is first
    assert manager.in_memory(cc, "shop-1") is first  # again, from the hot entry
    await manager.invalidate(cc, "shop-1", first)
    assert manager.in_memory(cc, "shop-1") is None
    fresh, source = await manager.get(cc, "shop-1")
    assert (fresh.token, source) == ("tok-2", "fetched")
    assert manager.in_memory(cc, "shop-1") is fresh
    manager.forget("p", "shop-1")  # (a login's logout, a reload's dropped provider)
    assert manager.in_memory(cc, "shop-1") is None


async def test_the_in_memory_answer_still_renews_in_the_margin_and_rechecks_the_store(
    clock: Clock,
) -> None:
    store = CountingStore(clock)
    runner = Runner(clock)
    manager = CredentialManager(store, runner, clock=clock)
    cc = provider("client_credentials")
    first, _ = await manager.get(cc, "shop-1")
    assert manager.in_memory(cc, "shop-1") is first
    # another process rotates the stored token: seen at the next store check (RECHECK s)
    rotated = Credential("rotated", clock() + 3600, clock())
    await store.put("p", "shop-1", rotated)
    assert manager.in_memory(cc, "shop-1") is first
    clock.advance(RECHECK)
    assert manager.in_memory(cc, "shop-1") is first  # served while the store is read
    for _ in range(20):
        await asyncio.sleep(0)
    assert manager.in_memory(cc, "shop-1") is not None
    assert manager.in_memory(cc, "shop-1").token == "rotated"  # type: ignore[union-attr]
    # inside the renewal margin: served, and renewed in the background
    clock.advance(3600 - 30)
    assert manager.in_memory(cc, "shop-1").token == "rotated"  # type: ignore[union-attr]
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.calls == 2
    assert manager.in_memory(cc, "shop-1").token == "tok-2"  # type: ignore[union-attr]
