"""Helpers for the express-lane tests (tests/test_lane*.py): keyhop served as `keyhop serve`
serves it, with the lane on or off from one config whatever KEYHOP_TEST_SERVED_AS says;
the lane's own counter read from /-/metrics; a token endpoint that counts its calls; raw
HTTP on the client's side that keeps the exact bytes of each answer's head."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.runtime import KEYHOP, Keyhop
from proxy.store import MemoryStore
from tests.conftest import ServeTestServer, make_config

Client = TestClient[web.Request, web.Application]
Serve = Callable[..., Awaitable[Client]]

CLIENT_SECRET = "csec-Lane-5ecret42"
TOKEN_PREFIX = "tok-Lane-Qx7"  # every issued token starts with it: grep logs for it


@dataclass
class TokenEndpoint:
    """An OAuth2 token endpoint (RFC 6749 4.4) that counts its calls; token n is
    f"{TOKEN_PREFIX}-{n}"."""

    calls: int = 0

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            await request.post()
            self.calls += 1
            return web.json_response(
                {
                    "access_token": f"{TOKEN_PREFIX}-{self.calls}",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                }
            )

        app = web.Application()
        app.router.add_post("/token", token)
        return app


def cc_provider(token_url: str, ca_file: str | None = None, **extra: Any) -> dict[str, Any]:
    """oauth2_client_credentials: a credential that is cold until fetched, refresh_on 401
    and throttle_on 429 by default."""
    provider: dict[str, Any] = {
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": token_url,
            "client_id": "lane-client",
            "client_secret": CLIENT_SECRET,
            "client_auth": "body",
        },
        "timeouts": {"connect": 2, "read": 5},
        **extra,
    }
    if ca_file is not None:
        provider["ca_file"] = ca_file
    return provider


def one_route(base: str, provider: dict[str, Any], prefix: str = "/r") -> dict[str, Any]:
    return {
        "providers": {"p": provider},
        "routes": [{"prefix": prefix, "upstream": base, "provider": "p"}],
    }


@pytest.fixture
async def serve(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Serve:
    """keyhop on a real socket, served by server.py's create_server; `express` says whether
    the lane is on (these tests are about the lane, so the environment does not choose)."""

    async def make(data: dict[str, Any], *, express: bool = True) -> Client:
        app = create_app(make_config(data), store=MemoryStore())
        return await aiohttp_client(ServeTestServer(app, express=express, skip_url_asserts=True))

    return make


def access_lines(client: Client) -> list[str]:
    """From now on, keyhop's access-log lines (JSON text) land in the returned list."""
    lines: list[str] = []
    keyhop(client).access_log = lines.append
    return lines


def keyhop(client: Client) -> Keyhop:
    """The running keyhop behind a test client."""
    app = client.app
    assert app is not None
    return app[KEYHOP]


def metric(text: str, sample: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample:
                return float(s.value)
    return 0.0


async def scrape(session: aiohttp.ClientSession | Client, base: str = "") -> str:
    async with session.get(base + "/-/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def lane_served(client: Client) -> int:
    """keyhop_express_requests_total: the requests the lane served whole."""
    return int(metric(await scrape(client), "keyhop_express_requests_total"))


async def in_flight(client: Client) -> int:
    return int(metric(await scrape(client), "keyhop_in_flight_requests"))


# --- raw HTTP on the client's side ------------------------------------------------------------


@dataclass
class Answer:
    """One answer as it came off the wire."""

    status_line: str
    fields: list[tuple[str, str]]  # in order, as sent
    body: bytes
    head: bytes = field(repr=False, default=b"")  # with any interim (1xx) heads before it

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def get(self, name: str) -> str | None:
        for key, value in self.fields:
            if key.lower() == name.lower():
                return value
        return None

    def names(self) -> list[str]:
        return [key.lower() for key, _ in self.fields]

    def without(self, *names: str) -> list[tuple[str, str]]:
        """The fields in order, with the values of `names` masked (Date changes each second)."""
        masked = {n.lower() for n in names}
        return [(k, "*" if k.lower() in masked else v) for k, v in self.fields]


async def read_answer(
    reader: asyncio.StreamReader, *, bodyless: bool = False, timeout: float = 10.0
) -> Answer:
    """The next answer on a connection (RFC 9112 6.3 framing: Content-Length, chunked, or
    the connection closing)."""
    async with asyncio.timeout(timeout):
        interim = b""
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head[9:10] == b"1" or head[9:12] == b"101":
                break
            interim += head  # RFC 9110 15.2: an interim answer, the final one follows
        first, *lines = head.decode("latin-1").split("\r\n")
        fields = []
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                fields.append((name, value.strip(" \t")))
        answer = Answer(first, fields, b"", interim + head)
        length = answer.get("Content-Length")
        if bodyless or answer.status in (204, 304):  # RFC 9112 6.3 items 1-2
            pass
        elif (answer.get("Transfer-Encoding") or "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
            answer.body = bytes(body)
        elif length is not None:
            answer.body = await reader.readexactly(int(length))
        else:
            answer.body = await reader.read()
        return answer


class Conn:
    """One keep-alive client connection to keyhop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, method: str, target: str, *headers: str, bodyless: bool = False) -> Answer:
        self.writer.write(request(method, target, *headers))
        await self.writer.drain()
        return await read_answer(self.reader, bodyless=bodyless or method == "HEAD")

    async def closed_by_peer(self, timeout: float) -> bool:
        """True when keyhop closes the connection within `timeout` (EOF, nothing more)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def request(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


OpenConn = Callable[[int | None], Awaitable[Conn]]


@pytest.fixture
async def connect() -> AsyncIterator[OpenConn]:
    opened: list[Conn] = []

    async def open_(port: int | None) -> Conn:
        assert port is not None, "keyhop is not listening"
        conn = Conn(*await asyncio.open_connection("127.0.0.1", port))
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()
