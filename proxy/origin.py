"""The connections to one upstream origin (host, port, TLS settings): a bounded pool of
keep-alive connections handed out in arrival order (proxy/upstream.py drives them)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from dataclasses import dataclass, field

import aiohappyeyeballs

from proxy.aiohttp_private import CheckedResponseHandler
from proxy.tunnel import ProxyTarget, open_tunnel


@dataclass(eq=False)
class Origin:
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
    #: an egress proxy (SPEC 5.3): each new connection is a CONNECT tunnel through it, and TLS
    #: runs inside the tunnel, end to end with the partner
    proxy: ProxyTarget | None = None
    #: the loop of the last acquire (asyncio.get_running_loop() is a getpid() in 3.11)
    loop: asyncio.AbstractEventLoop | None = None

    async def acquire(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float
    ) -> tuple[CheckedResponseHandler, bool]:
        """A connection and whether it was used before (the upstream may have closed it).
        When all are busy, requests wait in arrival order; a freed slot is handed straight
        to the first of them, so no newcomer can take it first."""
        self.loop = loop
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
        conn = self._pop_live()
        if conn is not None:
            return conn, True
        try:
            # through a proxy, the tunnel has its own limit (EgressError names the proxy);
            # this outer one is for the TLS handshake after it
            async with asyncio.timeout(connect_timeout * (1 if self.proxy is None else 2)):
                return await self._connect(loop, connect_timeout), False
        except BaseException:
            self.free_slot()
            raise

    def take_idle(self) -> CheckedResponseHandler | None:
        """An idle live connection with its slot, when one is free and nobody waits."""
        if self.busy >= self.limit or self.waiters:
            return None
        conn = self._pop_live()
        if conn is not None:
            self.busy += 1
        return conn

    def _pop_live(self) -> CheckedResponseHandler | None:
        """The most recent idle connection still alive (the likeliest to be); dead ones
        met on the way are closed."""
        idle = self.idle
        while idle:
            conn, _ = idle.pop()
            if conn.is_connected() and not conn.should_close:
                return conn
            conn.close()
        return None

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float
    ) -> CheckedResponseHandler:
        if self.proxy is not None:
            sock = await open_tunnel(self.proxy, self.host, self.port, timeout=connect_timeout)
        else:
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
            now = self.loop.time() if self.loop else asyncio.get_running_loop().time()
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


def _literal_address(host: str, port: int) -> list[aiohappyeyeballs.AddrInfoType] | None:
    """An IP address needs no resolver (a thread hop per connection otherwise)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
