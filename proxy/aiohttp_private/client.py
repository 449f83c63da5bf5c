"""aiohttp's client protocol, as upstream.py and the express lane drive it (hooks: see
proxy/aiohttp_private/__init__.py)."""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from aiohttp import client_proto, http_parser
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import _EXC_SENTINEL, DEBUG
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader

from proxy.http1 import (
    MAX_RESPONSE_HEAD,
    BadUpstreamAnswer,
    check_response_head,
    declared_length,
    head_end,
)

#: the answers are read by aiohttp's C parser in its lax mode, the one http1.plain_answer
#: copies (it respells the field names it knows, and lets a repeated Content-Type pass):
#: not under AIOHTTP_NO_EXTENSIONS (the pure-Python parser keeps names as sent) nor in
#: asyncio's debug mode (PYTHONASYNCIODEBUG, -X dev: strict), where no answer takes `whole`
PLAIN_PARSER: Final = not DEBUG and vars(client_proto)["HttpResponseParser"] is getattr(
    http_parser, "HttpResponseParserC", None
)


async def drain(protocol: BaseProtocol) -> None:
    await protocol._drain_helper()


class AnswerListener(Protocol):
    """Takes a connection's next answer without a task waiting on `read()` (proxy/lane.py)."""

    def answer(self, message: RawResponseMessage, payload: StreamReader) -> None: ...
    def failed(self, exc: BaseException) -> None: ...
    def whole(self, data: bytes) -> bool:
        """The first bytes of the answer: True when the listener took them as the whole
        answer (aiohttp's parser never sees them, and stays at the start of a message)."""
        ...


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
        self._declared: int | None = None  # its Content-Length (0: no body), when it has one
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
        self._declared = None
        self._ended = False

    def data_received(self, data: bytes) -> None:
        if self._head is not None and data:
            listener = self.listener
            if listener is not None and not self._head and PLAIN_PARSER:
                # the answer's end, if the listener takes it whole: set first, as the listener
                # may send the next request on this connection before it returns
                self._head, self._ended = None, True
                if listener.whole(data):
                    return
                self.expect_head()
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
        declared = self._declared
        if declared is not None and self._body_fed is not None and self._body_fed > declared:
            # stray bytes after the answer: known before the parser hands the answer on,
            # so a listener that releases the connection at once does not pool it (its next
            # request's answer would be these bytes)
            self._should_close = True
        super().data_received(data)
        if self._body_fed is not None:
            payload = self._payload
            if payload is not None and payload.is_eof():  # bytes from now on are stray
                self._body_fed = None
                self._ended = True

    def _final(self, head: bytes, code: int, body_bytes: int) -> None:
        """The final head is in: its body is aiohttp's; watch a length-framed body's end."""
        self._head = None
        chunked = b"transfer-encoding" in head.lower()  # checked to be only `chunked`
        self._body_fed = None if chunked else body_bytes
        if chunked:
            self._declared = None
        elif self._skip_payload or code == 204 or code == 304:
            self._declared = 0  # no body follows this head (RFC 9112 6.3)
        else:
            self._declared = declared_length(head)

    def _check(self, data: bytes) -> None:
        head = self._head
        assert head is not None
        if not head:
            # the usual case: the whole head in the first segment, checked without a copy
            blank = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
            if blank != -1 and data.find(b"\n\n", 0, blank) == data.find(b"\n\r\n", 0, blank) == -1:
                code = check_response_head(data[: blank + 4])
                if not (100 <= code <= 199 and code != 101):
                    self._final(data[: blank + 4], code, len(data) - blank - 4)
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
                self._final(final, code, len(head) - end)
                return
            del head[:end]  # an interim answer has no body: the next head follows it
            self._scanned = 0
