"""`workers: 2` (SPEC 7) against real `keyhop serve` processes: both workers serve, and
what SPEC 4 says is one for the process is one across workers without Redis: the token
fetch, the rate budget, "throttled until", pending logins, the console's forms, the
metrics and the providers' states."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from proxy.sandbox.kibo import FakeKibo
from tests.conftest import StartUpstream
from tests.redis_server import RedisServer
from tests.support import KeyhopProcess, assert_no_secrets, wait_healthy, write_config
from tests.test_saison import CLIENT_SECRET as SAISON_SECRET
from tests.test_saison import saison_config, start_saison

KIBO_ID, KIBO_SECRET = "workers-kibo-client", "workers-kibo-secret-3f4e"
CLIENT_KEY = "workers-client-key-9a8b7c"

Start = Callable[..., "asyncio.Future[KeyhopProcess]"]


@pytest.fixture
async def supervised(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`keyhop serve` with `workers: 2` and a SQLite store in tmp_path, healthy."""
    started: list[KeyhopProcess] = []

    async def start(config: dict[str, Any], workers: int = 2) -> KeyhopProcess:
        config = {"store": f"sqlite://{tmp_path / 'tokens.db'}", **config, "workers": workers}
        path = write_config(tmp_path / f"workers-{len(started)}.yaml", config)
        proc = KeyhopProcess(path, tmp_path)
        started.append(proc)
        proc.start(wait=False)  # the fakes share this event loop: never block it
        await wait_healthy(proc.url, timeout=20)
        return proc

    yield start
    for proc in started:
        proc.stop()


def kibo_config(base: str, ca_file: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "kibo": {
                "preset": "kibo",
                "auth": {
                    "client_id": KIBO_ID,
                    "client_secret": KIBO_SECRET,
                    "token_url": base + "/oauthserver/oauth2/token",
                },
                "ca_file": ca_file,
                **extra,
            }
        },
        "routes": [{"prefix": "/kibo", "upstream": base, "provider": "kibo"}],
    }


async def fresh_connections(url: str, paths: list[str], **kw: Any) -> list[int]:
    """Each request on a connection of its own, all at once: the kernel picks a worker for
    every one of them."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:

        async def one(path: str) -> int:
            async with s.get(url + path, **kw) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(p) for p in paths)))


def access_lines(proc: KeyhopProcess) -> list[dict[str, Any]]:
    """Every access-log line (they carry "route"); each line must be whole JSON."""
    out = []
    for line in proc.logs().splitlines():
        data = json.loads(line)  # a line torn by another worker's write fails here
        if "route" in data and "status" in data:
            out.append(data)
    return out


async def settle(seconds: float = 0.3) -> None:
    """Access lines are flushed every 0.1 s; snapshots every 1 s."""
    await asyncio.sleep(seconds)


# -- both serve ----------------------------------------------------------------------------------


async def test_two_workers_both_serve_and_every_access_line_stays_whole(
    upstream: StartUpstream, echo_app: web.Application, ca_file: str, supervised: Any
) -> None:
    base = await upstream(echo_app)
    proc = await supervised(
        {
            "providers": {
                "p": {"auth": {"type": "static"}, "headers": {"X-A": "1"}, "ca_file": ca_file}
            },
            "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
        }
    )
    # long paths make long lines: the workers' buffered writes are many KiB at a time
    paths = [f"/p/{i}/" + "x" * 1500 for i in range(400)]
    assert await fresh_connections(proc.url, paths) == [200] * 400
    await settle()
    lines = [line for line in access_lines(proc) if line["route"] == "/p"]
    assert len(lines) == 400
    per_pid = Counter(line["pid"] for line in lines)
    assert len(per_pid) == 2, per_pid
    # SO_REUSEPORT hashes connections: each worker gets about half
    assert min(per_pid.values()) >= 400 * 0.3, per_pid


# -- one token fetch, one budget, one "throttled until" ------------------------------------------


async def test_500_cold_requests_over_two_workers_cause_one_token_request(
    upstream: StartUpstream, ca_file: str, supervised: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    proc = await supervised(kibo_config(base, ca_file))
    statuses = await fresh_connections(proc.url, [f"/kibo/api/item/{i}" for i in range(500)])
    assert statuses == [200] * 500
    assert fake.token_requests == 1
    await settle()
    assert len({line["pid"] for line in access_lines(proc)}) == 2
    assert_no_secrets([proc.logs()], [KIBO_SECRET])


async def test_a_rate_limit_of_50_per_second_holds_within_10_percent_across_workers(
    upstream: StartUpstream, ca_file: str, supervised: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    proc = await supervised(kibo_config(base, ca_file, rate_limit={"per_second": 50, "burst": 1}))
    assert await fresh_connections(proc.url, ["/kibo/api/warm"] * 4) == [200] * 4
    await asyncio.sleep(0.2)
    before = fake.resource_requests
    started = time.monotonic()
    statuses = await fresh_connections(proc.url, [f"/kibo/api/{i}" for i in range(200)])
    elapsed = time.monotonic() - started
    assert statuses == [200] * 200
    assert fake.resource_requests - before == 200
    # GCRA with burst 1: the first goes at once, then one every 20 ms
    rate = 199 / elapsed
    assert 50 * 0.9 <= rate <= 50 * 1.1, f"{rate:.1f}/s for a budget of 50/s"
    await settle()
    assert len({line["pid"] for line in access_lines(proc) if line["path"] != "/-/health"}) == 2


async def test_throttled_until_said_to_one_worker_holds_for_the_other(
    upstream: StartUpstream, ca_file: str, supervised: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    proc = await supervised(kibo_config(base, ca_file))
    assert await fresh_connections(proc.url, ["/kibo/api/warm"] * 4) == [200] * 4
    fake.throttle(1, retry_after=30)
    assert await fresh_connections(proc.url, ["/kibo/api/throttled"]) == [403]
    sent = fake.resource_requests
    await asyncio.sleep(0.4)  # past the workers' 250 ms cache of "blocked until"
    statuses = await fresh_connections(proc.url, [f"/kibo/api/{i}" for i in range(40)])
    assert statuses == [429] * 40
    assert fake.resource_requests == sent  # nothing more reached the provider
    await settle()
    answered = {line["pid"] for line in access_lines(proc) if line.get("error") == "rate_limited"}
    assert len(answered) == 2  # both workers answered 429 themselves


# -- logins and the console ----------------------------------------------------------------------


async def login_on_fresh_connections(keyhop_url: str, member: str, ca_file: str) -> None:
    """tests/test_saison.py's browser login, each step on a new connection (so the login and
    its callback each reach whichever worker the kernel picks)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    connector = aiohttp.TCPConnector(force_close=True, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as browser:
        login = await browser.get(
            f"{keyhop_url}/-/oauth/saison/login?tenant={member}", allow_redirects=False
        )
        assert login.status == 302, await login.text()
        authorize = login.headers["Location"]
        submit = await browser.post(authorize, data={"decision": "allow"}, allow_redirects=False)
        assert submit.status == 302
        done = await browser.get(URL(submit.headers["Location"], encoded=True))
        assert done.status == 200, await done.text()


async def test_a_login_started_on_one_worker_finishes_on_whichever_gets_the_callback(
    upstream: StartUpstream, ca_file: str, supervised: Any
) -> None:
    fake, base = await start_saison(upstream)
    config = saison_config(base, ca_file)
    del config["store"]
    proc = await supervised(config)
    members = [f"m{i}" for i in range(12)]
    for member in members:
        await login_on_fresh_connections(proc.url, member, ca_file)
    assert fake.codes_issued == len(members)
    await settle()
    lines = sorted(access_lines(proc), key=lambda line: line["ts"])  # blocks per worker
    logins = [line["pid"] for line in lines if line["path"] == "/-/oauth/saison/login"]
    callbacks = [line["pid"] for line in lines if line["path"] == "/-/oauth/saison/callback"]
    assert len(logins) == len(callbacks) == len(members)
    assert [line["status"] for line in lines if line["path"].endswith("/callback")] == [200] * 12
    # a fair coin per login: that no callback ever crossed workers is 1 chance in 4096
    assert any(a != b for a, b in zip(logins, callbacks, strict=True))
    for member in members:
        got = await fresh_connections(
            proc.url, ["/saison/api/x"] * 4, headers={"X-Keyhop-Tenant": member}
        )
        assert got == [200] * 4
    assert_no_secrets([proc.logs()], [SAISON_SECRET])


async def test_a_console_form_shown_by_one_worker_is_accepted_by_the_other(
    upstream: StartUpstream, echo_app: web.Application, ca_file: str, supervised: Any
) -> None:
    base = await upstream(echo_app)
    proc = await supervised(
        {
            "clients": {"keys": [CLIENT_KEY]},
            "providers": {"p": {"auth": {"type": "static"}, "ca_file": ca_file}},
            "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
        }
    )
    results = []
    for i in range(12):
        connector = aiohttp.TCPConnector(force_close=True)  # each step: any worker
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as browser:
            # a query name per round ties the access lines of a round together
            async with browser.get(proc.url + f"/-/console?round{i}") as page:
                assert page.status == 401  # the key form
                token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert token is not None
            async with browser.post(
                proc.url + f"/-/console/key?round{i}",
                data={"csrf": token.group(1), "key": CLIENT_KEY},
                allow_redirects=False,
            ) as done:
                results.append(done.status)
    assert results == [303] * 12
    await settle()
    rounds: dict[str, dict[str, int]] = {}
    for line in access_lines(proc):
        if line["path"].startswith("/-/console"):
            rounds.setdefault(line["query_keys"][0], {})[line["method"]] = line["pid"]
    assert len(rounds) == 12
    assert any(r["GET"] != r["POST"] for r in rounds.values())  # some forms crossed workers


# -- one process to the outside ------------------------------------------------------------------


def counter(text: str, family: str, **labels: str) -> float:
    for metric in text_string_to_metric_families(text):  # prometheus' own parser
        for sample in metric.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {family} {labels} in the scrape")


async def test_metrics_and_providers_describe_both_workers(
    upstream: StartUpstream, ca_file: str, supervised: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    proc = await supervised(kibo_config(base, ca_file))
    assert await fresh_connections(proc.url, ["/kibo/api/x"] * 300) == [200] * 300
    await settle(1.5)  # every worker's snapshot is at most 1 s old
    await settle()
    by_pid = Counter(line["pid"] for line in access_lines(proc) if line["route"] == "/kibo")
    assert len(by_pid) == 2 and sum(by_pid.values()) == 300
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(8):  # whichever worker answers
            async with s.get(proc.url + "/-/metrics") as r:
                text = await r.text()
            assert counter(text, "keyhop_requests_total", route="/kibo", status="200") == 300
            assert counter(text, "keyhop_token_fetches_total", provider="kibo") == 1
            async with s.get(proc.url + "/-/providers") as r:
                view = await r.json()
            (row,) = view["providers"]["kibo"]["tenants"]
            assert row["state"] == "valid" and row["fetches"] == 1
    await settle()
    scrapes = {line["pid"] for line in access_lines(proc) if line["path"] == "/-/metrics"}
    assert len(scrapes) == 2  # both workers answered a scrape, each with the whole count


async def test_with_a_redis_store_two_workers_also_fetch_one_token(
    upstream: StartUpstream, ca_file: str, supervised: Any, redis_server: RedisServer
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    proc = await supervised({**kibo_config(base, ca_file), "store": redis_server.url})
    statuses = await fresh_connections(proc.url, [f"/kibo/api/item/{i}" for i in range(300)])
    assert statuses == [200] * 300
    assert fake.token_requests == 1
    await settle()
    assert len({line["pid"] for line in access_lines(proc)}) == 2
