"""keyhop served as `keyhop serve` serves it (server.py's create_server), with the express
lane on or off, in front of raw-socket upstreams (tests/test_upstream.py's RawUpstream),
for tests/test_lane_hostile*.py.

The lane is observed, never changed: `Counting` is proxy/lane.py's Lane with a count of
the requests it took, so a test can show the request it attacks went the lane's way.
The credential is warm (an OAuth2 client-credentials token fetched once, then in memory),
as the lane needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from proxy.aiohttp_private import GuardedRequestHandler, RawRequestMessage
from proxy.app import create_app
from proxy.forward import handle
from proxy.lane import Lane
from proxy.runtime import KEYHOP, Keyhop
from proxy.server import HEAD_TIMEOUT, MAX_HEAD_BYTES, create_server
from proxy.store import MemoryStore
from tests.conftest import StartUpstream, make_config
from tests.test_upstream import RawClient, RawUpstream, Wire, parse_head, read_chunked

TOKEN = "tok-lane-7Hq2"  # the warm credential; never in an answer to the client


class Counting(Lane):
    """The express lane, counting the requests it took (it decides, this only counts)."""

    def __init__(self, kh: Keyhop) -> None:
        super().__init__(kh)
        self.taken = 0

    def __call__(self, protocol: GuardedRequestHandler, message: RawRequestMessage) -> bool:
        took = super().__call__(protocol, message)
        self.taken += took
        return took


@dataclass
class Served:
    """One keyhop in front of one raw upstream."""

    kh: Keyhop
    server: web.Server
    port: int
    lane: Counting | None
    up: RawUpstream
    lines: list[str] = field(default_factory=list)  # access log lines
    fetches: list[int] = field(default_factory=list)  # token requests
    #: every client connection a test opened, closed at teardown even when it failed
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return 0 if self.lane is None else self.lane.taken

    def busy(self) -> int:
        """Upstream connections keyhop's pool counts as in use."""
        return sum(origin.busy for origin in self.kh.upstreams._origins.values())

    def in_flight(self) -> int:
        """keyhop_in_flight_requests, as /-/metrics computes it."""
        metrics = self.kh.metrics
        return len(metrics.in_flight) + metrics.express_in_flight

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    async def client(self) -> RawClient:
        client = await RawClient.open(self.port)
        self.writers.append(client.writer)
        return client

    async def connect(
        self, sock: socket.socket | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection to keyhop (over `sock` when given, already connected)."""
        if sock is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
        self.writers.append(writer)
        return reader, writer

    async def warm(self, headers: str = "") -> None:
        """One request through the pipeline: the token is fetched and kept in memory and an
        upstream connection is left idle in the pool, so the lane can take what follows."""
        conn = await self.client()
        try:
            await conn.send(f"GET /r/warm HTTP/1.1\r\nHost: keyhop\r\n{headers}\r\n".encode())
            status, _, _ = await conn.response()
            assert status.startswith("HTTP/1.1 200"), status
        finally:
            await conn.close()
        assert self.kh.manager.in_memory(self.kh.runtime.config.providers["p"], None)


def config(
    up_base: str, token_base: str, ca_file: str, top: dict[str, Any], **provider: Any
) -> dict[str, Any]:
    return {
        **top,
        "providers": {
            "p": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{token_base}/token",
                    "client_id": "c",
                    "client_secret": "s-lane-secret",
                },
                "ca_file": ca_file,
                "timeouts": {"connect": 2, "read": 1},
                **provider,
            }
        },
        "routes": [{"prefix": "/r", "upstream": up_base, "provider": "p"}],
    }


def token_app(fetches: list[int]) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        fetches.append(1)
        return web.json_response(
            {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}
        )

    app = web.Application()
    app.router.add_post("/token", token)
    return app


class Keyhops:
    """Starts keyhops (`start`) and stops all of them (`close`)."""

    def __init__(self, token_base: str, fetches: list[int], ca_file: str) -> None:
        self.token_base = token_base
        self.fetches = fetches
        self.ca_file = ca_file
        self._stops: list[Any] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(
        self,
        up: RawUpstream,
        *,
        express: bool,
        head_timeout: float = HEAD_TIMEOUT,
        max_head: int = MAX_HEAD_BYTES,
        top: dict[str, Any] | None = None,
        **provider: Any,
    ) -> Served:
        """`top`: top-level config keys (client `timeouts`); `provider`: the provider's."""
        data = config(up.base, self.token_base, self.ca_file, top or {}, **provider)
        app = create_app(make_config(data), store=MemoryStore())
        kh = app[KEYHOP]
        kh.answers_expect = True  # as serve() does
        app.freeze()
        await app.startup()

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return await handle(kh, request)

        lane = Counting(kh) if express else None
        server = create_server(handler, express=lane, head_timeout=head_timeout, max_head=max_head)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()

        async def stop() -> None:
            await runner.cleanup()
            await app.shutdown()
            await app.cleanup()

        self._stops.append(stop)
        served = Served(
            kh,
            server,
            runner.addresses[0][1],
            lane,
            up,
            fetches=self.fetches,
            writers=self._writers,
        )
        kh.access_log = served.lines.append
        return served

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        for stop in reversed(self._stops):
            await stop()


@pytest.fixture
async def keyhops(upstream: StartUpstream, ca_file: str) -> AsyncIterator[Keyhops]:
    """keyhops.start(raw upstream, express=...) in front of a token endpoint; all stopped."""
    fetches: list[int] = []
    started = Keyhops(await upstream(token_app(fetches)), fetches, ca_file)
    yield started
    await started.close()


@pytest.fixture(params=[True, False], ids=["lane", "no-lane"])
def express(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def echo_path(wire: Wire) -> bytes:
    """An answer whose body is the path asked for: answers in the wrong order show."""
    path = wire.path.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


def get(path: str) -> bytes:
    return f"GET /r{path} HTTP/1.1\r\nHost: keyhop\r\n\r\n".encode()


def took_them(served: Served, express: bool, at_least: int) -> None:
    if express:
        assert served.taken >= at_least, served.taken
    else:
        assert served.taken == 0


@dataclass(frozen=True)
class Seen:
    """One answer as a raw client saw it: Date left out (its value is the one thing the
    lane may change), `whole` False when the connection ended inside the body."""

    status: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    whole: bool


async def seen(conn: RawClient, timeout: float = 5.0) -> Seen | None:
    """The next answer on `conn`; None when the connection ended before a head."""
    reader = conn.reader
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        status, headers = parse_head(head)
        kept = tuple((k, v) for k, v in headers.items() if k.lower() != "date")
        try:
            if headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = await read_chunked(reader)
            else:
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        except asyncio.IncompleteReadError as exc:
            return Seen(status, kept, exc.partial, False)
        except ConnectionError:
            return Seen(status, kept, b"", False)
    return Seen(status, kept, body, True)


async def next_answer(
    reader: asyncio.StreamReader, timeout: float = 5.0
) -> tuple[int, bytes, bytes]:
    """Status, head and body of the next Content-Length framed answer; what was read past it
    stays in `reader` for the next call (pipelined answers may share one segment)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        _, headers = parse_head(head)
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return int(head.split(b" ", 2)[1]), head, body


def access_fields(line: dict[str, Any]) -> dict[str, Any]:
    """An access line without its timings (the one difference the lane may make)."""
    kept = {k: v for k, v in line.items() if k not in ("ts", "duration_ms", "upstream_ms")}
    kept["upstream_ms"] = line.get("upstream_ms") is not None
    return kept


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log records with a traceback, or that speak of an internal error."""
    return [
        r.getMessage()
        for r in records
        if r.exc_info is not None or "internal_error" in r.getMessage()
    ]
