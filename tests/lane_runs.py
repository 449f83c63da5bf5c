"""Raw upstreams that misbehave on one request, and the lane-on / lane-off comparison run
in front of them (tests/test_lane_hostile*.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.lane_peers import TOKEN, Keyhops, Seen, Served, access_fields, seen, tracebacks
from tests.test_upstream import OK, Behaviour, RawConn, RawUpstream, until

Hostile = Callable[[RawConn], Awaitable[None]]


# --- what the hostile upstream does to GET /x -------------------------------------------------


def writes(*parts: bytes, pause: float = 0.0) -> Hostile:
    async def act(conn: RawConn) -> None:
        for part in parts:
            conn.writer.write(part)
            await conn.writer.drain()
            await asyncio.sleep(pause)

    return act


def byte_by_byte(data: bytes) -> Hostile:
    """Each byte its own write and (TCP_NODELAY, a pause between) its own segment."""
    return writes(*(data[i : i + 1] for i in range(len(data))), pause=0.003)


def then_close(act: Hostile, *, reset: bool = False) -> Hostile:
    async def closing(conn: RawConn) -> None:
        await act(conn)
        await asyncio.sleep(0.02)
        if reset:  # SO_LINGER 0: the close is a RST, not a FIN
            sock = conn.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.writer.transport.abort()
        else:
            conn.writer.close()

    return closing


async def silent(conn: RawConn) -> None:
    await conn.reader.read()  # until keyhop gives up and closes


def serving(hostile: Hostile) -> Behaviour:
    """Answers /x with `hostile`, every other request with 200 "ok", keep-alive."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path != "/x":
                await conn.send(OK)
                continue
            await hostile(conn)
            if conn.writer.is_closing():
                return

    return behave


# --- one run: warm, the hostile request, then an ordinary one ---------------------------------


@dataclass
class Run:
    hostile: Seen | None  # what the client got for GET /r/x
    after: Seen | None  # and for GET /r/next after it
    upstream_saw: list[tuple[int, str]]  # (connection, path) of whole requests upstream
    access: list[dict[str, Any]]
    took: int  # requests the lane took (0 with the lane off)
    seconds: float  # GET /r/x took this long
    metrics: dict[str, Any]  # /-/metrics' families, but timings (and the lane's own counter)


async def run(keyhops: Keyhops, up: RawUpstream, *, express: bool) -> tuple[Run, Served]:
    served = await keyhops.start(up, express=express)
    await served.warm()
    conn = await served.client()
    started = time.monotonic()
    await conn.send(b"GET /r/x HTTP/1.1\r\nHost: keyhop\r\n\r\n")
    hostile = await seen(conn)
    seconds = time.monotonic() - started
    took = served.taken
    await asyncio.sleep(0.15)  # whatever the upstream writes after its answer is in by now
    if hostile is None or not hostile.whole or ("Connection", "close") in hostile.headers:
        await conn.close()
        conn = await served.client()
    await conn.send(b"GET /r/next HTTP/1.1\r\nHost: keyhop\r\n\r\n")
    after = await seen(conn)
    await conn.close()
    await until(lambda: served.in_flight() == 0 and served.busy() == 0)
    await until(lambda: len(served.lines) == 3)
    upstream_saw = [(w.conn, w.path) for w in up.requests]
    access = [access_fields(line) for line in served.logged()]
    m = served.kh.metrics
    metrics = {
        "requests": dict(m.requests),
        "upstream_observations": {p: sum(counts) for p, (counts, _) in m.latency.items()},
        "token_fetches": dict(m.token_fetches),
        "throttled": dict(m.throttled),
        "internal_errors": m.internal_errors,
        "in_flight": served.in_flight(),
    }
    return Run(hostile, after, upstream_saw, access, took, seconds, metrics), served


async def both(
    keyhops: Keyhops,
    raw_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    hostile: Hostile,
    caplog: pytest.LogCaptureFixture,
) -> Run:
    """The same hostile upstream in front of keyhop with the lane on, then off: what every
    peer saw must be the same; returns the lane's run."""
    caplog.set_level(logging.WARNING)
    on, served = await run(keyhops, await raw_ups(serving(hostile)), express=True)
    off, _ = await run(keyhops, await raw_ups(serving(hostile)), express=False)
    assert on.took == 1, "the lane did not take the request under attack"
    assert off.took == 0
    assert (on.hostile, on.after, on.upstream_saw, on.access) == (
        off.hostile,
        off.after,
        off.upstream_saw,
        off.access,
    )
    assert on.metrics == off.metrics
    assert len(keyhops.fetches) == 2  # one token per keyhop: no answer made either refetch
    assert on.after is not None and (on.after.status, on.after.body) == ("HTTP/1.1 200 OK", b"ok")
    assert served.kh.metrics.internal_errors == 0
    assert tracebacks(caplog.records) == []
    for answer in (on.hostile, on.after):
        assert answer is None or TOKEN.encode() not in answer.body
    return on


def error(answer: Seen | None, status: int, code: str) -> str:
    assert answer is not None and answer.whole
    assert answer.status.split(" ")[1] == str(status), answer
    body = json.loads(answer.body)
    assert body["error"] == code, body
    message: str = body["message"]
    return message
