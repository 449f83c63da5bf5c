"""One test per hook in proxy/aiohttp_private.py, named after it: each fails when an
aiohttp upgrade moves or changes the private API the hook relies on."""

from __future__ import annotations

import asyncio
import inspect
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
