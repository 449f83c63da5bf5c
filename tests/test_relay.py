"""relay.py: the answer's two time limits, each counted apart (issue 12 item 2): the upstream's
silence (a steady trickle is not silence) and a client that stops reading."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from tests.conftest import MakeProxy, StartUpstream


def one_route(base: str, ca_file: str, read: float, **top: object) -> dict[str, object]:
    return {
        "providers": {
            "p": {
                "auth": {"type": "static", "token": "t0k3n-relay"},
                "headers": {"Authorization": "Bearer {token}"},
                "ca_file": ca_file,
                "timeouts": {"connect": 2, "read": read},
            }
        },
        "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
        **top,
    }


async def test_a_small_answer_that_trickles_steadily_is_not_silence(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    """20 bytes, one every 0.1 s (2 s in all) under a 0.5 s read timeout: relayed whole."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = 20
        await response.prepare(request)
        for i in range(20):
            await asyncio.sleep(0.1)
            await response.write(b"abcdefghijklmnopqrst"[i : i + 1])
        return response

    app = web.Application()
    app.router.add_get("/slow", trickle)
    client = await proxy(one_route(await upstream(app), ca_file, read=0.5))
    started = time.monotonic()
    async with client.get("/r/slow") as response:
        assert response.status == 200
        assert await response.read() == b"abcdefghijklmnopqrst"
    assert time.monotonic() - started >= 1.9


async def test_a_small_answer_that_goes_silent_is_still_a_504(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 20
        await response.prepare(request)
        await response.write(b"abc")
        await asyncio.sleep(5)
        return response

    app = web.Application()
    app.router.add_get("/stall", stall)
    client = await proxy(one_route(await upstream(app), ca_file, read=0.4))
    async with client.get("/r/stall") as response:
        assert response.status == 504
        assert (await response.json())["error"] == "upstream_timeout"


async def test_a_client_that_stops_reading_is_cut_and_frees_the_upstream(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    """A 64 MiB answer to a client that reads nothing: after `timeouts.client_write` the
    client's connection is cut and the upstream's writer sees its connection end."""
    upstream_done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 64 * 1024 * 1024
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(1024):
                await response.write(chunk)
        except BaseException as exc:  # the proxy let go: a write fails or the handler is cancelled
            upstream_done.set_result(type(exc).__name__)
            raise
        upstream_done.set_result("finished")
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    config = one_route(await upstream(app), ca_file, read=30, timeouts={"client_write": 0.5})
    client = await proxy(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /r/big HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    # read nothing; the upstream must be let go of well before its read timeout (30 s)
    outcome = await asyncio.wait_for(upstream_done, 10)
    assert outcome != "finished"
    # the client's connection was cut: reading drains what was buffered, then ends
    got = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
            got += len(chunk)
    except ConnectionError:
        pass
    assert got < 64 * 1024 * 1024
    writer.close()


async def test_a_slow_but_steady_reader_gets_the_whole_answer(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    """Progress is not a stall: a client reading 4 MiB in small sips over ~2 s, each sip well
    within client_write (0.5 s), gets every byte."""
    size = 4 * 1024 * 1024

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        for _ in range(size // 65536):
            await response.write(b"y" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    config = one_route(await upstream(app), ca_file, read=30, timeouts={"client_write": 0.5})
    client = await proxy(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port, limit=65536)
    writer.write(b"GET /r/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    got = 0
    while got < size:
        chunk = await asyncio.wait_for(reader.read(256 * 1024), 5)
        if not chunk:
            break
        got += len(chunk)
        await asyncio.sleep(0.12)
    assert got == size
    writer.close()
