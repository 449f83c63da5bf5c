"""A client whose connection ends in the very event-loop turn in which the express lane
gives its request back to the pipeline (issue 16): the client's FIN and the upstream's
answer arrive together, the client's first. The request must be logged 499 (as with the
lane off), the handed-over upstream answer released (no pool slot or upstream connection
held) and nothing may raise.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket

import pytest

from tests.lane_peers import Keyhops, keyhops, tracebacks
from tests.test_lane_hostile_leaving import get, took_them
from tests.test_upstream import Behaviour, RawConn, StartRaw, raw_upstream, until

__all__ = ["keyhops", "raw_upstream"]  # fixtures


# --- a client gone in the very loop turn the lane gives its request back --------------------------

BIG = b"B" * 100_000  # over the lane's 64 KiB: given back to the pipeline
GIVEN_BACK = {
    "over-64-kib": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG),
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
}


def racing(client: socket.socket, go: asyncio.Event, given_back: bytes) -> Behaviour:
    """Answers /x when `go` is set: closes `client` first, then answers, in one
    synchronous step."""

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path != "/x":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                continue
            await go.wait()
            client.close()  # the FIN is in keyhop's socket first...
            conn.writer.write(given_back)  # ...then the answer, in the same turn

    return behave


@pytest.mark.parametrize("given_back", list(GIVEN_BACK.values()), ids=list(GIVEN_BACK))
async def test_a_client_gone_as_the_lane_gives_back_leaks_nothing(
    keyhops: Keyhops, raw_upstream: StartRaw, caplog: pytest.LogCaptureFixture, given_back: bytes
) -> None:
    """The client's FIN and the upstream's answer arrive together, the client's first (the
    test does both in one synchronous step, so keyhop's loop sees both in one turn)."""
    caplog.set_level(logging.WARNING)
    for express in (True, False):
        client = socket.socket()
        go = asyncio.Event()
        behave = racing(client, go, given_back)
        served = await keyhops.start(await raw_upstream(behave), express=express)
        await served.warm()
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", served.port))
        await loop.sock_sendall(client, get("/x"))
        await until(lambda s=served: len(s.up.heads) == 2)  # type: ignore[misc]
        took_them(served, express, 1)
        go.set()
        # the request is logged (the client's doing: 499), and nothing stays held
        await until(lambda s=served: len(s.lines) == 2)  # type: ignore[misc]
        assert served.logged()[1]["status"] == 499, express
        await until(lambda s=served: s.in_flight() == 0 and s.busy() == 0)
        gc.collect()  # an unretrieved task exception is logged when its task goes
        await asyncio.sleep(0.05)
        assert tracebacks(caplog.records) == [], express
