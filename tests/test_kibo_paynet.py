"""Kibo and PayNet end to end: client-credentials tokens, signatures, throttling, backoff.

The fakes (proxy/sandbox) behave like the real providers; they run on real TLS sockets and
keyhop reaches them through its presets with only the endpoints pointed at them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from proxy.sandbox.kibo import OVER_QPS, OVER_RATE, FakeKibo
from proxy.sandbox.paynet import FakePayNet
from tests.conftest import MakeProxy, StartUpstream
from tests.support import Clock, assert_no_secrets

KIBO_ID, KIBO_SECRET = "kibo-client-7f3a", "kibo-secret-9c1d2e3f"
PAYNET_ID, PAYNET_SECRET = "paynet-client-1b2c", "paynet-secret-4d5e6f7a"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def kibo_config(base: str, ca_file: str, **extra: Any) -> dict[str, Any]:
    provider = {
        "preset": "kibo",
        "auth": {
            "client_id": KIBO_ID,
            "client_secret": KIBO_SECRET,
            "token_url": base + "/oauthserver/oauth2/token",
        },
        "ca_file": ca_file,
        **extra,
    }
    return {
        "providers": {"kibo": provider},
        "routes": [{"prefix": "/kibo", "upstream": base, "provider": "kibo"}],
    }


async def start_kibo(
    upstream: StartUpstream, clock: Callable[[], float] = time.time, **kw: Any
) -> tuple[FakeKibo, str]:
    fake = FakeKibo(client_id=KIBO_ID, client_secret=KIBO_SECRET, clock=clock, **kw)
    return fake, await upstream(fake.app)


async def test_500_concurrent_cold_requests_cause_one_token_request(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file))
    responses = await asyncio.gather(
        *(client.get(f"/kibo/api/v2/location/{i}") for i in range(500))
    )
    assert [r.status for r in responses] == [200] * 500
    assert fake.token_requests == 1
    assert fake.resource_requests == 500
    assert fake.last_resource_headers["API-Key"] == KIBO_ID
    assert fake.last_resource_headers["Authorization"].startswith("Bearer ")


async def test_the_token_is_reused_and_renewed_only_near_expiry(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake, base = await start_kibo(upstream, clock, token_ttl=3600)
    client = await proxy(kibo_config(base, ca_file), clock=clock)
    for _ in range(5):
        assert (await client.get("/kibo/api/a")).status == 200
    clock.advance(3600 - 61)  # just outside the 60 s margin
    assert (await client.get("/kibo/api/a")).status == 200
    assert fake.token_requests == 1
    clock.advance(2)  # inside the margin: the current token serves, one renewal runs
    assert (await client.get("/kibo/api/a")).status == 200
    for _ in range(50):
        await asyncio.sleep(0.01)
        if fake.token_requests == 2:
            break
    assert fake.token_requests == 2
    clock.advance(120)  # past the first token's expiry: the renewed one serves
    assert (await client.get("/kibo/api/a")).status == 200
    assert fake.token_requests == 2


@pytest.mark.parametrize("code", [OVER_QPS, OVER_RATE])
async def test_a_mashery_throttling_403_is_passed_back_and_never_fetches_a_token(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, code: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file))
    assert (await client.get("/kibo/api/warm")).status == 200
    fake.throttle(1, retry_after=30, code=code)
    throttled = await client.get("/kibo/api/x")
    assert throttled.status == 403
    assert throttled.headers["X-Mashery-Error-Code"] == code
    assert throttled.headers["Retry-After"] == "30"
    assert fake.token_requests == 1
    # until the reset, keyhop answers 429 itself instead of spending more of the budget
    blocked = await client.get("/kibo/api/y")
    assert blocked.status == 429
    body = await blocked.json()
    assert body["error"] == "rate_limited"
    assert body["provider"] == "kibo"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 30
    assert fake.resource_requests == 2
    assert fake.token_requests == 1


async def test_a_401_fetches_one_new_token_and_replays_the_request_with_its_body(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file))
    assert (await client.get("/kibo/api/warm")).status == 200
    fake.revoke_tokens()
    responses = await asyncio.gather(
        *(client.post("/kibo/api/orders", data=b"x" * 1000) for _ in range(20))
    )
    assert [r.status for r in responses] == [200] * 20
    assert [(await r.json())["body_bytes"] for r in responses] == [1000] * 20
    assert fake.token_requests == 2


async def test_a_body_larger_than_replay_max_bytes_streams_and_is_not_replayed(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file, replay_max_bytes=1024))
    assert (await client.get("/kibo/api/warm")).status == 200
    fake.revoke_tokens()
    refused = await client.post("/kibo/api/big", data=b"y" * 4096)
    assert refused.status == 401  # passed back as the upstream said
    assert (await client.post("/kibo/api/big", data=b"y" * 4096)).status == 200
    assert fake.token_requests == 2


@pytest.mark.parametrize(
    ("mode", "status", "fragment"),
    [
        pytest.param("status", 500, "HTTP 500", id="down"),
        pytest.param("garbage", 200, "not a JSON object", id="garbage"),
    ],
)
async def test_a_failing_token_endpoint_is_a_credential_error_with_backoff(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, mode: str, status: int, fragment: str
) -> None:
    fake, base = await start_kibo(upstream)
    fake.fail_token(60, status=status, mode=mode)
    client = await proxy(kibo_config(base, ca_file))
    responses = await asyncio.gather(*(client.get("/kibo/api/x") for _ in range(50)))
    assert {r.status for r in responses} == {502}
    body = await responses[0].json()
    assert body["error"] == "credential_error"
    assert body["provider"] == "kibo"
    assert fragment in body["message"] or "next attempt" in body["message"]
    for _ in range(20):  # more requests inside the first backoff step: still one try
        assert (await client.get("/kibo/api/x")).status == 502
    assert fake.token_requests == 1


async def test_a_wrong_client_secret_names_the_providers_error_code(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake, base = await start_kibo(upstream)
    config = kibo_config(base, ca_file)
    config["providers"]["kibo"]["auth"]["client_secret"] = "wrong-secret-value-1"
    client = await proxy(config)
    resp = await client.get("/kibo/api/x")
    assert resp.status == 502
    body = await resp.json()
    assert "invalid_client" in body["message"]
    assert "wrong-secret-value-1" not in json.dumps(body)


async def test_backoff_steps_double_and_a_valid_token_serves_until_its_real_expiry(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake, base = await start_kibo(upstream, clock, token_ttl=600)
    client = await proxy(kibo_config(base, ca_file), clock=clock)
    assert (await client.get("/kibo/api/a")).status == 200
    fake.fail_token(10_000)
    clock.advance(600 - 50)  # inside the margin: renewal fails in the background
    assert (await client.get("/kibo/api/a")).status == 200
    await asyncio.sleep(0.1)
    assert fake.token_requests == 2
    for _ in range(4):  # inside the first 1 s step: no attempt however many requests
        clock.advance(0.2)
        assert (await client.get("/kibo/api/a")).status == 200
        await asyncio.sleep(0.05)
        assert fake.token_requests == 2  # no second attempt inside the first 1 s step
    clock.advance(1.5)
    assert (await client.get("/kibo/api/a")).status == 200
    await asyncio.sleep(0.1)
    assert fake.token_requests == 3  # the second step's one attempt
    clock.advance(50)  # past the real expiry
    gone = await client.get("/kibo/api/a")
    assert gone.status == 502
    assert (await gone.json())["error"] == "credential_error"


async def test_a_slow_token_endpoint_times_out_as_a_credential_error(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    fake.fail_token(5, mode="slow")
    client = await proxy(kibo_config(base, ca_file, timeouts={"connect": 2, "read": 0.5}))
    started = time.monotonic()
    resp = await client.get("/kibo/api/x")
    assert resp.status == 502
    assert "timed out" in (await resp.json())["message"]
    assert time.monotonic() - started < 4


async def test_an_unreachable_token_endpoint_is_a_credential_error(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    config = kibo_config(base, ca_file)
    config["providers"]["kibo"]["auth"]["token_url"] = "https://127.0.0.1:9/token"
    client = await proxy(config)
    resp = await client.get("/kibo/api/x")
    assert resp.status == 502
    assert (await resp.json())["error"] == "credential_error"


async def test_rate_limit_headers_pass_back_untouched(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file))
    resp = await client.get("/kibo/api/x")
    for name in ("X-Plan-QPS-Allotted", "X-Plan-QPS-Current", "X-Plan-Quota-Reset"):
        assert name in resp.headers


async def test_x_plan_quota_reset_in_kibos_long_form_blocks_until_then(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    from aiohttp import web

    async def over_rate(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "over rate"},
            status=403,
            headers={
                "X-Mashery-Error-Code": OVER_RATE,
                "X-Plan-Quota-Reset": "Friday, January 1, 2100 12:00:00 AM GMT",
            },
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", over_rate)
    fake, token_base = await start_kibo(upstream)
    base = await upstream(app)
    config = kibo_config(base, ca_file)
    config["providers"]["kibo"]["auth"]["token_url"] = token_base + "/oauthserver/oauth2/token"
    client = await proxy(config)
    assert (await client.get("/kibo/x")).status == 403
    blocked = await client.get("/kibo/x")
    assert blocked.status == 429
    assert 3590 <= int(blocked.headers["Retry-After"]) <= 3600  # capped at MAX_RETRY_AFTER


async def test_retry_throttled_waits_a_short_retry_after_and_succeeds(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file, retry_throttled=True))
    assert (await client.get("/kibo/api/warm")).status == 200
    fake.throttle(1, retry_after=1)
    started = time.monotonic()
    resp = await client.get("/kibo/api/x")
    assert resp.status == 200
    assert 0.9 <= time.monotonic() - started < 5
    assert fake.resource_requests == 3


async def test_retry_throttled_answers_a_long_retry_after_with_429_at_once(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file, retry_throttled=True))
    assert (await client.get("/kibo/api/warm")).status == 200
    fake.throttle(5, retry_after=60)
    started = time.monotonic()
    resp = await client.get("/kibo/api/x")
    assert resp.status == 429
    assert (await resp.json())["error"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 59
    assert time.monotonic() - started < 2


async def test_rate_limit_paces_requests_to_the_configured_rate(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file, rate_limit={"per_second": 10, "burst": 1}))
    started = time.monotonic()
    responses = await asyncio.gather(*(client.get("/kibo/api/x") for _ in range(11)))
    elapsed = time.monotonic() - started
    assert [r.status for r in responses] == [200] * 11
    assert 0.9 <= elapsed < 3


def paynet_config(base: str, ca_file: str) -> dict[str, Any]:
    return {
        "providers": {
            "paynet": {
                "preset": "paynet",
                "auth": {"client_id": PAYNET_ID, "client_secret": PAYNET_SECRET},
                "vars": {"fiid": "FI-0042"},
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/paynet", "upstream": base, "provider": "paynet"}],
    }


async def test_paynet_requests_carry_bearer_fiid_and_a_valid_signature(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = FakePayNet(client_id=PAYNET_ID, client_secret=PAYNET_SECRET, fiid="FI-0042")
    base = await upstream(fake.app)
    client = await proxy(paynet_config(base, ca_file))
    responses = await asyncio.gather(
        *(client.post("/paynet/api/transfer", json={}) for _ in range(5))
    )
    assert [r.status for r in responses] == [200] * 5
    assert fake.token_requests == 1
    headers = fake.last_resource_headers
    assert headers["X-Fiid"] == "FI-0042"
    assert abs(int(headers["X-Timestamp"]) - time.time()) < 5
    assert len(headers["X-Signature"]) == 64


async def test_paynet_rejects_a_stale_timestamp_with_400_which_keyhop_passes_back(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, clock: Clock
) -> None:
    fake = FakePayNet(client_id=PAYNET_ID, client_secret=PAYNET_SECRET, fiid="FI-0042")
    base = await upstream(fake.app)
    clock.advance(-3600)  # keyhop's clock runs an hour behind the provider's
    client = await proxy(paynet_config(base, ca_file), clock=clock)
    resp = await client.get("/paynet/api/x")
    assert resp.status == 400
    assert "Timestamp" in (await resp.json())["error"]
    assert fake.token_requests == 1  # a 400 is not a credential problem


async def test_paynet_rejects_a_signature_under_another_key(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = FakePayNet(client_id=PAYNET_ID, client_secret=PAYNET_SECRET, fiid="FI-0042")
    base = await upstream(fake.app)
    config = paynet_config(base, ca_file)
    config["providers"]["paynet"]["sign"] = {"type": "x_signature", "key": "not-the-secret"}
    client = await proxy(config)
    resp = await client.get("/paynet/api/x")
    assert resp.status == 400
    assert (await resp.json())["error"] == "Invalid signature"


async def test_no_secret_reaches_a_log_line_or_an_answer(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kibo, kibo_base = await start_kibo(upstream)
    paynet = FakePayNet(client_id=PAYNET_ID, client_secret=PAYNET_SECRET, fiid="FI-0042")
    paynet_base = await upstream(paynet.app)
    config = kibo_config(kibo_base, ca_file)
    config["providers"].update(paynet_config(paynet_base, ca_file)["providers"])
    config["routes"] += paynet_config(paynet_base, ca_file)["routes"]
    client = await proxy(config)
    bodies = []
    for path in ("/kibo/api/a?code=abc", "/paynet/api/b", "/-/providers", "/-/metrics"):
        bodies.append(await (await client.get(path)).text())
    tokens = [
        kibo.last_resource_headers["Authorization"].split()[1],
        paynet.last_resource_headers["Authorization"].split()[1],
    ]
    kibo.revoke_tokens()
    kibo.fail_token(60)
    bodies.append(await (await client.get("/kibo/api/c")).text())
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("keyhop")]
    assert_no_secrets(logs + bodies, [KIBO_SECRET, PAYNET_SECRET, *tokens])
    assert_no_secrets(logs, ["code=abc", '"abc"'])  # query values are never logged
    texts = logs
    assert any('"credential":"fetched"' in t for t in texts)


async def test_providers_and_metrics_report_fetches_and_failures(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_kibo(upstream)
    client = await proxy(kibo_config(base, ca_file))
    assert (await client.get("/kibo/api/a")).status == 200
    view = await (await client.get("/-/providers")).json()
    tenant = view["providers"]["kibo"]["tenants"][0]
    assert tenant["state"] == "valid"
    assert tenant["fetches"] == 1
    assert tenant["last_error"] is None
    assert tenant["expires_at"] is not None
    fake.revoke_tokens()
    fake.fail_token(60)
    assert (await client.get("/kibo/api/a")).status == 502
    view = await (await client.get("/-/providers")).json()
    assert "HTTP 500" in view["providers"]["kibo"]["tenants"][0]["last_error"]
    metrics = await (await client.get("/-/metrics")).text()
    assert 'keyhop_token_fetches_total{provider="kibo",result="ok"} 1.0' in metrics
    assert 'keyhop_token_fetches_total{provider="kibo",result="error"} 1.0' in metrics
    assert 'keyhop_requests_total{provider="kibo",route="/kibo",status="200"} 1.0' in metrics
    assert "keyhop_upstream_seconds_bucket" in metrics
