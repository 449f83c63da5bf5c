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
  while it arrives; aiohttp limits each line, not the head. The express lane (proxy/lane.py)
  takes parsed requests off `_messages` while `start()` is parked on `_waiter`, and keeps
  aiohttp's own bookkeeping as `start()` would: `_parser.message_consumed()`,
  `_manager.requests_count`, `_request_in_progress` and `_handler_waiter` (which `shutdown()`
  waits on), `_keepalive_handle`, `_next_keepalive_close_time` and `_process_keepalive`.
- `CheckedResponseHandler.expect_answer` reads `_parser` and `_skip_payload` to keep a
  kept-alive connection's response parser; `whole_body` joins a StreamReader's `_buffer`.
- `CheckedResponseHandler.feed_data` / `set_exception` (DataQueue): a parsed answer or a
  failure goes to the express lane's listener instead of the queue `read()` waits on.
- `rfc822_formatted_time` (aiohttp.helpers): the Date header aiohttp's responses carry.
- `StreamResponse._prepare_headers` (aiohttp.web_response): `RelayedResponse` and
  `RelayedStreamResponse` take out the default Content-Type and the Server header aiohttp
  adds to every response, when the upstream did not send them (relay.py).
- `web.Server.__call__` builds each connection's protocol from the server's private `_loop`
  and `_kwargs`; `ProtocolServer` does the same with a protocol class of keyhop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import _EXC_SENTINEL, rfc822_formatted_time
from aiohttp.http_parser import RawRequestMessage, RawResponseMessage
from aiohttp.http_writer import _serialize_headers as serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict

from proxy.http1 import MAX_RESPONSE_HEAD, BadUpstreamAnswer, check_response_head, head_end

__all__ = [
    "AnswerListener",
    "CheckedResponseHandler",
    "EMPTY_PAYLOAD",
    "Express",
    "RawRequestMessage",
    "RawResponseMessage",
    "rfc822_formatted_time",
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


class AnswerListener(Protocol):
    """Takes a connection's next answer without a task waiting on `read()` (proxy/lane.py)."""

    def answer(self, message: RawResponseMessage, payload: StreamReader) -> None: ...
    def failed(self, exc: BaseException) -> None: ...


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
        #: when set, parsed answers and failures go here instead of to read()
        self.listener: AnswerListener | None = None

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        listener = self.listener
        if listener is None:
            super().feed_data(data, size)
        else:
            listener.answer(*data)

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _EXC_SENTINEL) -> None:
        listener = self.listener
        if listener is None:
            super().set_exception(exc, exc_cause)
        else:
            self.listener = None
            self._should_close = True  # as ResponseHandler's own: this connection is done
            listener.failed(exc)

    def expect_answer(self, skip_payload: bool) -> None:
        """Before a request is written: a parser for its answer, and the head check armed.
        The last answer's parser is kept when it was set up alike (a kept-alive connection's
        parser is back at the start of a message once an answer ended; creating one per
        request was a tenth of the lane's cost)."""
        if self._parser is None or self._skip_payload != skip_payload:
            self.set_response_params(
                skip_payload=skip_payload, read_until_eof=True, auto_decompress=False
            )
        self.expect_head()

    def whole_body(self, payload: StreamReader) -> bytes:
        """The body of an answer that has all arrived (`payload.is_eof()`), without the
        flow-control bookkeeping of reading it (this connection is released next)."""
        return b"".join(payload._buffer)

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

    def __init__(
        self,
        manager: Any,
        *,
        head_timeout: float,
        max_head: int,
        express: Express | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(manager, **kw)
        self.head_timeout = head_timeout
        self.max_head = max_head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        #: the body of the last request parsed: bytes after its end are the next head
        self._last_body: StreamReader | None = None
        self.express = express
        self._express_busy = False  # the express lane is serving a request of this connection
        #: a request the lane gave back to start(), and the lane's note for the handler
        self._handover: tuple[object, Any] | None = None

    def refusal(self, status: int, text: str) -> bytes:
        """The whole answer (head and body) sent before the connection is closed."""
        raise NotImplementedError

    def _waiting_for_head(self) -> bool:
        if self._express_busy:
            return False
        if self._request_count == 0:
            return True  # nothing parsed yet (start() may not have run to its wait)
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    # -- the express lane (proxy/lane.py) ------------------------------------------------------
    #
    # start() serves one request at a time, in order, and parks on `_waiter` between them.
    # While it is parked, requests are parsed without waking it; the lane takes the first
    # queued one when it can serve it without a task, and start() is woken for the first one
    # it cannot. Only one request of a connection is ever in progress, lane or start().

    def _parse(self, data: bytes) -> None:
        waiter = self._waiter
        if self.express is None or waiter is None or waiter.done():
            super().data_received(data)
            return
        self._waiter = None  # parse without waking start(): the lane may take the request
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        self._dispatch()

    def _dispatch(self) -> None:
        while self._messages and not self._express_busy:
            waiter = self._waiter
            if waiter is None or waiter.done() or self._force_close or self._close:
                return  # start() is busy, or woken, or the connection is closing
            message, payload = self._messages[0]
            express = self.express
            if (
                express is not None
                and payload is EMPTY_PAYLOAD
                and not isinstance(message, _ErrInfo)
                and not self.writing_paused
                and self.transport is not None
                and express(self, message)
            ):
                self._messages.popleft()
                if self._parser is not None:
                    self._parser.message_consumed()
                if self._manager is not None:
                    self._manager.requests_count += 1
                self._express_busy = self._request_in_progress = True
                return
            waiter.set_result(None)
            return

    def express_done(self, keep_alive: bool) -> None:
        """The lane wrote its answer (or the client went away): as start() does after a
        request, keep the connection open with its idle timer, or close it."""
        self._express_busy = self._request_in_progress = False
        handler_waiter = self._handler_waiter
        if handler_waiter is not None and not handler_waiter.done():
            handler_waiter.set_result(None)  # shutdown() is waiting for this request
        if not keep_alive or self._close or self._force_close:
            self.force_close()
            return
        if self._keepalive_timeout > 0:
            loop = self._loop
            close_time = loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        if self._messages:
            self._dispatch()

    def express_give_back(self, message: RawRequestMessage, note: Any) -> None:
        """The lane cannot finish this request: start() serves it, and the handler finds
        `note` with handover_note()."""
        self._express_busy = self._request_in_progress = False
        self._handover = (message.raw_headers, note)
        self._messages.appendleft((message, EMPTY_PAYLOAD))
        handler_waiter = self._handler_waiter
        if handler_waiter is not None and not handler_waiter.done():
            handler_waiter.set_result(None)  # shutdown() now waits for start()'s task
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _process_keepalive(self) -> None:
        if self._express_busy:
            self._keepalive_handle = None  # express_done() starts the idle timer again
            return
        super()._process_keepalive()

    def data_received(self, data: bytes) -> None:
        if not data or self._force_close or self._upgraded:
            super().data_received(data)  # (after an upgrade the bytes are a websocket's)
            return
        if self._close:
            return  # closing after the current answer: aiohttp parses nothing more either
        body = self._last_body
        if body is not None and not body.is_eof():
            self._parse(data)  # the body of the last request parsed (and maybe more)
            return
        idle = self._waiting_for_head()
        self._head_bytes += len(data)
        before = self._request_count
        self._parse(data)
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
        elif idle and self._head_timer is None:
            # a head still coming (started now: a whole head in one read, the usual case,
            # needs no timer at all)
            self._head_timer = self._loop.call_later(self.head_timeout, self._head_too_slow)

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
        if self._express_busy and self.express is not None:
            self.express.client_lost(self)


def handover_note(request: web.BaseRequest) -> Any:
    """The express lane's note on a request it gave back (None for any other request)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedRequestHandler):
        return None
    pending = protocol._handover
    if pending is None or pending[0] is not request.raw_headers:
        return None
    protocol._handover = None
    return pending[1]


class Express(Protocol):
    """The express lane, as GuardedRequestHandler calls it (proxy/lane.py)."""

    def __call__(self, protocol: GuardedRequestHandler, message: RawRequestMessage) -> bool:
        """Take `message` (True: it will call express_done or express_give_back later)."""
        ...

    def client_lost(self, protocol: GuardedRequestHandler) -> None:
        """The client's connection closed while the lane was serving one of its requests."""
        ...


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
