"""The SQLite and memory engines: durability, file modes, sharing one file, locks."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from proxy.store import MemoryStore, SqliteStore, Store, open_store
from proxy.tokens import Credential


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_sqlite_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keyhop" / "tokens.db"
    store = SqliteStore(str(path))
    await store.open()
    await store.put("kibo", None, Credential("t", 1.0))
    await store.close()
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    for extra in path.parent.iterdir():
        assert mode(extra) & 0o077 == 0, f"{extra.name} is readable by others"


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    first = SqliteStore(path)
    await first.put("saison", "m1", Credential("a", 50.0, 1.0, "r1", {}, "access"))
    await first.close()
    second = SqliteStore(path)
    try:
        got = await second.get("saison", "m1")
        assert got is not None and got.refresh_token == "r1"
    finally:
        await second.close()


async def test_two_stores_on_one_file_see_each_others_writes_and_share_the_lock(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "shared.db")
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        await a.put("kibo", None, Credential("from-a", 99.0))
        got = await b.get("kibo", None)
        assert got is not None and got.token == "from-a"
        owner = await a.acquire("kibo", None, 30.0)
        assert owner is not None
        assert await b.acquire("kibo", None, 30.0) is None
        await a.release("kibo", None, owner)
        assert await b.acquire("kibo", None, 30.0) is not None
        # concurrent writers do not trip over each other (WAL + busy timeout)
        await asyncio.gather(
            *(s.put("p", str(i), Credential(str(i), 1.0)) for i in range(50) for s in (a, b))
        )
        assert len(await a.items()) == 51
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_an_expired_lock_can_be_taken_over(engine: str, tmp_path: Path) -> None:
    now = [1000.0]
    store: Store = (
        MemoryStore(clock=lambda: now[0])
        if engine == "memory"
        else SqliteStore(str(tmp_path / "l.db"), clock=lambda: now[0])
    )
    try:
        assert await store.acquire("p", "t", 30.0) is not None
        assert await store.acquire("p", "t", 30.0) is None
        now[0] += 31
        assert await store.acquire("p", "t", 30.0) is not None
    finally:
        await store.close()


def test_store_urls_pick_their_engine(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    sqlite = open_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(sqlite, SqliteStore) and sqlite.path == f"{tmp_path}/x.db"
    with pytest.raises(ValueError):
        open_store("ftp://x")


def _open_at(path: str, at: float) -> str:
    """In a child process: wait for `at`, then open the store's file; the error, if any."""
    import time as _time

    _time.sleep(max(0.0, at - _time.time()))
    try:
        SqliteStore(path)._connect().close()
    except Exception as exc:  # reported to the parent, which asserts there is none
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Two processes switching a new file to WAL at the same moment: the loser is told
    'database is locked' at once (not after the busy timeout) unless it tries again."""
    import multiprocessing
    import time as _time

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        for round_ in range(4):
            path = str(tmp_path / f"race-{round_}.db")
            at = _time.time() + 1.5
            errors = pool.starmap(_open_at, [(path, at)] * 8)
            assert errors == [""] * 8
