"""Clients that leave, at once or at random among 200 concurrent ones, on requests the
express lane takes (issue 16): they are logged 499 (nginx's "client closed request"),
nothing stays held (in-flight gauge back to 0, no pool slot, no upstream connection kept
but idle ones), no internal_error and no traceback; lane on as off.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from tests.lane_peers import (
    Keyhops,
    Served,
    access_fields,
    echo_path,
    get,
    keyhops,
    next_answer,
    seen,
    took_them,
    tracebacks,
)
from tests.test_upstream import Behaviour, RawConn, StartRaw, raw_upstream, until

__all__ = ["keyhops", "raw_upstream"]  # fixtures


@pytest.fixture(params=[True, False], ids=["lane", "no-lane"])
def express(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- clients that leave ---------------------------------------------------------------------------


def slow_upstream(delay: float) -> Behaviour:
    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path != "/warm":
                await asyncio.sleep(delay)
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return behave


async def leave_after(served: Served, how: str) -> None:
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", served.port))
    await loop.sock_sendall(sock, get("/x"))
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_that_leaves_right_after_sending_is_logged_499_and_keyhop_goes_on(
    keyhops: Keyhops, raw_upstream: StartRaw, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.WARNING)
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(slow_upstream(0.3)), express=express)
        await served.warm()
        await leave_after(served, how)
        await until(lambda s=served: len(s.lines) == 2)  # type: ignore[misc]
        took_them(served, express, 1)
        line = served.logged()[1]
        assert (line["status"], line.get("aborted")) == (499, True), line
        assert "error" not in line  # the client's doing, not an upstream failure
        # nothing held: no in-flight request, no pool slot
        await until(lambda s=served: s.in_flight() == 0 and s.busy() == 0)
        # keyhop is fine: the next client is served
        conn = await served.client()
        await conn.send(get("/after"))
        after = await seen(conn)
        assert after is not None and after.body == b"ok"
    assert served.kh.metrics.internal_errors == 0
    assert tracebacks(caplog.records) == []


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_that_leaves_is_the_same_to_the_upstream_and_the_log_lane_on_or_off(
    keyhops: Keyhops, raw_upstream: StartRaw, how: str
) -> None:
    runs = []
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(slow_upstream(0.3)), express=express)
        await served.warm()
        await leave_after(served, how)
        await until(lambda s=served: len(s.lines) == 2)  # type: ignore[misc]
        await until(lambda s=served: s.in_flight() == 0 and s.busy() == 0)
        conn = await served.client()
        await conn.send(get("/after"))
        assert await seen(conn) is not None
        # which upstream connection each request went on: was /x's connection kept?
        runs.append(
            (
                [(w.conn, w.path) for w in served.up.requests],
                [access_fields(line) for line in served.logged()],
            )
        )
    assert runs[0] == runs[1]


async def test_a_half_closed_client_gets_the_same_treatment_lane_on_or_off(
    keyhops: Keyhops, raw_upstream: StartRaw
) -> None:
    """shutdown(SHUT_WR) after a whole request (RFC 9112 9.6: the client is done sending,
    not necessarily done reading): lane on and off must do the same with it."""
    outcomes = []
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(slow_upstream(0.1)), express=express)
        await served.warm()
        reader, writer = await served.connect()
        writer.write(get("/x"))
        await writer.drain()
        writer.write_eof()
        try:
            async with asyncio.timeout(3):
                got = await reader.read()
        except ConnectionError:
            got = b"<reset>"
        writer.close()
        await until(lambda s=served: len(s.lines) == 2)  # type: ignore[misc]
        took_them(served, express, 1)
        line = served.logged()[1]
        head = got.split(b"\r\n")[0]
        outcomes.append((head, got.endswith(b"ok"), access_fields(line)))
    print(outcomes)
    assert outcomes[0] == outcomes[1]


# --- many at once ---------------------------------------------------------------------------------


def jittery(rng: random.Random) -> Behaviour:
    """Answers every request with its path after 0 to 20 ms, keep-alive."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            await asyncio.sleep(rng.random() * 0.02)
            await conn.send(echo_path(wire))

    return behave


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def one_client(connect: Connect, rng: random.Random, n: int, leave: float = 0.3) -> list[str]:
    """Three requests on one connection; now and then the client leaves mid-request, by a
    close or a reset, at once or a moment after sending."""
    outcomes = []
    reader, writer = await connect()
    try:
        if rng.random() < 0.25:  # pipelined: all three in one write
            paths = [f"/c{n}-{i}" for i in range(3)]
            writer.write(b"".join(get(p) for p in paths))
            if rng.random() < leave:
                await asyncio.sleep(rng.choice([0, 0.005, 0.015]))
                writer.transport.abort()
                return ["left"]
            for path in paths:
                status, _, body = await next_answer(reader, timeout=10)
                assert (status, body) == (200, path.encode())
            return ["ok"] * 3
        for i in range(3):
            path = f"/c{n}-{i}"
            writer.write(get(path))
            if rng.random() < leave:
                await asyncio.sleep(rng.choice([0, 0, 0.005, 0.015]))
                if rng.random() < 0.5:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                outcomes.append("left")
                return outcomes
            status, _, body = await next_answer(reader, timeout=10)
            assert (status, body) == (200, path.encode())
            outcomes.append("ok")
    finally:
        writer.close()
    return outcomes


async def test_200_concurrent_lane_clients_leaving_at_random_leak_nothing(
    keyhops: Keyhops, raw_upstream: StartRaw, express: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(16)
    served = await keyhops.start(await raw_upstream(jittery(rng)), express=express)
    await served.warm()
    # 40 connections at once: the pool ends with that many idle, for the lane to take
    await asyncio.gather(
        *(one_client(served.connect, random.Random(n), n, leave=0) for n in range(1000, 1040))
    )
    before = served.kh.metrics.express_served
    outcomes = await asyncio.gather(*(one_client(served.connect, rng, n) for n in range(200)))
    left = sum(o.count("left") for o in outcomes)
    print(f"{sum(map(len, outcomes))} requests, {left} left; lane took {served.taken}")
    assert 20 < left < 150
    took_them(served, express, 100)
    if express:
        assert served.kh.metrics.express_served - before > 100

    def idle() -> int:
        return sum(len(o.idle) for o in served.kh.upstreams._origins.values())

    # nothing held: keyhop's in-flight gauge is back to 0, no pool slot taken, and every
    # connection the upstream still has open is one keyhop keeps idle
    await until(lambda: served.in_flight() == 0 and served.busy() == 0, timeout=10)
    await until(lambda: served.up.open == idle(), timeout=5)
    statuses = {line["status"] for line in served.logged()}
    assert statuses <= {200, 499}, statuses
    assert served.kh.metrics.internal_errors == 0
    assert tracebacks(caplog.records) == []
    # and a later burst is served whole on connections the pool bounds
    opened = served.up.connections
    outcomes = await asyncio.gather(
        *(one_client(served.connect, random.Random(n), 5000 + n, leave=0) for n in range(100))
    )
    assert all(o == ["ok"] * 3 for o in outcomes)
    assert served.up.connections - opened <= 100
    await until(lambda: served.in_flight() == 0 and served.busy() == 0, timeout=10)
