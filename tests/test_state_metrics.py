"""state_metrics.py: what operators alert on, from live state at scrape time."""

from __future__ import annotations

import re

from proxy.sandbox.kibo import FakeKibo
from tests.conftest import MakeProxy, StartUpstream

CLIENT_ID, CLIENT_SECRET = "metrics-client", "metrics-secret-5e6f"


def gauge(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.M)
    return float(m.group(1)) if m else None


def kibo(base: str, ca_file: str) -> dict[str, object]:
    return {
        "providers": {
            "kibo": {
                "preset": "kibo",
                "auth": {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_url": base + "/oauthserver/oauth2/token",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/kibo", "upstream": base, "provider": "kibo"}],
    }


async def test_seconds_until_expiry_and_store_health_are_exported(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    fake = FakeKibo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    client = await proxy(kibo(await upstream(fake.app), ca_file))
    async with client.get("/kibo/api/v2/location/7") as r:
        assert r.status == 200
    async with client.get("/-/metrics") as r:
        text = await r.text()
    left = gauge(text, "keyhop_credential_expires_in_seconds", provider="kibo", tenant="")
    assert left is not None and 3500 < left <= 3600
    assert gauge(text, "keyhop_store_up") == 1
    assert CLIENT_SECRET not in text


async def test_a_failing_token_endpoint_shows_as_backoff_and_failures(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    fake = FakeKibo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_token(60, status=500)
    client = await proxy(kibo(await upstream(fake.app), ca_file))
    async with client.get("/kibo/api/v2/location/7") as r:
        assert r.status == 502
    async with client.get("/-/metrics") as r:
        text = await r.text()
    assert gauge(text, "keyhop_credential_failures", provider="kibo", tenant="") == 1
    wait = gauge(text, "keyhop_credential_backoff_seconds", provider="kibo", tenant="")
    assert wait is not None and 0 < wait <= 2


async def test_a_throttled_provider_shows_how_long_it_stays_throttled(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    fake = FakeKibo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.throttle(1, retry_after=120)
    client = await proxy(kibo(await upstream(fake.app), ca_file))
    async with client.get("/kibo/api/v2/location/7") as r:
        assert r.status == 403  # Mashery's throttling answer, relayed
    async with client.get("/-/metrics") as r:
        text = await r.text()
    left = gauge(text, "keyhop_throttled_until_seconds", provider="kibo")
    assert left is not None and 110 < left <= 120
