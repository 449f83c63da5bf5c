"""Where credentials outlive the process: refresh tokens, offline tokens, sessions (SPEC 4.4).

One small interface, three engines: `memory:` (tests), SQLite (the default: one file, mode
0600 in a 0700 directory, WAL so several keyhop processes can share it) and Redis
(replicas; proxy/redis_store.py). Access tokens are written too, so a restart or a second
process reuses a live token instead of fetching one. Besides records the store holds
short fetch locks, so one process at a time talks to a token endpoint for a given key.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol, TypeVar

from proxy.tokens import Credential, StoredItem

T = TypeVar("T")


class Store(Protocol):
    """The token store seam; every method is safe to call concurrently."""

    description: str
    #: False while the store cannot be reached (Redis down): an absent record means nothing
    healthy: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, provider: str, tenant: str | None) -> Credential | None: ...
    async def put(self, provider: str, tenant: str | None, credential: Credential) -> None: ...
    async def delete(self, provider: str, tenant: str | None) -> bool: ...
    async def expire(self, provider: str, tenant: str | None, token: str, at: float) -> None:
        """Mark the stored credential expired at `at`, only if it is still `token`.

        Compare-and-set: a read-modify-write here could put back a refresh token another
        process has just rotated away.
        """
        ...

    async def items(self) -> list[StoredItem]: ...
    async def acquire(self, provider: str, tenant: str | None, ttl: float) -> str | None:
        """Take the fetch lock for a key; an owner token, or None while someone else holds it."""
        ...

    async def release(self, provider: str, tenant: str | None, owner: str) -> None: ...
    async def ping(self) -> bool: ...


class MemoryStore:
    description = "memory:"
    healthy = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._data: dict[tuple[str, str], Credential] = {}
        self._locks: dict[tuple[str, str], tuple[str, float]] = {}
        self._clock = clock

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, provider: str, tenant: str | None) -> Credential | None:
        return self._data.get((provider, tenant or ""))

    async def put(self, provider: str, tenant: str | None, credential: Credential) -> None:
        self._data[(provider, tenant or "")] = credential

    async def delete(self, provider: str, tenant: str | None) -> bool:
        return self._data.pop((provider, tenant or ""), None) is not None

    async def expire(self, provider: str, tenant: str | None, token: str, at: float) -> None:
        key = (provider, tenant or "")
        current = self._data.get(key)
        if current is not None and current.token == token:
            self._data[key] = replace(current, expires_at=min(at, current.expires_at or at))

    async def items(self) -> list[StoredItem]:
        return [StoredItem(p, t or None, c) for (p, t), c in sorted(self._data.items())]

    async def acquire(self, provider: str, tenant: str | None, ttl: float) -> str | None:
        key = (provider, tenant or "")
        held = self._locks.get(key)
        now = self._clock()
        if held is not None and held[1] > now:
            return None
        owner = secrets.token_hex(8)
        self._locks[key] = (owner, now + ttl)
        return owner

    async def release(self, provider: str, tenant: str | None, owner: str) -> None:
        key = (provider, tenant or "")
        if self._locks.get(key, ("", 0.0))[0] == owner:
            del self._locks[key]

    async def ping(self) -> bool:
        return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    provider TEXT NOT NULL, tenant TEXT NOT NULL, data TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (provider, tenant));
CREATE TABLE IF NOT EXISTS locks (
    provider TEXT NOT NULL, tenant TEXT NOT NULL, owner TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (provider, tenant));
"""


def _immediate(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run `work` in one write transaction taken up front (BEGIN IMMEDIATE), so a
    read-then-write can never interleave with another process's."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class SqliteStore:
    """stdlib sqlite3 on one worker thread, so no blocking I/O runs on the event loop."""

    healthy = True

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.description = f"sqlite://{path}"
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyhop-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                self._db = self._connect()
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # create the file 0600 before SQLite does (SQLite would honour the umask);
        # its -wal and -shm files take the database file's mode
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        for attempt in range(50):
            # two processes opening a new file at once race to switch it to WAL; the loser
            # is told "database is locked" at once, whatever the busy timeout: try again
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02 * (attempt + 1))
        db.execute("PRAGMA synchronous=FULL")  # a rotated refresh token must survive a crash
        db.executescript(_SCHEMA)
        return db

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)

    async def get(self, provider: str, tenant: str | None) -> Credential | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT data FROM credentials WHERE provider=? AND tenant=?",
                (provider, tenant or ""),
            ).fetchone()
        )
        return Credential.from_json(row[0]) if row else None

    async def put(self, provider: str, tenant: str | None, credential: Credential) -> None:
        data, now = credential.to_json(), self._clock()
        await self._run(
            lambda db: db.execute(
                "INSERT INTO credentials (provider, tenant, data, updated) VALUES (?,?,?,?) "
                "ON CONFLICT (provider, tenant) DO UPDATE SET data=excluded.data, "
                "updated=excluded.updated",
                (provider, tenant or "", data, now),
            )
        )

    async def delete(self, provider: str, tenant: str | None) -> bool:
        cursor = await self._run(
            lambda db: db.execute(
                "DELETE FROM credentials WHERE provider=? AND tenant=?", (provider, tenant or "")
            )
        )
        return cursor.rowcount > 0

    async def expire(self, provider: str, tenant: str | None, token: str, at: float) -> None:
        def cas(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT data FROM credentials WHERE provider=? AND tenant=?",
                (provider, tenant or ""),
            ).fetchone()
            current = Credential.from_json(row[0]) if row else None
            if current is not None and current.token == token:
                expired = replace(current, expires_at=min(at, current.expires_at or at))
                db.execute(
                    "UPDATE credentials SET data=?, updated=? WHERE provider=? AND tenant=?",
                    (expired.to_json(), self._clock(), provider, tenant or ""),
                )

        await self._run(lambda db: _immediate(db, cas))

    async def items(self) -> list[StoredItem]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT provider, tenant, data FROM credentials ORDER BY provider, tenant"
            ).fetchall()
        )
        return [StoredItem(p, t or None, Credential.from_json(d)) for p, t, d in rows]

    async def acquire(self, provider: str, tenant: str | None, ttl: float) -> str | None:
        owner, now = secrets.token_hex(8), self._clock()

        def take(db: sqlite3.Connection) -> bool:
            db.execute(
                "DELETE FROM locks WHERE provider=? AND tenant=? AND expires<=?",
                (provider, tenant or "", now),
            )
            cur = db.execute(
                "INSERT OR IGNORE INTO locks (provider, tenant, owner, expires) VALUES (?,?,?,?)",
                (provider, tenant or "", owner, now + ttl),
            )
            return cur.rowcount == 1

        return owner if await self._run(lambda db: _immediate(db, take)) else None

    async def release(self, provider: str, tenant: str | None, owner: str) -> None:
        await self._run(
            lambda db: db.execute(
                "DELETE FROM locks WHERE provider=? AND tenant=? AND owner=?",
                (provider, tenant or "", owner),
            )
        )

    async def ping(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return True


def open_store(url: str) -> Store:
    """`memory:`, `sqlite://PATH` (`sqlite:///abs/path` is absolute) or `redis://...`."""
    if url == "memory:":
        return MemoryStore()
    if url.startswith("sqlite://"):
        return SqliteStore(os.path.expanduser(url[len("sqlite://") :]))
    if url.startswith(("redis://", "rediss://")):
        from proxy.redis_store import RedisStore

        store: Store = RedisStore(url)
        return store
    raise ValueError(f"unknown store {url!r}")
