"""Untrusted numbers from upstreams (issue 12 item 5): Retry-After (RFC 9110 10.2.3) and Kibo's
X-Plan-Quota-Reset are capped at MAX_RETRY_AFTER, malformed ones are ignored, never a 500."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
from aiohttp import web

from proxy.ratelimit import MAX_RETRY_AFTER, reset_time
from tests.conftest import MakeProxy, StartUpstream

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def http_date(ts: float) -> str:
    """An IMF-fixdate as RFC 9110 5.6.7 writes it, made by the standard library."""
    return email.utils.formatdate(ts, usegmt=True)


def test_the_cap_is_an_hour() -> None:
    assert MAX_RETRY_AFTER == 3600


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "120"}, 120),
        ({"Retry-After": " 7 "}, 7),
        ({"Retry-After": "0"}, 0),
        ({"Retry-After": "3600"}, 3600),
        ({"Retry-After": "3601"}, 3600),
        ({"Retry-After": "315360000"}, 3600),  # ten years
        ({"Retry-After": "9" * 5000}, 3600),  # more digits than int() takes by default
        ({"Retry-After": http_date(NOW + 300)}, 300),
        ({"Retry-After": http_date(NOW - 300)}, 0),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 3600),
        ({"X-Plan-Quota-Reset": "Friday, January 1, 2100 12:00:00 AM GMT"}, 3600),
        ({"X-Plan-Quota-Reset": http_date(NOW + 60)}, 60),
        ({"Retry-After": "soon", "X-Plan-Quota-Reset": http_date(NOW + 60)}, 60),
    ],
    ids=[
        "seconds",
        "seconds-with-blanks",
        "zero",
        "exactly-the-cap",
        "one-over-the-cap",
        "ten-years",
        "five-thousand-digits",
        "http-date",
        "http-date-in-the-past",
        "http-date-in-year-9999",
        "kibo-long-form-in-2100",
        "quota-reset-as-http-date",
        "malformed-retry-after-falls-back-to-quota-reset",
    ],
)
def test_a_reset_time_is_read_and_capped_at_an_hour(headers: dict[str, str], seconds: int) -> None:
    until = reset_time(headers, NOW)
    assert until is not None
    assert until - NOW == seconds


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "1.5",
        "1e9",
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663",  # Arabic-Indic three
        "",
        "soon",
        "Fri, 99 Xyz 2024 00:00:00 GMT",
        "Mon, 01 Jan 2024 25:61:61 GMT",
        "Thursday, February 30, 2100 12:00:00 AM GMT",
        "nan",
        "inf",
    ],
    ids=repr,
)
def test_a_malformed_value_is_ignored(value: str) -> None:
    assert reset_time({"Retry-After": value}, NOW) is None
    assert reset_time({"X-Plan-Quota-Reset": value}, NOW) is None


def throttling_upstream(retry_after: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        if request.path == "/throttled":
            return web.json_response({}, status=429, headers={"Retry-After": retry_after})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def config(base: str) -> dict[str, Any]:
    return {
        "providers": {"p": {"auth": {"type": "none"}}},
        "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
    }


async def test_a_retry_after_of_ten_years_blocks_the_provider_for_an_hour_at_most(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    base = await upstream(throttling_upstream("315360000"), tls=False)
    client = await proxy(config(base))
    first = await client.get("/r/throttled")
    assert first.status == 429
    assert first.headers["Retry-After"] == "315360000"  # the upstream's answer is relayed
    blocked = await client.get("/r/other")
    assert blocked.status == 429
    assert (await blocked.json())["error"] == "rate_limited"
    assert 3590 <= int(blocked.headers["Retry-After"]) <= 3600


@pytest.mark.parametrize("value", ["\u00b2", "-1", "Mon, 01 Jan 0000 00:00:00 GMT"], ids=repr)
async def test_a_malformed_retry_after_is_relayed_and_blocks_nothing(
    upstream: StartUpstream, proxy: MakeProxy, value: str
) -> None:
    base = await upstream(throttling_upstream(value.encode().decode("latin-1")), tls=False)
    client = await proxy(config(base))
    first = await client.get("/r/throttled")
    assert first.status == 429
    after = await client.get("/r/other")
    assert (after.status, await after.text()) == (200, "ok")


async def test_reserve_now_takes_only_a_slot_that_is_free_now() -> None:
    """The express lane's question: a free slot is taken at once; when none is, nothing is
    reserved (the pipeline's reserve() then waits its turn, counted once)."""
    from proxy.providers import RateLimit
    from proxy.ratelimit import LocalLimiter
    from tests.support import Clock

    clock = Clock(1_000.0)
    limiter = LocalLimiter(clock)
    limit = RateLimit(per_second=10, burst=2)
    assert limiter.reserve_now("p", limit) is True
    assert limiter.reserve_now("p", limit) is True  # the burst
    assert limiter.reserve_now("p", limit) is False  # none free now...
    assert await limiter.reserve("p", limit) == pytest.approx(0.1)  # ...and none was taken
    clock.advance(0.3)
    assert limiter.reserve_now("p", limit) is True
