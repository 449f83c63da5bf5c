"""Prometheus metrics (names documented in the README). One registry per app, so several
apps in one process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "keyhop_requests",
            "Requests answered, by route, provider and status.",
            ["route", "provider", "status"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "keyhop_upstream_seconds",
            "Time from sending upstream to the upstream's response headers.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.token_fetches = Counter(
            "keyhop_token_fetches",
            "Token, refresh and login requests sent to providers, by result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.throttled = Counter(
            "keyhop_throttled",
            "Requests throttled: upstream = the provider said so, local = keyhop answered 429.",
            ["provider", "source"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "keyhop_in_flight_requests", "Requests being handled.", registry=self.registry
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def request(self, route: str, provider: str, status: int) -> None:
        key = (route, provider, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, provider, str(status))
        child.inc()

    def upstream(self, provider: str, seconds: float) -> None:
        child = self._latency_children.get(provider)
        if child is None:
            child = self._latency_children[provider] = self.upstream_seconds.labels(provider)
        child.observe(seconds)

    def token_fetch(self, provider: str, ok: bool) -> None:
        self.token_fetches.labels(provider, "ok" if ok else "error").inc()

    def throttle(self, provider: str, source: str) -> None:
        self.throttled.labels(provider, source).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
