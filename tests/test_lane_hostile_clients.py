"""Hostile clients against the express lane (issue 16): raw sockets that pipeline, never
read, dribble or send too much, on requests the lane takes (warm credential, idle pooled
connection). Lane on and lane off must look the same to every peer, and the limits of
issue 12 hold on the lane too: 408 for a head still arriving after the head timeout
(RFC 9110 15.5.9), 431 for a head over 64 KiB (RFC 6585 5), answers in request order
(RFC 9112 9.3.2), bounded buffers for a client that does not read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from tests.lane_peers import (
    Keyhops,
    Served,
    access_fields,
    echo_path,
    get,
    keyhops,
    next_answer,
    took_them,
    tracebacks,
)
from tests.test_hostile import answer, closed, refusal, send_until_answered
from tests.test_upstream import (
    RawConn,
    StartRaw,
    Wire,
    keep_alive,
    raw_upstream,
    until,
)

__all__ = ["keyhops", "raw_upstream"]  # fixtures


@pytest.fixture(params=[True, False], ids=["lane", "no-lane"])
def express(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- pipelining ---------------------------------------------------------------------------------


async def pipelined_burst(served: Served, count: int, then: int = 0) -> list[tuple[int, bytes]]:
    """`count` GETs in one write, read back 7 bytes at a time; then `then` more, one at a
    time on the same connection; (status, body) of all, in order."""
    reader, writer = await served.connect()
    writer.write(b"".join(get(f"/n{i}") for i in range(count)))
    data = b""
    got: list[tuple[int, bytes]] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            more = await reader.read(7)
            assert more, f"closed after {len(got)} answers"
            data += more
            while b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                got.append((int(head.split(b" ")[1]), rest[:length]))
                data = rest[length:]
    for i in range(count, count + then):
        writer.write(get(f"/n{i}"))
        status, _, body = await next_answer(reader, timeout=3)
        got.append((status, body))
    writer.close()
    return got


@pytest.mark.parametrize(
    ("count", "then"),
    [
        (31, 1),
        (32, 1),  # found hanging with the lane on (lane-bugs.md, lane-b): no read resumed
        (50, 0),
    ],
    ids=["31-then-1", "32-then-1", "50"],
)
async def test_pipelined_requests_in_one_write_are_all_answered_in_order_by_the_lane(
    keyhops: Keyhops,
    raw_upstream: StartRaw,
    caplog: pytest.LogCaptureFixture,
    count: int,
    then: int,
) -> None:
    """32 is aiohttp's queue of parsed requests (web_protocol.MAX_MSG_QUEUE_SIZE): at 32 it
    stops reading the socket until the queue drains; `then` requests follow, one by one."""
    caplog.set_level(logging.WARNING)
    total = count + then
    runs = []
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(keep_alive(echo_path)), express=express)
        await served.warm()
        got = await pipelined_burst(served, count, then)
        # RFC 9112 9.3.2: answers in the order the requests came
        assert got == [(200, f"/n{i}".encode()) for i in range(total)]
        took_them(served, express, total)
        await until(lambda s=served: len(s.lines) == total + 1)  # type: ignore[misc]
        runs.append([access_fields(line) for line in served.logged()])
        assert [w.conn for w in served.up.requests] == [0] * (total + 1)
    assert runs[0] == runs[1]
    assert tracebacks(caplog.records) == []


async def test_a_client_that_pipelines_and_never_reads_cannot_grow_keyhops_buffers(
    keyhops: Keyhops, raw_upstream: StartRaw, express: bool
) -> None:
    """400 requests for 60 KiB each (24 MiB of answers) from a client that reads nothing:
    keyhop's write buffer for it stays near one answer over the transport's high-water mark,
    it stops asking the upstream, and cuts the client at `timeouts.client_write`."""
    body = b"B" * (60 * 1024)  # under the lane's 64 KiB: each one the lane's to serve

    def big(wire: Wire) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    served = await keyhops.start(
        await raw_upstream(keep_alive(big)), express=express, top={"timeouts": {"client_write": 1}}
    )
    await served.warm()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
    reader, writer = await served.connect(sock)
    writer.write(b"".join(get(f"/n{i}") for i in range(400)))
    largest = 0
    started = time.monotonic()
    while time.monotonic() - started < 3:
        for handler in served.server.connections:
            if handler.transport is not None:
                largest = max(largest, handler.transport.get_write_buffer_size())
        await asyncio.sleep(0.005)
    print(f"largest write buffer for a client that never reads: {largest} bytes")
    assert largest < 256 * 1024
    assert len(served.up.requests) < 200  # the rest never asked for (the kernel takes MiBs)
    took_them(served, express, 1)
    assert await closed(reader, timeout=3)  # cut at client_write (1 s), not left hanging
    writer.close()
    await until(lambda: served.in_flight() == 0 and served.busy() == 0)


# --- heads ----------------------------------------------------------------------------------------


async def test_a_head_dribbled_after_a_lane_answer_is_cut_with_408(
    keyhops: Keyhops, raw_upstream: StartRaw, express: bool
) -> None:
    served = await keyhops.start(
        await raw_upstream(keep_alive()), express=express, head_timeout=0.6
    )
    await served.warm()
    reader, writer = await served.connect()
    writer.write(get("/first"))
    status, _, body = await answer(reader)
    assert (status, body) == (200, b"ok")
    took_them(served, express, 1)
    started = time.monotonic()
    pieces = [bytes([b]) for b in get("/second")[:-4]] + [b"X"] * 40  # never a whole head
    first = await send_until_answered(reader, writer, pieces, 0.03)
    status, head, body = await answer(reader, first=first)
    refusal(status, head, body, 408, "did not arrive within 0.6 s")
    assert 0.5 <= time.monotonic() - started < 2.0
    assert await closed(reader)
    writer.close()
    assert len(served.up.requests) == 2  # warm and /first only


@pytest.mark.parametrize("after_a_lane_answer", [False, True], ids=["first", "second"])
async def test_a_head_over_64_kib_in_one_write_is_431_and_never_sent_upstream(
    keyhops: Keyhops, raw_upstream: StartRaw, express: bool, after_a_lane_answer: bool
) -> None:
    served = await keyhops.start(await raw_upstream(keep_alive()), express=express)
    await served.warm()
    reader, writer = await served.connect()
    if after_a_lane_answer:
        writer.write(get("/first"))
        status, _, _ = await answer(reader)
        assert status == 200
    # 9 lines of 8000 bytes: each under aiohttp's line limit, 72 KB in all
    lines = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 8000) for n in range(9))
    writer.write(b"GET /r/big HTTP/1.1\r\nHost: keyhop\r\n" + lines + b"\r\n")
    status, head, body = await answer(reader)
    refusal(status, head, body, 431, "over 64 KiB")
    assert await closed(reader)
    writer.close()
    assert "/big" not in [w.path for w in served.up.requests]


@pytest.mark.parametrize("size", [2, 100_000], ids=["served-by-the-lane", "given-back"])
async def test_a_big_head_pipelined_behind_a_lane_request_closes_after_its_answer(
    keyhops: Keyhops,
    raw_upstream: StartRaw,
    express: bool,
    size: int,
) -> None:
    payload = b"p" * size

    async def slow(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/slow":
                await asyncio.sleep(0.3)
                await conn.send(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, payload)
                )
            else:
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    served = await keyhops.start(await raw_upstream(slow), express=express)
    await served.warm()
    reader, writer = await served.connect()
    writer.write(get("/slow") + b"GET /r/x HTTP/1.1\r\n")
    await asyncio.sleep(0.05)
    took_them(served, express, 1)
    for i in range(100):  # 100 KB of a next head while /slow is on its way
        writer.write(b"X-%d: %s\r\n" % (i, b"a" * 1000))
    status, _, body = await answer(reader)
    assert (status, body) == (200, payload)  # the answer in progress is finished whole
    assert await closed(reader, timeout=3)  # then the connection closes: no 431 inside it
    writer.close()
    assert [w.path for w in served.up.requests] == ["/warm", "/slow"]
    await until(lambda: served.in_flight() == 0 and served.busy() == 0)
