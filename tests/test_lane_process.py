"""The express lane in a real `keyhop serve`, compared with KEYHOP_EXPRESS=0: SIGTERM
drains a lane request (SPEC 4.7), `timeouts.keepalive` never cuts a connection with a
request in progress but still closes an idle one, and the access log (SPEC 4.7) and
/-/metrics say the same with the lane on or off, with no secret in them."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from tests.conftest import StartUpstream
from tests.lane_support import TOKEN_PREFIX, Conn, TokenEndpoint, cc_provider, metric, scrape
from tests.support import KeyhopProcess, assert_no_secrets, write_config

Start = Callable[..., KeyhopProcess]
MODES = pytest.mark.parametrize(
    "env", [{}, {"KEYHOP_EXPRESS": "0"}], ids=["lane", "KEYHOP_EXPRESS=0"]
)
SECRETS = {
    "KH_LANE_TOKEN": "tok-Lane-Static-9d8c7b",
    "KH_LANE_CLIENT_KEY": "ckey-Lane-Proc-6f5e4d",
}


#: before a request the test wants on the lane: a request that arrives while the
#: connection's aiohttp loop is still finishing the previous one (served by the pipeline) is
#: served by the pipeline too (same answer; the lane is taken only while that loop is parked)
PARK = 0.05


def slow_app(started: asyncio.Event, delay: float) -> web.Application:
    """/slow answers after `delay` seconds; anything else at once."""

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/slow":
            started.set()
            await asyncio.sleep(delay)
            return web.Response(text="slow-done")
        if request.path == "/empty":
            return web.Response(status=204)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def static_config(base: str, ca_file: str, **top: Any) -> dict[str, Any]:
    return {
        "store": "memory:",
        "providers": {
            "s": {
                "auth": {"type": "static", "token": "${KH_LANE_TOKEN}"},
                "headers": {"Authorization": "Bearer {token}"},
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/s", "upstream": base, "provider": "s"}],
        **top,
    }


async def express_total(session: aiohttp.ClientSession, proc: KeyhopProcess) -> int:
    return int(metric(await scrape(session, proc.url), "keyhop_express_requests_total"))


def access_records(log: str) -> list[dict[str, Any]]:
    records = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "method" in record and "status" in record:
            records.append(record)
    return records


@MODES
async def test_sigterm_while_a_lane_request_waits_on_a_slow_upstream_answers_it_then_exits_0(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, env: dict[str, str]
) -> None:
    started = asyncio.Event()
    base = await upstream(slow_app(started, 1.0))
    config = write_config(tmp_path / "keyhop.yaml", static_config(base, ca_file))
    proc = processes(config, env={**SECRETS, **env})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        for _ in range(2):  # the second one is warm: an idle upstream connection
            await asyncio.sleep(PARK)
            async with session.get(proc.url + "/s/warm") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
        lane = not env
        assert await express_total(session, proc) == (1 if lane else 0)

        async def slow() -> tuple[int, str]:
            async with session.get(proc.url + "/s/slow") as resp:
                return resp.status, await resp.text()

        await asyncio.sleep(PARK)
        task = asyncio.create_task(slow())
        await asyncio.wait_for(started.wait(), 10)
        proc.send(signal.SIGTERM)
        assert await asyncio.wait_for(task, 15) == (200, "slow-done")
    assert proc.proc is not None
    returncode = await asyncio.to_thread(proc.proc.wait, 15)
    assert proc.stop() == returncode
    assert returncode == 0
    (record,) = [r for r in access_records(proc.logs()) if r["path"] == "/s/slow"]
    assert record["status"] == 200 and "aborted" not in record


@MODES
async def test_the_keepalive_timer_spares_a_request_in_progress_and_closes_an_idle_connection(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, env: dict[str, str]
) -> None:
    started = asyncio.Event()
    base = await upstream(slow_app(started, 1.5))
    data = static_config(base, ca_file, timeouts={"keepalive": 1})
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={**SECRETS, **env})
    conn = Conn(*await asyncio.open_connection("127.0.0.1", proc.port))
    try:
        for _ in range(2):
            await asyncio.sleep(PARK)
            assert (await conn.ask("GET", "/s/warm")).body == b"ok"
        await asyncio.sleep(PARK)
        answer = await conn.ask("GET", "/s/slow")  # 1.5 s, past the 1 s idle limit
        assert (answer.status, answer.body) == (200, b"slow-done")
        idle_from = time.monotonic()
        assert await conn.closed_by_peer(3.0), "an idle connection outlived timeouts.keepalive"
        idle = time.monotonic() - idle_from
        assert 0.8 <= idle <= 1.8, f"closed after {idle:.2f} s idle with keepalive 1"
    finally:
        await conn.close()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        assert await express_total(session, proc) == (0 if env else 2)
    assert proc.stop() == 0


async def logged_run(
    proc: KeyhopProcess, requests: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], str, int, str]:
    """Send `requests` in order on one kept-alive connection; the access records, the
    scraped metrics and the lane's count; stops the process (which flushes its log)."""
    key = {"X-Keyhop-Key": SECRETS["KH_LANE_CLIENT_KEY"]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for method, target in requests:
            await asyncio.sleep(PARK)
            url = URL(proc.url + target, encoded=True)
            async with session.request(method, url, headers=key) as resp:
                await resp.read()
                assert resp.status < 500, (method, target, resp.status)
        metrics = await scrape(session, proc.url)
    assert proc.stop() == 0
    log = proc.logs()
    return access_records(log), metrics, int(metric(metrics, "keyhop_express_requests_total")), log


COUNTED = {"keyhop_requests_total", "keyhop_upstream_seconds_count", "keyhop_token_fetches_total"}


def request_counts(metrics: str) -> dict[tuple[Any, ...], float]:
    """What keyhop counted (requests, upstream exchanges, token fetches), not timings."""
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name in COUNTED
    }


async def test_access_lines_and_metrics_are_the_same_with_the_lane_on_or_off_and_hold_no_secret(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(slow_app(asyncio.Event(), 0.0))
    tokens = TokenEndpoint()
    token_base = await upstream(tokens.app())
    data = static_config(base, ca_file, clients={"keys": ["${KH_LANE_CLIENT_KEY}"]})
    data["providers"]["cc"] = cc_provider(token_base + "/token", ca_file)
    data["routes"].append({"prefix": "/cc", "upstream": base, "provider": "cc"})
    config = write_config(tmp_path / "keyhop.yaml", data)
    requests = [
        ("GET", "/s/items?code=SECRETCODE1&x=1"),
        ("GET", "/s/items?code=SECRETCODE1&x=1"),
        ("DELETE", "/s/items/7"),
        ("OPTIONS", "/s/items"),
        ("GET", "/s/empty"),
        ("GET", "/s/empty"),
        ("GET", "/cc/x?y=2"),
        ("GET", "/cc/x?y=2"),
        ("GET", "/nowhere"),
    ]
    on, on_metrics, on_lane, on_log = await logged_run(processes(config, env=SECRETS), requests)
    off_env = {**SECRETS, "KEYHOP_EXPRESS": "0"}
    off, off_metrics, off_lane, off_log = await logged_run(processes(config, env=off_env), requests)

    assert (on_lane, off_lane) == (4, 0)  # GET, DELETE, OPTIONS on /s and the warm /cc GET
    timing = {"ts", "duration_ms", "upstream_ms"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in on] == [
        {k: v for k, v in r.items() if k not in timing} for r in off
    ]
    assert [sorted(r) for r in on] == [sorted(r) for r in off]
    proxied = [r for r in on if r["path"] != "/nowhere" and not r["path"].startswith("/-/")]
    assert len(proxied) == 8 and all(isinstance(r["upstream_ms"], int | float) for r in proxied)
    assert [r["credential"] for r in proxied[-2:]] == ["fetched", "memory"]
    counts = request_counts(on_metrics)
    assert counts == request_counts(off_metrics)
    assert counts[("keyhop_upstream_seconds_count", ("provider", "s"))] == 6
    for log in (on_log, off_log):
        assert "SECRETCODE1" not in log
        assert_no_secrets([log], [*SECRETS.values(), TOKEN_PREFIX, "csec-Lane"])


@MODES
async def test_a_drain_that_runs_out_of_time_cuts_a_lane_request_at_drain_timeout(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, env: dict[str, str]
) -> None:
    """As tests/test_process.py's drain test, with the request on the lane."""
    started = asyncio.Event()
    base = await upstream(slow_app(started, 10.0))
    data = static_config(base, ca_file, drain_timeout=1)
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={**SECRETS, **env})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        for _ in range(2):
            await asyncio.sleep(PARK)
            async with session.get(proc.url + "/s/warm") as resp:
                assert resp.status == 200
        assert await express_total(session, proc) == (0 if env else 1)

        async def slow() -> int:
            async with session.get(proc.url + "/s/slow") as resp:
                await resp.read()
                return resp.status

        await asyncio.sleep(PARK)
        task = asyncio.create_task(slow())
        await asyncio.wait_for(started.wait(), 10)
        signalled = time.monotonic()
        proc.send(signal.SIGTERM)
        assert proc.proc is not None
        returncode = await asyncio.to_thread(proc.proc.wait, 15)
        took = time.monotonic() - signalled
        outcome = await asyncio.gather(task, return_exceptions=True)
    assert returncode == 0
    assert 0.9 < took < 2.5, f"exited {took:.1f} s after SIGTERM with drain_timeout 1"
    assert outcome[0] != 200  # cut, never answered as if whole
    proc.stop()
    logs = proc.logs()
    assert "cutting 1 request(s) still in flight" in logs
    records = [r for r in access_records(logs) if r["path"] == "/s/slow"]
    assert len(records) == 1, f"the cut request is not logged once:\n{logs}"
    assert (records[0]["status"], records[0].get("aborted")) == (499, True), records
