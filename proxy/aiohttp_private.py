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
"""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import _serialize_headers as serialize_headers

from proxy.http1 import MAX_RESPONSE_HEAD, BadUpstreamAnswer, check_response_head, head_end

__all__ = ["CheckedResponseHandler", "ResponseHandler", "drain", "serialize_headers"]


async def drain(protocol: BaseProtocol) -> None:
    await protocol._drain_helper()


class CheckedResponseHandler(ResponseHandler):
    """aiohttp's client protocol, with each response head checked on the raw bytes.

    `expect_head()` is called before a request is written; from then on the bytes that
    arrive are gathered until a whole head is there (interim 1xx heads are checked and
    passed too), then the body goes to aiohttp untouched and unbuffered."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._head: bytearray | None = None  # None: not inside a head
        self._scanned = 0  # bytes of _head already searched for the blank line

    def expect_head(self) -> None:
        self._head = bytearray()
        self._scanned = 0

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
        super().data_received(data)

    def _check(self, data: bytes) -> None:
        head = self._head
        assert head is not None
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
            code = check_response_head(bytes(head[:end]))
            if not (100 <= code <= 199 and code != 101):
                self._head = None  # the final head: its body is aiohttp's
                return
            del head[:end]  # an interim answer has no body: the next head follows it
            self._scanned = 0
