"""What operators alert on (issue 15 item 4), read from live state when /-/metrics is
scraped: seconds until each credential expires, back-off state, how long each provider is
throttled, the store's health.

Per-tenant series are capped (MAX_TENANT_SERIES per provider, the soonest to expire first)
so that many tenants cannot grow a scrape without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric

from proxy.runtime import Keyhop

MAX_TENANT_SERIES: Final = 200


class StateCollector:
    def __init__(self, kh: Keyhop) -> None:
        self._kh = kh

    def collect(self) -> Iterator[Metric]:
        kh = self._kh
        now = kh.clock()
        manager = kh.credentials
        expires = GaugeMetricFamily(
            "keyhop_credential_expires_in_seconds",
            "Seconds until the credential in memory expires (negative: expired).",
            labels=["provider", "tenant"],
        )
        backoff = GaugeMetricFamily(
            "keyhop_credential_backoff_seconds",
            "Seconds until the next token request is allowed after failures (0: not backing off).",
            labels=["provider", "tenant"],
        )
        failures = GaugeMetricFamily(
            "keyhop_credential_failures",
            "Token requests failed in a row.",
            labels=["provider", "tenant"],
        )
        if manager is not None:
            for name in kh.runtime.providers:
                keys = {k for k in manager.states if k[0] == name}
                rows = []
                for key in keys | {(name, "")}:
                    credential = manager.cached(*key)
                    if credential is not None and credential.expires_at is not None:
                        rows.append((credential.expires_at - now, key))
                for left, (provider, tenant) in sorted(rows)[:MAX_TENANT_SERIES]:
                    expires.add_metric([provider, tenant], left)
                states = sorted(
                    ((s.next_attempt, k, s) for k, s in manager.states.items() if k[0] == name),
                    reverse=True,
                )[:MAX_TENANT_SERIES]
                for next_attempt, (provider, tenant), state in states:
                    backoff.add_metric([provider, tenant], max(0.0, next_attempt - now))
                    failures.add_metric([provider, tenant], state.failures)
        yield expires
        yield backoff
        yield failures
        throttled = GaugeMetricFamily(
            "keyhop_throttled_until_seconds",
            "Seconds until the provider's request budget is open again (0: not throttled).",
            labels=["provider"],
        )
        for provider, until in kh.throttled_until.items():
            throttled.add_metric([provider], max(0.0, until - now))
        yield throttled
        yield GaugeMetricFamily(
            "keyhop_store_up",
            "1 while the token store answers, 0 while it cannot be reached.",
            value=1 if kh.store.healthy else 0,
        )
