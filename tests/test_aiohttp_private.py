"""One test per hook in proxy/aiohttp_private.py, named after it: each fails when an
aiohttp upgrade moves or changes the private API the hook relies on."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler

from proxy.aiohttp_private import CheckedResponseHandler, drain, serialize_headers
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
