"""The two loads wrk cannot make: 1 GiB streamed each way, and a burst of simultaneous
requests on a cold token cache."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

CHUNK: Final = 64 * 1024
_ZEROS: Final = bytes(CHUNK)


def transfer_timeout(size: int) -> float:
    """A bound on one transfer: a minute plus the size at a crawl of 10 MB/s."""
    return 60.0 + size / 10e6


@dataclass(frozen=True)
class Transfer:
    direction: str  # download | upload
    client: str  # curl | aiohttp
    status: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def download(url: str, size: int) -> Transfer:
    """GET `url` and throw the body away: with curl when installed (it costs the 2-core box
    less CPU than a Python client), else aiohttp reading 64 KiB chunks."""
    curl = shutil.which("curl")
    timeout = transfer_timeout(size)
    if curl is None:
        return asyncio.run(_download_aiohttp(url, timeout))
    started = time.perf_counter()
    out = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "--max-time", str(int(timeout))]
        + ["-w", "%{http_code} %{size_download}", url],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    seconds = time.perf_counter() - started
    status, _, received = out.stdout.strip().partition(" ")
    if out.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({out.returncode}): {out.stderr.strip()}")
    return Transfer("download", "curl", int(status), int(received), seconds)


async def _download_aiohttp(url: str, timeout: float) -> Transfer:
    received = 0
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False
    ) as session:
        started = time.perf_counter()
        async with session.get(url) as response:
            async for chunk in response.content.iter_chunked(CHUNK):
                received += len(chunk)
            seconds = time.perf_counter() - started
            return Transfer("download", "aiohttp", response.status, received, seconds)


async def _zeros(size: int) -> AsyncIterator[bytes]:
    view = memoryview(_ZEROS)
    remaining = size
    while remaining > 0:
        n = min(remaining, CHUNK)
        yield bytes(view[:n]) if n < CHUNK else _ZEROS
        remaining -= n


def upload(url: str, size: int) -> Transfer:
    """POST `size` zero bytes to `url` from a generator, with a Content-Length (a file upload,
    not chunked), and check the upstream got all of them."""
    return asyncio.run(_upload(url, size, transfer_timeout(size)))


async def _upload(url: str, size: int, timeout: float) -> Transfer:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        started = time.perf_counter()
        async with session.post(url, data=_zeros(size), headers=headers) as response:
            body = await response.read()
            seconds = time.perf_counter() - started
    received = size
    if response.status == 200:
        received = int(json.loads(body).get("received", -1))
    return Transfer("upload", "aiohttp", response.status, received, seconds)


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class Burst:
    requests: int
    statuses: dict[str, int]
    send_ms: float  # from the first request written to the last
    total_ms: float  # from the first request written to the last answer read
    errors: list[str]

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)


async def burst(host: str, port: int, path: str, n: int, timeout: float = 60.0) -> Burst:
    """Open `n` connections first, then write one request on each in a tight loop (no await
    in between), so all `n` reach the proxy within a few ms: well inside the token
    endpoint's 50 ms. Each connection says `Connection: close`; its answer is read to EOF."""
    deadline = time.monotonic() + timeout
    opened = await asyncio.wait_for(
        asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(n)), return_exceptions=True
        ),
        timeout,
    )
    errors = [f"connect: {c!r}" for c in opened if isinstance(c, BaseException)]
    conns = [c for c in opened if not isinstance(c, BaseException)]
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()

    started = time.perf_counter()
    for _, writer in conns:
        writer.write(request)
    send_ms = (time.perf_counter() - started) * 1000

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        try:
            data = await reader.read(-1)
        finally:
            writer.close()
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            return f"no response ({len(data)} bytes)"
        return parts[1]

    results = await asyncio.wait_for(
        asyncio.gather(*(answer(r, w) for r, w in conns), return_exceptions=True),
        max(1.0, deadline - time.monotonic()),
    )
    total_ms = (time.perf_counter() - started) * 1000
    statuses: Counter[str] = Counter()
    for result in results:
        if isinstance(result, BaseException):
            statuses["exception"] += 1
            errors.append(repr(result))
        else:
            statuses[result] += 1
    statuses["connect_failed"] += n - len(conns)
    return Burst(n, {k: v for k, v in statuses.items() if v}, send_ms, total_ms, errors[:10])
