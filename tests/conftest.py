"""Shared fixtures: real TLS (trustme), real upstream servers, keyhop apps and processes."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from yarl import URL

from proxy.app import create_app
from proxy.config import Config, parse_config
from proxy.forward import handle
from proxy.lane import Lane
from proxy.runtime import KEYHOP
from proxy.server import create_server
from proxy.store import MemoryStore, Store
from tests.redis_server import RedisServer
from tests.support import KeyhopProcess


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A TLS context for upstream fakes, valid for 127.0.0.1 and localhost under `ca`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def other_ca_ssl() -> ssl.SSLContext:
    """A TLS context whose certificate no configured CA trusts (a bad certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


StartUpstream = Callable[..., Awaitable[str]]


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]], server_ssl: ssl.SSLContext
) -> StartUpstream:
    """Serve an aiohttp app on 127.0.0.1 (TLS by default); returns its base URL."""

    async def start(app: web.Application, *, tls: bool = True, **kw: Any) -> str:
        server = await aiohttp_server(app, ssl=server_ssl if tls else None, **kw)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.port}"

    return start


def raw_url(client: TestClient[web.Request, web.Application], target: str) -> URL:
    """The proxy's URL for a raw target, sent byte for byte (yarl would requote it)."""
    return URL(f"http://127.0.0.1:{client.port}{target}", encoded=True)


def make_config(data: dict[str, Any], source: str = "test.yaml") -> Config:
    data = dict(data)
    data.setdefault("store", "memory:")
    return parse_config(data, source)


MakeProxy = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

#: how the `proxy` fixture serves keyhop: "serve" as `keyhop serve` does (its own low-level
#: server, the express lane on), "serve-no-express" (the lane off), or "app" (an aiohttp
#: Application, as an embedding program would)
SERVED_AS: Final = os.environ.get("KEYHOP_TEST_SERVED_AS", "serve")


class ServeTestServer(BaseTestServer):
    """keyhop's app on a real socket, served by `keyhop serve`'s own server (server.py's
    create_server, with the express lane unless `express=False`); the app's startup and
    cleanup run around it, as in serve()."""

    def __init__(self, app: web.Application, *, express: bool = True, **kw: Any) -> None:
        self.app = app
        self._express = express
        super().__init__(**kw)

    async def _make_runner(self, **kwargs: Any) -> web.ServerRunner:
        kh = self.app[KEYHOP]
        kh.answers_expect = True
        self.app.freeze()
        await self.app.startup()

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return await handle(kh, request)

        server = create_server(handler, express=Lane(kh) if self._express else None)
        return web.ServerRunner(server)

    async def close(self) -> None:
        started = self.started and not self.closed
        await super().close()
        if started:
            await self.app.shutdown()
            await self.app.cleanup()


@pytest.fixture
async def proxy(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> MakeProxy:
    """A keyhop app on a real socket, built from a config mapping; memory store unless given."""

    async def make(
        data: dict[str, Any] | Config, *, store: Store | None = None, **kw: Any
    ) -> TestClient[web.Request, web.Application]:
        config = data if isinstance(data, Config) else make_config(data)
        app = create_app(config, store=store or MemoryStore(), **kw)
        if SERVED_AS == "app":
            return await aiohttp_client(app, server_kwargs={"skip_url_asserts": True})
        return await aiohttp_client(
            ServeTestServer(app, express=SERVED_AS == "serve", skip_url_asserts=True)
        )

    return make


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., KeyhopProcess]]:
    """Start real keyhop processes; every one is stopped by PID at teardown."""
    started: list[KeyhopProcess] = []

    def start(config: Path, **kw: Any) -> KeyhopProcess:
        proc = KeyhopProcess(config, tmp_path, **kw)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        if proc.proc is not None:
            proc.stop(signal.SIGKILL)  # also closes the log of one that exited by itself


@pytest.fixture
def echo_app() -> web.Application:
    """An upstream that echoes what it received: method, raw target, headers, body size."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw": request.raw_path,
                "headers": list(request.headers.items()),
                "body_bytes": len(body),
            },
            headers={"X-RateLimit-Remaining": "41", "X-Plan-QPS-Allotted": "20"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server per test (stopped by PID)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
