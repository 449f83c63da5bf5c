"""aiohttp's server protocol with keyhop's head limits and the express lane's hooks
(see proxy/aiohttp_private/__init__.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo


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
        self._given_back: RawRequestMessage | None = None  # the last one, until start() has it
        #: start() has taken no request yet, or answered one of its own on a kept-alive
        #: connection, and parks on its next step (nothing queued): requests parsed until
        #: then are held back (start() would take them) and offered to the lane once it has
        self._between = True
        self._held: list[tuple[Any, StreamReader]] = []
        self._releasing = False
        factory = self._request_factory
        if factory is not None:

            def took(*args: Any) -> web.BaseRequest:
                self._between = False  # start() takes a request itself
                return factory(*args)

            self._request_factory = took

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
    # After start() has answered a request itself it parks on its next step, a loop turn
    # later: a request parsed meanwhile would be start()'s to take, so it is held back until
    # then (`_between`), or a fast client would stay on start() request after request.

    def _parse(self, data: bytes) -> None:
        waiter = self._waiter
        if self.express is None or waiter is None or waiter.done():
            hold = self.express is not None and waiter is None and self._between
            hold = hold and not self._messages
            super().data_received(data)
            if hold and self._messages:
                self._hold()
            return
        self._waiter = None  # parse without waking start(): the lane may take the request
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        self._dispatch()

    def _hold(self) -> None:
        """What start() would take before it parks, held back until it has (start()'s next
        step is already scheduled: `_release`, scheduled after it, runs once it is done)."""
        self._held.extend(self._messages)
        self._messages.clear()
        if not self._releasing:
            self._releasing = True
            self._loop.call_soon(self._release)

    def _release(self) -> None:
        self._releasing = False
        if not self._held:
            return
        if self._force_close or self._close or self.transport is None:
            self._held = []  # start() ended the connection: dropped, as aiohttp drops them
            return
        self._unhold()
        self._dispatch()  # start() parked: to the lane, or start() woken for them

    def _unhold(self) -> None:
        """What was held back goes first (ahead of anything parsed since)."""
        self._messages.extendleft(reversed(self._held))
        self._held = []

    def _dispatch(self) -> None:
        """The first queued request to the lane, or start() woken for it."""
        if self._express_busy:
            return
        waiter = self._waiter
        if waiter is None or waiter.done() or self._force_close or self._close:
            return  # start() is busy, or woken, or the connection is closing
        if self._held:  # start() has parked: what was held back before it did comes first
            self._unhold()
        if not self._messages:
            return
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
            # (the parser's count of queued messages keeps it until express_done(): a
            # message given back is counted off by start() when it takes it)
            self._messages.popleft()
            if self._manager is not None:
                self._manager.requests_count += 1
            self._express_busy = self._request_in_progress = True
            return
        waiter.set_result(None)

    def express_done(self, keep_alive: bool) -> None:
        """The lane wrote its answer (or the client went away): as start() does after a
        request, keep the connection open with its idle timer, or close it."""
        self._express_busy = self._request_in_progress = False
        handler_waiter = self._handler_waiter
        if handler_waiter is not None and not handler_waiter.done():
            handler_waiter.set_result(None)  # shutdown() is waiting for this request
        if not keep_alive or self._close or self._force_close:
            if self.express is not None:
                self.express.flush()  # the lane's answer goes out before the connection closes
            self.force_close()
            return
        if self._parser is not None:
            self._parser.message_consumed()
        waiter = self._waiter
        if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
            # as start() does: a long pipeline paused reading at aiohttp's queue limit; parse
            # what is buffered and read on (without waking start(): _dispatch decides)
            self._waiter = None
            try:
                self._resume_reading_if_drained()
            finally:
                self._waiter = waiter
        if self._keepalive_timeout > 0:
            loop = self._loop
            close_time = loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        if self._messages:
            self._dispatch()
        else:
            self._clock_a_waiting_head()

    def express_give_back(self, message: RawRequestMessage, note: Any) -> None:
        """The lane cannot finish this request: start() serves it, and the handler finds
        `note` with handover_note()."""
        self._express_busy = self._request_in_progress = False
        self._handover = (message.raw_headers, note)
        self._given_back = message
        self._messages.appendleft((message, EMPTY_PAYLOAD))
        handler_waiter = self._handler_waiter
        if handler_waiter is not None and not handler_waiter.done():
            handler_waiter.set_result(None)  # shutdown() now waits for start()'s task
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """aiohttp's close() (at shutdown, or after a head over the limit behind the answer in
        progress) wakes a parked start() to end it; while the lane serves a request, start()
        must stay parked for a request the lane may give back: the lane ends the connection
        when it is done (express_done), or start() does after the request given back."""
        if self._express_busy:
            self._close = True
            return
        super().close()

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
            queued = self._messages or self._held
            if queued:
                self._last_body = queued[-1][1]
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

    def _clock_a_waiting_head(self) -> None:
        """An answer is out and nothing else is queued: a head that began arriving behind it
        (no clock then: the wait was not the client's) is the client's to finish now."""
        if (
            self._head_bytes
            and self._head_timer is None
            and not self._messages
            and not self._force_close
        ):
            self._head_timer = self._loop.call_later(self.head_timeout, self._head_too_slow)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            answered = await super().finish_response(request, resp, start_time)
        finally:
            self._clock_a_waiting_head()
        response, reset = answered
        if (
            not reset
            and response.keep_alive
            and request.content.is_eof()
            and not self._upgraded
            and not self._close
            and not self._force_close
        ):
            self._between = True  # start() parks on its next step unless a request is queued
        return answered

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
        start = self._task_handler
        waiter = self._waiter
        super().connection_lost(exc)
        self._held = []
        express = self.express
        if express is None:
            return
        if self._express_busy:
            express.client_lost(self)
            return
        given = self._given_back
        if given is not None and self._messages and self._messages[0][0] is given:
            # given back in this same loop turn, and start() (woken, not yet run) would meet
            # a torn-down protocol: the request ends here instead, as the lane ends it
            self._messages.clear()
            if start is not None:
                start.cancel()
            note, self._handover = self._handover, None
            if note is not None:
                express.abandoned(note[1])
        elif (
            waiter is not None
            and waiter.done()
            and not waiter.cancelled()
            and start is not None
            and self._messages
        ):
            # start() was woken for a request (one the lane declined) in this same loop turn:
            # it would take it from a torn-down protocol; nobody is left to answer
            self._messages.clear()
            start.cancel()


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

    def abandoned(self, note: Any) -> None:
        """The client's connection closed before start() took a request the lane gave back
        with `note`."""
        ...

    def flush(self) -> None:
        """Write what the lane holds back until the end of the loop turn, now."""
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
