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
import ssl
from collections.abc import AsyncIterable, Callable
from typing import Any, Final

from aiohttp import hdrs
from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.aiohttp_private import CheckedResponseHandler, drain, serialize_headers
from proxy.headers import all_ascii, serialize_obs_text
from proxy.http1 import BadUpstreamAnswer
from proxy.origin import Origin
from proxy.outbound import NO_BODY_METHODS
from proxy.routing import Upstream
from proxy.tunnel import ProxyTarget

__all__ = ["BadUpstreamAnswer", "RequestBodyLost", "UnsafeHeader", "UpstreamPool"]

PER_ORIGIN: Final = 256  # busy connections per upstream; more requests wait for one
KEEPALIVE: Final = 60.0  # an idle connection is closed after this many seconds
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
        origin: Origin,
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
        self._origin: Origin | None = origin
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


class UpstreamPool:
    def __init__(self, per_origin: int = PER_ORIGIN, keepalive: float = KEEPALIVE) -> None:
        self.per_origin = per_origin
        self.keepalive = keepalive
        self._origins: dict[tuple[str, int, ssl.SSLContext | None, ProxyTarget | None], Origin] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() is a getpid()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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

    def _origin(
        self, upstream: Upstream, tls: ssl.SSLContext | bool, proxy: ProxyTarget | None = None
    ) -> Origin:
        context: ssl.SSLContext | None = None
        if upstream.scheme == "https":
            if isinstance(tls, ssl.SSLContext):
                context = tls
            else:
                if self._default_tls is None:
                    self._default_tls = ssl.create_default_context()
                    self._default_tls.set_alpn_protocols(["http/1.1"])
                context = self._default_tls
        key = (upstream.host, upstream.port, context, proxy)
        origin = self._origins.get(key)
        if origin is None:
            host_line = f"Host: {upstream.authority}"
            origin = Origin(
                upstream.host,
                upstream.port,
                context,
                host_line,
                self.per_origin,
                self.keepalive,
                proxy=proxy,
            )
            self._origins[key] = origin
        return origin

    def idle_connection(
        self, upstream: Upstream, tls: ssl.SSLContext | bool, proxy: ProxyTarget | None = None
    ) -> tuple[Origin, CheckedResponseHandler] | None:
        """A pooled connection ready now, taken (release it through the origin), or None
        when a request would have to wait or connect (the express lane then declines)."""
        origin = self._origin(upstream, tls, proxy)
        conn = origin.take_idle()
        return None if conn is None else (origin, conn)

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
        proxy: ProxyTarget | None = None,
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
        origin = self._origin(upstream, tls, proxy)
        loop = self._loop or asyncio.get_running_loop()
        chunked = _frame(method, headers, body)
        head = request_head(origin, method, target, headers)
        may_resend = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            conn, reused = await origin.acquire(loop, connect_timeout)
            writer: asyncio.Task[None] | None = None
            try:
                transport = conn.transport
                assert transport is not None
                conn.expect_answer(skip_payload=method == hdrs.METH_HEAD)
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


def request_head(
    origin: Origin,
    method: str,
    target: str,
    headers: CIMultiDict[str] | CIMultiDictProxy[str],
) -> bytes:
    """The request line and header block as sent (framing headers already set); raises
    UnsafeHeader, before anything is sent, for a value that could split the request."""
    # the request line is not checked by _serialize_headers' control-character guard: the
    # method and target come from aiohttp's request parser and the route's checked config
    line = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
    # a provider may set Host itself (an upstream reached by address that serves by name)
    host_line = origin.host_line
    host = headers.get(hdrs.HOST)
    if host is not None:
        host_line = f"Host: {host}"
        headers = CIMultiDict(headers)
        del headers[hdrs.HOST]
    try:
        if all_ascii(host_line, headers):
            return line + serialize_headers(host_line, headers)  # type: ignore[arg-type]
        return line + serialize_obs_text(host_line, headers)  # obs-text sent byte for byte
    except ValueError:
        raise UnsafeHeader("a header value holds a control character") from None


def _abandon(
    origin: Origin, conn: CheckedResponseHandler, writer: asyncio.Task[None] | None
) -> None:
    if writer is not None:
        writer.cancel()
    conn.abort()
    origin.release(conn, False)


def _frame(method: str, headers: CIMultiDict[str], body: object) -> bool:
    """Set the body's framing headers; True when the body goes out chunked."""
    if body is None:
        if method not in NO_BODY_METHODS and hdrs.CONTENT_LENGTH not in headers:
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
