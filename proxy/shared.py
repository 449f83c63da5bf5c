"""What workers share without Redis (SPEC 7): one `rate_limit` budget and one "throttled
until" per provider, kept in the SQLite store's own file. (Credentials, the fetch lock,
sessions and pending logins already live in the store, which several processes share.)

The same Limiter protocol and the same GCRA as proxy/ratelimit.py, each reservation one
write transaction (BEGIN IMMEDIATE) so two workers never take the same slot. This state is
worth nothing after a crash, so its connection does not fsync (synchronous=OFF), which keeps
a reservation at tens of microseconds. "Blocked until" is read at most every BLOCK_REFRESH
per provider (ratelimit.SharedBlock, as for RedisLimiter): it changes once in a long while.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from proxy.providers import RateLimit
from proxy.ratelimit import MAX_PACING_WAIT, LocalLimiter, SharedBlock

T = TypeVar("T")


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rate_budget (provider TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_blocked (provider TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class SqliteLimiter(SharedBlock):
    """The rate budget of all workers on one machine, in the store's SQLite file."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.path = path
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyhop-limiter")
        self._db: sqlite3.Connection | None = None
        self._local = LocalLimiter(clock)  # this worker's own, when the file cannot be used

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

    async def _read_block(self, provider: str) -> tuple[float, float]:
        try:
            row = await self._run(
                lambda db: db.execute(
                    "SELECT until FROM rate_blocked WHERE provider=?", (provider,)
                ).fetchone()
            )
        except sqlite3.Error:
            row = None
        return (float(row[0]) if row else 0.0, self._clock())

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
