"""Requests pipelined behind one the express lane is serving (RFC 9112 9.3.2: answers in
the order of the requests): one request of a connection is in progress at a time, lane or
not, and a body that arrives meanwhile is neither lost nor read as a request."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests.lane_support import (
    OpenConn,
    Serve,
    connect,
    keyhop,
    lane_served,
    read_answer,
    serve,
)
from tests.test_upstream import OK, RawConn, StartRaw, Wire, raw_upstream, until

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures


def digest_answer(wire: Wire) -> bytes:
    method = wire.request_line.split(" ")[0]
    body = f"{method} {wire.path} {hashlib.sha256(wire.body).hexdigest()[:16]}".encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head if method == "HEAD" else head + body  # RFC 9110 9.3.2


def slow_first(delay: float) -> object:
    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/warm":
                await conn.send(OK)
                continue
            if wire.path == "/slow":
                await asyncio.sleep(delay)
            await conn.send(digest_answer(wire))

    return behave


async def test_a_large_body_pipelined_behind_a_slow_lane_request_arrives_whole_and_in_order(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    up = await raw_upstream(slow_first(0.5))  # type: ignore[arg-type]
    client = await serve(
        {
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/r", "upstream": up.base, "provider": "p"}],
        }
    )
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    body = bytes(range(256)) * 8192  # 2 MiB
    conn.writer.write(
        b"GET /r/slow HTTP/1.1\r\nHost: k\r\n\r\n"
        + b"POST /r/upload HTTP/1.1\r\nHost: k\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /r/last HTTP/1.1\r\nHost: k\r\n\r\n"
    )
    await conn.writer.drain()
    answers = [await read_answer(conn.reader) for _ in range(3)]
    zero = hashlib.sha256(b"").hexdigest()[:16]
    assert [a.body.decode() for a in answers] == [
        f"GET /slow {zero}",
        f"POST /upload {hashlib.sha256(body).hexdigest()[:16]}",
        f"GET /last {zero}",
    ]
    assert [w.path for w in up.requests] == ["/warm", "/warm", "/slow", "/upload", "/last"]
    assert await lane_served(client) >= 2  # the second /warm and /slow at least


async def test_a_burst_of_mixed_pipelined_requests_is_answered_in_order_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    methods = ["GET", "DELETE", "OPTIONS", "HEAD", "POST", "GET", "PUT"]
    burst = b""
    for i in range(28):
        method = methods[i % len(methods)]
        extra = b"Content-Length: 3\r\n\r\nabc" if method in ("POST", "PUT") else b"\r\n"
        burst += f"{method} /r/{i} HTTP/1.1\r\nHost: k\r\n".encode() + extra
    got: dict[bool, list[bytes]] = {}
    for express in (True, False):
        up = await raw_upstream(slow_first(0.0))  # type: ignore[arg-type]
        client = await serve(
            {
                "providers": {"p": {"auth": {"type": "none"}}},
                "routes": [{"prefix": "/r", "upstream": up.base, "provider": "p"}],
            },
            express=express,
        )
        conn = await connect(client.port)
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
        conn.writer.write(burst)
        answers = []
        for i in range(28):
            head = methods[i % len(methods)] == "HEAD"
            answers.append(await read_answer(conn.reader, bodyless=head))
        got[express] = [a.status_line.encode() + b" " + a.body for a in answers]
        assert [w.path for w in up.requests][1:] == [f"/{i}" for i in range(28)]
        assert (await lane_served(client) > 0) is express
    assert got[True] == got[False]


@pytest.mark.parametrize(
    ("express", "n"),
    [
        pytest.param(True, 32, id="lane-32"),
        pytest.param(True, 33, id="lane-33"),
        pytest.param(True, 100, id="lane-100"),
        pytest.param(False, 100, id="no-lane-100"),
    ],
)
async def test_more_pipelined_gets_than_aiohttps_queue_limit_are_all_answered(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool, n: int
) -> None:
    """aiohttp parses at most 32 pipelined requests ahead, then pauses reading until the
    queue drains; every request still gets its answer, in order (RFC 9112 9.3.2)."""
    up = await raw_upstream(slow_first(0.0))  # type: ignore[arg-type]
    client = await serve(
        {
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/r", "upstream": up.base, "provider": "p"}],
        },
        express=express,
    )
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    conn.writer.write(b"".join(b"GET /r/%d HTTP/1.1\r\nHost: k\r\n\r\n" % i for i in range(n)))
    bodies = [(await read_answer(conn.reader, timeout=2)).body for _ in range(n)]
    zero = hashlib.sha256(b"").hexdigest()[:16]
    assert bodies == [f"GET /{i} {zero}".encode() for i in range(n)]


@pytest.mark.parametrize(
    ("express", "answer"),
    [
        pytest.param(True, b"HTTP/1.1 204 No Content\r\n\r\n", id="lane-204"),
        pytest.param(True, OK, id="lane-200"),
        pytest.param(False, b"HTTP/1.1 204 No Content\r\n\r\n", id="no-lane-204"),
        pytest.param(False, OK, id="no-lane-200"),
    ],
)
async def test_a_head_over_the_limit_pipelined_behind_a_lane_request_lets_its_answer_out(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool, answer: bytes
) -> None:
    """server.py: a head over MAX_HEAD_BYTES behind an answer in progress closes the
    connection once that answer is out."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/slow":
                await asyncio.sleep(0.3)
            await conn.send(answer if wire.path == "/slow" else OK)

    up = await raw_upstream(behave)
    client = await serve(
        {
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/r", "upstream": up.base, "provider": "p"}],
        },
        express=express,
    )
    conn = await connect(client.port)
    for _ in range(2):
        assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    conn.writer.write(b"GET /r/slow HTTP/1.1\r\nHost: k\r\n\r\n")
    await asyncio.sleep(0.05)
    fields = b"".join(b"X-B%d: %s\r\n" % (i, b"b" * 8000) for i in range(10))  # 80 kB
    conn.writer.write(b"GET /r/next HTTP/1.1\r\nHost: k\r\n" + fields)
    got = await read_answer(conn.reader, timeout=3)
    assert got.status_line == answer.split(b"\r\n")[0].decode()
    assert await conn.closed_by_peer(3)
    assert "/next" not in [w.path for w in up.requests]
    pool = keyhop(client).upstreams
    await until(lambda: sum(o.busy for o in pool._origins.values()) == 0)  # nothing leaked
