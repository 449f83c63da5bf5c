"""Fuzz: request targets against routing (issue 12, SPEC 4.1: "Nothing can leave the route's
prefix or reach another host").

Targets are built from dots, separators and path parameters, raw and encoded. Through
`RouteTable.match` and through a real keyhop app in front of two recording upstreams, no
target may reach a path outside its route's base path (read as RFC 3986 5.2.4 would, and as
Tomcat and Spring would, see targets.py), nor the other route's upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from proxy.errors import BadRequest
from proxy.routing import RouteTable
from tests.conftest import make_config
from tests.fuzz.harness import Errors, Keyhop, Loop, Upstream, examples, exchange, request_bytes
from tests.fuzz.targets import KNOWN, escapes, raw_targets

BASES = {"/r": "/base/v1", "/q": ""}  # route prefix -> the upstream's base path


def routes(ports: dict[str, int]) -> list[dict[str, str]]:
    return [
        {"prefix": p, "upstream": f"http://127.0.0.1:{ports[p]}{BASES[p]}", "provider": "p"}
        for p in BASES
    ]


def config(ports: dict[str, int]) -> dict[str, object]:
    return {
        "providers": {"p": {"auth": {"type": "none"}, "timeouts": {"connect": 2, "read": 2}}},
        "routes": routes(ports),
    }


TABLE = RouteTable(make_config(config({"/r": 1, "/q": 2})).routes)


def upstream_target(target: str) -> tuple[str, str] | None:
    """(prefix, target sent upstream) by RouteTable.match; None when refused or unrouted."""
    try:
        match = TABLE.match(target)
    except BadRequest:
        return None
    if match is None:
        return None
    return match.route.prefix, match.upstream_target


@settings(max_examples=examples(1500))
@given(target=raw_targets())
def test_no_matched_target_leaves_its_routes_base_path(target: str) -> None:
    routed = upstream_target(target)
    if routed is None:
        return
    prefix, sent = routed
    assert not escapes(sent.partition("?")[0], BASES[prefix]), (target, sent)


class Rig:
    def __init__(self) -> None:
        self.loop = Loop()
        self.upstreams = {p: Upstream() for p in BASES}
        for up in self.upstreams.values():
            self.loop.run(up.start())
        ports = {p: up.port for p, up in self.upstreams.items()}
        self.keyhop = self.loop.run(Keyhop(config(ports)).start())

    def close(self) -> None:
        self.loop.run(self.keyhop.close())
        for up in self.upstreams.values():
            self.loop.run(up.close())
        self.loop.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def check_through_keyhop(rig: Rig, target: str, known: frozenset[str] = KNOWN) -> None:
    for up in rig.upstreams.values():
        up.heads.clear()
    with Errors() as errors:
        got = rig.loop.run(exchange(rig.keyhop.port, request_bytes(target.encode()), 5.0))
        logged = errors.take()
    assert not logged, logged
    assert got.complete and got.invalid is None, got
    received = {
        p: [h.split(b" ")[1].decode("latin-1") for h in up.heads] for p, up in rig.upstreams.items()
    }
    routed = upstream_target(target)
    if got.status != 200:
        assert got.status in (400, 404), (target, got.status, got.body)
        code = json.loads(got.body)["error"]
        assert code == ("bad_request" if got.status == 400 else "no_route"), code
        assert not any(received.values()), (target, received)
        return
    assert routed is not None, f"keyhop forwarded {target!r}, which RouteTable refuses"
    prefix = routed[0]
    for other, paths in received.items():
        if other != prefix:
            assert not paths, f"{target!r} reached {other}'s upstream as {paths}"
    assert len(received[prefix]) == 1, received
    path = received[prefix][0].partition("?")[0]
    assert not escapes(path, BASES[prefix], known), (target, path)


@settings(max_examples=examples(500))
@given(target=raw_targets())
def test_no_target_through_keyhop_reaches_outside_its_base_or_another_upstream(
    rig: Rig, target: str
) -> None:
    check_through_keyhop(rig, target)


REGRESSIONS = [
    pytest.param("/r/a/b?x=/../..", id="a-query-is-not-a-path"),
    pytest.param("/r/..;/x", id="dot-dot-param"),
    pytest.param("/r/%2e%2e;/x", id="encoded-dot-dot-param"),
    pytest.param("/r/..;jsessionid=1/x", id="dot-dot-jsessionid"),
    pytest.param("/r/..%3b/x", id="dot-dot-encoded-semicolon"),
    pytest.param("/q//evil.example/x", id="double-slash-after-prefix"),
]


@pytest.mark.parametrize("target", REGRESSIONS)
def test_found_targets_through_route_table(target: str) -> None:
    routed = upstream_target(target)
    if routed is not None:
        prefix, sent = routed
        assert not escapes(sent.partition("?")[0], BASES[prefix], frozenset()), sent


@pytest.mark.parametrize("target", REGRESSIONS)
def test_found_targets_through_keyhop(rig: Rig, target: str) -> None:
    check_through_keyhop(rig, target, frozenset())
