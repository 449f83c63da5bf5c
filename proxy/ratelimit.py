"""Client-side pacing and the upstream's "budget spent" signal (SPEC 4.1).

Pacing is GCRA (the virtual-scheduling form of a token bucket): each request reserves the
next slot and waits for it. `blocked_until` remembers when an upstream said its budget
resets, so keyhop answers 429 itself instead of sending requests that would be refused.
The Redis engine (proxy/redis_store.py) implements the same two calls across replicas.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol

from proxy.providers import RateLimit

MAX_PACING_WAIT: Final = 30.0  # a queue longer than this is answered 429, not held
#: the longest an upstream's Retry-After / X-Plan-Quota-Reset may block a provider (issue 12)
MAX_RETRY_AFTER: Final = 3600
#: seconds a worker or replica trusts its last read of a shared "blocked until"
BLOCK_REFRESH: Final = 0.25


class Limiter(Protocol):
    async def reserve(self, provider: str, limit: RateLimit) -> float:
        """Seconds to wait before sending (a slot is reserved for the caller)."""
        ...

    async def blocked_until(self, provider: str) -> float: ...
    async def block(self, provider: str, until: float) -> None: ...

    def known_blocked_until(self, provider: str) -> float | None:
        """blocked_until() when it is known without I/O (the express lane), else None."""
        ...

    def reserve_now(self, provider: str, limit: RateLimit) -> bool | None:
        """Take a slot if one is free right now, without I/O (the express lane): True taken;
        False none free (nothing reserved: reserve() waits for one); None cannot tell."""
        ...


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._blocked: dict[str, float] = {}

    async def reserve(self, provider: str, limit: RateLimit) -> float:
        now = self._clock()
        interval = 1.0 / limit.per_second
        tolerance = (limit.burst - 1.0) * interval
        tat = max(self._tat.get(provider, now), now)
        wait = max(0.0, tat - tolerance - now)
        if wait > MAX_PACING_WAIT:
            return wait  # not reserved: the caller answers 429
        self._tat[provider] = tat + interval
        return wait

    def reserve_now(self, provider: str, limit: RateLimit) -> bool:
        now = self._clock()
        interval = 1.0 / limit.per_second
        tat = max(self._tat.get(provider, now), now)
        if tat - (limit.burst - 1.0) * interval > now:
            return False
        self._tat[provider] = tat + interval
        return True

    async def blocked_until(self, provider: str) -> float:
        return self._blocked.get(provider, 0.0)

    def known_blocked_until(self, provider: str) -> float | None:
        return self._blocked.get(provider, 0.0)

    async def block(self, provider: str, until: float) -> None:
        if until > self._blocked.get(provider, 0.0):
            self._blocked[provider] = until


class SharedBlock:
    """ "Blocked until" kept in a store several processes share (the SQLite file of workers,
    Redis of replicas): read at most every BLOCK_REFRESH per provider, since a round trip
    per request would double the hot path's cost for a state that changes once in a long
    while; one read at a time per provider, however many requests ask; this process's own
    blocks (`_local`) count too. Subclasses say how the store is read."""

    _clock: Callable[[], float]
    _local: LocalLimiter

    def __init__(self) -> None:
        self._blocked: dict[str, tuple[float, float]] = {}  # provider -> (until, read at)
        self._reading: dict[str, asyncio.Future[tuple[float, float]]] = {}

    async def _read_block(self, provider: str) -> tuple[float, float]:
        """The store's "blocked until" for `provider`, and when it was read."""
        raise NotImplementedError

    def reserve_now(self, provider: str, limit: RateLimit) -> bool | None:
        return None  # the shared budget is a round trip away

    def known_blocked_until(self, provider: str) -> float | None:
        """The last read, refreshed in the background once older than BLOCK_REFRESH (the
        express lane must not stall every request on a read; another process's block shows
        within BLOCK_REFRESH and one read); None before the first read."""
        cached = self._blocked.get(provider)
        if cached is None:
            return None
        if self._clock() - cached[1] >= BLOCK_REFRESH:
            self._refresh(provider)
        return max(cached[0], self._local.known_blocked_until(provider) or 0.0)

    async def blocked_until(self, provider: str) -> float:
        cached = self._blocked.get(provider)
        if cached is None or self._clock() - cached[1] >= BLOCK_REFRESH:
            cached = await asyncio.shield(self._refresh(provider))
        return max(cached[0], await self._local.blocked_until(provider))

    def _refresh(self, provider: str) -> asyncio.Future[tuple[float, float]]:
        reading = self._reading.get(provider)
        if reading is None:

            async def read() -> tuple[float, float]:
                result = self._blocked[provider] = await self._read_block(provider)
                return result

            reading = asyncio.ensure_future(read())
            self._reading[provider] = reading
            reading.add_done_callback(lambda _: self._reading.pop(provider, None))
        return reading


def _parse_kibo_date(text: str) -> float | None:
    # Mashery's long form, e.g. "Tuesday, January 16, 2024 3:04:05 PM GMT"
    for fmt in ("%A, %B %d, %Y %I:%M:%S %p %Z", "%A, %B %d, %Y %H:%M:%S %Z"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC).timestamp()
        except (ValueError, OverflowError):
            continue
    return None


def _http_date(text: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _delay_seconds(text: str) -> int | None:
    # RFC 9110 10.2.3: delay-seconds = 1*DIGIT (ASCII only: str.isdigit takes '²' and '٣');
    # more digits than an hour needs are capped the same, without building a huge int
    if not (text.isascii() and text.isdigit()):
        return None
    return MAX_RETRY_AFTER if len(text) > 6 else int(text)


def reset_time(headers: Mapping[str, str], now: float) -> float | None:
    """When the upstream says its budget is back: Retry-After (seconds or HTTP date, RFC 9110
    10.2.3) first, then Kibo's X-Plan-Quota-Reset. None when it does not say, or says
    something malformed; never later than MAX_RETRY_AFTER from now (an upstream's number
    must not block a provider for years)."""
    until: float | None = None
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        value = retry_after.strip()
        seconds = _delay_seconds(value)
        until = now + seconds if seconds is not None else _http_date(value)
    if until is None:
        reset = headers.get("X-Plan-Quota-Reset")
        if reset is not None:
            until = _parse_kibo_date(reset)
            if until is None:
                until = _http_date(reset)
    if until is None or not math.isfinite(until):
        return None
    return min(max(now, until), now + MAX_RETRY_AFTER)


def retry_after_seconds(until: float, now: float) -> int:
    return max(1, math.ceil(until - now))
