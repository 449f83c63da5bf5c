"""Which headers cross keyhop, both ways (SPEC 4.1, RFC 9110 7.6.1): pure, no sockets."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import clean_request_headers, clean_response_headers

HOP_BY_HOP = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authorization", "Basic cHJveHk6cHc="),
    ("Proxy-Authenticate", "Basic"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "h2c"),
]


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP, ids=[n for n, _ in HOP_BY_HOP])
def test_a_hop_by_hop_request_header_is_dropped(name: str, value: str) -> None:
    out = clean_request_headers(headers((name, value), ("X-End", "1")), keep_authorization=False)
    assert name not in out
    assert out.getall("X-End") == ["1"]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP, ids=[n for n, _ in HOP_BY_HOP])
def test_a_hop_by_hop_response_header_is_dropped(name: str, value: str) -> None:
    out = clean_response_headers(headers((name, value), ("X-End", "1")))
    assert name not in out
    assert out.getall("X-End") == ["1"]


def test_request_headers_named_in_connection_are_dropped_whatever_their_case() -> None:
    out = clean_request_headers(
        headers(
            ("Connection", "keep-alive, X-Foo"),
            ("connection", " x-BAZ ,"),
            ("x-foo", "1"),
            ("X-Baz", "2"),
            ("X-Kept", "3"),
        ),
        keep_authorization=False,
    )
    assert list(out.items()) == [("X-Kept", "3")]


def test_response_headers_named_in_connection_are_dropped() -> None:
    out = clean_response_headers(
        headers(("Connection", "X-Bar, close"), ("X-Bar", "secret"), ("X-Kept", "yes"))
    )
    assert list(out.items()) == [("X-Kept", "yes")]


def test_the_clients_host_never_goes_upstream() -> None:
    out = clean_request_headers(headers(("Host", "evil.test")), keep_authorization=True)
    assert "Host" not in out


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(False, []), (True, ["Bearer the-apps-own"])],
    ids=["dropped-for-a-credentialed-provider", "kept-for-auth-none"],
)
def test_the_clients_authorization_passes_only_when_asked(keep: bool, expected: list[str]) -> None:
    out = clean_request_headers(
        headers(("Authorization", "Bearer the-apps-own")), keep_authorization=keep
    )
    assert out.getall("Authorization", []) == expected


@pytest.mark.parametrize("keep", [False, True], ids=["credentialed", "auth-none"])
def test_x_keyhop_headers_are_always_dropped(keep: bool) -> None:
    out = clean_request_headers(
        headers(
            ("X-Keyhop-Key", "k"),
            ("x-keyhop-tenant", "t"),
            ("X-KEYHOP-Anything", "a"),
            ("X-Keyhopper", "kept"),
        ),
        keep_authorization=keep,
    )
    assert list(out.items()) == [("X-Keyhopper", "kept")]


def test_end_to_end_headers_pass_in_order_with_repeats() -> None:
    pairs = (
        ("Accept", "application/json"),
        ("X-Spaaza-Session-Key", "abc"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("Content-Type", "text/plain"),
        ("If-None-Match", '"v1"'),
    )
    out = clean_request_headers(headers(*pairs), keep_authorization=False)
    assert list(out.items()) == list(pairs)


def test_rate_limit_and_encoding_headers_come_back_untouched() -> None:
    pairs = (
        ("Retry-After", "7"),
        ("X-Plan-QPS-Allotted", "20"),
        ("X-Plan-QPS-Current", "21"),
        ("X-Plan-Quota-Allotted", "5000"),
        ("X-Plan-Quota-Current", "5000"),
        ("X-Plan-Quota-Reset", "Monday, November 23, 2026 12:00:00 AM GMT"),
        ("X-RateLimit-Limit", "100"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1795000000"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Location", "https://evil.test/"),
    )
    out = clean_response_headers(headers(*pairs))
    assert list(out.items()) == list(pairs)
