"""The express lane's writes, sent once per loop turn (see proxy/lane/__init__.py).

A write to a loopback or LAN peer that sleeps in epoll wakes it. Written the moment each
request head or answer is ready, one loop turn of keyhop's (tens of requests under load)
wakes its upstream and its clients once per write, and each wake-up costs the peer and
keyhop a context switch's kernel work. Held until the turn's callbacks are done and then
written in order, they wake each peer about once per turn: on this VM that cut keyhop's CPU
per request by about a sixth, and its upstream's and load generator's by a tenth and a third
(bench/README.md). Envoy's connections defer their writes to the end of the event loop's
turn alike.

Order is kept: the flush is scheduled (call_soon) when a turn's first write is held, so it
runs before any callback scheduled after it, such as start() woken for the connection's
next request; `flush()` runs before keyhop closes a client connection the lane has written
to (GuardedRequestHandler.express_done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.aiohttp_private import GuardedRequestHandler


class Writes:
    def __init__(
        self,
        loop: Callable[[], asyncio.AbstractEventLoop],
        unread: Callable[[GuardedRequestHandler], None],
    ) -> None:
        self._loop = loop
        self._unread = unread  # a client's answer that filled the transport's buffer
        self._held: list[tuple[asyncio.Transport, bytes, GuardedRequestHandler | None]] = []
        self._scheduled = False

    def write(
        self,
        transport: asyncio.Transport,
        data: bytes,
        client: GuardedRequestHandler | None = None,
    ) -> None:
        """`data` on `transport` at the end of this loop turn (`client`: the protocol of a
        client connection, watched for an answer left unread)."""
        self._held.append((transport, data, client))
        if not self._scheduled:
            self._scheduled = True
            self._loop().call_soon(self.flush)

    def write_now(
        self,
        transport: asyncio.Transport,
        parts: tuple[bytes | memoryview, ...],
        client: GuardedRequestHandler,
    ) -> None:
        """`parts` on `transport` now, after everything held (a large answer: no copy)."""
        self.flush()
        transport.writelines(parts)
        if client.writing_paused:
            self._unread(client)

    def flush(self) -> None:
        """Everything held, written now, in order (a closed transport's part is dropped, as
        its write would be)."""
        self._scheduled = False
        held, self._held = self._held, []
        for transport, data, client in held:
            if transport.is_closing():
                continue
            transport.write(data)
            if client is not None and client.writing_paused:
                self._unread(client)
