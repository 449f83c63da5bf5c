"""The in-memory credential memo (proxy/credential_memory.py `MemoryTier.hot`, read by
`CredentialManager.in_memory`, the express lane's credential): it may answer only with what
the TLRUCache behind it holds, so whatever changes a key (a refusal, a rotation by another
process sharing the store, a renewal, a revocation, a reload's forget, a login) is seen by
the next request exactly as without the memo (SPEC 4.4)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from proxy.auth import CredentialFlow
from proxy.providers import ProviderConfig
from proxy.store import MemoryStore
from proxy.token_cache import RECHECK, CredentialManager
from proxy.tokens import Credential
from tests.support import Clock
from tests.test_http1 import FUZZ_CASES
from tests.test_token_cache import Runner, clock, provider

__all__ = ["clock"]  # fixture

CC = provider("client_credentials")


class Named(Runner):
    """A token endpoint whose tokens start with `prefix` (two processes never mint equal
    tokens) and that may issue short-lived ones."""

    def __init__(self, clock: Clock, prefix: str, life: float = 3600) -> None:
        super().__init__(clock)
        self.prefix = prefix
        self.life = life

    async def __call__(self, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
        self.calls += 1
        next(flow)
        flow.close()
        now = self.clock()
        return Credential(f"{self.prefix}-{self.calls}", now + self.life, now)


class Unmemoized(CredentialManager):
    """The manager with its memo emptied before every in_memory: the TLRUCache's answer."""

    def in_memory(self, provider: ProviderConfig, tenant: str | None) -> Credential | None:
        self._cache._hot.clear()
        return super().in_memory(provider, tenant)


async def settle() -> None:
    """Background rechecks and renewals (no I/O: a memory store, a fake endpoint) run."""
    for _ in range(30):
        await asyncio.sleep(0)


def token(credential: Credential | None) -> str | None:
    return None if credential is None else credential.token


async def test_a_reload_that_forgets_a_provider_drops_its_memo(clock: Clock) -> None:
    manager = CredentialManager(MemoryStore(clock), Named(clock, "a"), clock=clock)
    first, _ = await manager.get(CC, "t1")
    other, _ = await manager.get(CC, "t2")
    assert manager.in_memory(CC, "t1") is first and manager.in_memory(CC, "t2") is other
    manager.forget("p", "t1")  # one tenant (a shop's uninstall)
    assert manager.in_memory(CC, "t1") is None
    assert manager.in_memory(CC, "t2") is other
    manager.forget("p")  # the whole provider (a reload changed it)
    assert manager.in_memory(CC, "t2") is None


async def test_a_revocation_by_another_process_is_seen_at_the_next_store_check(
    clock: Clock,
) -> None:
    store = MemoryStore(clock)
    manager = CredentialManager(store, Named(clock, "a"), clock=clock)
    first, _ = await manager.get(CC, "t1")
    assert manager.in_memory(CC, "t1") is first
    assert await store.delete("p", "t1")  # `keyhop tokens revoke` elsewhere
    clock.advance(RECHECK)
    manager.in_memory(CC, "t1")  # due for a store check: it starts
    await settle()
    assert manager.in_memory(CC, "t1") is None


async def test_a_rotation_by_another_process_replaces_the_memo_at_the_next_check(
    clock: Clock,
) -> None:
    store = MemoryStore(clock)
    manager = CredentialManager(store, Named(clock, "a"), clock=clock)
    elsewhere = CredentialManager(store, Named(clock, "b"), clock=clock)
    first, _ = await manager.get(CC, "t1")
    assert manager.in_memory(CC, "t1") is first
    rotated, _ = await elsewhere.renew(CC, "t1")
    assert rotated.token == "b-1"
    clock.advance(RECHECK - 0.001)
    assert manager.in_memory(CC, "t1") is first  # not yet due for a check
    clock.advance(0.001)
    manager.in_memory(CC, "t1")
    await settle()
    assert token(manager.in_memory(CC, "t1")) == "b-1"


async def test_a_login_or_a_renewal_is_served_at_once(clock: Clock) -> None:
    manager = CredentialManager(MemoryStore(clock), Named(clock, "a"), clock=clock)
    first, _ = await manager.get(CC, "t1")
    assert manager.in_memory(CC, "t1") is first
    login = Credential("login-1", clock() + 3600, clock())
    await manager.remember(CC, "t1", login)
    assert token(manager.in_memory(CC, "t1")) == "login-1"
    renewed, failure = await manager.renew(CC, "t1")
    assert failure is None and manager.in_memory(CC, "t1") is renewed


async def test_an_evicted_key_is_not_served_from_the_memo(clock: Clock) -> None:
    manager = CredentialManager(MemoryStore(clock), Named(clock, "a"), clock=clock, maxsize=2)
    first, _ = await manager.get(CC, "t1")
    assert manager.in_memory(CC, "t1") is first
    await manager.get(CC, "t2")
    await manager.get(CC, "t3")  # over maxsize: the least recently used (t1) goes
    assert manager.cached("p", "t1") is None
    assert manager.in_memory(CC, "t1") is None


async def test_a_short_lived_credential_is_not_served_past_its_renewal_point(
    clock: Clock,
) -> None:
    """A 10 s token: renewal starts at 9 s (10 % of its life, RFC 6749 5.1 expires_in)."""
    manager = CredentialManager(MemoryStore(clock), Named(clock, "a", life=10), clock=clock)
    first, _ = await manager.get(CC, "t1")
    assert manager.in_memory(CC, "t1") is first
    clock.advance(9)
    assert manager.in_memory(CC, "t1") is first  # served while it renews
    await settle()
    assert token(manager.in_memory(CC, "t1")) == "a-2"
    clock.advance(100)  # long expired, never renewed since (no request asked)
    assert manager.in_memory(CC, "t1") is None


# -- the memo against the cache alone, on random histories ------------------------------------


class Pair:
    """One keyhop process (`manager`) and another sharing its store (`elsewhere`)."""

    def __init__(self, clock: Clock, memo: bool) -> None:
        self.store = MemoryStore(clock)
        kind = CredentialManager if memo else Unmemoized
        self.manager = kind(self.store, Named(clock, "a", life=600), clock=clock)
        self.elsewhere = CredentialManager(self.store, Named(clock, "b", life=600), clock=clock)
        self.logins = 0

    async def act(self, step: str, tenant: str, clock: Clock) -> Any:
        manager = self.manager
        if step == "in_memory":
            return token(manager.in_memory(CC, tenant))
        if step == "get":
            return token((await manager.get(CC, tenant))[0])
        if step == "refused":
            current = manager.in_memory(CC, tenant)
            if current is not None:
                await manager.invalidate(CC, tenant, current)
            return token(current)
        if step == "rotated elsewhere":
            return token((await self.elsewhere.renew(CC, tenant))[0])
        if step == "revoked elsewhere":
            return await self.store.delete("p", tenant)
        if step == "forget":
            manager.forget("p", tenant)
        elif step == "forget all":
            manager.forget("p")
        elif step == "login":
            self.logins += 1
            login = Credential(f"login-{self.logins}", clock() + 600, clock())
            await manager.remember(CC, tenant, login)
        elif step == "renew":
            return token((await manager.renew(CC, tenant))[0])
        return None


STEPS = (
    *["in_memory"] * 6,
    "get",
    "get",
    "refused",
    "rotated elsewhere",
    "revoked elsewhere",
    "forget",
    "forget all",
    "login",
    "renew",
)


async def test_the_memo_answers_as_the_cache_alone_on_random_histories() -> None:
    """Two identical histories, one manager with the memo and one with it emptied before
    each read: every in_memory (the lane's credential) and get must agree."""
    for seed in range(max(10, FUZZ_CASES // 10)):
        rng = random.Random(seed)
        clock = Clock(1_700_000_000.0)
        pairs = (Pair(clock, memo=True), Pair(clock, memo=False))
        history: list[tuple[str, str, Any]] = []
        for _ in range(60):
            if rng.random() < 0.3:
                clock.advance(rng.choice([0.5, 1, RECHECK / 2, RECHECK, 30, 200, 540, 700]))
            step, tenant = rng.choice(STEPS), rng.choice(["t1", "t2"])
            got = [await pair.act(step, tenant, clock) for pair in pairs]
            history.append((step, tenant, got[0]))
            assert got[0] == got[1], (seed, history[-12:], got[1])
            await settle()


@pytest.mark.parametrize("tenant", [None, "t1"])
async def test_the_memo_is_per_key(clock: Clock, tenant: str | None) -> None:
    """A tenant's refused token never answers for the provider's other keys."""
    manager = CredentialManager(MemoryStore(clock), Named(clock, "a"), clock=clock)
    mine, _ = await manager.get(CC, tenant)
    theirs, _ = await manager.get(CC, "other")
    await manager.invalidate(CC, tenant, mine)
    assert manager.in_memory(CC, tenant) is None
    assert manager.in_memory(CC, "other") is theirs
