"""Hostile clients against keyhop's own server (issue 12 items 2 and 3): heads dribbled or
never finished, heads too large in total, idle keep-alive connections, and the memory 300
such connections cost a real `keyhop serve`.

Peers are raw sockets; expected statuses are RFC 9110's (408 Request Timeout 15.5.9, 431
Request Header Fields Too Large, RFC 6585 5) with keyhop's JSON error body.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.server import HEAD_TIMEOUT, KEEPALIVE_TIMEOUT, MAX_HEAD_BYTES, create_server
from tests.conftest import StartUpstream
from tests.support import KeyhopProcess, write_config

Start = Callable[..., KeyhopProcess]
GET = b"GET /r/x HTTP/1.1\r\nHost: keyhop\r\n\r\n"


# --- a raw client --------------------------------------------------------------------------------


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def answer(
    reader: asyncio.StreamReader, timeout: float = 5.0, first: bytes = b""
) -> tuple[int, bytes, bytes]:
    """Status, head and body of one answer (Content-Length framed, as keyhop's own are);
    `first` is what was already read of it."""
    data = first
    async with asyncio.timeout(timeout):
        while b"\r\n\r\n" not in data:
            more = await reader.read(65536)
            if not more:
                raise AssertionError(f"closed without an answer: {data!r}")
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(body) < length:
            body += await reader.readexactly(length - len(body))
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n", body


async def send_until_answered(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pieces: list[bytes],
    interval: float,
) -> bytes:
    """Send the pieces `interval` apart, stopping at the first byte of an answer (writing on
    would make the kernel reset the connection and drop the answer unread)."""
    for piece in pieces:
        writer.write(piece)
        try:
            async with asyncio.timeout(interval):
                got = await reader.read(65536)
        except TimeoutError:
            continue
        return got
    return b""


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closes (EOF or reset) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def refusal(status: int, head: bytes, body: bytes, expected: int, fragment: str) -> None:
    assert status == expected, head
    assert b"connection: close" in head.lower()
    data = json.loads(body)
    assert data["error"] == "bad_request"
    assert fragment in data["message"]


# --- the limits, in process (short limits, real sockets) ---------------------------------------


@pytest.fixture
async def serve_limits() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    runners: list[web.ServerRunner] = []

    async def start(**limits: Any) -> int:
        async def ok(request: web.BaseRequest) -> web.StreamResponse:
            while await request.content.readany():
                pass
            if request.path == "/slow":
                await asyncio.sleep(0.5)
            return web.Response(text="ok")

        runner = web.ServerRunner(create_server(ok, **limits), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    yield start
    for runner in runners:
        await runner.cleanup()


def test_the_defaults_are_the_documented_ones() -> None:
    assert (HEAD_TIMEOUT, KEEPALIVE_TIMEOUT, MAX_HEAD_BYTES) == (10.0, 75.0, 64 * 1024)


async def test_a_dribbled_head_is_cut_with_408_after_the_head_timeout_from_its_first_byte(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(head_timeout=0.6, keepalive_timeout=30)
    reader, writer = await connect(port)
    await asyncio.sleep(0.8)  # idle before the first byte: the head clock has not started
    started = time.monotonic()
    # one byte every 50 ms: steady, but never a whole head
    first = await send_until_answered(reader, writer, [b"GET /x HTTP/1.1\r\n"] + [b"X"] * 40, 0.05)
    status, head, body = await answer(reader, first=first)
    refusal(status, head, body, 408, "did not arrive within 0.6 s")
    assert 0.5 <= time.monotonic() - started < 1.5
    assert await closed(reader)
    writer.close()


async def test_a_head_that_finishes_within_the_limit_is_served_and_the_next_gets_its_own_clock(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(head_timeout=0.6, keepalive_timeout=30)
    reader, writer = await connect(port)
    for _ in range(2):  # each head takes 0.4 s: together longer than the limit
        for i in range(0, len(GET), 4):
            writer.write(GET[i : i + 4])
            await asyncio.sleep(0.4 / (len(GET) / 4))
        status, _, body = await answer(reader)
        assert (status, body) == (200, b"ok")
    writer.close()


async def test_a_head_over_the_total_limit_is_431_while_it_still_arrives(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(max_head=8 * 1024)
    reader, writer = await connect(port)
    # 40 lines of 1 KiB, each under aiohttp's own per-line limit
    lines = [b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40)]
    first = await send_until_answered(reader, writer, [b"GET /x HTTP/1.1\r\n", *lines], 0.01)
    status, head, body = await answer(reader, first=first)
    refusal(status, head, body, 431, "over 8 KiB")
    assert await closed(reader)
    writer.close()


async def test_a_whole_head_over_the_total_limit_in_one_write_is_431(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(max_head=8 * 1024)
    reader, writer = await connect(port)
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(12))
    writer.write(b"GET /x HTTP/1.1\r\nHost: k\r\n" + lines + b"\r\n")
    status, head, body = await answer(reader)
    refusal(status, head, body, 431, "over 8 KiB")
    writer.close()


async def test_a_body_is_not_counted_as_head_nor_timed_by_the_head_clock(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(max_head=8 * 1024, head_timeout=0.5)
    reader, writer = await connect(port)
    body = b"b" * (2 * 1024 * 1024)
    writer.write(b"POST /x HTTP/1.1\r\nHost: k\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 256 * 1024):  # slower than the head clock, in pieces
        writer.write(body[i : i + 256 * 1024])
        await writer.drain()
        await asyncio.sleep(0.1)
    status, _, answered = await answer(reader)
    assert (status, answered) == (200, b"ok")
    writer.close()


async def test_pipelined_requests_in_one_write_are_all_answered(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(max_head=8 * 1024)
    reader, writer = await connect(port)
    writer.write(GET * 5)
    for _ in range(5):
        status, _, body = await answer(reader)
        assert (status, body) == (200, b"ok")
    writer.close()


async def test_a_head_pipelined_behind_a_request_in_progress_is_bounded_too(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    """While /slow is handled, 100 KiB of a next head arrive (lines under the per-line
    limit): the current answer is finished, then the connection closed, nothing parsed on."""
    port = await serve_limits(max_head=8 * 1024, keepalive_timeout=30, head_timeout=30)
    reader, writer = await connect(port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: k\r\n\r\nGET /x HTTP/1.1\r\n")
    for i in range(100):
        writer.write(b"X-%d: %s\r\n" % (i, b"a" * 1000))
    await writer.drain()
    status, _, body = await answer(reader)
    assert (status, body) == (200, b"ok")
    assert await closed(reader, timeout=3)
    writer.close()


async def test_a_small_head_pipelined_behind_a_request_in_progress_is_served(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(max_head=8 * 1024)
    reader, writer = await connect(port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: k\r\n\r\n")
    await asyncio.sleep(0.1)
    writer.write(b"GET /x HTTP/1.1\r\nHost: k\r\nX-A: " + b"a" * 4000 + b"\r\n\r\n")
    for _ in range(2):
        status, _, body = await answer(reader)
        assert (status, body) == (200, b"ok")
    writer.close()


async def test_a_head_begun_behind_an_answer_in_a_later_read_is_clocked_once_the_answer_is_out(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    """While /slow is answered the next head has no clock (the wait is not the client's);
    once the answer is out, an unfinished head gets the head timeout and its 408."""
    port = await serve_limits(head_timeout=0.5)
    reader, writer = await connect(port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: k\r\n\r\n")
    await asyncio.sleep(0.1)
    writer.write(b"GET /x HTTP/1.1\r\nHost: k\r\n")  # ...and never the blank line
    status, _, body = await answer(reader)
    assert (status, body) == (200, b"ok")
    began = asyncio.get_running_loop().time()
    status, head, body = await answer(reader)
    refusal(status, head, body, 408, "did not arrive within 0.5 s")
    assert asyncio.get_running_loop().time() - began < 2.0  # not the keep-alive timeout
    writer.close()


async def test_websocket_traffic_after_an_upgrade_is_not_counted_as_head() -> None:
    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_bytes(message.data)
        return ws

    runner = web.ServerRunner(create_server(echo, max_head=8 * 1024), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                for i in range(20):  # 20 x 32 KiB: far past the head limit
                    payload = bytes([i]) * 32 * 1024
                    await ws.send_bytes(payload)
                    assert (await ws.receive_bytes(timeout=5)) == payload
    finally:
        await runner.cleanup()


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    serve_limits: Callable[..., Awaitable[int]],
) -> None:
    port = await serve_limits(keepalive_timeout=0.5)
    reader, writer = await connect(port)
    writer.write(GET)
    status, _, _ = await answer(reader)
    assert status == 200
    answered = time.monotonic()
    assert await closed(reader, timeout=3)
    assert 0.4 <= time.monotonic() - answered < 2.0
    # and one that never sent a byte
    reader, writer2 = await connect(port)
    opened = time.monotonic()
    assert await closed(reader, timeout=3)
    assert 0.4 <= time.monotonic() - opened < 2.0
    writer.close()
    writer2.close()


# --- a real keyhop serve under 300 hostile connections ---------------------------------------

HOSTILE = 300
RSS_BOUND_MIB = 24  # measured: +12 MiB over a 51 MiB baseline (docs/hostile.md)


def ok_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


def serve_config(tmp_path: Path, base: str, ca_file: str) -> Path:
    data = {
        "store": "memory:",
        "providers": {"p": {"auth": {"type": "none"}, "ca_file": ca_file}},
        "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
    }
    return write_config(tmp_path / "keyhop.yaml", data)


async def served(port: int) -> float:
    """Seconds a fresh connection takes to get an ordinary request answered."""
    started = time.monotonic()
    reader, writer = await connect(port)
    writer.write(GET)
    status, _, body = await answer(reader, timeout=5)
    writer.close()
    assert (status, body) == (200, b"ok")
    return time.monotonic() - started


async def test_300_hostile_connections_cost_bounded_memory_and_are_cut_at_the_head_timeout(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(ok_app())
    proc = processes(serve_config(tmp_path, base, ca_file))
    for _ in range(20):
        await served(proc.port)
    baseline = proc.rss_kib()

    kinds = ("dribbling", "unfinished", "idle")
    conns: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {
        k: [] for k in kinds
    }
    for i in range(HOSTILE):
        kind = kinds[i % 3]
        reader, writer = await connect(proc.port)
        conns[kind].append((reader, writer))
        if kind == "unfinished":
            # just under the total limit, in lines under aiohttp's per-line limit
            lines = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 8000) for n in range(7))
            writer.write(b"GET /r/x HTTP/1.1\r\n" + lines)
        elif kind == "idle":
            writer.write(GET)
            status, _, _ = await answer(reader)
            assert status == 200
        else:
            writer.write(b"GET /r/x HTTP/1.1\r\nX-Slow: ")
    opened = time.monotonic()

    async def dribble() -> None:
        while time.monotonic() - opened < HEAD_TIMEOUT + 3:
            for reader, writer in conns["dribbling"]:
                if not writer.is_closing() and not reader.at_eof() and not reader._buffer:
                    writer.write(b"x")
            await asyncio.sleep(0.5)

    dribbler = asyncio.create_task(dribble())
    try:
        await asyncio.sleep(2)
        loaded = proc.rss_kib()
        grown_mib = (loaded - baseline) / 1024
        print(f"RSS baseline {baseline} KiB, with {HOSTILE} hostile connections {loaded} KiB")
        assert grown_mib < RSS_BOUND_MIB, grown_mib
        assert await served(proc.port) < 1.0  # ordinary clients are still served at once

        async def cut(reader: asyncio.StreamReader) -> int:
            status, _, body = await answer(reader, timeout=HEAD_TIMEOUT + 5)
            assert json.loads(body)["error"] == "bad_request"
            assert await closed(reader)
            return status

        statuses = await asyncio.gather(
            *(cut(r) for r, _ in conns["dribbling"] + conns["unfinished"])
        )
        assert set(statuses) == {408}
        elapsed = time.monotonic() - opened
        assert HEAD_TIMEOUT - 1 <= elapsed < HEAD_TIMEOUT + 5
        # idle keep-alive connections are not heads: still open (closed at KEEPALIVE_TIMEOUT)
        assert not any(r.at_eof() for r, _ in conns["idle"])
        assert "refused a request head" in proc.logs()
    finally:
        dribbler.cancel()
        await asyncio.gather(dribbler, return_exceptions=True)
        for kind in kinds:
            for _, writer in conns[kind]:
                writer.close()


async def test_a_real_keyhop_serve_refuses_a_head_over_64_kib_with_431(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(ok_app())
    proc = processes(serve_config(tmp_path, base, ca_file))
    reader, writer = await connect(proc.port)
    lines = [b"X-%d: %s\r\n" % (n, b"v" * 8000) for n in range(12)]
    first = await send_until_answered(reader, writer, [b"GET /r/x HTTP/1.1\r\n", *lines], 0.02)
    status, head, body = await answer(reader, first=first)
    refusal(status, head, body, 431, "over 64 KiB")
    assert await closed(reader)
    writer.close()
    assert await served(proc.port) < 1.0


# --- unknown tenants against a real keyhop serve (issue 12 item 6) ------------------------------

TENANTS = int(os.environ.get("KEYHOP_HOSTILE_TENANTS", "20000"))  # the report ran 100,000


async def test_requests_naming_unknown_tenants_leave_a_real_keyhop_serves_memory_flat(
    processes: Start, tmp_path: Path
) -> None:
    data = {
        "store": f"sqlite:///{tmp_path}/tokens.db",
        "providers": {
            "saison": {
                "preset": "saison",
                "auth": {
                    "client_id": "c",
                    "client_secret": "secret-9f8e7d6c",
                    "token_url": "https://127.0.0.1:9/auth/token",
                    "authorize_url": "https://127.0.0.1:9/authorize",
                },
            }
        },
        "routes": [{"prefix": "/s", "upstream": "https://127.0.0.1:9", "provider": "saison"}],
    }
    proc = processes(write_config(tmp_path / "keyhop.yaml", data))

    def db_state() -> list[tuple[str, int, int]]:
        return [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in tmp_path.glob("tokens.db*")
        ]

    async def ask(session: aiohttp.ClientSession, first: int, count: int) -> None:
        for i in range(first, first + count):
            headers = {"X-Keyhop-Tenant": f"member-{i}"}
            async with session.get(proc.url + "/s/x", headers=headers) as resp:
                assert resp.status == 503
                await resp.read()

    async def run(first: int, total: int) -> None:
        workers = 16
        connector = aiohttp.TCPConnector(limit=workers)
        async with aiohttp.ClientSession(connector=connector) as session:
            share = total // workers
            await asyncio.gather(*(ask(session, first + w * share, share) for w in range(workers)))

    await run(0, 4000)  # warm up
    baseline, db_before = proc.rss_kib(), db_state()
    started = time.monotonic()
    await run(4000, TENANTS)
    elapsed = time.monotonic() - started
    grown = proc.rss_kib() - baseline
    print(f"{TENANTS} unknown tenants in {elapsed:.1f} s: RSS {baseline} -> +{grown} KiB")
    assert grown < 4096, grown
    assert db_state() == db_before  # nothing written to the store (nor its WAL)
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/-/providers") as resp:
            view = (await resp.json())["providers"]["saison"]
    assert view["tenants_total"] == 0
