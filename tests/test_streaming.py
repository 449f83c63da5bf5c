"""Bodies stream both ways in constant memory, and a cut stays a cut (SPEC 4.1).

Real `keyhop serve` processes; the upstreams run in the test process over real TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.support import KeyhopProcess, write_config

MiB = 1024 * 1024
SIZE = 256 * MiB
CHUNK = bytes(range(256)) * 4096  # 1 MiB, not all one byte
MAX_GROWTH_KIB = 32 * 1024
TRANSFER_TIMEOUT = 40.0


def config(base: str, ca_file: str, **routes: str) -> dict[str, Any]:
    return {
        "store": "memory:",
        "providers": {
            "p": {
                "auth": {"type": "static", "token": "tok-Str3am-123456"},
                "headers": {"Authorization": "Bearer {token}"},
                "ca_file": ca_file,
                "timeouts": {"connect": 5, "read": 20},
            }
        },
        "routes": [
            {"prefix": prefix, "upstream": upstream, "provider": "p"}
            for prefix, upstream in ({"/s": base} | routes).items()
        ],
    }


def expected_crc(size: int) -> int:
    crc = 0
    for _ in range(size // len(CHUNK)):
        crc = zlib.crc32(CHUNK, crc)
    return crc


@contextmanager
def peak_rss(proc: KeyhopProcess) -> Iterator[Callable[[], int]]:
    """Sample keyhop's VmRSS every 10 ms in a thread; yields a getter for the peak (KiB)."""
    peak = [proc.rss_kib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            try:
                peak[0] = max(peak[0], proc.rss_kib())
            except (OSError, AssertionError):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join(5)


def streaming_app() -> web.Application:
    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = SIZE
        await response.prepare(request)
        for _ in range(SIZE // len(CHUNK)):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        count = 0
        crc = 0
        async for chunk in request.content.iter_any():
            count += len(chunk)
            crc = zlib.crc32(chunk, crc)
        return web.json_response({"bytes": count, "crc": crc})

    async def small(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"warm")

    app = web.Application(client_max_size=SIZE * 2)
    app.router.add_get("/big", download)
    app.router.add_post("/upload", upload)
    app.router.add_route("*", "/small", small)
    return app


@pytest.fixture
async def streaming_keyhop(
    upstream: StartUpstream,
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
) -> KeyhopProcess:
    base = await upstream(streaming_app())
    proc = processes(write_config(tmp_path / "keyhop.yaml", config(base, ca_file)))
    # warm up: imports, TLS context, the upstream connection pool, buffers of a first body
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(proc.url + "/s/small", data=CHUNK) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
    return proc


async def test_a_256_mib_download_streams_in_constant_memory(
    streaming_keyhop: KeyhopProcess,
) -> None:
    proc = streaming_keyhop
    count = 0
    crc = 0
    baseline = proc.rss_kib()
    with peak_rss(proc) as peak:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
        ) as session:
            async with session.get(proc.url + "/s/big") as resp:
                assert resp.status == 200
                assert resp.headers.get("Content-Length") == str(SIZE)
                async for chunk in resp.content.iter_any():
                    count += len(chunk)
                    crc = zlib.crc32(chunk, crc)
    assert count == SIZE
    assert crc == expected_crc(SIZE)
    growth = peak() - baseline
    assert growth < MAX_GROWTH_KIB, f"keyhop grew by {growth} KiB during a 256 MiB download"


async def test_a_256_mib_upload_streams_in_constant_memory(
    streaming_keyhop: KeyhopProcess,
) -> None:
    proc = streaming_keyhop

    async def body() -> AsyncIterator[bytes]:
        for _ in range(SIZE // len(CHUNK)):
            yield CHUNK

    baseline = proc.rss_kib()
    with peak_rss(proc) as peak:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
        ) as session:
            async with session.post(proc.url + "/s/upload", data=body()) as resp:
                assert resp.status == 200, await resp.text()
                result = await resp.json()
    assert result == {"bytes": SIZE, "crc": expected_crc(SIZE)}
    growth = peak() - baseline
    assert growth < MAX_GROWTH_KIB, f"keyhop grew by {growth} KiB during a 256 MiB upload"


# --- an upstream that cuts its body short -----------------------------------------------------

PARTIAL = b"x" * 1000
CUT_RESPONSES = {
    "/content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 100000\r\n\r\n" + PARTIAL
    ),
    "/chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + PARTIAL + b"\r\n"
    ),
    "/chunked-mid-chunk": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + PARTIAL
    ),
}


async def cutting_upstream(server_ssl: ssl.SSLContext) -> asyncio.Server:
    """Answers with a head and part of the body, then closes the connection cleanly."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode()
            writer.write(CUT_RESPONSES[path.partition("?")[0]])
            await writer.drain()
            await asyncio.sleep(0.2)  # let keyhop forward what it got before the cut
        except (OSError, asyncio.IncompleteReadError, TimeoutError, KeyError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl)


@pytest.mark.parametrize("path", list(CUT_RESPONSES), ids=[p.strip("/") for p in CUT_RESPONSES])
async def test_an_upstream_that_closes_mid_body_makes_the_client_see_a_cut(
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
    server_ssl: ssl.SSLContext,
    path: str,
) -> None:
    server = await cutting_upstream(server_ssl)
    async with server:
        port = server.sockets[0].getsockname()[1]
        proc = processes(
            write_config(tmp_path / "keyhop.yaml", config(f"https://127.0.0.1:{port}", ca_file))
        )
        received = bytearray()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with asyncio.timeout(15):
                    async with session.get(proc.url + "/s" + path) as resp:
                        assert resp.status == 200
                        async for chunk in resp.content.iter_any():
                            received += chunk
        assert len(received) <= len(PARTIAL)
        assert proc.proc is not None and proc.proc.poll() is None, "keyhop died"
