"""Taking a request onto the express lane and sending it (see proxy/lane/__init__.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import HttpVersion11, hdrs

from proxy.aiohttp_private import GuardedRequestHandler, RawRequestMessage
from proxy.deadlines import TICK
from proxy.egress import proxy_for
from proxy.errors import ProxyError
from proxy.gate import client_key_ok
from proxy.handover import Handover
from proxy.headers import clean_request_headers
from proxy.lane.trip import Trip
from proxy.lane.writes import Writes
from proxy.runtime import Keyhop
from proxy.tenants import pick_tenant
from proxy.tokens import Credential
from proxy.upstream import UnsafeHeader, request_head

log = logging.getLogger("keyhop")

#: bodyless methods that upstream.py may send again on a fresh connection
METHODS: Final = frozenset({"GET", "DELETE", "OPTIONS"})


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
        self.trips: dict[GuardedRequestHandler, Trip] = {}  # in progress, by connection
        self.settling: set[asyncio.Future[None]] = set()
        self._sweeping: asyncio.TimerHandle | None = None
        self.writes = Writes(
            lambda: kh.deadlines.loop or asyncio.get_running_loop(), self.watch_unread
        )

    def _sweep(self) -> None:
        """The read timeout of every request in progress, checked every TICK (as the
        deadlines watchdog does for the pipeline's): no timer per request."""
        loop = self.kh.deadlines.loop or asyncio.get_running_loop()
        now = loop.time()
        try:
            for trip in [trip for trip in self.trips.values() if trip.due <= now]:
                trip.timed_out()
        finally:
            self._sweeping = loop.call_later(TICK, self._sweep) if self.trips else None

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
        taken = kh.upstreams.idle_connection(
            upstream, prt.ssl, proxy_for(provider.egress, upstream.scheme, upstream.host)
        )
        if taken is None:
            return False  # (before building the request: the pipeline would build it again)
        origin, conn = taken
        sending = clean_request_headers(headers, keep_authorization=provider.passes_client_auth)
        path = upstream.base_path + match.path or "/"
        try:  # what Injector.build adds, added to this request's own copy
            query = prt.inject.add(
                method, upstream, path, match.query, sending, None, credential, tenant, now
            )
            head = request_head(
                origin, method, path if query is None else f"{path}?{query}", sending
            )
        except (ProxyError, UnsafeHeader):
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
        trip = Trip(
            self, protocol, message, prt, origin, conn, credential, source, route, tenant, due
        )
        self.trips[protocol] = trip
        kh.metrics.express_in_flight += 1
        if self._sweeping is None:
            self._sweeping = loop.call_later(TICK, self._sweep)
        conn.expect_answer(skip_payload=False)
        conn.listener = trip
        self.writes.write(transport, head)
        return True

    def client_lost(self, protocol: GuardedRequestHandler) -> None:
        trip = self.trips.get(protocol)
        if trip is not None:
            trip.client_lost()

    def abandoned(self, note: Handover) -> None:
        note.abandon()

    def flush(self) -> None:
        self.writes.flush()

    def cut(self) -> int:
        """The drain ran out of time: every request still on the lane is cut, and logged
        499 `aborted` as the pipeline logs the tasks it cancels. Returns how many."""
        trips = list(self.trips.values())
        for trip in trips:
            trip.cut()
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
