"""`timeouts.keepalive` (server.py: an idle connection is closed after it) on connections
whose requests the express lane served, in a real `keyhop serve`: a connection that only
ever saw lane requests is closed when idle too, and a given-back answer that streams for
longer than the idle time is not cut."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import Conn
from tests.support import write_config
from tests.test_lane_process import MODES, PARK, SECRETS, Start, express_total, static_config


def trickling_app() -> web.Application:
    """/trickle: a chunked answer (given back by the lane) over 1.5 s; anything else at once."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path != "/trickle":
            return web.Response(text="ok")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"drip,")
            await asyncio.sleep(0.5)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def idle_close(conn: Conn) -> float:
    started = time.monotonic()
    assert await conn.closed_by_peer(3.0), "an idle connection outlived timeouts.keepalive"
    return time.monotonic() - started


@MODES
async def test_connections_the_lane_served_close_when_idle_and_not_while_streaming(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str, env: dict[str, str]
) -> None:
    base = await upstream(trickling_app())
    data = static_config(base, ca_file, timeouts={"keepalive": 1})
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={**SECRETS, **env})
    first = Conn(*await asyncio.open_connection("127.0.0.1", proc.port))
    second = Conn(*await asyncio.open_connection("127.0.0.1", proc.port))
    try:
        for _ in range(2):  # the credential and an upstream connection, warm
            await asyncio.sleep(PARK)
            assert (await first.ask("GET", "/s/warm")).body == b"ok"
        await asyncio.sleep(PARK)
        assert (await second.ask("GET", "/s/lane-only")).body == b"ok"
        async with aiohttp.ClientSession() as session:
            assert await express_total(session, proc) == (0 if env else 2)
        idling = asyncio.create_task(idle_close(second))  # only lane requests went on it
        answer = await first.ask("GET", "/s/trickle")  # 1.5 s of streaming, given back
        assert (answer.status, answer.body) == (200, b"drip," * 3)
        idle = await idling
        assert 0.8 <= idle <= 1.8, f"closed after {idle:.2f} s idle with keepalive 1"
        idle = await idle_close(first)
        assert 0.8 <= idle <= 1.8, f"closed after {idle:.2f} s idle with keepalive 1"
    finally:
        await first.close()
        await second.close()
    assert proc.stop() == 0
