"""What the express lane gives back to the pipeline (relay.py) and what it keeps, by the
answer's framing (RFC 9112 6.3) and the request's method: whatever path it takes, the
client gets what it gets with the lane off, byte for byte, the upstream gets each request
once, and both connections stay usable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.lane_support import Answer, OpenConn, Serve, connect, lane_served, one_route, serve
from tests.test_upstream import OK, Behaviour, RawConn, RawUpstream, StartRaw, Wire, raw_upstream

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures

SMALL_BODY = 64 * 1024  # proxy/relay.py's limit for an answer sent in one write


def payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def sized(size: int) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
    )
    return head % size + payload(size)


def chunked(*parts: bytes) -> tuple[bytes, ...]:
    """A chunked answer (RFC 9112 7.1), each chunk in its own TCP segment."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = tuple(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return (head, *chunks, b"0\r\n\r\n")


def answering(answer: Callable[[Wire], bytes | tuple[bytes, ...]]) -> Behaviour:
    """Answers every request on a connection; closes it after an answer that says
    `Connection: close` (RFC 9112 9.6)."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            parts = answer(wire)
            parts = parts if isinstance(parts, tuple) else (parts,)
            await conn.send(*parts)
            if b"\r\nconnection: close\r\n" in parts[0].lower():
                return

    return behave


@dataclass
class Run:
    answer: Answer
    after: Answer  # the next request on the same client connection
    lane: int  # requests the lane served whole, of the one under test
    wires: list[Wire]  # what the upstream got for the one under test


async def run(
    up: RawUpstream, serve: Serve, connect: OpenConn, express: bool, method: str, target: str
) -> Run:
    already = len(up.requests)
    client = await serve(one_route(up.base, {"auth": {"type": "none"}}), express=express)
    conn = await connect(client.port)
    assert (await conn.ask("GET", "/r/warm")).body == b"ok"
    before = await lane_served(client)
    got = await conn.ask(method, target)
    served = await lane_served(client) - before
    after = await conn.ask("GET", "/r/after")
    assert (after.status, after.body) == (200, b"ok")
    wires = [w for w in up.requests[already:] if w.path not in ("/warm", "/after")]
    return Run(got, after, served, wires)


async def both(
    raw_upstream: StartRaw,
    serve: Serve,
    connect: OpenConn,
    method: str,
    target: str,
    answer: Callable[[Wire], bytes | tuple[bytes, ...]],
) -> tuple[Run, Run]:
    up = await raw_upstream(answering(lambda w: OK if w.path in ("/warm", "/after") else answer(w)))
    on = await run(up, serve, connect, True, method, target)
    off = await run(up, serve, connect, False, method, target)
    assert on.answer.status_line == off.answer.status_line
    assert on.answer.without("Date") == off.answer.without("Date")
    assert on.answer.body == off.answer.body
    assert [w.head for w in on.wires] == [w.head for w in off.wires]
    assert off.lane == 0
    return on, off


@pytest.mark.parametrize(
    ("size", "on_the_lane"),
    [(100, {1}), (SMALL_BODY, {0, 1}), (SMALL_BODY + 1, {0}), (300_000, {0})],
    ids=["small", "exactly-64-KiB", "64-KiB-and-one", "300-kB"],
)
async def test_a_body_of_known_length_is_relayed_whole_on_the_lane_only_up_to_64_kib(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, size: int, on_the_lane: set[int]
) -> None:
    """64 KiB and its head are more than one loopback segment: the lane serves it only when
    it all came in one read, else it is given back; either way it arrives whole."""
    on, _ = await both(raw_upstream, serve, connect, "GET", "/r/blob", lambda w: sized(size))
    assert on.answer.body == payload(size)
    assert on.answer.get("Content-Length") == str(size)
    assert on.lane in on_the_lane
    assert len(on.wires) == 1


async def test_a_small_body_still_arriving_is_given_back_and_relayed_whole(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    whole = sized(1000)
    on, _ = await both(
        raw_upstream, serve, connect, "GET", "/r/blob", lambda w: (whole[:300], whole[300:])
    )
    assert on.answer.body == payload(1000)
    assert on.lane == 0
    assert len(on.wires) == 1


async def test_a_chunked_answer_is_given_back_and_relayed_byte_exact(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    parts = (b"first,", payload(70_000), b"last")
    on, _ = await both(raw_upstream, serve, connect, "GET", "/r/c", lambda w: chunked(*parts))
    assert on.answer.body == b"".join(parts)
    assert on.lane == 0
    assert len(on.wires) == 1


@pytest.mark.parametrize("size", [10, 200_000])
async def test_an_answer_read_to_the_close_is_given_back_and_relayed_whole(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, size: int
) -> None:
    """No Content-Length and no chunking: the body ends when the upstream closes (RFC 9112
    6.3 item 8); keyhop frames it for its own client, and uses a new upstream connection."""
    body = payload(size)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    on, _ = await both(raw_upstream, serve, connect, "GET", "/r/eof", lambda w: (head, body))
    assert on.answer.body == body
    assert on.lane == 0
    assert len(on.wires) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n',
    ],
    ids=["204", "304"],
)
async def test_a_204_or_304_is_given_back_and_answered_without_a_body(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, answer: bytes
) -> None:
    on, _ = await both(raw_upstream, serve, connect, "GET", "/r/nb", lambda w: answer)
    assert on.answer.status_line == answer.split(b"\r\n")[0].decode()
    assert on.answer.body == b""  # RFC 9110 15.3.5 / 15.4.5: no content
    assert on.lane == 0


async def test_a_head_request_keeps_the_representations_length_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
    on, _ = await both(raw_upstream, serve, connect, "HEAD", "/r/h", lambda w: answer)
    assert on.answer.get("Content-Length") == "1234"  # RFC 9110 9.3.2
    assert on.wires[0].request_line.startswith("HEAD /h ")


async def test_options_goes_on_the_lane_with_no_framing_headers_upstream(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nAllow: GET, OPTIONS\r\nContent-Length: 0\r\n\r\n"
    on, _ = await both(raw_upstream, serve, connect, "OPTIONS", "/r/o", lambda w: answer)
    assert on.answer.get("Allow") == "GET, OPTIONS"
    assert on.lane == 1
    (wire,) = on.wires
    assert wire.request_line == "OPTIONS /o HTTP/1.1"
    assert "Content-Length" not in wire.headers and "Transfer-Encoding" not in wire.headers


async def test_delete_goes_on_the_lane_with_content_length_0_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndeleted"
    on, _ = await both(raw_upstream, serve, connect, "DELETE", "/r/d/7", lambda w: answer)
    assert on.answer.body == b"deleted"
    assert on.lane == 1
    (wire,) = on.wires
    assert wire.request_line == "DELETE /d/7 HTTP/1.1"
    assert wire.headers.getall("Content-Length") == ["0"]


QUERY = "?a=%2F%2f&b=c+d&&e=&f=%E2%82%AC;g=h&a=2&z=%7e"


async def test_a_query_string_goes_upstream_byte_for_byte_on_the_lane(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    on, _ = await both(raw_upstream, serve, connect, "GET", "/r/q%2Fx" + QUERY, lambda w: OK)
    assert on.lane == 1
    assert on.wires[0].request_line == f"GET /q%2Fx{QUERY} HTTP/1.1"
