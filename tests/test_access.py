"""proxy/access.py: one JSON line a request (SPEC 4.7), without a secret."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

from proxy.access import AccessInfo, log_access
from proxy.metrics import Metrics
from proxy.schema import Redactor

SECRET = "sekrit-value-1"


def _kh(lines: list[str]) -> Any:
    return SimpleNamespace(
        runtime=SimpleNamespace(redact=Redactor([SECRET])),
        access_log=lines.append,
        metrics=Metrics(),
    )


def test_a_line_holds_every_field_and_no_secret_or_query_value() -> None:
    lines: list[str] = []
    kh = _kh(lines)
    info = AccessInfo(None, "/pay", "paynet", f"t-{SECRET}", 1.5, "memory", None, False)
    log_access("GET", f"/pay/{SECRET}/x?code={SECRET}&b=2", info, 200, time.perf_counter(), kh)
    (line,) = lines
    assert SECRET not in line
    entry = json.loads(line)
    assert entry["route"] == "/pay"
    assert entry["provider"] == "paynet"
    assert entry["tenant"] == "t-***"
    assert entry["method"] == "GET"
    assert entry["path"] == "/pay/***/x"
    assert entry["status"] == 200
    assert entry["upstream_ms"] == 1.5
    assert entry["credential"] == "memory"
    assert entry["query_keys"] == ["b", "code"]
    assert entry["duration_ms"] >= 0
    assert kh.metrics.requests == {("/pay", "paynet", 200): 1}


def test_lines_of_different_routes_and_sources_keep_their_own_words() -> None:
    lines: list[str] = []
    kh = _kh(lines)
    started = time.perf_counter()
    for route, provider, source in [("/a", "pa", "memory"), ("/b", "pb", "fetched")] * 2:
        info = AccessInfo(None, route, provider, None, None, source, None, False)
        log_access("POST", route, info, 502, started, kh)
    got = [json.loads(line) for line in lines]
    assert [(e["route"], e["provider"], e["credential"]) for e in got] == [
        ("/a", "pa", "memory"),
        ("/b", "pb", "fetched"),
    ] * 2
    assert all(e["tenant"] is None and e["upstream_ms"] is None for e in got)


def test_an_error_and_an_abort_are_logged() -> None:
    lines: list[str] = []
    info = AccessInfo(None, None, None, None, None, None, "upstream_timeout", True)
    log_access("GET", "/nowhere", info, 499, time.perf_counter(), _kh(lines))
    entry = json.loads(lines[0])
    assert entry["error"] == "upstream_timeout"
    assert entry["aborted"] is True
    assert entry["route"] is None and entry["credential"] is None
