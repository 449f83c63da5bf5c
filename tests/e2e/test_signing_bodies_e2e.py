"""Signing and bodies through a real keyhop (SPEC 5.1, 5.4): a signer that covers the body
buffers it up to `body_max_bytes` and answers 413 past it with nothing sent; one that does
not lets a 64 MiB upload stream through `keyhop serve` in constant memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import MakeProxy, StartUpstream
from tests.e2e.signing_fakes import HmacUpstream, Received, SigV4Upstream, sha_message
from tests.e2e.signing_helpers import config
from tests.support import KeyhopProcess, write_config
from tests.test_streaming import peak_rss

MiB = 1024 * 1024
SECRET = "bodies-secret-e2e"
#: covers the body (its SHA-256) and lets at most 1 KiB of it be buffered
COVERING = {
    "type": "hmac",
    "key": SECRET,
    "message": "{timestamp}{method}{target}{body_sha256}",
    "timestamp": "unix_ms",
    "headers": {"X-Timestamp": "{timestamp}", "X-Signature": "{signature}"},
    "body_max_bytes": 1024,
}


async def chunks(*sizes: int) -> AsyncIterator[bytes]:
    """A body of unknown length (chunked transfer coding)."""
    for size in sizes:
        yield b"c" * size
        await asyncio.sleep(0)


async def test_a_body_over_body_max_bytes_is_413_and_never_reaches_the_upstream(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = HmacUpstream(SECRET, sha_message)
    client = await proxy(config(await upstream(fake.app), ca_file, COVERING))
    resp = await client.post("/p/upload", data=b"x" * 2048)
    assert resp.status == 413
    body = await resp.json()
    assert body["error"] == "body_too_large" and body["provider"] == "p"
    assert fake.requests == 0


async def test_a_body_of_exactly_body_max_bytes_is_signed_and_sent(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = HmacUpstream(SECRET, sha_message)
    client = await proxy(config(await upstream(fake.app), ca_file, COVERING))
    body = bytes(range(256)) * 4  # 1024 bytes
    resp = await client.post("/p/upload", data=body)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    assert fake.requests == 1 and fake.received[0].body == body


async def test_a_chunked_body_of_unknown_length_is_413_past_the_limit_and_signed_below_it(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = HmacUpstream(SECRET, sha_message)
    client = await proxy(config(await upstream(fake.app), ca_file, COVERING))
    try:
        resp = await client.post("/p/upload", data=chunks(512, 512, 512, 512))
        assert resp.status == 413
        assert (await resp.json())["error"] == "body_too_large"
    except aiohttp.ClientConnectionError:
        pass  # keyhop may close before the client finished sending: also never sent on
    assert fake.requests == 0
    resp = await client.post("/p/upload", data=chunks(400, 400))
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    assert rec.body == b"c" * 800 and "Transfer-Encoding" not in rec.headers


def ts_target(rec: Received, ts: str) -> bytes:
    return (ts + rec.method + rec.raw_path).encode()


STREAMING_SIGNERS = {
    # S3 with UNSIGNED-PAYLOAD: the fake verifies with botocore before reading the body
    "aws_sigv4-s3-unsigned": (
        lambda: SigV4Upstream("AKIDSTREAM", "stream/secret", "eu-west-1", "s3"),
        {
            "type": "aws_sigv4",
            "region": "eu-west-1",
            "service": "s3",
            "access_key_id": "AKIDSTREAM",
            "secret_access_key": "stream/secret",
            "unsigned_payload": True,
        },
    ),
    # an hmac recipe over the timestamp, method and target only
    "hmac-no-body": (
        lambda: HmacUpstream(SECRET, ts_target, covers_body=False),
        {**COVERING, "message": "{timestamp}{method}{target}"},
    ),
}


@pytest.mark.parametrize("kind", list(STREAMING_SIGNERS))
async def test_a_64_mib_upload_streams_through_a_signer_that_does_not_cover_the_body(
    upstream: StartUpstream,
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
    kind: str,
) -> None:
    """README: "A signer that does not cover the body leaves requests streaming" (and its
    body_max_bytes, 1 KiB for the recipe, does not apply)."""
    make_fake, sign = STREAMING_SIGNERS[kind]
    fake = make_fake()
    base = await upstream(fake.app)
    data = config(base, ca_file, sign)
    data["store"] = "memory:"
    proc = processes(write_config(tmp_path / "keyhop.yaml", data))
    chunk = bytes(range(256)) * 4096  # 1 MiB
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm up: imports, TLS, the connection pool, first buffers
            async with session.put(proc.url + "/p/bucket/warm", data=chunk) as resp:
                assert resp.status == 200, await resp.text()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield chunk

        baseline = proc.rss_kib()
        with peak_rss(proc) as peak:
            async with session.put(proc.url + "/p/bucket/big.bin", data=body()) as resp:
                assert resp.status == 200, (await resp.text(), fake.refusals)
                result = await resp.json()
    assert result["body_bytes"] == 64 * MiB
    assert fake.refusals == [] and fake.received[-1].body_bytes == 64 * MiB
    growth = peak() - baseline
    print(f"keyhop RSS grew by {growth} KiB during a 64 MiB signed upload")
    assert growth < 16 * 1024, f"keyhop grew by {growth} KiB during a 64 MiB signed upload"


async def expect_continue(port: int, size: int) -> tuple[bytes, bytes]:
    """POST `size` bytes the way curl does past 1 KiB: `Expect: 100-continue`, the body only
    once the server asked for it; (interim answer or b"", final head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /p/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        interim = b""
        if head.startswith(b"HTTP/1.1 100"):
            interim = head
            writer.write(b"e" * size)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return interim, head
    finally:
        writer.close()


async def test_expect_100_continue_is_413_past_the_limit_and_signed_below_it_in_keyhop_serve(
    upstream: StartUpstream,
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
) -> None:
    """`keyhop serve` answers Expect itself (its low-level server): a body over the limit is
    413 without hanging, nothing sent; one within it is asked for, signed and sent."""
    fake = HmacUpstream(SECRET, sha_message)
    data = config(await upstream(fake.app), ca_file, COVERING)
    data["store"] = "memory:"
    proc = processes(write_config(tmp_path / "keyhop.yaml", data))
    _, head = await expect_continue(proc.port, 2048)
    assert head.split(b" ", 2)[1] == b"413", head
    assert fake.requests == 0
    interim, head = await expect_continue(proc.port, 1000)
    assert interim.startswith(b"HTTP/1.1 100") and head.split(b" ", 2)[1] == b"200", head
    assert fake.refusals == [] and fake.received[0].body == b"e" * 1000
