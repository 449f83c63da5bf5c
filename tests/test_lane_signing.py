"""A signer that does not cover the body (SPEC 5.1) runs on the express lane too, last, over
what goes on the wire: the upstream recomputes each signature with the standard library's
hmac over the request it actually received, with a fresh timestamp and nonce each time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import pytest

from tests.lane_support import OpenConn, Serve, connect, lane_served, serve
from tests.test_upstream import OK, StartRaw, Wire, keep_alive, raw_upstream

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures

KEY = "lane-sign-key-7Hq2"
HEADER_SIGNER = {
    "type": "hmac",
    "key": KEY,
    "message": "{method}\n{target}\n{host}\n{port}\n{timestamp}\n{nonce}",
    "headers": {"X-Sig": "{signature}", "X-Ts": "{timestamp}", "X-Nonce": "{nonce}"},
}
# Binance's form (SPEC 5.1 `query`): signature and timestamp appended to the query string,
# `{query}` taken before the append
QUERY_SIGNER = {
    "type": "hmac",
    "key": KEY,
    "message": "{query&}timestamp={timestamp}",
    "timestamp": "unix_ms",
    "query": {"timestamp": "{timestamp}", "signature": "{signature}"},
}


def header_signature_ok(wire: Wire, port: int) -> bool:
    method, target, _ = wire.request_line.split(" ")
    h = wire.headers
    message = f"{method}\n{target}\n127.0.0.1\n{port}\n{h['X-Ts']}\n{h['X-Nonce']}"
    want = hmac.new(KEY.encode(), message.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, h["X-Sig"])


def query_signature_ok(wire: Wire) -> bool:
    query = wire.path.partition("?")[2]
    signed, _, signature = query.rpartition("&signature=")
    want = hmac.new(KEY.encode(), signed.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, signature)


def config(base: str, signer: Mapping[str, object]) -> dict[str, object]:
    return {
        "providers": {"p": {"auth": {"type": "none"}, "sign": signer}},
        "routes": [{"prefix": "/r", "upstream": base + "/v2", "provider": "p"}],
    }


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_a_header_signature_on_the_lane_covers_the_request_as_sent(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool
) -> None:
    up = await raw_upstream(keep_alive(lambda w: OK))
    client = await serve(config(up.base, HEADER_SIGNER), express=express)
    conn = await connect(client.port)
    for method, target in [
        ("GET", "/r/a?x=1&y=%2F"),
        ("GET", "/r/a?x=1&y=%2F"),
        ("DELETE", "/r/b/7"),
        ("OPTIONS", "/r/c"),
    ]:
        assert (await conn.ask(method, target)).body == b"ok"
    assert [w.path for w in up.requests] == ["/v2/a?x=1&y=%2F"] * 2 + ["/v2/b/7", "/v2/c"]
    assert all(header_signature_ok(w, up.port) for w in up.requests)
    nonces = [w.headers["X-Nonce"] for w in up.requests]
    assert len(set(nonces)) == len(nonces)
    assert await lane_served(client) == (3 if express else 0)


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_a_query_signature_on_the_lane_is_appended_to_the_query_sent(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool
) -> None:
    up = await raw_upstream(keep_alive(lambda w: OK))
    client = await serve(config(up.base, QUERY_SIGNER), express=express)
    conn = await connect(client.port)
    for _ in range(3):
        assert (await conn.ask("GET", "/r/order?symbol=LTCBTC&side=BUY")).body == b"ok"
    for wire in up.requests:
        assert wire.path.startswith("/v2/order?symbol=LTCBTC&side=BUY&timestamp=")
        assert query_signature_ok(wire), wire.path
    assert await lane_served(client) == (2 if express else 0)


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_a_signer_covering_content_length_signs_the_0_sent_on_a_bodyless_delete(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool
) -> None:
    """SPEC 5.1: the signer runs last, after every other header is set."""
    signer = {
        "type": "hmac",
        "key": KEY,
        "message": "{method}|{header:Content-Length}",
        "headers": {"X-Sig": "{signature}"},
    }
    up = await raw_upstream(keep_alive(lambda w: OK))
    client = await serve(config(up.base, signer), express=express)
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("DELETE", "/r/x")).body == b"ok"
    for wire in up.requests:
        message = f"DELETE|{wire.headers['Content-Length']}"
        want = hmac.new(KEY.encode(), message.encode(), hashlib.sha256).hexdigest()
        assert wire.headers["X-Sig"] == want
