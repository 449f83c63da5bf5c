"""One test per hook in proxy/aiohttp_private/, named after it: each fails when an
aiohttp upgrade moves or changes the private API the hook relies on."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler

from proxy.aiohttp_private import (
    CheckedResponseHandler,
    RelayedResponse,
    drain,
    relayed,
    serialize_headers,
)
from proxy.http1 import BadUpstreamAnswer


async def test_hook_response_handler_data_received_sees_every_byte_before_the_parser() -> None:
    assert "data_received" in vars(ResponseHandler)
    loop = asyncio.get_running_loop()
    good = CheckedResponseHandler(loop)
    good.set_response_params(read_until_eof=True)
    good.expect_head()
    good.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    message, payload = await good.read()
    assert (message.code, await payload.read()) == (200, b"ok")

    bad = CheckedResponseHandler(loop)
    bad.set_response_params(read_until_eof=True)
    bad.expect_head()
    bad.data_received(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok")
    with pytest.raises(BadUpstreamAnswer):
        await bad.read()  # set_exception's error is what read() raises
    assert bad.should_close


def test_hook_serialize_headers_writes_a_head_and_refuses_line_breaks() -> None:
    from multidict import CIMultiDict

    head = serialize_headers("GET / HTTP/1.1", CIMultiDict({"A": "b"}))
    assert head == b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
    with pytest.raises(ValueError):
        serialize_headers("GET / HTTP/1.1", CIMultiDict({"A": "b\r\nC: d"}))


def test_hook_drain_waits_on_base_protocols_drain_helper() -> None:
    assert inspect.iscoroutinefunction(BaseProtocol._drain_helper)
    assert inspect.iscoroutinefunction(drain)
    assert isinstance(BaseProtocol.writing_paused, property)


def test_hook_request_handler_has_the_state_the_head_guard_reads() -> None:
    """GuardedRequestHandler reads these RequestHandler attributes and overrides
    data_received; each must still be there, under that name."""
    from aiohttp.web_protocol import RequestHandler

    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    names = ("_waiter", "_request_count", "_messages", "_upgraded", "_force_close", "_close")
    for name in (*names, "_loop"):
        assert name in slots, name
    assert "data_received" in vars(RequestHandler)
    assert "connection_lost" in vars(RequestHandler)
    assert "keepalive_timeout" in inspect.signature(RequestHandler.__init__).parameters


async def test_hook_request_handler_request_count_is_bumped_by_a_whole_head() -> None:
    """The guard tells a whole head from a partial one by `_request_count`; a partial head
    must not bump it, a whole one must."""
    from aiohttp import web

    from proxy.aiohttp_private import GuardedRequestHandler

    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(ok)
    handler = GuardedRequestHandler(
        server, loop=asyncio.get_running_loop(), head_timeout=5, max_head=1024
    )
    handler.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert handler._request_count == 0
    assert handler._head_timer is not None
    handler.data_received(b"\r\n")
    assert handler._request_count == 1
    assert handler._head_timer is None
    handler.connection_lost(None)


async def test_hook_server_call_builds_keyhops_protocol_with_the_servers_settings() -> None:
    """ProtocolServer relies on web.Server keeping `_loop` and `_kwargs`; the keep-alive
    timeout given to keyhop's server must reach each connection's protocol."""
    from functools import partial

    from aiohttp import web

    from proxy.aiohttp_private import GuardedRequestHandler, ProtocolServer

    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = ProtocolServer(
        ok,
        protocol=partial(GuardedRequestHandler, head_timeout=3.0, max_head=2048),
        keepalive_timeout=12.5,
    )
    handler = server()
    assert isinstance(handler, GuardedRequestHandler)
    assert handler.keepalive_timeout == 12.5
    assert (handler.head_timeout, handler.max_head) == (3.0, 2048)


async def test_hook_prepare_headers_lets_a_relayed_answer_drop_aiohttps_own_headers(
    aiohttp_client: Any,
) -> None:
    """StreamResponse._prepare_headers is where aiohttp adds Content-Type and Server."""
    assert "_prepare_headers" in vars(web.StreamResponse)

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/bare":
            response = RelayedResponse(body=b"x")
            relayed(response, {})
        else:
            response = RelayedResponse(body=b"x", headers={"Content-Type": "text/x"})
            relayed(response, {"Content-Type": "text/x"})
        return response

    app = web.Application()
    app.router.add_get("/{name}", handler)
    client = await aiohttp_client(app)
    async with client.get("/bare") as r:
        assert "Content-Type" not in r.headers and "Server" not in r.headers
    async with client.get("/typed") as r:
        assert r.headers["Content-Type"] == "text/x" and "Server" not in r.headers


# -- the express lane's hooks (proxy/lane.py) --------------------------------------------------


async def test_hook_request_handler_has_the_state_the_express_lane_keeps() -> None:
    """The lane takes requests off `_messages` while start() is parked on `_waiter`, and keeps
    start()'s bookkeeping: these attributes and methods must still be there."""
    from aiohttp.streams import StreamReader
    from aiohttp.web_protocol import RequestHandler

    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    for name in (
        "_parser",
        "_manager",
        "_request_in_progress",
        "_handler_waiter",
        "_keepalive_handle",
        "_next_keepalive_close_time",
        "_keepalive_timeout",
        "_buffer_paused",
        "_msg_queue_resume_size",
        "_task_handler",
    ):
        assert name in slots, name
    assert "_resume_reading_if_drained" in vars(RequestHandler)
    assert inspect.iscoroutinefunction(RequestHandler.finish_response)
    assert list(inspect.signature(RequestHandler.finish_response).parameters) == [
        "self",
        "request",
        "resp",
        "start_time",
    ]
    # close() must only cancel start()'s wait, which GuardedRequestHandler defers while busy
    assert "self._waiter.cancel()" in inspect.getsource(RequestHandler.close)
    assert "_process_keepalive" in vars(RequestHandler)
    assert "messages.popleft()" in inspect.getsource(RequestHandler.start).replace("self._", "")
    assert "self._buffer" in inspect.getsource(StreamReader.__init__)
    assert "_parser" in BaseProtocol.__slots__  # (ResponseHandler's parser lives there)
    assert "_skip_payload" in vars(ResponseHandler(asyncio.get_running_loop()))


def test_hook_request_factory_is_called_as_start_takes_a_request() -> None:
    """`_between` ends when start() takes the next request itself: GuardedRequestHandler
    wraps `_request_factory`, which start() calls right after `_messages.popleft()` with no
    await between (a request the lane took meanwhile would be answered twice); and
    finish_response returns (response, reset) once the answer is written."""
    from aiohttp.web_protocol import RequestHandler

    source = inspect.getsource(RequestHandler.start)
    taken = source.index("self._messages.popleft()")
    built = source.index("self._request_factory(", taken)
    assert "await" not in source[taken:built]
    assert "_request_factory" in RequestHandler.__slots__
    assert "return resp, reset" in inspect.getsource(RequestHandler._handle_request)


async def test_hook_expect_answer_keeps_a_kept_alive_connections_parser() -> None:
    conn = CheckedResponseHandler(asyncio.get_running_loop())
    conn.expect_answer(skip_payload=False)
    parser = conn._parser
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    message, payload = await conn.read()
    assert (message.code, await payload.read()) == (200, b"ok")
    conn.expect_answer(skip_payload=False)
    assert conn._parser is parser  # the same parser reads the next answer
    conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc")
    message, payload = await conn.read()
    assert (message.code, await payload.read()) == (201, b"abc")
    conn.expect_answer(skip_payload=True)  # a HEAD: a parser that expects no body
    assert conn._parser is not parser


async def test_hook_whole_body_and_listener_take_an_answer_without_read() -> None:
    from aiohttp.client_exceptions import ServerDisconnectedError

    taken: list[Any] = []

    class Listener:
        def answer(self, message: Any, payload: Any) -> None:
            taken.append((message.code, conn.whole_body(payload), payload.is_eof()))

        def failed(self, exc: BaseException) -> None:
            taken.append(exc)

        def whole(self, data: bytes) -> bool:
            return False  # declined: aiohttp's parser reads the answer

    conn = CheckedResponseHandler(asyncio.get_running_loop())
    conn.expect_answer(skip_payload=False)
    conn.listener = Listener()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    conn.data_received(b"lo")
    assert taken == [(200, b"hel", False)]  # the head came with part of the body
    conn.connection_lost(None)  # with the listener still set: a failure, not a queued error
    assert isinstance(taken[-1], ServerDisconnectedError)
    assert conn.listener is None and conn.should_close


async def test_hook_listener_whole_takes_an_answer_past_aiohttps_parser() -> None:
    """`whole` sees the answer's first segment before aiohttp's parser: taken, the parser
    never sees it (it reads the next answer from the start); a request sent from inside
    `whole` keeps its own head check; bytes after a taken answer make the connection
    not reusable."""
    conn = CheckedResponseHandler(asyncio.get_running_loop())
    seen: list[bytes] = []

    class Listener:
        def answer(self, message: Any, payload: Any) -> None:
            raise AssertionError("a taken answer reached aiohttp's parser")

        def failed(self, exc: BaseException) -> None:
            raise AssertionError(exc)

        def whole(self, data: bytes) -> bool:
            seen.append(data)
            conn.listener = None
            if len(seen) == 1:  # the next request goes out before this one returns
                conn.expect_answer(skip_payload=False)
            return True

    conn.expect_answer(skip_payload=False)
    conn.listener = Listener()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert seen == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    assert not conn.should_close
    conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx")
    message, payload = await conn.read()  # the second answer: parsed from its start
    assert (message.code, await payload.read()) == (201, b"x")
    conn.expect_answer(skip_payload=False)
    conn.listener = Listener()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not conn.should_close
    conn.data_received(b"stray")
    assert conn.should_close


async def test_hook_express_take_finish_and_give_back_around_a_parked_start() -> None:
    """A real connection: the lane answers the first request itself, gives the second back
    (the handler finds its note) and declines the third; answers come in order."""
    from functools import partial

    from proxy.aiohttp_private import GuardedRequestHandler, ProtocolServer, handover_note

    class Express:
        def __call__(self, protocol: GuardedRequestHandler, message: Any) -> bool:
            if message.path == "/lane":
                assert protocol.transport is not None
                protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlane")
                asyncio.get_running_loop().call_soon(protocol.express_done, True)
                return True
            if message.path == "/back":
                loop = asyncio.get_running_loop()
                loop.call_soon(protocol.express_give_back, message, "the note")
                return True
            return False

        def client_lost(self, protocol: GuardedRequestHandler) -> None:
            pass

        def flush(self) -> None:
            pass

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=f"{request.path} {handover_note(request)}")

    server = ProtocolServer(
        handler,
        protocol=partial(GuardedRequestHandler, head_timeout=5, max_head=4096, express=Express()),
    )
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(server, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /lane HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /back HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        bodies = []
        for _ in range(3):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
        assert bodies == [b"lane", b"/back the note", b"/slow None"]
        writer.close()
    finally:
        listening.close()
        await server.shutdown(1)


def test_hook_rfc822_formatted_time_is_aiohttps_date_header() -> None:
    from email.utils import parsedate_to_datetime

    from proxy.aiohttp_private import rfc822_formatted_time

    assert parsedate_to_datetime(rfc822_formatted_time()).tzname() == "UTC"


async def test_hook_write_headers_lets_a_relayed_head_keep_its_obs_text(
    aiohttp_client: Any,
) -> None:
    """StreamResponse._write_headers and StreamWriter._headers_buf: aiohttp's C serializer
    drops surrogate-escaped obs-text; a relayed head is written with its bytes as they came."""
    import aiohttp.http_writer

    assert "_write_headers" in vars(web.StreamResponse)
    assert "_headers_buf" in inspect.getsource(aiohttp.http_writer.StreamWriter.write_headers)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = RelayedResponse(body=b"x", reason="Caf\udce9", headers={"X-Name": "caf\udce9"})
        relayed(response, {})
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 Caf\xe9\r\n")
    assert b"\r\nX-Name: caf\xe9\r\n" in head
    writer.close()


def test_hook_plain_parser_is_aiohttps_c_parser_in_lax_mode() -> None:
    """`PLAIN_PARSER` (the `whole` hook's condition) is true exactly when ResponseHandler
    parses with aiohttp's C parser outside asyncio's debug mode: the parser plain_answer
    copies. Other modes are checked in fresh interpreters."""
    import subprocess
    import sys

    from aiohttp import client_proto

    from proxy.aiohttp_private.client import PLAIN_PARSER

    loop = asyncio.new_event_loop()
    try:
        conn = CheckedResponseHandler(loop)
        conn.expect_answer(skip_payload=False)
        assert type(conn._parser) is vars(client_proto)["HttpResponseParser"]
    finally:
        loop.close()
    assert PLAIN_PARSER is True
    assert type(conn._parser).__module__ == "aiohttp._http_parser"
    probe = "from proxy.aiohttp_private.client import PLAIN_PARSER; print(PLAIN_PARSER)"
    for env in ({"AIOHTTP_NO_EXTENSIONS": "1"}, {"PYTHONASYNCIODEBUG": "1"}):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        )
        assert out.stdout.strip() == "False", env


async def test_hook_stray_bytes_are_known_before_the_listener_takes_the_answer() -> None:
    """Bytes past an answer's Content-Length in its own segment mark the connection as not
    reusable before the parser hands the answer on: a listener that releases the connection
    at once (the lane) must not pool it (the next request's answer would be those bytes)."""
    seen: list[bool] = []
    conn = CheckedResponseHandler(asyncio.get_running_loop())

    class Listener:
        def answer(self, message: Any, payload: Any) -> None:
            seen.append(conn.should_close)
            conn.listener = None

        def failed(self, exc: BaseException) -> None:
            raise AssertionError(exc)

        def whole(self, data: bytes) -> bool:
            return False

    conn.expect_answer(skip_payload=False)
    conn.listener = Listener()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert seen == [True]
    clean = CheckedResponseHandler(asyncio.get_running_loop())
    conn = clean
    clean.expect_answer(skip_payload=False)
    clean.listener = Listener()
    clean.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert seen == [True, False]
