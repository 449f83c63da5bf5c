"""A `rate_limit` holds with the express lane on: the lane takes a slot only when one is
free at once, the pipeline waits for the others (SPEC 4.1 rate limits)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.store import MemoryStore
from tests.conftest import ServeTestServer, make_config


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_a_rate_limit_of_20_per_second_holds_with_the_lane_taking_free_slots(
    upstream: Any, aiohttp_client: Any, express: bool
) -> None:
    arrivals: list[float] = []

    async def resource(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", resource)
    base = await upstream(app, tls=False)
    config = {
        "providers": {
            "p": {"auth": {"type": "none"}, "rate_limit": {"per_second": 20, "burst": 1}}
        },
        "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
    }
    client = await aiohttp_client(
        ServeTestServer(create_app(make_config(config), store=MemoryStore()), express=express)
    )
    assert (await client.get("/r/warm")).status == 200
    await asyncio.sleep(0.2)
    arrivals.clear()

    async def one(i: int) -> int:
        await asyncio.sleep(i * 0.02)  # a steady 50/s offered, in order
        async with client.get(f"/r/{i}") as resp:
            return resp.status

    statuses = await asyncio.gather(*(one(i) for i in range(60)))
    assert statuses == [200] * 60
    span = arrivals[-1] - arrivals[0]
    assert 59 / 20 * 0.9 <= span <= 59 / 20 * 1.2  # 20/s, not the 50/s offered

    async with client.get("/-/metrics") as resp:
        text = await resp.text()
    served = next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "keyhop_express_requests_total"
    )
    assert (served >= 1) is express  # the lane took the slots that were free at once
