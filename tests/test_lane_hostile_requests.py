"""Odd and hostile client requests on a warm lane route (issue 16): what the upstream gets
(request head byte for byte) and what the client gets back (but Date) must be the same
with the express lane on and off; refusals (SPEC 4.1: dot-segments, absolute-form, RFC
9112 3.2's Host rules as keyhop applies them) stay refusals, and nothing the lane may not
take reaches it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from tests.lane_peers import TOKEN, Keyhops, keyhops
from tests.test_upstream import RawConn, RawUpstream, until

__all__ = ["keyhops"]  # fixtures


async def echo_ok(conn: RawConn) -> None:
    while await conn.request() is not None:
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()


@pytest.fixture
async def raw_up() -> AsyncIterator[RawUpstream]:
    up = await RawUpstream(echo_ok).start()
    yield up
    await up.stop()


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One answer (Content-Length framed) or what came before the connection ended; Date
    blanked."""
    data = b""
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE)
            data = head + (await reader.readexactly(int(found.group(1))) if found else b"")
    except asyncio.IncompleteReadError as exc:
        data = b"<closed> " + exc.partial
    except ConnectionError:
        data = b"<reset>"
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", data)


H = "Host: keyhop\r\n"
ODD = {
    "content-length-zero": f"GET /r/a HTTP/1.1\r\n{H}Content-Length: 0\r\n\r\n",
    "delete-with-length-zero": f"DELETE /r/a HTTP/1.1\r\n{H}Content-Length: 0\r\n\r\n",
    "delete-bare": f"DELETE /r/a HTTP/1.1\r\n{H}\r\n",
    "options": f"OPTIONS /r/a HTTP/1.1\r\n{H}\r\n",
    "chunked-empty-get": f"GET /r/a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "no-host": "GET /r/a HTTP/1.1\r\n\r\n",
    "two-hosts": f"GET /r/a HTTP/1.1\r\n{H}Host: other\r\n\r\n",
    "client-authorization": f"GET /r/a HTTP/1.1\r\n{H}Authorization: Bearer mine\r\n\r\n",
    "keyhop-headers": f"GET /r/a HTTP/1.1\r\n{H}X-Keyhop-Tenant: t\r\nX-Keyhop-X: 1\r\n\r\n",
    "connection-named": f"GET /r/a HTTP/1.1\r\n{H}Connection: X-Drop\r\nX-Drop: 1\r\n\r\n",
    "hop-by-hop": f"GET /r/a HTTP/1.1\r\n{H}TE: trailers\r\nKeep-Alive: 5\r\nTrailer: x\r\n\r\n",
    "forwarded": f"GET /r/a HTTP/1.1\r\n{H}X-Forwarded-For: 1.2.3.4\r\nForwarded: for=x\r\n\r\n",
    "repeated-fields": f"GET /r/a HTTP/1.1\r\n{H}Accept: a\r\nX-B: 1\r\nAccept: b\r\n\r\n",
    "raw-query": f"GET /r/a?x=%zz&y=%2F&z HTTP/1.1\r\n{H}\r\n",
    "encoded-slash": f"GET /r/a%2Fb HTTP/1.1\r\n{H}\r\n",
    "exact-prefix": f"GET /r HTTP/1.1\r\n{H}\r\n",
    "prefix-and-query": f"GET /r?q=1 HTTP/1.1\r\n{H}\r\n",
    "dot-segment": f"GET /r/../etc HTTP/1.1\r\n{H}\r\n",
    "encoded-dot-segment": f"GET /r/%2e%2E/x HTTP/1.1\r\n{H}\r\n",
    "absolute-form": f"GET http://127.0.0.1:9/r/a HTTP/1.1\r\n{H}\r\n",
    "no-route": f"GET /nowhere HTTP/1.1\r\n{H}\r\n",
    "admin": f"GET /-/health HTTP/1.1\r\n{H}\r\n",
    "lower-case-method": f"get /r/a HTTP/1.1\r\n{H}\r\n",
    "http-1.0-keep-alive": f"GET /r/a HTTP/1.0\r\n{H}Connection: keep-alive\r\n\r\n",
    "connection-close": f"GET /r/a HTTP/1.1\r\n{H}Connection: close\r\n\r\n",
    "expect-without-body": f"GET /r/a HTTP/1.1\r\n{H}Expect: 100-continue\r\n\r\n",
    "fragment": f"GET /r/a#frag HTTP/1.1\r\n{H}\r\n",
    "long-header-line": f"GET /r/a HTTP/1.1\r\n{H}X-Long: {'l' * 9000}\r\n\r\n",
    "obs-fold": f"GET /r/a HTTP/1.1\r\n{H}X-A: 1\r\n  2\r\n\r\n",
    "space-before-colon": f"GET /r/a HTTP/1.1\r\n{H}X-A : 1\r\n\r\n",
    # smuggling attempts (RFC 9112 6.3, 11.2): a body that looks like a next request
    "get-with-a-request-as-body": f"GET /r/a HTTP/1.1\r\n{H}Content-Length: 34\r\n\r\n"
    "GET /r/smuggled HTTP/1.1\r\nX: y\r\n\r\n",
    "two-content-lengths": f"GET /r/a HTTP/1.1\r\n{H}Content-Length: 0\r\nContent-Length: 5\r\n"
    "\r\nhello",
    "length-and-chunked": f"GET /r/a HTTP/1.1\r\n{H}Content-Length: 5\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}
ODD_BYTES = {
    "obs-text-value": b"GET /r/a HTTP/1.1\r\nHost: keyhop\r\nX-Name: caf\xe9\r\n\r\n",
    "utf-8-value": b"GET /r/a HTTP/1.1\r\nHost: keyhop\r\nX-Name: caf\xc3\xa9\r\n\r\n",
    "nul-in-value": b"GET /r/a HTTP/1.1\r\nHost: keyhop\r\nX-Name: a\x00b\r\n\r\n",
    "raw-utf-8-target": b"GET /r/caf\xc3\xa9 HTTP/1.1\r\nHost: keyhop\r\n\r\n",
    "bare-lf": b"GET /r/a HTTP/1.1\nHost: keyhop\n\n",
}
CASES = {**{k: v.encode("latin-1") for k, v in ODD.items()}, **ODD_BYTES}


@pytest.mark.parametrize("request_bytes", list(CASES.values()), ids=list(CASES))
async def test_an_odd_request_reaches_the_upstream_and_is_answered_as_with_the_lane_off(
    keyhops: Keyhops, raw_up: RawUpstream, request_bytes: bytes
) -> None:
    outcomes = []
    for express in (True, False):
        before = len(raw_up.heads)
        served = await keyhops.start(raw_up, express=express)
        await served.warm()
        reader, writer = await served.connect()
        writer.write(request_bytes)
        got = await reply(reader)
        # the same connection goes on (or was closed) alike
        if not got.startswith(b"<") and b"connection: close" not in got.lower():
            writer.write(b"GET /r/next HTTP/1.1\r\nHost: keyhop\r\n\r\n")
            after = await reply(reader)
        else:
            after = b""
        await until(lambda s=served: s.in_flight() == 0)  # type: ignore[misc]
        heads = raw_up.heads[before + 1 :]  # (after the warm-up's)
        outcomes.append((got, after, heads))
        assert TOKEN.encode() not in got
    print(outcomes[0][0][:200], outcomes[0][2])
    assert outcomes[0] == outcomes[1]


KEY = "ck-lane-3Vb8"
KEYED = {
    "no-key": "",
    "wrong-key": "X-Keyhop-Key: nope\r\n",
    "right-key": f"X-Keyhop-Key: {KEY}\r\n",
    "wrong-then-right": f"X-Keyhop-Key: nope\r\nX-Keyhop-Key: {KEY}\r\n",
    "right-then-wrong": f"X-Keyhop-Key: {KEY}\r\nX-Keyhop-Key: nope\r\n",
    "key-with-blanks": f"X-Keyhop-Key:   {KEY}  \r\n",
    "key-as-authorization": f"Authorization: Bearer {KEY}\r\n",
    "prefix-of-key": f"X-Keyhop-Key: {KEY[:-1]}\r\n",
}


@pytest.mark.parametrize("key", list(KEYED.values()), ids=list(KEYED))
async def test_client_keys_hold_on_the_lane_as_off_it(
    keyhops: Keyhops, raw_up: RawUpstream, key: str
) -> None:
    """SPEC 4.1: configured clients.keys are enforced on every request; the key itself is
    dropped before the upstream (X-Keyhop-* never goes upstream)."""
    outcomes = []
    for express in (True, False):
        before = len(raw_up.heads)
        served = await keyhops.start(raw_up, express=express, top={"clients": {"keys": [KEY]}})
        await served.warm(f"X-Keyhop-Key: {KEY}\r\n")
        reader, writer = await served.connect()
        writer.write(f"GET /r/a HTTP/1.1\r\nHost: keyhop\r\n{key}\r\n".encode())
        got = await reply(reader)
        heads = raw_up.heads[before + 1 :]
        outcomes.append((got, heads))
        assert all(KEY.encode() not in head for head in heads)
    status = outcomes[0][0].split(b" ")[1]
    assert status == (b"200" if KEY in key.partition("\r\n")[0] and "Keyhop" in key else b"401")
    assert outcomes[0] == outcomes[1]
