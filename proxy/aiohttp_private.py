"""Every use of aiohttp's private API, in one place (STYLE: "Private framework APIs in one
place"). tests/test_aiohttp_private.py has one test per hook, named after it, that fails
when an aiohttp upgrade moves or changes what the hook relies on.

Hooks:
- `ResponseHandler` (aiohttp.client_proto): the client protocol upstream.py drives
  directly; `CheckedResponseHandler` overrides its `data_received` to hold each raw
  response head to proxy/http1.py before aiohttp's lenient parser sees it, and reports a
  broken one through `set_exception`, which its `read()` raises.
- `serialize_headers` (aiohttp.http_writer._serialize_headers): the C head serializer,
  which refuses a value with CR, LF or NUL (ValueError).
- `drain` (BaseProtocol._drain_helper): waits until a paused transport may be written to.
- `RequestHandler` (aiohttp.web_protocol): the server protocol of `keyhop serve`;
  `GuardedRequestHandler` overrides `data_received` and reads `_waiter` (set while the
  handler waits for a request head), `_request_count` (bumped by the parser for each head
  it completes or refuses), `_messages` (the parsed requests, with their bodies),
  `_upgraded`, `_force_close`/`_close` and `_loop` to time and count the bytes of each request head
  while it arrives; aiohttp limits each line, not the head.
- `StreamResponse._prepare_headers` (aiohttp.web_response): `RelayedResponse` and
  `RelayedStreamResponse` take out the default Content-Type and the Server header aiohttp
  adds to every response, when the upstream did not send them (relay.py).
- `web.Server.__call__` builds each connection's protocol from the server's private `_loop`
  and `_kwargs`; `ProtocolServer` does the same with a protocol class of keyhop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import _serialize_headers as serialize_headers
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from proxy.http1 import MAX_RESPONSE_HEAD, BadUpstreamAnswer, check_response_head, head_end

__all__ = [
    "CheckedResponseHandler",
    "GuardedRequestHandler",
    "ProtocolServer",
    "ResponseHandler",
    "drain",
    "RelayedResponse",
    "RelayedStreamResponse",
    "relayed",
    "serialize_headers",
]


async def drain(protocol: BaseProtocol) -> None:
    await protocol._drain_helper()


class CheckedResponseHandler(ResponseHandler):
    """aiohttp's client protocol, with each response head checked on the raw bytes.

    `expect_head()` is called before a request is written; from then on the bytes that
    arrive are gathered until a whole head is there (interim 1xx heads are checked and
    passed too), then the body goes to aiohttp untouched and unbuffered.

    Bytes past the end of an answer (more than its Content-Length, or anything after it
    ended) mark the connection as not reusable (`_should_close`, read by should_close): the
    next request on it must never read them as its own answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._head: bytearray | None = None  # None: not inside a head
        self._scanned = 0  # bytes of _head already searched for the blank line
        self._body_fed: int | None = None  # raw body bytes of a length-framed answer so far
        self._ended = False  # the answer is whole: whatever comes now is stray

    def expect_head(self) -> None:
        self._head = bytearray()
        self._scanned = 0
        self._body_fed = None
        self._ended = False

    def data_received(self, data: bytes) -> None:
        if self._head is not None and data:
            try:
                self._check(data)
            except BadUpstreamAnswer as exc:
                self._head = None
                if self.transport is not None:
                    self.transport.close()
                self.set_exception(exc)
                return
        elif self._body_fed is not None:
            self._body_fed += len(data)
        elif self._ended and data:
            self._should_close = True
        super().data_received(data)
        fed = self._body_fed
        if fed is not None:
            payload = self._payload
            if payload is not None and payload.is_eof():
                if fed > payload.total_bytes:
                    self._should_close = True  # stray bytes came with the end of the body
                self._body_fed = None
                self._ended = True

    def _final(self, head: bytes, body_bytes: int) -> None:
        """The final head is in: its body is aiohttp's; watch a length-framed body's end."""
        self._head = None
        chunked = b"transfer-encoding" in head.lower()  # checked to be only `chunked`
        self._body_fed = None if chunked else body_bytes

    def _check(self, data: bytes) -> None:
        head = self._head
        assert head is not None
        if not head:
            # the usual case: the whole head in the first segment, checked without a copy
            blank = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
            if blank != -1 and data.find(b"\n\n", 0, blank) == data.find(b"\n\r\n", 0, blank) == -1:
                code = check_response_head(data[: blank + 4])
                if not (100 <= code <= 199 and code != 101):
                    self._final(data[: blank + 4], len(data) - blank - 4)
                    return
        head += data
        while True:
            # the blank line may straddle two segments: search from a little before
            start = max(0, self._scanned - 3)
            end = head_end(memoryview(head)[start:])
            if (start + end if end is not None else len(head)) > MAX_RESPONSE_HEAD:
                raise BadUpstreamAnswer(
                    f"something that is not HTTP: a head over {MAX_RESPONSE_HEAD // 1024} KiB"
                )
            if end is None:
                self._scanned = len(head)
                return
            end += start
            final = bytes(head[:end])
            code = check_response_head(final)
            if not (100 <= code <= 199 and code != 101):
                self._final(final, len(head) - end)
                return
            del head[:end]  # an interim answer has no body: the next head follows it
            self._scanned = 0


class GuardedRequestHandler(RequestHandler):
    """aiohttp's server protocol with a time and a size limit on each request head.

    The head timer starts at the first byte of a head and stops when the parser has the
    whole head; a head still arriving after `head_timeout` seconds (dribbled, or never
    finished) or past `max_head` bytes is answered with `refusal(status, text)` and the
    connection closed. Bodies are not counted: bytes count from the end of the last parsed
    request's body. A head pipelined behind a request still being handled is counted too,
    but has no clock (a long answer is not its fault); past `max_head` nothing more is
    parsed and the connection closes after the answer in progress."""

    def __init__(self, manager: Any, *, head_timeout: float, max_head: int, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self.head_timeout = head_timeout
        self.max_head = max_head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        #: the body of the last request parsed: bytes after its end are the next head
        self._last_body: StreamReader | None = None

    def refusal(self, status: int, text: str) -> bytes:
        """The whole answer (head and body) sent before the connection is closed."""
        raise NotImplementedError

    def _waiting_for_head(self) -> bool:
        if self._request_count == 0:
            return True  # nothing parsed yet (start() may not have run to its wait)
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def data_received(self, data: bytes) -> None:
        if not data or self._force_close or self._upgraded:
            super().data_received(data)  # (after an upgrade the bytes are a websocket's)
            return
        if self._close:
            return  # closing after the current answer: aiohttp parses nothing more either
        body = self._last_body
        if body is not None and not body.is_eof():
            super().data_received(data)  # the body of the last request parsed
            return
        idle = self._waiting_for_head()
        if idle and self._head_timer is None:
            self._head_timer = self._loop.call_later(self.head_timeout, self._head_too_slow)
        self._head_bytes += len(data)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # the parser has the head (or refused it)
            if self._messages:
                self._last_body = self._messages[-1][1]
            self._head_done()
        elif self._head_bytes > self.max_head:
            if idle:
                self._refuse(431, f"the request head is over {self.max_head // 1024} KiB")
            else:
                # pipelined behind an answer in progress: an answer of ours would land
                # inside that one, so the connection closes once it is done
                self._head_done()
                self.close()

    def _head_done(self) -> None:
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_bytes and not self._force_close:
            self._refuse(408, f"the request head did not arrive within {self.head_timeout:g} s")

    def _refuse(self, status: int, text: str) -> None:
        self._head_done()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(self.refusal(status, text))
        self.force_close()  # stops parsing; the transport closes once the answer is out

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_done()
        super().connection_lost(exc)


class ProtocolServer(web.Server):
    """aiohttp's low-level server, with each connection served by `protocol(server, loop=...,
    **the server's keyword arguments)` (keepalive_timeout, line limits, ...) instead of a
    plain RequestHandler."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        protocol: Callable[..., RequestHandler],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._protocol = protocol

    def __call__(self) -> RequestHandler:
        return self._protocol(self, loop=self._loop, **self._kwargs)


class _Relayed:
    """Mixin for the answers keyhop relays: aiohttp adds a default Content-Type and its own
    Server header to every response; an upstream's answer keeps only what the upstream sent."""

    _upstream_sent: frozenset[str] = frozenset()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # type: ignore[misc]
        headers: CIMultiDict[str] = self.headers  # type: ignore[attr-defined]
        for name in (hdrs.CONTENT_TYPE, hdrs.SERVER):
            if name not in self._upstream_sent:
                headers.popall(name, None)


class RelayedResponse(_Relayed, web.Response):
    pass


class RelayedStreamResponse(_Relayed, web.StreamResponse):
    pass


def relayed(response: _Relayed, upstream_headers: Any) -> None:
    response._upstream_sent = frozenset(
        name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in upstream_headers
    )
