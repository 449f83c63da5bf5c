"""The request path's HTTP/1.1 client: pooled keep-alive connections driven by aiohttp's own
response protocol and C parser, without ClientSession's per-request machinery (a request
object, a response object, cookie and trace hooks, timers, header copies), which was most of
what keyhop spent on a request. Token endpoints and websockets still use ClientSession.

Same wire behaviour as the ClientSession it replaces: Host first (the upstream's, or one a
provider configured), then the headers given,
nothing added but the body's framing (`Content-Length`, or `Transfer-Encoding: chunked` for
a stream of unknown length, `Content-Length: 0` for a body-less POST/PUT/PATCH/DELETE);
responses without a length are read until the connection closes; a request on a reused
connection that the upstream had closed is sent once more on a new one when that is safe
(idempotent method, body in memory); at most PER_ORIGIN connections busy per upstream.
Read timeouts are not kept here: forward.py's watchdog cancels the waiting task.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohappyeyeballs
from aiohttp import hdrs
from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.aiohttp_private import CheckedResponseHandler, drain, serialize_headers
from proxy.http1 import BadUpstreamAnswer
from proxy.routing import Upstream

__all__ = ["BadUpstreamAnswer", "RequestBodyLost", "UnsafeHeader", "UpstreamPool"]

PER_ORIGIN: Final = 256  # busy connections per upstream; more requests wait for one
KEEPALIVE: Final = 60.0  # an idle connection is closed after this many seconds
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RequestBodyLost(ConnectionResetError):
    """The client's body stopped arriving (it went away): the upstream connection was cut.
    A ConnectionResetError, so forward.py logs the request as the client's (499)."""


class UnsafeHeader(Exception):
    """A header value to be sent holds a line break or another control character (a token
    or a templated value could otherwise split the request)."""


class UpstreamResponse:
    """What forward.py reads: status, reason, headers and the body as a stream."""

    __slots__ = ("status", "reason", "headers", "content", "host", "_origin", "_conn", "_writer")

    def __init__(
        self,
        origin: _Origin,
        conn: CheckedResponseHandler,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        writer: asyncio.Task[None] | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self.host = origin.host  # for error messages
        self._origin: _Origin | None = origin
        self._conn = conn
        self._writer = writer

    def release(self) -> None:
        """Back to the pool when the exchange ended cleanly, closed otherwise. Idempotent."""
        origin, self._origin = self._origin, None
        if origin is None:
            return
        writer = self._writer
        reusable = self.content.is_eof() and (writer is None or writer.done())
        if writer is not None and not writer.done():
            writer.cancel()
        origin.release(self._conn, reusable)


@dataclass(eq=False)
class _Origin:
    """The connections to one upstream (host, port, TLS settings): routes to one host under
    different base paths share them, and share the limit."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    host_line: str  # "Host: example.com" (port only when not the scheme's default)
    limit: int
    keepalive: float
    idle: deque[tuple[CheckedResponseHandler, float]] = field(default_factory=deque)
    busy: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    closed: bool = False

    async def acquire(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float
    ) -> tuple[CheckedResponseHandler, bool]:
        """A connection and whether it was used before (the upstream may have closed it).
        When all are busy, requests wait in arrival order; a freed slot is handed straight
        to the first of them, so no newcomer can take it first."""
        if self.busy >= self.limit:
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                await waiter  # woken with the slot already ours (busy counts it)
            except asyncio.CancelledError:
                if not waiter.cancelled():
                    self.free_slot()  # it was our turn: pass it on
                elif waiter in self.waiters:  # (a release may have skipped and dropped it)
                    self.waiters.remove(waiter)
                raise
        else:
            self.busy += 1
        idle = self.idle
        while idle:
            conn, _ = idle.pop()  # the most recent: the likeliest to be alive
            if conn.is_connected() and not conn.should_close:
                return conn, True
            conn.close()
        try:
            async with asyncio.timeout(connect_timeout):
                return await self._connect(loop), False
        except BaseException:
            self.free_slot()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> CheckedResponseHandler:
        # Happy Eyeballs (RFC 8305), as aiohttp's connector does: a host with an address
        # that does not answer (IPv6 without a route, say) falls back to the next in 250 ms
        infos = _literal_address(self.host, self.port) or await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=0.25, interleave=1, loop=loop
        )
        try:
            _, conn = await loop.create_connection(
                lambda: CheckedResponseHandler(loop),
                sock=sock,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        return conn

    def release(self, conn: CheckedResponseHandler, reusable: bool) -> None:
        if reusable and not self.closed and conn.is_connected() and not conn.should_close:
            now = asyncio.get_running_loop().time()
            self.idle.append((conn, now))
            self.expire(now)
        else:
            conn.close()
        self.free_slot()

    def free_slot(self) -> None:
        """Hand the slot to the first waiter, or give it back."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1

    def expire(self, now: float) -> None:
        idle = self.idle
        while idle and now - idle[0][1] > self.keepalive:
            idle.popleft()[0].close()

    @property
    def unused(self) -> bool:
        return not (self.idle or self.busy or self.waiters)

    def close(self) -> None:
        """At exit: idle connections close now, busy ones when released."""
        self.closed = True
        while self.idle:
            self.idle.popleft()[0].close()


class UpstreamPool:
    def __init__(self, per_origin: int = PER_ORIGIN, keepalive: float = KEEPALIVE) -> None:
        self.per_origin = per_origin
        self.keepalive = keepalive
        self._origins: dict[tuple[str, int, ssl.SSLContext | None], _Origin] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()

    async def _reap(self) -> None:
        """Close connections idle for longer than `keepalive`, also when traffic stopped, and
        forget origins with nothing left (a reload gives a `ca_file` provider a new TLS
        context, so its old origin would otherwise stay for good)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.keepalive / 4)
            for key, origin in list(self._origins.items()):
                origin.expire(loop.time())
                if origin.unused:
                    del self._origins[key]

    def _origin(self, upstream: Upstream, tls: ssl.SSLContext | bool) -> _Origin:
        context: ssl.SSLContext | None = None
        if upstream.scheme == "https":
            if isinstance(tls, ssl.SSLContext):
                context = tls
            else:
                if self._default_tls is None:
                    self._default_tls = ssl.create_default_context()
                    self._default_tls.set_alpn_protocols(["http/1.1"])
                context = self._default_tls
        key = (upstream.host, upstream.port, context)
        origin = self._origins.get(key)
        if origin is None:
            host_line = f"Host: {upstream.authority}"
            origin = _Origin(
                upstream.host, upstream.port, context, host_line, self.per_origin, self.keepalive
            )
            self._origins[key] = origin
        return origin

    async def request(
        self,
        upstream: Upstream,
        tls: ssl.SSLContext | bool,
        connect_timeout: float,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | AsyncIterable[bytes] | None,
        progress: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for the head of its answer; the body streams after.

        Raises TimeoutError when no connection was made within `connect_timeout`; OSError
        (ssl.SSLError among them) when none could be made; aiohttp's ClientError subclasses
        when the connection failed before an answer; RequestBodyLost when the client's body
        stopped arriving; BadUpstreamAnswer for an answer that cannot be relayed; and
        UnsafeHeader, before anything is sent, when a header value could split the request.

        `progress`, when given, is called each time a chunk of a streamed body has been
        handed to the upstream's socket without back-pressure (the upstream is reading): an
        upload that moves is not silence, whatever its length (issue 12).
        """
        origin = self._origin(upstream, tls)
        loop = asyncio.get_running_loop()
        chunked = _frame(method, headers, body)
        # the request line is not checked by _serialize_headers' control-character guard: the
        # method and target come from aiohttp's request parser and the route's checked config
        line = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
        # a provider may set Host itself (an upstream reached by address that serves by name)
        host_line = origin.host_line
        if hdrs.HOST in headers:
            host_line = f"Host: {headers.popone(hdrs.HOST)}"
        try:
            head = line + serialize_headers(host_line, headers)
        except ValueError:
            raise UnsafeHeader("a header value holds a control character") from None
        may_resend = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            conn, reused = await origin.acquire(loop, connect_timeout)
            writer: asyncio.Task[None] | None = None
            try:
                conn.set_response_params(
                    skip_payload=method == hdrs.METH_HEAD,
                    read_until_eof=True,
                    auto_decompress=False,
                )
                transport = conn.transport
                assert transport is not None
                conn.expect_head()
                if body is None:
                    transport.write(head)
                elif isinstance(body, bytes):
                    if len(body) < 16384:
                        transport.write(head + body)  # one segment; a copy is cheap here
                    else:
                        transport.writelines((head, body))
                else:
                    transport.write(head)
                    writer = asyncio.create_task(_write_body(conn, body, chunked, progress))
                while True:
                    try:
                        message, payload = await conn.read()
                    except HttpProcessingError:
                        raise BadUpstreamAnswer("something that is not HTTP") from None
                    if message.code == 101:
                        # keyhop never asks to switch protocols here (websockets go through
                        # their own client): relaying it would leave the client talking HTTP
                        # to a connection that no longer does
                        raise BadUpstreamAnswer("101 Switching Protocols, unasked")
                    if not 100 <= message.code <= 199:
                        break  # 1xx interim answers are not relayed
                return UpstreamResponse(
                    origin, conn, message.code, message.reason, message.headers, payload, writer
                )
            except (ServerDisconnectedError, ClientOSError):
                _abandon(origin, conn, writer)
                if not (reused and may_resend):
                    raise
                may_resend = False  # the upstream had closed an idle connection: once more
            except BaseException:
                _abandon(origin, conn, writer)
                raise


def _literal_address(host: str, port: int) -> list[aiohappyeyeballs.AddrInfoType] | None:
    """An IP address needs no resolver (a thread hop per connection otherwise)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


def _abandon(
    origin: _Origin, conn: CheckedResponseHandler, writer: asyncio.Task[None] | None
) -> None:
    if writer is not None:
        writer.cancel()
    conn.abort()
    origin.release(conn, False)


def _frame(method: str, headers: CIMultiDict[str], body: object) -> bool:
    """Set the body's framing headers; True when the body goes out chunked."""
    if body is None:
        if method not in _NO_BODY_METHODS and hdrs.CONTENT_LENGTH not in headers:
            headers[hdrs.CONTENT_LENGTH] = "0"
        return False
    if isinstance(body, bytes):
        headers[hdrs.CONTENT_LENGTH] = str(len(body))
        return False
    if hdrs.CONTENT_LENGTH in headers:
        return False
    headers[hdrs.TRANSFER_ENCODING] = "chunked"
    return True


async def _write_body(
    conn: CheckedResponseHandler,
    body: Any,
    chunked: bool,
    progress: Callable[[], None] | None,
) -> None:
    """Stream a request body, paced by the upstream's reading. A body that fails to arrive
    (the client went away) cuts the upstream connection, so the upstream never takes a
    short body for a whole one."""
    transport = conn.transport
    assert transport is not None
    chunks = body.iter_any() if isinstance(body, StreamReader) else body
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if conn.writing_paused:
                await drain(conn)
            if progress is not None:
                progress()
        if chunked:
            transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        transport.abort()
        lost = RequestBodyLost(f"the request body did not arrive: {type(exc).__name__}")
        conn.set_exception(lost)
