"""A real `keyhop serve`, lane on and off (KEYHOP_EXPRESS=0), against clients that pipeline
thousands of requests for 60 KiB answers and never read one: what keyhop holds for them
must stay bounded (issue 16 keeps issue 12's limits). RSS from /proc, as test_hostile.py.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartUpstream
from tests.lane_peers import config, echo_path, next_answer, token_app
from tests.support import KeyhopProcess, wait_healthy, write_config
from tests.test_lane_hostile_leaving import jittery, one_client
from tests.test_upstream import RawConn, RawUpstream, keep_alive

Start = Callable[..., KeyhopProcess]
CLIENTS = 30
PIPELINED = 3000  # requests per client, written at once, never read
#: each answer under the lane's 64 KiB; with smaller ones the kernel's socket buffers (MiBs
#: on loopback) take thousands of answers before keyhop has to hold anything
SIZES = [60 * 1024]
RSS_BOUND_MIB = 24  # the bound test_hostile.py holds 300 hostile connections to


@pytest.fixture(params=SIZES, ids=["60-kib"])
async def raw_up(request: pytest.FixtureRequest) -> AsyncIterator[RawUpstream]:
    body = b"B" * request.param
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def keep_answering(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/hold":  # held a moment: each on its own connection
                await asyncio.sleep(0.3)
            conn.writer.write(answer)
            await conn.writer.drain()

    up = await RawUpstream(keep_answering).start()
    yield up
    await up.stop()


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/-/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def lane_ready(url: str, express: bool) -> None:
    """Warm requests until the lane serves one (the token in memory, an idle upstream
    connection pooled), so that what follows is the lane's to take."""
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(url + "/r/warm") as resp:
                assert resp.status == 200
                await resp.read()
            if not express or await metric(session, url, "keyhop_express_requests_total") > 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the lane took none of 20 warm requests")


async def never_reading(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    requests = b"GET /r/n HTTP/1.1\r\nHost: keyhop\r\n\r\n" * PIPELINED
    await loop.sock_sendall(sock, requests)
    return sock


@pytest.mark.parametrize("express", ["1", "0"], ids=["lane", "no-lane"])
async def test_clients_pipelining_without_reading_leave_a_real_keyhop_serves_memory_bounded(
    upstream: StartUpstream,
    raw_up: RawUpstream,
    processes: Start,
    tmp_path: Path,
    ca_file: str,
    express: str,
) -> None:
    token_base = await upstream(token_app([]))
    data = {
        "store": "memory:",
        "providers": {
            "p": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{token_base}/token",
                    "client_id": "c",
                    "client_secret": "s-lane-secret",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/r", "upstream": raw_up.base, "provider": "p"}],
    }
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={"KEYHOP_EXPRESS": express})
    await wait_healthy(proc.url)
    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> None:
            async with session.get(proc.url + path) as resp:
                assert resp.status == 200
                await resp.read()

        # warm: the token in memory, then connections pooled for the lane to take
        await get("/r/warm")
        await asyncio.gather(*(get("/r/hold") for _ in range(2 * CLIENTS)))
        baseline = proc.rss_kib()
        socks = [await never_reading(proc.port) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(3)
            loaded = proc.rss_kib()
            grown_mib = (loaded - baseline) / 1024
            asked = len(raw_up.requests)
            served = await metric(session, proc.url, "keyhop_express_requests_total")
            print(
                f"KEYHOP_EXPRESS={express}: RSS {baseline} KiB -> {loaded} KiB with {CLIENTS}"
                f" clients x {PIPELINED} unread requests; upstream asked {asked}; lane {served}"
            )
            assert grown_mib < RSS_BOUND_MIB, grown_mib
            # keyhop stopped asking the upstream for answers nobody reads (what it asked
            # for fills the kernel's socket buffers, then keyhop's write buffer, then stops)
            assert asked < CLIENTS * PIPELINED
            await asyncio.sleep(1)
            assert len(raw_up.requests) == asked
            if express == "1":
                assert served > 0
            # and an ordinary client is still served at once
            async with asyncio.timeout(2):
                async with session.get(proc.url + "/r/after") as resp:
                    assert resp.status == 200
                    assert (await resp.read()).startswith(b"BBB")
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize("express", ["1", "0"], ids=["lane", "no-lane"])
async def test_200_clients_leaving_at_random_leave_a_real_keyhop_serve_clean(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, express: str
) -> None:
    """/-/metrics' in-flight gauge back to 0, no 500, no traceback in the process's log."""
    rng = random.Random(16)
    up = await RawUpstream(jittery(rng)).start()
    try:
        token_base = await upstream(token_app([]))
        data = config(up.base, token_base, ca_file, {})
        data["store"] = "memory:"
        proc = processes(
            write_config(tmp_path / "keyhop.yaml", data), env={"KEYHOP_EXPRESS": express}
        )
        await wait_healthy(proc.url)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", proc.port)

        await asyncio.gather(*(one_client(connect, random.Random(n), n, 0) for n in range(40)))
        outcomes = await asyncio.gather(*(one_client(connect, rng, n) for n in range(100, 300)))
        assert any("left" in o for o in outcomes)
        again = await asyncio.gather(
            *(one_client(connect, random.Random(n), n, 0) for n in range(50))
        )
        assert all(o == ["ok"] * 3 for o in again)
        async with aiohttp.ClientSession() as session:
            # the gauge counts the /-/metrics request reading it: 1 is "nothing else"
            for _ in range(50):
                if await metric(session, proc.url, "keyhop_in_flight_requests") == 1:
                    break
                await asyncio.sleep(0.1)
            assert await metric(session, proc.url, "keyhop_in_flight_requests") == 1
            if express == "1":
                assert await metric(session, proc.url, "keyhop_express_requests_total") > 100
        log = proc.logs()
        assert "Traceback" not in log
        assert "internal_error" not in log
        assert '"status":500' not in log and '"status":502' not in log
    finally:
        await up.stop()


async def parked_connection(
    processes: Start, tmp_path: Path, data: dict[str, Any], express: str
) -> tuple[KeyhopProcess, asyncio.StreamReader, asyncio.StreamWriter]:
    """A `keyhop serve` of `data` (memory store) with KEYHOP_EXPRESS=`express`, warm, and a
    client connection to it on which keyhop's start() already waits for a head: a head that
    arrives before that is start()'s own (the lane only takes requests while it waits)."""
    data["store"] = "memory:"
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={"KEYHOP_EXPRESS": express})
    await wait_healthy(proc.url)
    await lane_ready(proc.url, express == "1")
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    await asyncio.sleep(0.1)
    return proc, reader, writer


@pytest.mark.parametrize(
    "express",
    ["1", "0"],
    ids=["lane", "no-lane"],
)
async def test_a_real_keyhop_serve_answers_50_requests_pipelined_in_one_write(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, express: str
) -> None:
    """On uvloop, as `keyhop serve` runs (RFC 9112 9.3.2: all answered, in order)."""
    up = await RawUpstream(keep_alive(echo_path)).start()
    try:
        data = config(up.base, await upstream(token_app([])), ca_file, {})
        _, reader, writer = await parked_connection(processes, tmp_path, data, express)
        try:
            writer.write(b"".join(b"GET /r/n%d HTTP/1.1\r\nHost: k\r\n\r\n" % i for i in range(50)))
            for i in range(50):
                status, _, body = await next_answer(reader, timeout=3)
                assert (status, body) == (200, b"/n%d" % i)
        finally:
            writer.close()
    finally:
        await up.stop()


@pytest.mark.parametrize(
    ("express", "size"),
    [
        ("1", 2),
        ("1", 100_000),
        ("0", 100_000),
    ],
    ids=["lane-serves", "lane-gives-back", "no-lane"],
)
async def test_sigterm_drains_a_lane_request_whatever_its_answer(
    upstream: StartUpstream,
    processes: Start,
    tmp_path: Path,
    ca_file: str,
    express: str,
    size: int,
) -> None:
    """SPEC 4.7: SIGTERM drains in-flight requests, then exits. The upstream answers 1 s
    after the request, 0.3 s after the signal; a body over 64 KiB is given back by the lane."""
    body = b"p" * size

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/slow":
                await asyncio.sleep(1)
                conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, body))
            else:
                conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = await RawUpstream(behave).start()
    try:
        # a read timeout well past the upstream's 1 s: at 1 s (lane_peers' default) the answer
        # raced the timeout, and a busy machine made it a 504
        data = config(
            up.base,
            await upstream(token_app([])),
            ca_file,
            {},
            timeouts={"connect": 2, "read": 5},
        )
        proc, reader, writer = await parked_connection(processes, tmp_path, data, express)
        try:
            writer.write(b"GET /r/slow HTTP/1.1\r\nHost: k\r\n\r\n")
            await asyncio.sleep(0.7)
            proc.send(signal.SIGTERM)
            status, _, got = await next_answer(reader, timeout=5)
            assert (status, got) == (200, body)
        finally:
            writer.close()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, proc.proc.wait, 10) == 0  # type: ignore[union-attr]
    finally:
        await up.stop()
