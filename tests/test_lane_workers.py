"""The express lane under `workers: 2` (SPEC 7): both workers' lanes serve, and /-/metrics
(answered by either worker) counts the lane's requests of the whole process."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartUpstream
from tests.lane_support import Conn, metric
from tests.test_lane_process import SECRETS, slow_app, static_config
from tests.test_workers import access_lines, settle, supervised

__all__ = ["supervised"]  # fixture


def routed(text: str) -> float:
    """keyhop_requests_total for the route /s, all statuses."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "keyhop_requests_total" and s.labels.get("route") == "/s"
    )


async def test_both_workers_lanes_serve_and_metrics_count_them_for_the_process(
    upstream: StartUpstream, ca_file: str, supervised: Any, monkeypatch: Any
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)  # the supervisor's environment, as in a deployment
    base = await upstream(slow_app(asyncio.Event(), 0.0))
    config = static_config(base, ca_file)
    del config["store"]  # a SQLite file: `memory:` is one worker's only
    proc = await supervised(config)

    async def client(i: int) -> list[int]:
        """Three requests on a kept-alive connection of its own (the kernel picks the
        worker); aiohttp's force_close would send `Connection: close`, which the lane
        leaves to the pipeline."""
        conn = Conn(*await asyncio.open_connection("127.0.0.1", proc.port))
        try:
            return [(await conn.ask("GET", f"/s/{i}-{n}")).status for n in range(3)]
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(i) for i in range(40)))
    assert results == [[200] * 3] * 40
    await settle(1.5)  # every worker's snapshot is at most 1 s old
    by_pid = Counter(line["pid"] for line in access_lines(proc) if line["route"] == "/s")
    assert len(by_pid) == 2 and sum(by_pid.values()) == 120
    totals = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(8):  # whichever worker answers
            async with session.get(proc.url + "/-/metrics") as resp:
                text = await resp.text()
            assert routed(text) == 120
            totals.add(metric(text, "keyhop_express_requests_total"))
    (total,) = totals  # every worker reports the same, whole-process count
    assert 0 < total <= 120
