"""The express lane: the usual request served with no task, no request or response object
and no coroutine (issue 16: CPU per request).

Most requests through keyhop are the same: a bodyless GET (or DELETE, OPTIONS) on a route
whose credential is in memory, answered by the upstream with a small body of known length
and a status no rule looks at. For those, the lane does the pipeline's work (forward.py)
in two callbacks: when aiohttp's parser has the request head, it checks the gate, picks the
route, builds the Outbound exactly as the pipeline does (outbound.py) and writes it on an
idle pooled connection; when the upstream's parser has the answer, it writes the relayed
answer (relay.py's small-body case, byte for byte: the upstream's cleaned headers,
Content-Length, Date) and the access line.

Rules, each with a test in tests/test_lane.py:
- The lane takes a request only when nothing can make it wait: no body, no Expect or
  Upgrade, HTTP/1.1 keep-alive, no tracing, a `rate_limit` slot free now, the tenant named,
  no body-covering signer, "throttled until" known and past, the credential in memory and
  an idle upstream connection free. Anything else goes to forward.py unchanged, in order:
  one request of a connection is in progress at a time, lane or not.
- Once the request is sent, whatever is not the usual answer is given back to forward.py
  with what was already done (the credential used and the upstream's answer, or why there
  is none): a rule's status, 204/304, a body without Content-Length, over SMALL_BODY or not
  all here yet, a header that cannot be relayed, a read timeout, a broken answer. So the
  rules, streaming and every error answer have one implementation, and nothing is sent twice
  (a reused connection the upstream had closed is the one case sent again, as upstream.py
  does).
- The read timeout is the provider's `timeouts.read`, checked every TICK as the deadlines
  watchdog does for the pipeline.
- A client that goes away mid-request is logged as 499 `aborted` once the upstream has
  answered (whose connection is pooled if the answer ended cleanly), as by the pipeline.
- A connection whose answer is still unread past `timeouts.client_write` (beyond what the
  kernel buffers) is cut; while its writing is paused, its next requests take the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

from aiohttp import HttpVersion11, hdrs
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
from proxy.deadlines import TICK
from proxy.egress import proxy_for
from proxy.errors import ProxyError, UpstreamTimeout
from proxy.gate import client_key_ok
from proxy.headers import clean_request_headers, clean_response_headers
from proxy.http1 import BadUpstreamAnswer
from proxy.origin import Origin
from proxy.relay import SMALL_BODY
from proxy.routing import Route
from proxy.runtime import Keyhop, ProviderRuntime
from proxy.tenants import pick_tenant
from proxy.tokens import Credential
from proxy.upstream import UnsafeHeader, UpstreamResponse, request_head

log = logging.getLogger("keyhop")

#: bodyless methods that upstream.py may send again on a fresh connection
METHODS: Final = frozenset({"GET", "DELETE", "OPTIONS"})
_NO_BODY_STATUSES: Final = frozenset({204, 304})


@dataclass(slots=True)
class Handover:
    """What the lane did for a request it gives back: forward.py goes on from here."""

    credential: Credential | None
    source: str  # the access line's `credential`
    answer: asyncio.Future[UpstreamResponse]  # the upstream's answer, or why there is none
    started: float  # perf_counter() when the request was written upstream
    began: float  # perf_counter() when the lane took the request (its access line's clock)

    def discard(self) -> None:
        """forward.py will not read the answer (the client went away first)."""
        answer = self.answer
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            answer.result().release()


def head_size(method: str, target: str, raw_headers: tuple[tuple[bytes, bytes], ...]) -> int:
    """The size of a parsed request head as it came on the wire (give or take blanks)."""
    size = len(method) + len(target) + 12  # "M T HTTP/1.1\r\n"
    for name, value in raw_headers:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


class Lane:
    """The express lane of one `keyhop serve` (GuardedRequestHandler's `express`)."""

    def __init__(self, kh: Keyhop) -> None:
        self.kh = kh
        self._trips: dict[GuardedRequestHandler, _Trip] = {}  # in progress, by connection
        self._sweeping: asyncio.TimerHandle | None = None

    def _sweep(self) -> None:
        """The read timeout of every request in progress, checked every TICK (as the
        deadlines watchdog does for the pipeline's): no timer per request."""
        loop = self.kh.deadlines.loop or asyncio.get_running_loop()
        now = loop.time()
        try:
            for trip in [trip for trip in self._trips.values() if trip.due <= now]:
                trip.timed_out()
        finally:
            self._sweeping = loop.call_later(TICK, self._sweep) if self._trips else None

    def __call__(self, protocol: GuardedRequestHandler, message: RawRequestMessage) -> bool:
        try:
            return self._take(protocol, message)
        except Exception:  # a bug: the pipeline serves the request (and meets it, if shared)
            log.exception("the express lane failed to take a request")
            return False

    def _take(self, protocol: GuardedRequestHandler, message: RawRequestMessage) -> bool:
        kh = self.kh
        method = message.method
        if (
            method not in METHODS
            or kh.tracing is not None
            or message.should_close
            or message.version != HttpVersion11
        ):
            return False
        target = message.path
        if target[:1] != "/" or target.startswith("/-/"):
            return False
        headers = message.headers
        if hdrs.EXPECT in headers or hdrs.UPGRADE in headers:
            return False
        if head_size(method, target, message.raw_headers) > protocol.max_head:
            return False  # forward.py's server refuses it
        rt = kh.runtime
        if not client_key_ok(rt, headers):
            return False
        try:
            match = rt.table.match(target)
        except ProxyError:
            return False
        if match is None:
            return False
        route = match.route
        prt = rt.providers[route.provider]
        provider = prt.config
        try:
            tenant = pick_tenant(headers, match, provider)
        except ProxyError:
            return False  # the pipeline answers it
        signer = provider.sign
        if signer is not None and signer.needs_body:
            return False
        now = kh.clock()
        blocked = kh.limiter.known_blocked_until(provider.name)
        if blocked is None or blocked > now:
            return False
        credential: Credential | None = None
        source = provider.kind
        if prt.needs_credential:
            credential = kh.manager.in_memory(provider, tenant)
            if credential is None:
                return False
            source = "memory"
        upstream = route.upstream
        sending = clean_request_headers(headers, keep_authorization=provider.passes_client_auth)
        path = upstream.base_path + match.path or "/"
        try:  # what Injector.build adds, added to this request's own copy
            query = prt.inject.add(
                method, upstream, path, match.query, sending, None, credential, tenant, now
            )
        except ProxyError:
            return False
        taken = kh.upstreams.idle_connection(
            upstream, prt.ssl, proxy_for(provider.egress, upstream.scheme, upstream.host)
        )
        if taken is None:
            return False
        origin, conn = taken
        try:
            head = request_head(
                origin, method, path if query is None else f"{path}?{query}", sending
            )
        except UnsafeHeader:
            origin.release(conn, True)
            return False
        limit = provider.rate_limit
        if limit is not None and not kh.limiter.reserve_now(provider.name, limit):
            origin.release(conn, True)  # no slot free now: the pipeline waits for one
            return False
        transport = conn.transport
        assert transport is not None
        loop = kh.deadlines.loop or asyncio.get_running_loop()
        due = loop.time() + provider.timeouts.read
        trip = _Trip(
            self, protocol, message, prt, origin, conn, credential, source, route, tenant, due
        )
        self._trips[protocol] = trip
        kh.metrics.express_in_flight += 1
        if self._sweeping is None:
            self._sweeping = loop.call_later(TICK, self._sweep)
        conn.expect_answer(skip_payload=False)
        conn.listener = trip
        transport.write(head)
        return True

    def client_lost(self, protocol: GuardedRequestHandler) -> None:
        trip = self._trips.get(protocol)
        if trip is not None:
            trip.client_lost()

    def cut(self) -> int:
        """The drain ran out of time: every request still on the lane is cut, and logged
        499 `aborted` as the pipeline logs the tasks it cancels. Returns how many."""
        trips = list(self._trips.values())
        for trip in trips:
            trip.conn.listener = None
            trip._abandon()
            trip._finish(499, None, aborted=True)
        return len(trips)

    def watch_unread(self, protocol: GuardedRequestHandler) -> None:
        """An answer went out past the transport's high-water mark: a client that still has
        not read it after `timeouts.client_write` has its connection cut, as the pipeline
        cuts it (the lane does not wait for the client; the kernel's buffers took the rest)."""
        loop = self.kh.deadlines.loop or asyncio.get_running_loop()

        def check() -> None:
            transport = protocol.transport
            if transport is not None and protocol.writing_paused:
                log.info("cut a client connection that left its answer unread")
                transport.abort()

        loop.call_later(self.kh.runtime.config.timeouts.client_write, check)


class _Trip:
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
        if lane._trips.get(self.protocol) is not self:
            log.error("the express lane failed after a request ended", exc_info=exc)
            return
        if not self.written:  # the pipeline answers: 500 internal_error, logged and counted
            self.conn.listener = None
            self._abandon()
            self._give_back(exc)
            return
        log.error("the express lane failed after answering", exc_info=exc)
        lane.kh.metrics.internal_error()
        lane._trips.pop(self.protocol, None)
        lane.kh.metrics.express_in_flight -= 1
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
            head = serialize_headers(f"HTTP/1.1 {code} {message.reason}", headers)
        except ValueError:  # (UnrelayableHeader among them): forward.py says why
            self._give_back_answer(message, payload)
            return
        # all of it is here: the connection goes back before the client reads
        self.origin.release(self.conn, True)
        self.written = True  # (from here on, nothing may be given back)
        elapsed = time.perf_counter() - self.sent
        kh = self.lane.kh
        provider = self.prt.config.name
        kh.metrics.upstream(provider, elapsed)
        transport = self.protocol.transport
        if self.gone or transport is None:
            self._finish(499, round(elapsed * 1000, 3), aborted=True)
            return
        if len(body) < 16384:
            transport.write(head + body)  # one segment; a copy is cheap here
        else:
            transport.writelines((head, body))
        if self.protocol.writing_paused:
            self.lane.watch_unread(self.protocol)
        kh.metrics.express_served += 1
        self._finish(code, round(elapsed * 1000, 3))

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

    def _abandon(self) -> None:
        self.conn.abort()
        self.origin.release(self.conn, False)

    def _finish(self, status: int, upstream_ms: float | None, *, aborted: bool = False) -> None:
        lane = self.lane
        protocol = self.protocol
        lane._trips.pop(protocol, None)
        lane.kh.metrics.express_in_flight -= 1
        config = self.prt.config
        info = AccessInfo(
            None,
            route=self.route,
            provider=config.name,
            tenant=self.tenant,
            upstream_ms=upstream_ms,
            credential=self.source,
            aborted=aborted,
        )
        message = self.message
        log_access(message.method, message.path, info, status, self.began, lane.kh)
        protocol.express_done(not aborted)

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
            upstream_ms = None
            if isinstance(answer, UpstreamResponse):
                answer.release()  # pooled when its body had all come, closed otherwise
                upstream_ms = round((time.perf_counter() - self.sent) * 1000, 3)
            self._finish(499, upstream_ms, aborted=True)
            return
        lane = self.lane
        lane._trips.pop(self.protocol, None)
        lane.kh.metrics.express_in_flight -= 1
        note: Handover | None = None
        if answer is not None:
            loop = lane.kh.deadlines.loop or asyncio.get_running_loop()
            future: asyncio.Future[UpstreamResponse] = loop.create_future()
            if isinstance(answer, UpstreamResponse):
                future.set_result(answer)
            else:
                future.set_exception(answer)
                future.add_done_callback(_mark_retrieved)
            note = Handover(self.credential, self.source, future, self.sent, self.began)
        self.protocol.express_give_back(self.message, note)


def _mark_retrieved(future: asyncio.Future[UpstreamResponse]) -> None:
    future.exception()  # forward.py raises it; unread (the client left first), it is no error
