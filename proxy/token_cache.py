"""Credentials per provider and tenant: memory first, then the store, then the provider.

- The hot path is one dict lookup (credential_memory.py: a credential read once is answered
  from a memo until it is due for renewal or a store check; behind it, a TLRUCache whose
  entries vanish at their real expiry).
- Inside the renewal margin (SPEC 4.4) the current token keeps serving while one
  background task renews it.
- One fetch per key at a time: an asyncio.Lock in this process (check, lock, re-check) and
  the store's fetch lock across processes; waiters pick up the winner's result from the store.
- A failing token endpoint gets backoff (1 s doubling to 60 s, jittered): at most one token
  request per step, the still-valid token serving until its real expiry.
- Tenants cost nothing until they have a credential (issue 12): a key's lock lives only
  while someone holds or waits for it; an outcome known before anything is sent (no login
  yet: NotConnected) takes no store lock and leaves no state behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from proxy.auth import CredentialFlow
from proxy.backoff import KeyState, fallback
from proxy.credential_memory import Key, MemoryTier
from proxy.errors import CredentialError, LoginExpired, NotConnected
from proxy.providers import ProviderConfig
from proxy.store import Store
from proxy.tokens import Credential

LOCK_TTL: Final = 30.0  # SPEC 4.4: a dead lock holder blocks the others at most this long
POLL_INTERVAL: Final = 0.05
RECHECK: Final = 5.0  # seconds between checks of a cached credential against the store

FlowRunner = Callable[[ProviderConfig, CredentialFlow], Awaitable[Credential]]


class FetchObserver(Protocol):
    def token_fetch(self, provider: str, ok: bool) -> None: ...


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting; the entry goes when this drops to 0


class CredentialManager:
    def __init__(
        self,
        store: Store,
        runner: FlowRunner,
        *,
        clock: Callable[[], float] = time.time,
        observer: FetchObserver | None = None,
        maxsize: int = 100_000,
        lock_ttl: float = LOCK_TTL,
    ) -> None:
        self.lock_ttl = lock_ttl
        self.store = store
        self._runner = runner
        self._clock = clock
        self._observer = observer
        self._cache = MemoryTier(maxsize, clock)
        self._locks: dict[Key, _KeyLock] = {}
        self._renewing: dict[Key, asyncio.Task[None]] = {}
        self._refused: dict[Key, str] = {}  # the last token an upstream refused, per key
        self._checked: dict[Key, float] = {}  # when a cached credential was last held to the store
        self._background: set[asyncio.Task[None]] = set()
        self.states: dict[Key, KeyState] = {}

    # -- the request path ----------------------------------------------------------------------

    async def get(self, provider: ProviderConfig, tenant: str | None) -> tuple[Credential, str]:
        """A usable credential and where it came from: memory, store or fetched."""
        credential = self.in_memory(provider, tenant)
        if credential is not None:
            return credential, "memory"
        return await self._obtain(provider, tenant, stale=None)

    def in_memory(self, provider: ProviderConfig, tenant: str | None) -> Credential | None:
        """get()'s answer when it needs no I/O (the credential is in memory), else None.
        Starts the same background renewal or store check as get()."""
        key = (provider.name, tenant or "")
        now = self._clock()
        hot = self._cache.hot(key, now)
        if hot is not None:
            return hot
        credential = self._cache.get(key)
        if credential is not None:
            renew_at = credential.renew_at()
            if now >= renew_at:
                self._renew_in_background(provider, tenant, credential)
            else:
                checked = self._checked.get(key, 0.0)
                if now - checked >= RECHECK:
                    self._checked[key] = checked = now
                    self._recheck_in_background(provider, tenant, credential)
                self._cache.keep_hot(key, credential, min(renew_at, checked + RECHECK))
        return credential

    async def invalidate(
        self, provider: ProviderConfig, tenant: str | None, failed: Credential
    ) -> None:
        """The upstream refused `failed`: stop using it, unless a newer one already replaced it.

        The stored record is kept with its expiry set to now (compare-and-set, so a token
        another process just rotated in is never overwritten) and the next get() renews
        from its refresh token.
        """
        key = (provider.name, tenant or "")
        # never load it again, whatever the store says while its expiry is on its way
        self._refused[key] = failed.token
        await self.store.expire(provider.name, tenant, failed.token, self._clock())
        current = self._cache.get(key)
        if current is not None and current.token == failed.token:
            del self._cache[key]

    def forget(self, provider: str, tenant: str | None = None) -> None:
        """Drop cached credentials of a provider (a reload changed it, or a revoke)."""
        for key in [k for k in self._cache if k[0] == provider and tenant in (None, k[1])]:
            self._cache.pop(key, None)

    async def remember(
        self, provider: ProviderConfig, tenant: str | None, credential: Credential
    ) -> None:
        """Store a credential obtained outside get() (a login callback, an app install)."""
        credential = replace(credential, identity=provider.scheme.identity())
        await self.store.put(provider.name, tenant, credential)
        key = (provider.name, tenant or "")
        self._cache[key] = credential
        self._refused.pop(key, None)
        self.states.pop(key, None)  # a fresh login ends any backoff of the old one

    async def _stored(self, provider: ProviderConfig, tenant: str | None) -> Credential | None:
        """The store's record, unless it was obtained by another setup of this provider."""
        stored = await self.store.get(provider.name, tenant)
        if stored is not None and stored.identity and stored.identity != provider.scheme.identity():
            return None
        return stored

    def _recheck_in_background(
        self, provider: ProviderConfig, tenant: str | None, cached: Credential
    ) -> None:
        """Follow the store: a revoked record (keyhop tokens revoke, an uninstall on another
        replica) stops being used; a newer one (another process renewed) is taken up."""
        key = (provider.name, tenant or "")

        async def recheck() -> None:
            try:
                stored = await self._stored(provider, tenant)
            except Exception:  # a store hiccup: try again at the next interval
                return
            if self._cache.get(key) is not cached:
                return
            if stored is None:
                if self.store.healthy:
                    self._cache.pop(key, None)
            elif self._usable_newer(key, stored, cached, self._clock()):
                self._cache[key] = stored

        task = asyncio.create_task(recheck())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def cached(self, provider: str, tenant: str | None) -> Credential | None:
        return self._cache.get((provider, tenant or ""))

    # -- obtaining -----------------------------------------------------------------------------

    def _renew_in_background(
        self, provider: ProviderConfig, tenant: str | None, stale: Credential
    ) -> None:
        key = (provider.name, tenant or "")
        if key in self._renewing:
            return

        async def renew() -> None:
            try:
                await self._obtain(provider, tenant, stale=stale)
            except (CredentialError, NotConnected):
                pass  # recorded in the key's state; the old token serves until it expires
            finally:
                self._renewing.pop(key, None)

        self._renewing[key] = asyncio.create_task(renew())

    async def renew(
        self, provider: ProviderConfig, tenant: str | None
    ) -> tuple[Credential, str | None]:
        """Fetch a fresh credential now (the console's Renew), single-flight like any other
        fetch; when the provider refuses, the current credential stays in use until its
        real expiry. Returns the credential in use and, when renewing failed, why."""
        key = (provider.name, tenant or "")
        async with self._key_lock(key):
            current = self._cache.get(key) or await self._stored(provider, tenant)
            credential = await self._fetch(provider, tenant, current)
        if current is not None and credential is current:
            state = self.states.get(key)
            return credential, state.last_error if state and state.last_error else "not renewed"
        return credential, None

    async def _obtain(
        self, provider: ProviderConfig, tenant: str | None, stale: Credential | None
    ) -> tuple[Credential, str]:
        key = (provider.name, tenant or "")
        async with self._key_lock(key):
            now = self._clock()
            cached = self._cache.get(key)
            if cached is not None and cached is not stale and now < cached.renew_at():
                return cached, "memory"
            newer, stored = await self._newer_from_store(provider, tenant, stale)
            if newer is not None:
                return newer, "store"
            # a reachable store without the record means it was revoked: a refresh token
            # still held in memory must not bring it back
            previous = stored if stored is not None or self.store.healthy else stale
            return await self._fetch(provider, tenant, previous), "fetched"

    @asynccontextmanager
    async def _key_lock(self, key: Key) -> AsyncIterator[None]:
        """This process's one-fetch-per-key lock; forgotten when nobody holds or awaits it, so
        100,000 tenants named once leave 100,000 nothing behind."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users and self._locks.get(key) is entry:
                del self._locks[key]

    async def _newer_from_store(
        self, provider: ProviderConfig, tenant: str | None, older: Credential | None
    ) -> tuple[Credential | None, Credential | None]:
        """(the store's credential when it is usable and not `older` — now cached —, the
        store's record as read)."""
        key = (provider.name, tenant or "")
        stored = await self._stored(provider, tenant)
        if self._usable_newer(key, stored, older, self._clock()):
            assert stored is not None
            self._cache[key] = stored
            return stored, stored
        return None, stored

    def _usable_newer(
        self,
        key: Key,
        stored: Credential | None,
        stale: Credential | None,
        now: float,
    ) -> bool:
        return (
            stored is not None
            and (stale is None or stored.token != stale.token)
            and stored.token != self._refused.get(key)
            and now < stored.renew_at()
        )

    async def _fetch(
        self, provider: ProviderConfig, tenant: str | None, previous: Credential | None
    ) -> Credential:
        key = (provider.name, tenant or "")
        # known before anything is sent (no login or install yet): raises NotConnected here,
        # with no store lock taken and no state kept for a tenant that may never exist
        probe = provider.scheme.credential_flow(previous, tenant, self._clock())
        if probe is not None:
            probe.close()
        state = self.states.setdefault(key, KeyState())
        now = self._clock()
        if now < state.next_attempt:
            return fallback(provider.name, previous, state, now)
        owner = await self.store.acquire(provider.name, tenant, self.lock_ttl)
        while owner is None:
            # another process is fetching: take its result from the store when it lands
            await asyncio.sleep(POLL_INTERVAL)
            newer, _ = await self._newer_from_store(provider, tenant, previous)
            if newer is not None:
                return newer
            owner = await self.store.acquire(provider.name, tenant, self.lock_ttl)
        try:
            # the holder before us may have written a newer one just now
            newer, stored = await self._newer_from_store(provider, tenant, previous)
            if newer is not None:
                return newer
            previous = stored or previous
            try:
                credential = await self._run(provider, tenant, previous, state)
            except (CredentialError, LoginExpired) as exc:
                # only answers from the provider count; a plain NotConnected sent nothing
                self._observe(provider.name, ok=False)
                state.failed(exc, self._clock())
                return fallback(provider.name, previous, state, self._clock(), exc)
            self._observe(provider.name, ok=True)
            # persisted before first use: a rotated refresh token must never be lost
            credential = replace(credential, identity=provider.scheme.identity())
            await self.store.put(provider.name, tenant, credential)
            self._cache[key] = credential
            state.failures = 0
            state.next_attempt = 0.0
            state.last_error = None
            return credential
        finally:
            await self.store.release(provider.name, tenant, owner)

    async def _run(
        self,
        provider: ProviderConfig,
        tenant: str | None,
        previous: Credential | None,
        state: KeyState,
    ) -> Credential:
        for attempt in range(2):
            flow = provider.scheme.credential_flow(previous, tenant, self._clock())
            if flow is None:
                raise CredentialError(f"{provider.name} has no credential to fetch")
            state.fetches += 1
            state.last_fetch_at = self._clock()
            try:
                return await self._runner(provider, flow)
            except CredentialError as exc:
                if exc.vendor_code != "invalid_grant" or previous is None:
                    raise
                # a lost rotation race: another process refreshed with the same token and
                # stored the new one; use that instead of giving up (SPEC 4.4)
                latest = await self._stored(provider, tenant)
                if (
                    attempt == 0
                    and latest is not None
                    and latest.refresh_token
                    and latest.refresh_token != previous.refresh_token
                ):
                    if self._clock() < latest.renew_at():
                        return latest
                    previous = latest
                    continue
                hint = getattr(provider.scheme, "login_hint", None)
                if hint is not None:
                    raise LoginExpired(
                        f"the stored login for {provider.name} is no longer accepted; "
                        + hint(tenant),
                        provider=provider.name,
                    ) from None
                raise
        raise AssertionError("unreachable")

    def _observe(self, provider: str, ok: bool) -> None:
        if self._observer is not None:
            self._observer.token_fetch(provider, ok)

    async def close(self) -> None:
        tasks = [*self._renewing.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
