"""What workers share without Redis (SPEC 7): one `rate_limit` budget and one "throttled
until" per provider, kept in the SQLite store's own file. (Credentials, the fetch lock,
sessions and pending logins already live in the store, which several processes share.)

The same Limiter protocol and the same GCRA as proxy/ratelimit.py, each reservation one
write transaction (BEGIN IMMEDIATE) so two workers never take the same slot. This state is
worth nothing after a crash, so its connection does not fsync (synchronous=OFF), which keeps
a reservation at tens of microseconds. "Blocked until" is read at most every BLOCK_REFRESH
per provider, as RedisLimiter does: it changes once in a long while, requests come often.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from proxy.providers import RateLimit
from proxy.ratelimit import MAX_PACING_WAIT, LocalLimiter

T = TypeVar("T")

BLOCK_REFRESH: Final = 0.25  # seconds a worker trusts its last read of "blocked until"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rate_budget (provider TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_blocked (provider TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class SqliteLimiter:
    """The rate budget of all workers on one machine, in the store's SQLite file."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyhop-limiter")
        self._db: sqlite3.Connection | None = None
        self._local = LocalLimiter(clock)  # this worker's own, when the file cannot be used
        self._blocked: dict[str, tuple[float, float]] = {}  # provider -> (until, read at)
        self._reading: dict[str, asyncio.Future[float]] = {}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # pacing state: nothing to keep across a crash
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                self._db = self._connect()
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)

    async def reserve(self, provider: str, limit: RateLimit) -> float:
        interval = 1.0 / limit.per_second
        tolerance = (limit.burst - 1.0) * interval

        def take(db: sqlite3.Connection) -> float:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = self._clock()  # read inside the lock: reservations are in clock order
                row = db.execute(
                    "SELECT tat FROM rate_budget WHERE provider=?", (provider,)
                ).fetchone()
                tat = max(row[0] if row else now, now)
                wait = max(0.0, tat - tolerance - now)
                if wait <= MAX_PACING_WAIT:
                    db.execute(
                        "INSERT INTO rate_budget (provider, tat) VALUES (?, ?) "
                        "ON CONFLICT (provider) DO UPDATE SET tat=excluded.tat",
                        (provider, tat + interval),
                    )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return wait

        try:
            return await self._run(take)
        except sqlite3.Error:
            return await self._local.reserve(provider, limit)

    def reserve_now(self, provider: str, limit: RateLimit) -> bool | None:
        return None  # the shared budget is a round trip away

    def known_blocked_until(self, provider: str) -> float | None:
        """The last read, refreshed in the background once older than BLOCK_REFRESH (the
        express lane must not stall every request on a read; another worker's block shows
        within BLOCK_REFRESH and one read); None before the first read."""
        cached = self._blocked.get(provider)
        if cached is None:
            return None
        if self._clock() - cached[1] >= BLOCK_REFRESH:
            self._refresh(provider)
        return max(cached[0], self._local.known_blocked_until(provider) or 0.0)

    async def blocked_until(self, provider: str) -> float:
        now = self._clock()
        cached = self._blocked.get(provider)
        if cached is not None and now - cached[1] < BLOCK_REFRESH:
            return max(cached[0], await self._local.blocked_until(provider))
        until = await asyncio.shield(self._refresh(provider))
        return max(until, await self._local.blocked_until(provider))

    def _refresh(self, provider: str) -> asyncio.Future[float]:
        """One read per provider at a time, however many requests ask."""
        reading = self._reading.get(provider)
        if reading is None:
            reading = asyncio.ensure_future(self._read_blocked(provider))
            self._reading[provider] = reading
            reading.add_done_callback(lambda _: self._reading.pop(provider, None))
        return reading

    async def _read_blocked(self, provider: str) -> float:
        try:
            row = await self._run(
                lambda db: db.execute(
                    "SELECT until FROM rate_blocked WHERE provider=?", (provider,)
                ).fetchone()
            )
        except sqlite3.Error:
            row = None
        until = float(row[0]) if row else 0.0
        self._blocked[provider] = (until, self._clock())
        return until

    async def block(self, provider: str, until: float) -> None:
        await self._local.block(provider, until)
        self._blocked[provider] = (max(until, self._blocked.get(provider, (0.0, 0.0))[0]), 0.0)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO rate_blocked (provider, until) VALUES (?, ?) "
                "ON CONFLICT (provider) DO UPDATE SET until=max(until, excluded.until)",
                (provider, until),
            )

        try:
            await self._run(write)
        except sqlite3.Error:
            pass  # this worker still holds it locally
