"""Prometheus metrics (proxy/metrics.py), read back with prometheus_client's own text parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics


def samples(metrics: Metrics, name: str) -> list[float]:
    text = metrics.render().decode()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_the_internal_error_counter_is_exported_at_zero_before_any_error() -> None:
    assert samples(Metrics(), "keyhop_internal_errors_total") == [0.0]


def test_each_internal_error_answer_counts_once() -> None:
    metrics = Metrics()
    metrics.internal_error()
    metrics.internal_error()
    assert samples(metrics, "keyhop_internal_errors_total") == [2.0]
    assert samples(Metrics(), "keyhop_internal_errors_total") == [0.0]  # per app, not global
