"""The CONNECT tunnel through an HTTP proxy (RFC 9110 9.3.6), for proxy/egress.py.

Rules: the tunnel is a plain TCP socket handed back with nothing read past the proxy's
answer; TLS is the caller's, end to end with the partner. Any refusal or failure is an
EgressError naming the proxy (host:port), never its credentials, and never a direct
connection instead. Reading the answer is bounded in size (HEAD_LIMIT) and time (`timeout`).
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from dataclasses import dataclass, field
from typing import Final

import aiohappyeyeballs

from proxy.schema import Secret

HEAD_LIMIT: Final = 16 * 1024  # the proxy's answer head; more is not a proxy talking HTTP
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")
UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")  # replaced in a proxy's text we quote


class EgressError(ConnectionError):
    """The egress proxy refused or failed. The message names the proxy (host:port, never its
    credentials) and what happened; callers answer 502 `upstream_unreachable` with it."""


@dataclass(frozen=True)
class ProxyTarget:
    """One HTTP proxy. Only `host:port` ever shows (`label`, repr)."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: Secret | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's URL without credentials (aiohttp's `proxy=`)."""
        return f"http://{self.label}"

    def authorization(self) -> str | None:
        """`Proxy-Authorization` value: Basic (RFC 9110 11.7.1, RFC 7617 2 with UTF-8)."""
        if self.username is None:
            return None
        password = self.password.reveal() if self.password is not None else ""
        pair = f"{self.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


async def open_tunnel(proxy: ProxyTarget, host: str, port: int, *, timeout: float) -> socket.socket:
    """A TCP connection to `host:port` through `proxy` (RFC 9110 9.3.6 CONNECT): a connected,
    non-blocking socket on which nothing has been read past the proxy's answer, for
    `loop.create_connection(..., sock=sock, ssl=ctx, server_hostname=host)`."""
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=0.25, interleave=1, loop=loop
                )
            except OSError as exc:
                raise EgressError(f"cannot connect to proxy {proxy.label}: {_why(exc)}") from None
            try:
                await loop.sock_sendall(sock, _connect_request(proxy, host, port))
            except OSError as exc:
                failed = f"proxy {proxy.label} failed during CONNECT: {_why(exc)}"
                raise EgressError(failed) from None
            head = await _read_head(loop, sock, proxy)
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise EgressError(
            f"proxy {proxy.label} did not open a tunnel to {_authority(host, port)} "
            f"within {timeout:g} s"
        ) from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    try:
        _check_answer(head, proxy, host, port)
    except EgressError:
        sock.close()
        raise
    return sock


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _authority(host: str, port: int) -> str:
    # RFC 9110 9.3.6: CONNECT's target is authority-form, uri-host ":" port; IPv6 in brackets;
    # an internationalized name goes as its A-label (RFC 5890)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_request(proxy: ProxyTarget, host: str, port: int) -> bytes:
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    credentials = proxy.authorization()
    if credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def _read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: ProxyTarget
) -> bytes:
    """The answer's head, read byte-exact: a proxy sends nothing after a 2xx head until the
    client speaks (TLS's ClientHello comes first), so anything more is a broken proxy."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            raise EgressError(f"proxy {proxy.label} sent an answer head over {HEAD_LIMIT} bytes")
        try:
            chunk = await loop.sock_recv(sock, 4096)
        except OSError as exc:
            raise EgressError(f"proxy {proxy.label} failed during CONNECT: {_why(exc)}") from None
        if not chunk:
            raise EgressError(f"proxy {proxy.label} closed the connection during CONNECT")
        data += chunk
    return data


def _check_answer(data: bytes, proxy: ProxyTarget, host: str, port: int) -> None:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise EgressError(f"proxy {proxy.label} did not answer CONNECT with HTTP")
    status = int(match.group(1))
    reason = UNPRINTABLE.sub("?", (match.group(2) or b"").decode("latin-1"))[:60]
    answer = f"{status} {reason}".rstrip()  # the proxy's own words, printable and short
    target = _authority(host, port)
    if status == 407:
        what = "rejected the credentials" if proxy.username else "requires credentials"
        raise EgressError(f"proxy {proxy.label} {what} ({answer})")
    if not 200 <= status <= 299:
        raise EgressError(f"proxy {proxy.label} refused CONNECT to {target} ({answer})")
    if rest:
        raise EgressError(f"proxy {proxy.label} sent data before the tunnel to {target} was used")
