"""Prometheus metrics (names documented in the README).

The request path only bumps plain dict counters (no locks, no label lookups); a custom
collector turns them into Prometheus families when /-/metrics is scraped. One registry
per app, so several apps in one process (tests) never share counters.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.token_fetches: dict[tuple[str, str], int] = {}
        self.throttled: dict[tuple[str, str], int] = {}
        #: keyhop's own 500 internal_error answers: every one is a bug (issue 12)
        self.internal_errors = 0
        # provider -> per-bucket counts (last one is +Inf), sum of seconds
        self.latency: dict[str, tuple[list[int], list[float]]] = {}
        #: the tasks handling requests now: the gauge, and what a drain out of time cancels
        self.in_flight: set[asyncio.Task[object]] = set()
        #: requests on the express lane now (proxy/lane/: no task to hold), and served by it
        self.express_in_flight = 0
        self.express_served = 0
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        #: what /-/metrics renders: this registry, or all workers' (proxy/peers.py)
        self.exposed: Any = self.registry

    def request(self, route: str, provider: str, status: int) -> None:
        key = (route, provider, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def upstream(self, provider: str, seconds: float) -> None:
        entry = self.latency.get(provider)
        if entry is None:
            entry = self.latency[provider] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        entry[0][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        entry[1][0] += seconds

    def token_fetch(self, provider: str, ok: bool) -> None:
        key = (provider, "ok" if ok else "error")
        self.token_fetches[key] = self.token_fetches.get(key, 0) + 1

    def throttle(self, provider: str, source: str) -> None:
        key = (provider, source)
        self.throttled[key] = self.throttled.get(key, 0) + 1

    def internal_error(self) -> None:
        """Called from the request path's catch-all, once per 500 internal_error answer."""
        self.internal_errors += 1

    def render(self) -> bytes:
        return generate_latest(self.exposed)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        requests = CounterMetricFamily(
            "keyhop_requests",
            "Requests answered, by route, provider and status.",
            labels=["route", "provider", "status"],
        )
        for (route, provider, status), count in list(m.requests.items()):
            requests.add_metric([route, provider, str(status)], count)
        yield requests

        latency = HistogramMetricFamily(
            "keyhop_upstream_seconds",
            "Time from sending upstream to the upstream's response headers.",
            labels=["provider"],
        )
        for provider, (counts, total) in list(m.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            latency.add_metric([provider], buckets, sum_value=total[0])
        yield latency

        fetches = CounterMetricFamily(
            "keyhop_token_fetches",
            "Token, refresh and login requests sent to providers, by result.",
            labels=["provider", "result"],
        )
        for (provider, result), count in list(m.token_fetches.items()):
            fetches.add_metric([provider, result], count)
        yield fetches

        throttled = CounterMetricFamily(
            "keyhop_throttled",
            "Requests throttled: upstream = the provider said so, local = keyhop answered 429.",
            labels=["provider", "source"],
        )
        for (provider, source), count in list(m.throttled.items()):
            throttled.add_metric([provider, source], count)
        yield throttled

        yield CounterMetricFamily(
            "keyhop_internal_errors",
            "keyhop's own internal_error answers (500): each one is a bug to report.",
            value=m.internal_errors,
        )

        yield CounterMetricFamily(
            "keyhop_express_requests",
            "Requests served whole by the express lane (no task; proxy/lane/).",
            value=m.express_served,
        )
        yield GaugeMetricFamily(
            "keyhop_in_flight_requests",
            "Requests being handled.",
            value=len(m.in_flight) + m.express_in_flight,
        )
