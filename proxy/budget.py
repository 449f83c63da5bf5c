"""A provider's request budget (SPEC 4.1 rate limits): throttled-until first, then pacing."""

from __future__ import annotations

import asyncio

from proxy.errors import RateLimited
from proxy.providers import ProviderConfig
from proxy.ratelimit import MAX_PACING_WAIT, retry_after_seconds
from proxy.runtime import Keyhop

#: a throttled request is retried at most this often, waiting at most this long in all
MAX_THROTTLE_RETRIES = 2
MAX_THROTTLE_WAIT = 10.0


async def wait_for_budget(kh: Keyhop, provider: ProviderConfig) -> None:
    """Return when the request may go; 429 rate_limited when it may not go soon."""
    now = kh.clock()
    until = await kh.limiter.blocked_until(provider.name)
    if until > now:
        if provider.retry_throttled and until - now <= MAX_THROTTLE_WAIT:
            await asyncio.sleep(until - now)
        else:
            kh.metrics.throttle(provider.name, "local")
            raise RateLimited(
                f"{provider.name} said its request budget is spent; retry later",
                retry_after=retry_after_seconds(until, now),
            )
    if provider.rate_limit is not None:
        wait = await kh.limiter.reserve(provider.name, provider.rate_limit)
        if wait > MAX_PACING_WAIT:
            kh.metrics.throttle(provider.name, "local")
            raise RateLimited(
                f"more requests queued for {provider.name} than its rate_limit allows",
                retry_after=retry_after_seconds(now + wait, now),
            )
        if wait > 0:
            await asyncio.sleep(wait)
