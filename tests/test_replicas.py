"""Three real `keyhop serve` replicas on one real redis-server: one token fetch, one session
and one rate budget across all of them, a dead lock holder, and Redis going away."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.sandbox.kibo import FakeKibo
from proxy.sandbox.spaaza import FakeSpaaza
from tests.conftest import StartUpstream
from tests.redis_server import RedisServer
from tests.support import KeyhopProcess, assert_no_secrets, wait_healthy, write_config

KIBO_ID, KIBO_SECRET = "replica-kibo-client", "replica-kibo-secret-0a1b"
USER, PASSWORD = "admin@example.com", "replica-password-2c3d"

Replicas = Callable[..., "asyncio.Future[list[KeyhopProcess]]"]


async def all_healthy(procs: list[KeyhopProcess]) -> None:
    for proc in procs:
        try:
            await wait_healthy(proc.url, timeout=10)
        except AssertionError:
            raise AssertionError(f"replica did not start:\n{proc.logs()}") from None


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[KeyhopProcess] = []

    async def start(config: dict[str, Any], n: int = 3) -> list[KeyhopProcess]:
        path = write_config(tmp_path / f"replica-{len(started)}.yaml", config)
        procs = [KeyhopProcess(path, tmp_path) for _ in range(n)]
        for proc in procs:
            proc.start(wait=False)  # the fakes share this event loop: never block it
        started.extend(procs)
        await all_healthy(procs)
        return procs

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)


def kibo_config(base: str, ca_file: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "store": redis_url,
        "fetch_lock_ttl": 3,
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


async def burst(urls: list[str], n: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(i: int) -> int:
            async with s.get(f"{urls[i % len(urls)]}/kibo/api/item/{i}") as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_300_cold_requests_across_three_replicas_cause_one_token_request(
    upstream: StartUpstream, ca_file: str, redis_server: RedisServer, replicas: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    procs = await replicas(kibo_config(base, ca_file, redis_server.url))
    statuses = await burst([p.url for p in procs], 300)
    assert statuses == [200] * 300
    assert fake.token_requests == 1
    assert_no_secrets([p.logs() for p in procs], [KIBO_SECRET])


async def test_a_spaaza_login_happens_once_for_all_replicas(
    upstream: StartUpstream, ca_file: str, redis_server: RedisServer, replicas: Any
) -> None:
    fake = FakeSpaaza(username=USER, password=PASSWORD)
    base = await upstream(fake.app)
    config = {
        "store": redis_server.url,
        "providers": {
            "admin": {
                "preset": "spaaza_admin",
                "auth": {"credentials": {"username": USER, "password": PASSWORD}},
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/kibo", "upstream": base, "provider": "admin"}],
    }
    procs = await replicas(config)
    assert await burst([p.url for p in procs], 150) == [200] * 150
    assert fake.logins == 1
    fake.expire_all()  # every session gone: one re-login for everyone
    assert await burst([p.url for p in procs], 150) == [200] * 150
    assert fake.logins == 2
    assert_no_secrets([p.logs() for p in procs], [PASSWORD])


async def test_a_replica_killed_while_holding_the_fetch_lock_blocks_the_others_only_until_expiry(
    upstream: StartUpstream, ca_file: str, redis_server: RedisServer, replicas: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    procs = await replicas(kibo_config(base, ca_file, redis_server.url))
    fake.fail_token(60, mode="slow", duration=0.5)  # the first token request hangs
    async with aiohttp.ClientSession() as s:
        holder = asyncio.ensure_future(s.get(procs[0].url + "/kibo/api/a"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if fake.token_requests == 1:
                break
        assert fake.token_requests == 1
        await asyncio.sleep(0.6)  # past the slow window: the next token request is normal
        procs[0].send(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await holder
        started = time.monotonic()
        others = await burst([procs[1].url, procs[2].url], 40)
        elapsed = time.monotonic() - started
    assert others == [200] * 40
    assert elapsed < 3 + 2  # the lock's 3 s expiry, plus a margin
    assert fake.token_requests == 2


async def test_the_per_second_budget_holds_across_replicas(
    upstream: StartUpstream, ca_file: str, redis_server: RedisServer, replicas: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    config = kibo_config(base, ca_file, redis_server.url, rate_limit={"per_second": 40, "burst": 1})
    procs = await replicas(config)
    assert await burst([p.url for p in procs], 3) == [200] * 3  # warm: tokens in place
    started = time.monotonic()
    statuses = await burst([p.url for p in procs], 120)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 120
    rate = 120 / elapsed
    assert rate <= 40 * 1.1, f"{rate:.1f}/s is over the shared budget of 40/s"
    assert rate >= 40 * 0.75, f"{rate:.1f}/s: the budget was not used"


async def test_redis_stopped_mid_run_fails_nothing_that_had_a_valid_token(
    upstream: StartUpstream, ca_file: str, redis_server: RedisServer, replicas: Any
) -> None:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET)
    base = await upstream(fake.app)
    procs = await replicas(kibo_config(base, ca_file, redis_server.url))
    urls = [p.url for p in procs]
    assert await burst(urls, 30) == [200] * 30
    redis_server.stop()
    assert await burst(urls, 90) == [200] * 90
    async with aiohttp.ClientSession() as s:
        async with s.get(urls[0] + "/-/ready") as r:
            ready = await r.json()
        assert r.status == 200 and ready["degraded"] is True
        async with s.get(urls[0] + "/-/providers") as r:
            assert (await r.json())["store"]["ok"] is False
    redis_server.start()
    assert await burst(urls, 30) == [200] * 30
    async with aiohttp.ClientSession() as s:
        async with s.get(urls[0] + "/-/ready") as r:
            assert (await r.json())["degraded"] is False
    assert fake.token_requests == 1
    for proc in procs:
        lines = [line for line in proc.logs().splitlines() if "redis unreachable" in line]
        assert len(lines) == 1, proc.logs()  # logged once per state change, not per request
