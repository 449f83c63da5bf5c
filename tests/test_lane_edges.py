"""Requests and answers at the edges of what the express lane takes: whichever way keyhop
serves them (the lane, the lane declining, or the lane giving back), the client and the
upstream see exactly what they see with the lane off (SPEC 4.1, 4.6)."""

from __future__ import annotations

import asyncio

import pytest

from tests.lane_support import (
    Answer,
    OpenConn,
    Serve,
    connect,
    in_flight,
    lane_served,
    read_answer,
    serve,
)
from tests.test_upstream import OK, RawConn, RawUpstream, StartRaw, Wire, keep_alive, raw_upstream

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures

TOKEN = "tok-Lane-Edge-4b3a21"


def config(base: str) -> dict[str, object]:
    return {
        "providers": {
            "p": {
                "auth": {"type": "static", "token": TOKEN},
                "headers": {"Authorization": "Bearer {token}"},
                "timeouts": {"connect": 2, "read": 3},
            }
        },
        "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
    }


async def exchange(
    up: RawUpstream, serve: Serve, connect: OpenConn, express: bool, raw: bytes, answers: int
) -> tuple[list[Answer], list[bytes], bool]:
    """On a warm connection, `raw` (one request or several pipelined) and its answers; the
    request heads the upstream got for it; whether the connection still serves a GET."""
    client = await serve(config(up.base), express=express)
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    already = len(up.heads)
    conn.writer.write(raw)
    got = []
    for _ in range(answers):
        got.append(await read_answer(conn.reader, bodyless=raw.startswith(b"HEAD ")))
    heads = up.heads[already:]
    try:
        alive = (await conn.ask("GET", "/r/after")).body == b"ok"
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        alive = False
    return got, heads, alive


def same(on: list[Answer], off: list[Answer]) -> None:
    assert [a.status_line for a in on] == [a.status_line for a in off]
    assert [a.head.count(b" 100 Continue") for a in on] == [
        a.head.count(b" 100 Continue") for a in off
    ]
    assert [a.without("Date") for a in on] == [a.without("Date") for a in off]
    assert [a.body for a in on] == [a.body for a in off]


def head(line: str, *fields: str, body: bytes = b"") -> bytes:
    return "\r\n".join([line, *fields, "", ""]).encode("utf-8") + body


GET = "GET /r/x HTTP/1.1"
REQUESTS = {
    "content-length-0": head(GET, "Host: k", "Content-Length: 0"),
    "delete-content-length-0": head("DELETE /r/x HTTP/1.1", "Host: k", "Content-Length: 0"),
    "chunked-empty-body": head(GET, "Host: k", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "fragment": head("GET /r/x?a=1#frag HTTP/1.1", "Host: k"),
    "the-prefix-itself": head("GET /r HTTP/1.1", "Host: k"),
    "dot-segment": head("GET /r/%2e%2e/x HTTP/1.1", "Host: k"),
    "no-route": head("GET /nowhere HTTP/1.1", "Host: k"),
    "absolute-form": head("GET http://evil.test/r/x HTTP/1.1", "Host: evil.test"),
    "client-authorization": head(GET, "Host: k", "Authorization: Basic Zm9vOmJhcg=="),
    "keyhop-headers": head(GET, "Host: k", "X-Keyhop-Tenant: t1", "X-Keyhop-Key: k"),
    "connection-named": head(GET, "Host: k", "Connection: X-Private", "X-Private: 1", "X-B: 2"),
    "hop-by-hop": head(GET, "Host: k", "Keep-Alive: 5", "TE: trailers", "Proxy-Authorization: x"),
    "upgrade": head(GET, "Host: k", "Connection: Upgrade", "Upgrade: websocket"),
    "expect": head(GET, "Host: k", "Expect: 100-continue"),
    "utf8-value": head(GET, "Host: k", "X-Name: café"),
    "obs-text-value": head(GET, "Host: k")[:-2] + b"X-Name: caf\xe9\r\n\r\n",
    "tab-in-value": head(GET, "Host: k", "X-Name: a\tb"),
    "no-host": head(GET, "Accept: */*"),
    "two-hosts": head(GET, "Host: a", "Host: b"),
    "many-headers": head(GET, "Host: k", *(f"X-H{i}: {i}" for i in range(90))),
    "client-close": head(GET, "Host: k", "Connection: close"),
    "http-1.0": head("GET /r/x HTTP/1.0", "Host: k"),
    "options-star": head("OPTIONS * HTTP/1.1", "Host: k"),
}


@pytest.mark.parametrize("raw", list(REQUESTS.values()), ids=list(REQUESTS))
async def test_an_edge_request_gets_the_same_answer_and_upstream_request_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, raw: bytes
) -> None:
    up = await raw_upstream(keep_alive())
    on = await exchange(up, serve, connect, True, raw, 1)
    off = await exchange(up, serve, connect, False, raw, 1)
    same(on[0], off[0])
    assert on[1] == off[1], "the upstream got something else"
    assert on[2] == off[2], "the connection survived in one mode only"
    assert TOKEN.encode() not in on[0][0].head + on[0][0].body


ANSWERS = {
    "empty-reason": b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    "custom-reason": b"HTTP/1.1 299 Whatever You Say\r\nContent-Length: 2\r\n\r\nok",
    "obs-text-reason": b"HTTP/1.1 200 \xc7a va\r\nContent-Length: 2\r\n\r\nok",
    "utf8-reason": "HTTP/1.1 200 Ça va\r\nContent-Length: 2\r\n\r\nok".encode(),
    "tab-in-reason": b"HTTP/1.1 200 O\tK\r\nContent-Length: 2\r\n\r\nok",
    "205": b"HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n",
    "status-599": b"HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\nok",
    "401-no-rule": b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"
    b"Content-Length: 2\r\n\r\nno",
    "http-1.0-answer": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    "zero-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "http-1.0-no-keep-alive": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "leading-zero-length": b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok",
    "repeated-names-order": b"HTTP/1.1 200 OK\r\nB: 1\r\nA: 2\r\nb: 3\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "date-twice": b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
    b"Date: Wed, 02 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    "lower-case-names": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nserver: x\r\n"
    b"content-length: 2\r\n\r\nok",
    "tab-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\tb\r\nContent-Length: 2\r\n\r\nok",
    "obs-text-value": b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    # plain heads (relayed from their bytes by the lane) at the edges of what is plain
    "status-600": b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok",
    "status-000": b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
    "upper-case-hop-by-hop": b"HTTP/1.1 200 OK\r\nCONNECTION: Keep-Alive\r\nKEEP-ALIVE: t=5\r\n"
    b"CONTENT-LENGTH: 2\r\nX-Ratelimit-Remaining: 7\r\n\r\nok",
    "connection-names-a-field": b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "sec-websocket-key1": b"HTTP/1.1 200 OK\r\nSec-WebSocket-Key1: x\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "value-with-colon-space": b"HTTP/1.1 200 OK\r\nX-A: b: c\r\nContent-Length: 2\r\n\r\nok",
    "empty-value": b"HTTP/1.1 200 OK\r\nX-A: \r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("answer", list(ANSWERS.values()), ids=list(ANSWERS))
async def test_an_edge_answer_reaches_the_client_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, answer: bytes
) -> None:
    up = await raw_upstream(keep_alive(lambda w: answer if w.path == "/odd" else OK))
    raw = b"GET /r/odd HTTP/1.1\r\nHost: k\r\n\r\n"
    reused = []
    for express in (True, False):
        got = await exchange(up, serve, connect, express, raw, 1)
        odd, after = (
            next(w for w in reversed(up.requests) if w.path == p) for p in ("/odd", "/after")
        )
        reused.append(odd.conn == after.conn)
        if express:
            on = got
        else:
            off = got
    same(on[0], off[0])
    assert on[0][0].head == off[0][0].head or on[0][0].get("Date") != off[0][0].get("Date")
    assert on[2] == off[2]
    # an answer that ends its connection (RFC 9112 9.6, 9.3) is never followed on it
    assert reused[0] == reused[1]
    if b"close" in answer or answer.startswith(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"):
        assert reused == [False, False]


def echo(wire: Wire) -> bytes:
    body = f"{wire.request_line.split(' ')[0]} {wire.path} {len(wire.body)}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_pipelined_lane_and_pipeline_requests_are_answered_in_order(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    """GETs the lane takes around a POST with a body and a HEAD it does not."""
    up = await raw_upstream(keep_alive(lambda w: echo(w) if w.path != "/warm" else OK))
    burst = (
        b"GET /r/1 HTTP/1.1\r\nHost: k\r\n\r\n"
        b"POST /r/2 HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /r/3 HTTP/1.1\r\nHost: k\r\n\r\n"
        b"DELETE /r/4 HTTP/1.1\r\nHost: k\r\n\r\n"
        b"GET /r/5 HTTP/1.1\r\nHost: k\r\n\r\n"
    )
    on, on_heads, _ = await exchange(up, serve, connect, True, burst, 5)
    off, off_heads, _ = await exchange(up, serve, connect, False, burst, 5)
    assert [a.body for a in on] == [
        b"GET /1 0",
        b"POST /2 5",
        b"GET /3 0",
        b"DELETE /4 0",
        b"GET /5 0",
    ]
    same(on, off)
    assert on_heads == off_heads


async def test_a_request_on_the_lane_counts_in_the_in_flight_gauge(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    release = asyncio.Event()

    async def slow(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/slow":
                await release.wait()
            await conn.send(OK)

    up = await raw_upstream(slow)
    client = await serve(config(up.base))
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    assert await lane_served(client) == 1
    task = asyncio.create_task(conn.ask("GET", "/r/slow"))
    await asyncio.sleep(0.2)
    assert await in_flight(client) == 2  # the lane's request, and the scrape itself
    release.set()
    assert (await task).body == b"ok"
    assert await in_flight(client) == 1
    assert await lane_served(client) == 2
