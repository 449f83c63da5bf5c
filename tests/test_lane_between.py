"""GuardedRequestHandler between two of start()'s own answers: after start() has answered a
request itself it parks again on its next step, a loop turn later, and a request parsed
meanwhile would be start()'s to take; it is held back until start() has parked and then
offered to the express lane like any other (`_between`), or a fast client would stay on
start() request after request. The bytes are fed to the protocol at exact points of that
window, so each case is deterministic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
from aiohttp import web

from proxy.aiohttp_private import GuardedRequestHandler, ProtocolServer


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


class Express:
    """Takes /lane/* (answers after `delay` s, or at once), declines anything else."""

    def __init__(self) -> None:
        self.took: list[str] = []
        self.delay = 0.0
        self.protocols: set[GuardedRequestHandler] = set()
        #: what a test runs inside start()'s handler for a path, before it answers
        self.during: dict[str, Callable[[GuardedRequestHandler], None]] = {}

    def __call__(self, protocol: GuardedRequestHandler, message: Any) -> bool:
        self.protocols.add(protocol)
        if not message.path.startswith("/lane"):
            return False
        self.took.append(message.path)
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self._answer, protocol, message.path)
        return True

    def _answer(self, protocol: GuardedRequestHandler, path: str) -> None:
        assert protocol.transport is not None
        body = f"lane {path}".encode()
        protocol.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        protocol.express_done(True)

    def client_lost(self, protocol: GuardedRequestHandler) -> None:
        pass

    def flush(self) -> None:
        pass


Inject = Callable[[GuardedRequestHandler], None]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Express, dict[str, Inject], int]]:
    """A server whose handler answers `start <path>`, and before that schedules what the
    test put under that path in `inject` (it runs once start() has answered, before start()
    comes round to park again)."""
    express = Express()
    inject: dict[str, Inject] = {}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        assert isinstance(protocol, GuardedRequestHandler)
        now = express.during.pop(request.path, None)
        if now is not None:
            now(protocol)
        then = inject.pop(request.path, None)
        if then is not None:
            asyncio.get_running_loop().call_soon(then, protocol)
        return web.Response(text=f"start {request.path}")

    server = ProtocolServer(
        handler,
        protocol=partial(GuardedRequestHandler, head_timeout=5, max_head=4096, express=express),
    )
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(server, "127.0.0.1", 0)
    try:
        yield express, inject, listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        await server.shutdown(1)


async def answers(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append(await reader.readexactly(length))
    return out


async def test_a_request_arriving_before_start_parks_again_goes_to_the_lane(
    served: tuple[Express, dict[str, Inject], int],
) -> None:
    express, inject, port = served
    waiting: dict[str, Any] = {}

    def arrives(protocol: GuardedRequestHandler) -> None:
        waiting["waiter"] = protocol._waiter  # start() has not parked again yet
        protocol.data_received(get("/lane/1"))

    inject["/start"] = arrives
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/start"))
    assert await answers(reader, 2) == [b"start /start", b"lane /lane/1"]
    assert waiting["waiter"] is None
    assert express.took == ["/lane/1"]
    # and start() parked after all: the next request goes to the lane from there
    writer.write(get("/lane/2") + get("/again"))
    assert await answers(reader, 2) == [b"lane /lane/2", b"start /again"]
    writer.close()


async def test_two_requests_in_one_read_before_start_parks_go_to_the_lane_in_order(
    served: tuple[Express, dict[str, Inject], int],
) -> None:
    express, inject, port = served

    def both(protocol: GuardedRequestHandler) -> None:
        protocol.data_received(get("/lane/1") + get("/lane/2"))
        assert not protocol._messages and len(protocol._held) == 2  # start() takes neither

    inject["/start"] = both
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/start"))
    got = await answers(reader, 3)
    assert got == [b"start /start", b"lane /lane/1", b"lane /lane/2"]
    assert express.took == ["/lane/1", "/lane/2"]
    writer.close()


async def test_reads_held_back_until_start_parks_keep_their_order(
    served: tuple[Express, dict[str, Inject], int],
) -> None:
    """Two reads in one loop turn: both held; the lane takes the first (and answers it a
    while later), start() the second once the lane is done."""
    express, inject, port = served
    express.delay = 0.05

    def two_reads(protocol: GuardedRequestHandler) -> None:
        protocol.data_received(get("/lane/1"))
        protocol.data_received(get("/after"))
        assert protocol._waiter is None and not protocol._express_busy
        assert [m.path for m, _ in protocol._held] == ["/lane/1", "/after"]

    inject["/start"] = two_reads
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/start"))
    got = await answers(reader, 3)
    assert got == [b"start /start", b"lane /lane/1", b"start /after"]
    writer.close()


async def test_a_request_queued_while_start_answers_is_start_s(
    served: tuple[Express, dict[str, Inject], int],
) -> None:
    """Parsed while start()'s handler runs (pipelined): start() takes it when it comes
    round, so nothing is held back and the lane takes nothing out of turn."""
    express, inject, port = served

    def during(protocol: GuardedRequestHandler) -> None:
        protocol.data_received(get("/lane/9"))
        assert not protocol._held and len(protocol._messages) == 1

    express.during["/first"] = during
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/first"))
    assert await answers(reader, 2) == [b"start /first", b"start /lane/9"]
    assert express.took == []
    writer.close()


async def test_a_request_declined_before_start_parks_is_start_s_in_order(
    served: tuple[Express, dict[str, Inject], int],
) -> None:
    express, inject, port = served
    inject["/start"] = lambda protocol: protocol.data_received(get("/declined"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/start"))
    assert await answers(reader, 2) == [b"start /start", b"start /declined"]
    writer.write(get("/lane/3"))
    assert await answers(reader, 1) == [b"lane /lane/3"]
    assert express.took == ["/lane/3"]
    writer.close()


async def test_a_connection_lost_right_after_start_was_woken_ends_start_quietly(
    served: tuple[Express, dict[str, Inject], int], caplog: pytest.LogCaptureFixture
) -> None:
    """start() parked, a request the lane declines wakes it, and the connection is lost in
    the same loop turn (before start() runs): start() must not take the request from the
    torn-down protocol (aiohttp has dropped its request factory by then)."""
    express, inject, port = served
    ended: dict[str, Any] = {}

    def declined_then_lost(protocol: GuardedRequestHandler) -> None:
        ended["start"] = protocol._task_handler
        protocol.data_received(get("/declined"))
        waiter = protocol._waiter
        assert waiter is not None and waiter.done()  # woken, not yet run
        protocol.connection_lost(None)

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/lane/1"))
    assert await answers(reader, 1) == [b"lane /lane/1"]
    await asyncio.sleep(0.05)  # start() parks
    protocol = next(iter(express.protocols))
    asyncio.get_running_loop().call_soon(declined_then_lost, protocol)
    await asyncio.sleep(0.1)
    start = ended["start"]
    assert start is not None and start.done()
    assert start.cancelled() or start.exception() is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    writer.close()
