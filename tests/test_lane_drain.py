"""SIGTERM (SPEC 4.7: drain in-flight requests, then exit) while the express lane waits on
an answer it will give back to the pipeline (a large body, a 204, a read timeout): the
pipeline still serves it during the drain, as it serves it with the lane off."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import Conn
from tests.support import write_config
from tests.test_lane_process import (
    PARK,
    SECRETS,
    Start,
    access_records,
    express_total,
    static_config,
)

BIG = bytes(range(256)) * 400  # 100 kB: over the lane's 64 KiB


def answering_late(started: asyncio.Event, kind: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        if request.path != "/late":
            return web.Response(text="ok")
        started.set()
        await asyncio.sleep(1.0 if kind != "timeout" else 3.0)
        if kind == "204":
            return web.Response(status=204)
        return web.Response(body=BIG)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(
            {},
            id="lane",
        ),
        pytest.param({"KEYHOP_EXPRESS": "0"}, id="KEYHOP_EXPRESS=0"),
    ],
)
@pytest.mark.parametrize("kind", ["large", "204", "timeout"])
async def test_sigterm_while_the_lane_waits_on_an_answer_it_gives_back_serves_it_then_exits_0(
    upstream: StartUpstream,
    processes: Start,
    tmp_path: Path,
    ca_file: str,
    env: dict[str, str],
    kind: str,
) -> None:
    started = asyncio.Event()
    base = await upstream(answering_late(started, kind))
    data = static_config(base, ca_file)
    data["providers"]["s"]["timeouts"] = {"connect": 2, "read": 2}
    proc = processes(write_config(tmp_path / "keyhop.yaml", data), env={**SECRETS, **env})
    conn = Conn(*await asyncio.open_connection("127.0.0.1", proc.port))
    try:
        for _ in range(2):
            await asyncio.sleep(PARK)
            assert (await conn.ask("GET", "/s/warm")).body == b"ok"
        async with aiohttp.ClientSession() as session:
            assert await express_total(session, proc) == (0 if env else 1)
        await asyncio.sleep(PARK)
        task = asyncio.create_task(conn.ask("GET", "/s/late"))
        await asyncio.wait_for(started.wait(), 10)
        proc.send(signal.SIGTERM)
        try:
            answer = await asyncio.wait_for(task, 15)
        except asyncio.IncompleteReadError:
            pytest.fail("keyhop closed the connection without answering the request in flight")
    finally:
        await conn.close()
    status, body = answer.status, answer.body
    want = {"large": (200, BIG), "204": (204, b"")}.get(kind)
    if want is not None:
        assert (status, body) == want
    else:
        assert status == 504 and b"upstream_timeout" in body
    assert proc.proc is not None
    returncode = await asyncio.to_thread(proc.proc.wait, 15)
    assert proc.stop() == returncode == 0, proc.logs()
    (record,) = [r for r in access_records(proc.logs()) if r["path"] == "/s/late"]
    assert record["status"] == status and "aborted" not in record
