"""What the fuzz tests share: a private event loop per test (hypothesis examples are plain
functions), a real keyhop app on a loopback socket, a scripted raw-socket upstream, and a raw
client that reads keyhop's answer with h11 plus the strict checks h11 leaves out.

Nothing here is keyhop's code: the oracles are RFC 9112 / RFC 9110 and h11.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import h11
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import Config
from proxy.runtime import KEYHOP
from proxy.store import MemoryStore
from tests.conftest import make_config

T = TypeVar("T")
LONG: Final = os.environ.get("KEYHOP_FUZZ", "") == "long"
OK: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def examples(ci: int) -> int:
    """An example count: `ci` under `make test`, 25 times that under `make fuzz`."""
    return ci * 25 if LONG else ci


class Loop:
    """One event loop for a whole hypothesis test: keyhop and the fakes start once, each
    example runs its coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro

        return self.loop.run_until_complete(bounded())

    def close(self) -> None:
        loop = self.loop
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Errors(logging.Handler):
    """ERROR records from keyhop and aiohttp: an unexpected exception is logged there even
    when the client saw something that looks fine (aiohttp answers 500 on its own)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._loggers = [logging.getLogger(n) for n in ("keyhop", "aiohttp")]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Errors:
        for lg in self._loggers:
            lg.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg in self._loggers:
            lg.removeHandler(self)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" for r in self.records if r.exc_info]
        out += [f"{r.name}: {r.getMessage()}" for r in self.records if not r.exc_info]
        self.records.clear()
        return out


class Keyhop:
    """keyhop's app (create_app, memory store) served on a real 127.0.0.1 socket."""

    def __init__(self, config: dict[str, Any] | Config) -> None:
        config = config if isinstance(config, Config) else make_config(config)
        self.app = create_app(config, store=MemoryStore())
        self.lines: list[str] = []
        self.app[KEYHOP].access_log = self.lines.append
        self.server = TestServer(self.app, host="127.0.0.1", skip_url_asserts=True)

    async def start(self) -> Keyhop:
        await self.server.start_server()
        return self

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    async def close(self) -> None:
        await self.server.close()


# --- the upstream ------------------------------------------------------------------------------


@dataclass
class Script:
    """What the upstream does for one request: write `parts` a moment apart, then `ending`:
    close the connection, keep serving on it, or stall (hold it open, silent)."""

    parts: tuple[bytes, ...]
    ending: str = "close"  # close | keep | stall
    pause: float = 0.01  # between parts


@dataclass
class Upstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1. A request whose last path segment names a script
    gets that script (each time: keyhop may send a GET again when a reused connection was
    closed unanswered); anything else gets a keep-alive `200 ok`. Every request head is
    recorded as it arrived."""

    scripts: dict[str, Script] = field(default_factory=dict)
    heads: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                self.heads.append(head)
                target = head.split(b" ", 2)[1].decode("latin-1")
                script = self.scripts.get(target.partition("?")[0].rsplit("/", 1)[-1])
                if script is None:
                    writer.write(OK)
                    await writer.drain()
                    continue
                for i, part in enumerate(script.parts):
                    if i:
                        await asyncio.sleep(script.pause)
                    writer.write(part)
                    await writer.drain()
                if script.ending == "close":
                    return
                if script.ending == "stall":
                    async with asyncio.timeout(10):  # until keyhop gives up on it
                        while await reader.read(65536):
                            pass
                    return
        except (OSError, TimeoutError):
            return
        finally:
            writer.close()
            self._tasks.discard(task)


# --- the client --------------------------------------------------------------------------------


@dataclass
class Answer:
    """What a client got back for one request, as h11 read it."""

    status: int | None = None
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False  # h11 saw the end of the message
    invalid: str | None = None  # h11's or our strict check's complaint, before any EOF
    raw: bytes = b""

    @property
    def cut(self) -> bool:
        """The connection ended without a whole answer (a cut passed on)."""
        return not self.complete and self.invalid is None

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] [1-5][0-9]{2} [\t\x20-\x7e\x80-\xff]*")
_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def head_problems(head: bytes) -> list[str]:
    """RFC 9112 rules for a response head that h11 does not enforce: no control character in
    the status line or a value (h11 lets \\x01-\\x08 through), no obs-fold (5.2: a proxy
    must not send it), one Content-Length, not both Content-Length and Transfer-Encoding
    (6.1), a Content-Length of digits only (RFC 9110 8.6)."""
    lines = head.split(b"\r\n")
    problems = []
    if not _STATUS_LINE.fullmatch(lines[0]):
        problems.append(f"status line {lines[0]!r}")
    lengths = []
    has_te = False
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            problems.append(f"header line {line!r}")
            continue
        if not _VALUE.fullmatch(value):
            problems.append(f"header value {line!r}")
        if name.lower() == b"content-length":
            lengths.append(value.strip())
        has_te |= name.lower() == b"transfer-encoding"
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        problems.append(f"Content-Length {lengths!r}")
    if lengths and has_te:
        problems.append("both Content-Length and Transfer-Encoding")
    return problems


def request_bytes(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: keyhop\r\n"
        + b"".join(n + b": " + v + b"\r\n" for n, v in headers or [])
        + b"\r\n"
    )


async def exchange(port: int, request: bytes, timeout: float) -> Answer:
    """Send one raw GET and read one answer with h11, until its end, the connection's end or
    `timeout` (which fails the test: keyhop must never leave a client hanging)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    # h11 must know a GET went out; its own serialization of it is not sent
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "keyhop")]))
    conn.send(h11.EndOfMessage())
    answer = Answer()
    eof = False
    interim = 0
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if not eof:
                        answer.invalid = f"h11: {exc}"
                    break
                if event is h11.NEED_DATA:
                    data = b""
                    try:
                        data = await reader.read(65536)
                    except ConnectionError:
                        pass
                    eof = not data
                    answer.raw += data
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    answer.status, answer.reason = event.status_code, event.reason
                    answer.headers = list(event.headers.raw_items())
                    problems = head_problems(answer.raw.split(b"\r\n\r\n")[interim])
                    if problems:
                        answer.invalid = "; ".join(problems)
                        break
                elif isinstance(event, h11.InformationalResponse):
                    interim += 1
                elif isinstance(event, h11.Data):
                    answer.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    answer.complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    return answer
