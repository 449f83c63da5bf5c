"""The client leaves right after sending a request the express lane took; then a hostile
upstream answers it (whole, too big for the lane, chunked, bodyless, broken, cut short,
followed by stray bytes, or reset). Whatever comes, keyhop logs the request (499 aborted,
or the upstream's failure as the pipeline does), holds nothing afterwards (no in-flight
request, no pool slot, no stray bytes for the next request), raises nothing, and does all
of it as with the lane off (issue 16).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from tests.lane_peers import Keyhops, access_fields, keyhops, seen, tracebacks
from tests.lane_runs import Hostile, byte_by_byte, then_close, writes
from tests.test_upstream import OK, Behaviour, RawConn, StartRaw, raw_upstream, until

BIG = b"B" * 100_000

__all__ = ["keyhops", "raw_upstream"]  # fixtures


def late(hostile: Hostile) -> Behaviour:
    """/x is answered with `hostile` 0.3 s after it arrived (the client is gone by then);
    anything else with 200 "ok", keep-alive."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path != "/x":
                await conn.send(OK)
                continue
            await asyncio.sleep(0.3)
            await hostile(conn)
            if conn.writer.is_closing():
                return

    return behave


AFTER_GONE = (
    "a choice (README, 'Choices where the spec is silent'): a kept-alive upstream connection "
    "reset before its answer is not sent again once the client has left (the lane logs 499; "
    "the pipeline sends it again and logs what that gives)"
)
DIFFER = {"reset-mid-head"}

ANSWERS = {
    "whole": writes(OK),
    "over-64-kib": writes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG)),
    "chunked": writes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    "204": writes(b"HTTP/1.1 204 No Content\r\n\r\n"),
    "byte-by-byte": byte_by_byte(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    "unasked-101": writes(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    "obs-fold": writes(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    "short-body-then-close": then_close(
        writes(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf")
    ),
    "stale-answer-behind": writes(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"),
    "reset-mid-head": then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Le"), reset=True),
}


async def leave(port: int) -> None:
    """GET /r/x, then close at once (a FIN)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await asyncio.sleep(0.05)  # keyhop's start() waits for a head: the lane may take it
        await loop.sock_sendall(sock, b"GET /r/x HTTP/1.1\r\nHost: keyhop\r\n\r\n")
    finally:
        sock.close()


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(act, marks=pytest.mark.xfail(strict=True, reason=AFTER_GONE))
        if name in DIFFER
        else act
        for name, act in ANSWERS.items()
    ],
    ids=list(ANSWERS),
)
async def test_whatever_answers_a_request_whose_client_left_nothing_is_held_lane_on_as_off(
    keyhops: Keyhops, raw_upstream: StartRaw, caplog: pytest.LogCaptureFixture, hostile: Hostile
) -> None:
    caplog.set_level(logging.WARNING)
    runs: list[tuple[Any, ...]] = []
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(late(hostile)), express=express)
        await served.warm()
        await leave(served.port)
        await until(lambda s=served: len(s.lines) == 2)  # type: ignore[misc]
        if express:
            assert served.taken == 1
        assert served.logged()[1]["status"] in (499, 502), served.logged()[1]
        await asyncio.sleep(0.5)  # past the upstream's answer, whatever it was
        await until(lambda s=served: s.in_flight() == 0 and s.busy() == 0)
        conn = await served.client()  # the next request gets its own answer
        await conn.send(b"GET /r/after HTTP/1.1\r\nHost: keyhop\r\n\r\n")
        after = await seen(conn)
        assert after is not None and after.body == b"ok"
        assert served.kh.metrics.internal_errors == 0
        assert tracebacks(caplog.records) == []
        runs.append(
            (
                [(w.conn, w.path) for w in served.up.requests],
                [access_fields(line) for line in served.logged()],
            )
        )
    assert runs[0] == runs[1]
