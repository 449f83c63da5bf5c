"""Route matching on raw request targets (SPEC 4.1): pure, no sockets."""

from __future__ import annotations

import os
import random
import re
from urllib.parse import unquote

import pytest

from proxy.errors import BadRequest
from proxy.routing import Route, RouteTable, Upstream

FUZZ_CASES = int(os.environ.get("KEYHOP_FUZZ_CASES", "3000"))  # `make fuzz` runs more


def upstream(base_path: str = "") -> Upstream:
    return Upstream("https", "api.example.test", 443, False, base_path)


def table(*prefixes: str, base_path: str = "") -> RouteTable:
    return RouteTable(
        tuple(Route(p, upstream(base_path), p.strip("/") or "root") for p in prefixes)
    )


@pytest.mark.parametrize(
    ("target", "prefix", "rest"),
    [
        ("/kibo/x", "/kibo", "/x"),
        ("/kibo", "/kibo", ""),
        ("/kibo/", "/kibo", "/"),
        ("/kibo/v2/x", "/kibo/v2", "/x"),
        ("/kibo/v2", "/kibo/v2", ""),
        ("/kibo/v2x/y", "/kibo", "/v2x/y"),
        ("/kibo/v/2", "/kibo", "/v/2"),
    ],
    ids=[
        "rest-after-prefix",
        "prefix-alone",
        "prefix-with-slash",
        "longer-prefix-wins",
        "longer-prefix-alone",
        "longer-prefix-only-on-whole-segment",
        "shorter-prefix-when-longer-does-not-match",
    ],
)
def test_the_longest_prefix_wins_on_whole_path_segments(
    target: str, prefix: str, rest: str
) -> None:
    match = table("/kibo", "/kibo/v2", "/paynet").match(target)
    assert match is not None
    assert (match.route.prefix, match.path) == (prefix, rest)


@pytest.mark.parametrize(
    "target", ["/kibox", "/kibox/y", "/kib", "/", "/other/kibo/x", "/KIBOX"], ids=str
)
def test_a_prefix_never_matches_part_of_a_segment(target: str) -> None:
    assert table("/kibo", "/kibo/v2").match(target) is None


def test_a_root_route_catches_what_no_longer_prefix_takes() -> None:
    routes = table("/", "/kibo")
    match = routes.match("/kibox/y")
    assert match is not None and (match.route.prefix, match.path) == ("/", "/kibox/y")
    match = routes.match("/kibo/y")
    assert match is not None and (match.route.prefix, match.path) == ("/kibo", "/y")


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        ("/kibo/a%2Fb/c%20d;p=1?x=%2F&y=a+b&&z", "/api/v2/a%2Fb/c%20d;p=1?x=%2F&y=a+b&&z"),
        ("/kibo/x?a=?b/../c", "/api/v2/x?a=?b/../c"),
        ("/kibo/x?", "/api/v2/x?"),
        ("/kibo/%E6%97%A5%e6%9c%ac?q=%zz", "/api/v2/%E6%97%A5%e6%9c%ac?q=%zz"),
        ("/kibo/a//b", "/api/v2/a//b"),
        ("/kibo", "/api/v2"),
        ("/kibo?x=1", "/api/v2?x=1"),
        ("/kibo/", "/api/v2/"),
    ],
    ids=[
        "encoded-bytes-and-query",
        "query-may-hold-dots-and-question-marks",
        "empty-query-kept",
        "percent-case-kept",
        "empty-segment-kept",
        "prefix-alone",
        "prefix-alone-with-query",
        "trailing-slash-kept",
    ],
)
def test_the_rest_of_the_path_and_the_query_go_upstream_byte_for_byte(
    target: str, upstream_target: str
) -> None:
    match = table("/kibo", base_path="/api/v2").match(target)
    assert match is not None
    assert match.upstream_target == upstream_target


def test_without_a_base_path_an_empty_rest_becomes_the_root() -> None:
    match = table("/kibo").match("/kibo")
    assert match is not None and match.upstream_target == "/"


@pytest.mark.parametrize(
    "target",
    [
        "/r/../x",
        "/r/..",
        "/r/x/..",
        "/r/x/../../y",
        "/r/%2e%2e/x",
        "/r/%2E%2E/x",
        "/r/.%2E/x",
        "/r/%2e./x",
        "/r/..%2fx",
        "/r/..%2Fx",
        "/r/%2e%2e%2fx",
        "/r/..%5cx",
        "/r/..\\x",
        "/r/%252e%252e/x",
        "/r/./x",
        "/r/.",
        "/r/%2e/x",
        "/r/..?x=1",
    ],
    ids=str,
)
def test_a_dot_segment_raw_or_encoded_is_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        table("/r", "/").match(target)


@pytest.mark.parametrize(
    "target",
    ["/r/...", "/r/..foo", "/r/a..b", "/r/.well-known/x", "/r/a.b/c", "/r/x?path=../../etc"],
    ids=str,
)
def test_dots_that_are_not_a_whole_segment_are_allowed(target: str) -> None:
    match = table("/r").match(target)
    assert match is not None
    assert match.route.prefix + match.upstream_target == target


def test_an_encoded_slash_stays_encoded_and_never_splits_a_segment() -> None:
    routes = table("/r", "/a/b")
    match = routes.match("/r/a%2Fb")
    assert match is not None and match.path == "/a%2Fb"
    # `/r%2Fx` is one segment: it is not the route /r
    assert routes.match("/r%2Fsecret") is None
    # `/a%2Fb/x` does not reach the route /a/b
    assert routes.match("/a%2Fb/x") is None


@pytest.mark.parametrize("target", ["//evil.test/x", "//evil.test", "///evil.test/x"], ids=str)
def test_a_path_naming_another_host_is_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        table("/", "/r").match(target)


# --- dot-segments with path parameters (issue 12 item 1) ---------------------------------------
# Tomcat, Jetty and Spring drop `;params` from each segment before resolving dot-segments
# (RFC 3986 3.3 lets a segment carry them), so `..;x` climbs like `..` does behind them.


@pytest.mark.parametrize(
    "target",
    [
        "/r/..;/x",
        "/r/..;",
        "/r/..;jsessionid=1/x",
        "/r/.;x/y",
        "/r/.;",
        "/r/%2e%2e;/x",
        "/r/%2E%2e;x/y",
        "/r/%2e%2E%3B/x",
        "/r/..%3b/x",
        "/r/..%3Bjsessionid=1/x",
        "/r/.%2e;a=b/x",
        "/r/%2e.%3bx/y",
        "/r/%252e%252e%253b/x",
        "/r/%25252e%25252e;/x",
        "/r/..;a;b/x",
        "/r/..;/..;/x",
        "/r/x/..;/../y",
        "/r/..%00.jpg",
        "/r/..%2500/x",
        "/r/..%20/x",
        "/r/%c0%ae%c0%ae/x",
        "/r/%C0%AE%C0%AE;/x",
        "/r/..%c0%afx",
        "/r/%e0%80%ae%e0%80%ae/x",
        "/r/%u002e%u002e/x",
        "/r/%U002E%u002e;x/y",
        "/r/%EF%BC%8E%EF%BC%8E/x",
        "/r/%E2%80%A5/x",
        "/r/%ef%bc%8e;x/y",
    ],
    ids=str,
)
def test_a_dot_segment_with_path_parameters_or_any_encoding_of_them_is_refused(
    target: str,
) -> None:
    with pytest.raises(BadRequest):
        table("/r", "/").match(target)


@pytest.mark.parametrize(
    "target",
    [
        "/r/x;jsessionid=1/y",
        "/r/a;b=c;d/e?f=g;h",
        "/r/;x/y",
        "/r/x%3Bv=1/y",
        "/r/...;x",
        "/r/.well-known;x/y",
        "/r/a..;b/c",
        "/r/%C0%FF/x",
        "/r/%E6%97%A5;lang=ja",
    ],
    ids=str,
)
def test_path_parameters_on_other_segments_go_upstream_unchanged(target: str) -> None:
    match = table("/r").match(target)
    assert match is not None
    assert match.route.prefix + match.upstream_target == target


def _resolve_like_a_servlet_container(path: str) -> list[str]:
    """An independent model of what a lenient server behind a route does with a path:
    decode repeatedly, drop `;params` per segment, resolve dot-segments (RFC 3986 5.2.4)."""
    for _ in range(3):
        path = unquote(path)
    out: list[str] = []
    for segment in re.split(r"[/\\]", path):
        name = segment.split(";", 1)[0].split("\x00", 1)[0]
        if name == "..":
            if out:
                out.pop()
            else:
                return ["<escaped>"]
        elif name != ".":
            out.append(name)
    return out


_PIECES = [".", "..", "%2e", "%2E", "%252e", ";", "%3b", "%3B", "/", "%2f", "a", "x=1", "\\"]


def test_no_generated_target_that_is_accepted_climbs_out_of_its_route() -> None:
    """Seeded fuzz: targets built from the pieces attackers combine; whatever routing accepts,
    the lenient resolver above must keep under the route's own segment."""
    rng = random.Random(12)
    routes = table("/r", "/")
    accepted = 0
    for _ in range(FUZZ_CASES):
        rest = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 8)))
        target = "/r/" + rest
        try:
            match = routes.match(target)
        except BadRequest:
            continue
        accepted += 1
        assert match is not None and match.route.prefix == "/r", target
        resolved = _resolve_like_a_servlet_container("/r" + match.path)
        assert resolved[:2] == ["", "r"], (target, resolved)
    assert accepted > FUZZ_CASES // 20  # the generator does produce ordinary paths too
