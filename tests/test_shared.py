"""proxy/shared.py: the budget and "throttled until" workers share through the SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.ratelimit import BLOCK_REFRESH
from proxy.shared import SqliteLimiter
from tests.support import Clock


async def eventually(check: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < end, "the condition never held"
        await asyncio.sleep(0.01)


async def test_another_workers_block_is_seen_within_block_refresh(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    path = str(tmp_path / "keyhop.db")
    mine, other = SqliteLimiter(path, clock), SqliteLimiter(path, clock)
    try:
        assert await mine.blocked_until("kibo") == 0.0
        await other.block("kibo", 5_000.0)
        assert await mine.blocked_until("kibo") == 0.0  # its read is still fresh
        clock.advance(BLOCK_REFRESH)
        assert await mine.blocked_until("kibo") == 5_000.0
    finally:
        await mine.close()
        await other.close()


async def test_known_blocked_until_never_waits_and_refreshes_a_stale_read_behind(
    tmp_path: Path,
) -> None:
    """The express lane asks on every request: it gets the last read at once (None before
    the first), and a read older than BLOCK_REFRESH is renewed in the background."""
    clock = Clock(1_000.0)
    path = str(tmp_path / "keyhop.db")
    mine, other = SqliteLimiter(path, clock), SqliteLimiter(path, clock)
    try:
        assert mine.known_blocked_until("kibo") is None  # never read: the pipeline reads it
        assert await mine.blocked_until("kibo") == 0.0
        assert mine.known_blocked_until("kibo") == 0.0
        await other.block("kibo", 5_000.0)
        clock.advance(BLOCK_REFRESH)
        assert mine.known_blocked_until("kibo") == 0.0  # stale, answered at once...
        await eventually(lambda: mine.known_blocked_until("kibo") == 5_000.0)  # ...then renewed
        await mine.block("kibo", 6_000.0)  # its own block counts at once
        assert mine.known_blocked_until("kibo") == 6_000.0
    finally:
        await mine.close()
        await other.close()
