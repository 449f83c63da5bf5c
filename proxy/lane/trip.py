"""One request on the express lane, from its upstream's answer to the client's (see
proxy/lane/__init__.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, Protocol

from aiohttp import hdrs
from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from proxy.access import AccessInfo, log_access
from proxy.aiohttp_private import (
    CheckedResponseHandler,
    GuardedRequestHandler,
    RawRequestMessage,
    RawResponseMessage,
    rfc822_formatted_time,
    serialize_headers,
)
from proxy.errors import ProxyError, UpstreamTimeout
from proxy.exchange import settle
from proxy.handover import Handover
from proxy.headers import all_ascii, clean_response_headers, serialize_obs_text
from proxy.http1 import BadUpstreamAnswer, plain_answer
from proxy.lane.writes import Writes
from proxy.origin import Origin
from proxy.relay import SMALL_BODY
from proxy.routing import Route
from proxy.runtime import Keyhop, ProviderRuntime
from proxy.tokens import Credential
from proxy.upstream import UpstreamResponse

log = logging.getLogger("keyhop")

_NO_BODY_STATUSES: Final = frozenset({204, 304})


class Lane(Protocol):
    """What a trip uses of the lane that took it (proxy/lane/take.py)."""

    kh: Keyhop
    trips: dict[GuardedRequestHandler, Trip]
    settling: set[asyncio.Future[None]]  # settle() tasks, held until done

    writes: Writes


class Trip:
    """One request on the lane, from its head to its answer."""

    __slots__ = (
        "lane",
        "protocol",
        "message",
        "prt",
        "origin",
        "conn",
        "credential",
        "source",
        "route",
        "tenant",
        "due",
        "began",
        "sent",
        "written",
        "gone",
    )

    def __init__(
        self,
        lane: Lane,
        protocol: GuardedRequestHandler,
        message: RawRequestMessage,
        prt: ProviderRuntime,
        origin: Origin,
        conn: CheckedResponseHandler,
        credential: Credential | None,
        source: str,
        route: Route,
        tenant: str | None,
        due: float,
    ) -> None:
        self.lane = lane
        self.protocol = protocol
        self.message = message
        self.prt = prt
        self.origin = origin
        self.conn = conn
        self.credential = credential
        self.source = source
        self.route = route.prefix
        self.tenant = tenant
        self.due = due  # loop time: the read timeout (Lane._sweep)
        self.began = self.sent = time.perf_counter()
        self.written = False  # the connection is released and the answer on its way
        self.gone = False  # the client's connection closed

    # -- the upstream's side (CheckedResponseHandler's listener) ---------------------------------

    def answer(self, message: RawResponseMessage, payload: StreamReader) -> None:
        try:
            self._answer(message, payload)
        except Exception as exc:
            self._broke(exc)

    def _broke(self, exc: Exception) -> None:
        """A bug in the lane (called from the upstream's data_received, where an exception
        would silently close that connection and leave the client waiting)."""
        lane = self.lane
        if lane.trips.get(self.protocol) is not self:
            log.error("the express lane failed after a request ended", exc_info=exc)
            return
        if not self.written:  # the pipeline answers: 500 internal_error, logged and counted
            self.conn.listener = None
            self._abandon()
            self._give_back(exc)
            return
        log.error("the express lane failed after answering", exc_info=exc)
        lane.kh.metrics.internal_error()
        self._leave()
        self.protocol.express_done(False)

    def _answer(self, message: RawResponseMessage, payload: StreamReader) -> None:
        code = message.code
        if 100 <= code <= 199 and code != 101:
            return  # an interim answer: not relayed, the final one follows
        self.conn.listener = None
        if code == 101:
            self._abandon()
            self._give_back(BadUpstreamAnswer("101 Switching Protocols, unasked"))
            return
        length = message.headers.get(hdrs.CONTENT_LENGTH)
        if (
            code in self.prt.rule_statuses
            or code in _NO_BODY_STATUSES
            or length is None
            or not payload.is_eof()
            or int(length) > SMALL_BODY
        ):
            self._give_back_answer(message, payload)
            return
        try:
            headers = clean_response_headers(message.headers)
            body = self.conn.whole_body(payload)
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
            if hdrs.DATE not in headers:
                headers[hdrs.DATE] = rfc822_formatted_time()
            status_line = f"HTTP/1.1 {code} {message.reason}"
            if all_ascii(status_line, headers):
                head = serialize_headers(status_line, headers)
            else:
                head = serialize_obs_text(status_line, headers)
        except ValueError:  # (UnrelayableHeader among them): forward.py says why
            self._give_back_answer(message, payload)
            return
        self._relay(code, (head, body), len(body))

    def whole(self, data: bytes) -> bool:
        """The usual answer, whole in its first segment: relayed as it came, without
        aiohttp's parser (http1.plain_answer: the same bytes as `_answer` would write);
        False leaves it to aiohttp's parser and `answer`."""
        try:
            plain = plain_answer(data, SMALL_BODY)
            if plain is None:
                return False
            code, head, end = plain
            if code in self.prt.rule_statuses:
                return False
            self.conn.listener = None
            length = len(data) - end
            if b"\r\nDate: " in head:  # (plain_answer spells the names it knows as aiohttp)
                tail = f"\r\nContent-Length: {length}\r\n\r\n"
            else:
                tail = f"\r\nContent-Length: {length}\r\nDate: {rfc822_formatted_time()}\r\n\r\n"
            self._relay(code, (head, tail.encode(), memoryview(data)[end:]), length)
        except Exception as exc:
            self._broke(exc)
        return True

    def _relay(self, code: int, parts: tuple[bytes | memoryview, ...], length: int) -> None:
        """All of the answer is here: the connection goes back before the client reads."""
        self.origin.release(self.conn, True)
        self.written = True  # (from here on, nothing may be given back)
        upstream_ms = self._upstream_ms()
        transport = self.protocol.transport
        if self.gone or transport is None:
            self._finish(499, upstream_ms, aborted=True)
            return
        if length < 16384:  # one segment (a copy is cheap here), at the end of the loop turn
            self.lane.writes.write(transport, b"".join(parts), self.protocol)
        else:
            self.lane.writes.write_now(transport, parts, self.protocol)
        self.lane.kh.metrics.express_served += 1
        self._finish(code, upstream_ms)

    def failed(self, exc: BaseException) -> None:
        """The connection broke, or its answer is not HTTP, before a final head."""
        self._abandon()
        if isinstance(exc, ServerDisconnectedError | ClientOSError):
            # a kept-alive connection the upstream had closed: sent once more, as upstream.py
            # does for a bodyless idempotent request
            self._give_back(None)
        elif isinstance(exc, HttpProcessingError):
            self._give_back(BadUpstreamAnswer("something that is not HTTP"))
        else:
            self._give_back(exc)

    def timed_out(self) -> None:
        """Lane._sweep: no answer within the provider's read timeout."""
        self.conn.listener = None
        self._abandon()
        config = self.prt.config
        self._give_back(
            UpstreamTimeout(f"{self.origin.host} did not answer within {config.timeouts.read:g} s")
        )

    # -- the client's side ---------------------------------------------------------------------

    def client_lost(self) -> None:
        """As the pipeline (keyhop serve keeps a handler whose client left): the upstream's
        answer is still awaited, its connection pooled when it ends cleanly, and the request
        logged 499 `aborted` with its upstream time."""
        self.gone = True

    # -- endings ----------------------------------------------------------------------------

    def cut(self) -> None:
        """The drain ran out of time (Lane.cut): cut, and logged as the pipeline logs it."""
        self.conn.listener = None
        self._abandon()
        self._finish(499, None, aborted=True)

    def _abandon(self) -> None:
        self.conn.abort()
        self.origin.release(self.conn, False)

    def _leave(self) -> None:
        """Off the lane: no longer in progress there (finished, or given back)."""
        self.lane.trips.pop(self.protocol, None)
        self.lane.kh.metrics.express_in_flight -= 1

    def _upstream_ms(self) -> float:
        """The upstream's time to answer, recorded in the metrics as the pipeline records
        it; in ms for the access line."""
        elapsed = time.perf_counter() - self.sent
        self.lane.kh.metrics.upstream(self.prt.config.name, elapsed)
        return round(elapsed * 1000, 3)

    def _log(
        self, status: int, upstream_ms: float | None, aborted: bool, error: str | None = None
    ) -> None:
        # (positional: keywords cost twice as much here, on every request)
        info = AccessInfo(
            None,
            self.route,
            self.prt.config.name,
            self.tenant,
            upstream_ms,
            self.source,
            error,
            aborted,
        )
        message = self.message
        log_access(message.method, message.path, info, status, self.began, self.lane.kh)

    def _finish(
        self,
        status: int,
        upstream_ms: float | None,
        *,
        aborted: bool = False,
        error: str | None = None,
    ) -> None:
        self._leave()
        self._log(status, upstream_ms, aborted, error)
        self.protocol.express_done(not aborted and error is None)

    def _give_back_answer(self, message: RawResponseMessage, payload: StreamReader) -> None:
        self._give_back(
            UpstreamResponse(
                self.origin, self.conn, message.code, message.reason, message.headers, payload, None
            )
        )

    def _give_back(self, answer: UpstreamResponse | BaseException | None) -> None:
        """forward.py serves the request from here (None: from the start, nothing sent);
        unless its client left: then it ends here, as the pipeline would end it."""
        if self.gone:
            self._end_gone(answer)
            return
        self._leave()
        future: asyncio.Future[UpstreamResponse] | None = None
        if answer is not None:
            loop = self.lane.kh.deadlines.loop or asyncio.get_running_loop()
            future = loop.create_future()
            if isinstance(answer, UpstreamResponse):
                future.set_result(answer)
            else:
                future.set_exception(answer)
                future.add_done_callback(_mark_retrieved)
        note = Handover(self.credential, self.source, future, self.sent, self.began, self)
        self.protocol.express_give_back(self.message, note)

    def _end_gone(self, answer: UpstreamResponse | BaseException | None) -> None:
        """The client left while the lane waited: the request ends as the pipeline ends it.
        An answer: its rules' side effects (settle), the connection pooled when it ended
        cleanly, 499 `aborted`. A failure: the pipeline's error code and status, logged."""
        if isinstance(answer, UpstreamResponse):
            upstream_ms = self._upstream_ms()
            if answer.status in self.prt.rule_statuses or not answer.content.is_eof():
                task = asyncio.ensure_future(
                    settle(self.lane.kh, self.prt, answer, self.credential, self.tenant)
                )
                self.lane.settling.add(task)
                task.add_done_callback(self.lane.settling.discard)
            else:
                answer.release()  # all here: pooled
            self._finish(499, upstream_ms, aborted=True)
        elif isinstance(answer, ProxyError):
            self._finish(answer.status, None, error=answer.code)
        elif isinstance(answer, BadUpstreamAnswer):
            self._finish(502, None, error="upstream_unreachable")
        else:
            self._finish(499, None, aborted=True)

    def log_gone(self, answered: bool) -> None:
        """The access line of a request given back whose client left before the pipeline
        took it."""
        self._log(499, self._upstream_ms() if answered else None, aborted=True)


def _mark_retrieved(future: asyncio.Future[UpstreamResponse]) -> None:
    future.exception()  # forward.py raises it; unread (the client left first), it is no error
