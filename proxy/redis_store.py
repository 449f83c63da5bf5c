"""Redis engine for replicas: the store, the fetch lock and the shared rate budget (SPEC 4.4,
4.1). redis-py's asyncio client.

Redis going away must not take the proxy with it: every call degrades to what this process
holds (its memory cache, a local lock, a local limiter), the state change is logged once,
writes that could not land are kept and written again on reconnect (a rotated refresh token
must not be lost), and redis-py reconnects by itself on the next call.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from proxy.providers import RateLimit
from proxy.ratelimit import MAX_PACING_WAIT, LocalLimiter, SharedBlock
from proxy.tokens import Credential, StoredItem

log = logging.getLogger("keyhop.store")
REDIS_CONNECTIONS: Final = 64  # connections to Redis a replica keeps at most
T = TypeVar("T")

PREFIX: Final = "keyhop:"

# Compare-and-delete: only the owner releases its lock.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# GCRA on the server's clock, so replicas with skewed clocks share one budget.
_RESERVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return tostring(wait) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX',
           math.ceil((new_tat - now) * 1000) + 1000)
return tostring(wait)
"""

# Compare-and-set expiry of a stored credential (see Store.expire).
_EXPIRE: Final = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local data = cjson.decode(raw)
if data['token'] ~= ARGV[1] then return 0 end
local at = tonumber(ARGV[2])
if data['expires_at'] == cjson.null or data['expires_at'] == nil or data['expires_at'] > at then
  data['expires_at'] = at
end
redis.call('SET', KEYS[1], cjson.encode(data))
return 1
"""

_BLOCK: Final = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(1000, math.ceil(tonumber(ARGV[2]) * 1000)))
end
return 1
"""


class RedisStore:
    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.description = "redis://" + url.split("@")[-1].split("://")[-1]  # no password
        self._clock = clock
        # a burst waits for a pooled connection (up to the socket timeout) instead of
        # failing as "Redis unreachable" past redis-py's default pool of 100
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=1.0,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry_on_timeout=False,
            health_check_interval=5,
        )
        self._client = redis.Redis(connection_pool=pool)
        self._client.auto_close_connection_pool = True
        self._release = self._client.register_script(_RELEASE)
        self._expire = self._client.register_script(_EXPIRE)
        self.healthy = True
        self._pending: dict[str, str] = {}  # writes to replay once Redis is back

    async def _call(self, what: Callable[[], Awaitable[T]], fallback: T) -> T:
        try:
            result = await what()
        except (RedisError, OSError) as exc:
            if self.healthy:
                self.healthy = False
                log.warning(
                    "redis unreachable (%s); serving from memory until it is back",
                    type(exc).__name__,
                )
            return fallback
        if not self.healthy:
            self.healthy = True
            log.warning("redis reachable again")
            await self._flush()
        return result

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            try:
                await self._client.set(key, value)
            except (RedisError, OSError):
                self._pending.setdefault(key, value)

    @staticmethod
    def _key(provider: str, tenant: str | None) -> str:
        return f"{PREFIX}cred:{provider}:{tenant or ''}"

    async def open(self) -> None:
        await self.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, provider: str, tenant: str | None) -> Credential | None:
        key = self._key(provider, tenant)
        if key in self._pending:
            return Credential.from_json(self._pending[key])
        raw = await self._call(lambda: self._client.get(key), None)
        return Credential.from_json(raw) if raw else None

    async def put(self, provider: str, tenant: str | None, credential: Credential) -> None:
        key, value = self._key(provider, tenant), credential.to_json()
        ok = await self._call(lambda: self._client.set(key, value), None)
        if ok is None:
            self._pending[key] = value
        else:
            self._pending.pop(key, None)

    async def delete(self, provider: str, tenant: str | None) -> bool:
        key = self._key(provider, tenant)
        self._pending.pop(key, None)
        removed = await self._call(lambda: self._client.delete(key), 0)
        return bool(removed)

    async def expire(self, provider: str, tenant: str | None, token: str, at: float) -> None:
        key = self._key(provider, tenant)
        if key in self._pending:
            current = Credential.from_json(self._pending[key])
            if current.token == token:
                self._pending[key] = replace(current, expires_at=at).to_json()
            return
        await self._call(lambda: self._expire(keys=[key], args=[token, repr(at)]), None)

    async def items(self) -> list[StoredItem]:
        async def scan() -> list[StoredItem]:
            out = []
            async for key in self._client.scan_iter(match=f"{PREFIX}cred:*", count=500):
                raw = await self._client.get(key)
                if not raw:
                    continue
                _, _, provider, tenant = key.decode().split(":", 3)
                out.append(StoredItem(provider, tenant or None, Credential.from_json(raw)))
            return sorted(out, key=lambda i: (i.provider, i.tenant or ""))

        return await self._call(scan, [])

    async def acquire(self, provider: str, tenant: str | None, ttl: float) -> str | None:
        owner = secrets.token_hex(8)
        key = f"{PREFIX}lock:{provider}:{tenant or ''}"
        down = object()
        taken: object = await self._call(
            lambda: self._client.set(key, owner, nx=True, px=int(ttl * 1000)), down
        )
        if taken is down:
            return "local:" + owner  # Redis is away: this process's own lock is all there is
        return owner if taken else None

    async def release(self, provider: str, tenant: str | None, owner: str) -> None:
        if owner.startswith("local:"):
            return
        key = f"{PREFIX}lock:{provider}:{tenant or ''}"
        await self._call(lambda: self._release(keys=[key], args=[owner]), None)

    async def ping(self) -> bool:
        return bool(await self._call(lambda: self._client.ping(), False))

    @property
    def client(self) -> redis.Redis:
        return self._client


class RedisLimiter(SharedBlock):
    """The shared budget: GCRA and "blocked until" kept in Redis, atomically (Lua)."""

    def __init__(self, store: RedisStore, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._local = LocalLimiter(clock)
        self._reserve = store.client.register_script(_RESERVE)
        self._block = store.client.register_script(_BLOCK)

    async def reserve(self, provider: str, limit: RateLimit) -> float:
        interval = 1.0 / limit.per_second
        tolerance = (limit.burst - 1.0) * interval
        wait = await self._store._call(
            lambda: self._reserve(
                keys=[f"{PREFIX}rate:{provider}"], args=[interval, tolerance, MAX_PACING_WAIT]
            ),
            None,
        )
        if wait is None:
            return await self._local.reserve(provider, limit)
        return float(wait)

    async def _read_block(self, provider: str) -> tuple[float, float]:
        now = self._clock()
        raw = await self._store._call(
            lambda: self._store.client.get(f"{PREFIX}blocked:{provider}"), None
        )
        return (float(raw) if raw else 0.0, now)

    async def block(self, provider: str, until: float) -> None:
        await self._local.block(provider, until)
        await self._store._call(
            lambda: self._block(
                keys=[f"{PREFIX}blocked:{provider}"], args=[until, until - self._clock()]
            ),
            None,
        )
