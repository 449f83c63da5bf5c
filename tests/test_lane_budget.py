"""`rate_limit` (SPEC 4.1: keyhop paces a provider itself) spends one slot per request,
whether the express lane or the pipeline sends it, and also when a kept-alive upstream
connection turns out closed and the request is sent again on a fresh one (as upstream.py
does for a bodyless request): a request resent is still one request of the budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.lane_support import Serve, lane_served, one_route, serve
from tests.test_upstream import StartRaw, answers_once_per_connection, keep_alive, raw_upstream

__all__ = ["raw_upstream", "serve"]  # fixtures


@pytest.mark.parametrize(
    ("express", "drops"),
    [
        pytest.param(True, True, id="lane-dropping-upstream"),
        pytest.param(False, True, id="no-lane-dropping-upstream"),
        pytest.param(True, False, id="lane"),
        pytest.param(False, False, id="no-lane"),
    ],
)
async def test_a_request_spaced_past_the_pacing_interval_is_sent_at_once(
    raw_upstream: StartRaw, serve: Serve, express: bool, drops: bool
) -> None:
    up = await raw_upstream(answers_once_per_connection() if drops else keep_alive())
    provider = {"auth": {"type": "none"}, "rate_limit": {"per_second": 2, "burst": 1}}
    client = await serve(one_route(up.base, provider), express=express)
    waits = []
    for i in range(4):
        await asyncio.sleep(0.6)  # past the 0.5 s interval: a slot is free at once
        started = time.monotonic()
        resp = await client.get(f"/r/{i}")
        assert (resp.status, await resp.read()) == (200, b"ok")
        waits.append(time.monotonic() - started)
    assert max(waits) < 0.25, [f"{w:.2f}" for w in waits]
    assert [w.path for w in up.requests][-1] == "/3"
    if express and not drops:
        assert await lane_served(client) == 3
