"""A small HTTP proxy of the project's own, for tests, the sandbox and bench/ (issue 14 item 5).

It speaks CONNECT (RFC 9110 9.3.6) and, for plain http:// URLs (how aiohttp sends a request for
an http:// URL through a proxy), absolute-form requests (RFC 9112 3.2.2), one per connection.
It records every target it was asked for, can demand Basic proxy credentials (407 otherwise),
and can be told to refuse (403), to fail (close the connection mid-handshake, or reset it), to
answer garbage, or to say nothing at all. Loopback only.

    python -m proxy.sandbox.connect_proxy --listen 127.0.0.1:3128 [--user U]
    # the password: $PROXY_PASSWORD
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["tunnel", "refuse", "fail", "reset", "garbage", "silent"]
_HEAD_LIMIT = 16 * 1024


@dataclass
class ConnectProxy:
    """Start with `await proxy.start()`, stop with `await proxy.stop()`; `targets` holds
    `host:port` per request, in order, including refused ones."""

    user: str | None = None
    password: str = ""
    mode: Mode = "tunnel"
    host: str = "127.0.0.1"
    port: int = 0
    targets: list[str] = field(default_factory=list)
    #: Proxy-Authorization values received (the tests check what keyhop sent)
    authorizations: list[str | None] = field(default_factory=list)
    #: CONNECT requests answered 200, i.e. tunnels opened
    tunnels: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.label}"

    async def start(self) -> ConnectProxy:
        assert self.host in ("127.0.0.1", "::1", "localhost"), "loopback only"
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        auth = next((v for n, v in headers if n.lower() == "proxy-authorization"), None)
        self.authorizations.append(auth)
        if method == "CONNECT":
            host, port = _split_authority(target)
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                await _answer(writer, 400, "Bad Request")
                return
            host, port = parts.hostname, parts.port or 80
        self.targets.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

        if self.mode == "fail":
            return  # mid-handshake: the connection closes without an answer
        if self.mode == "reset":
            sock = writer.get_extra_info("socket")
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN (socket(7))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if self.mode == "silent":
            await asyncio.sleep(3600)
        if self.mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await writer.drain()
            return
        if self.mode == "refuse":
            await _answer(writer, 403, "Forbidden")
            return
        if self.user is not None and auth != _basic(self.user, self.password):
            await _answer(
                writer, 407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="t"'
            )
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            await _answer(writer, 502, "Bad Gateway")
            return
        try:
            if method == "CONNECT":
                self.tunnels += 1
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            else:
                _send_head(method, target, headers, up_writer)
                await asyncio.gather(_pipe(reader, up_writer), _relay_answer(up_reader, writer))
        finally:
            up_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await up_writer.wait_closed()


def _split_authority(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _basic(user: str, password: str) -> str:
    # RFC 7617 2: base64(user-id ":" password), UTF-8
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str, extra: str = "") -> None:
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n"
    writer.write((head + (extra + "\r\n" if extra else "") + "\r\n").encode())
    await writer.drain()


def _send_head(
    method: str, target: str, headers: list[tuple[str, str]], up_writer: asyncio.StreamWriter
) -> None:
    """An absolute-form request goes on in origin-form, one per connection: both heads get
    `Connection: close`, so each side reads the answer until the close."""
    parts = urlsplit(target)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    drop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
    kept = [f"{n}: {v}" for n, v in headers if n.lower() not in drop]
    request = [f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]
    up_writer.write("\r\n".join(request).encode("latin-1"))


async def _relay_answer(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    answer = (await up_reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    out = [line for line in answer[:-2] if not line.lower().startswith("connection:")]
    writer.write("\r\n".join([*out, "Connection: close", "", ""]).encode("latin-1"))
    await _pipe(up_reader, writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:3128")
    parser.add_argument("--user", help="demand Basic credentials; password from $PROXY_PASSWORD")
    parser.add_argument("--mode", default="tunnel", choices=Mode.__args__)  # type: ignore[attr-defined]
    args = parser.parse_args()
    host, port = _split_authority(args.listen)
    proxy = ConnectProxy(args.user, os.environ.get("PROXY_PASSWORD", ""), args.mode, host, port)
    await proxy.start()
    print(f"connect proxy on {proxy.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


if __name__ == "__main__":
    try:  # as keyhop does: the proxy's own cost should not dominate a benchmark
        import uvloop

        uvloop.run(_main())
    except ImportError:
        asyncio.run(_main())
