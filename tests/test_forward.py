"""Forwarding over real sockets and real TLS (SPEC 4.1, 4.6)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from tests.conftest import MakeProxy, StartUpstream, raw_url
from tests.support import free_port

TOKEN = "tok-Fw7rD9-static"
CLIENT_KEY = "client-key-Qz3xV8"
Client = TestClient[web.Request, web.Application]


@dataclass
class Seen:
    method: str
    raw: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Recorder:
    """An upstream that records every request it gets and answers with `reply`."""

    seen: list[Seen] = field(default_factory=list)
    reply: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.seen.append(Seen(request.method, request.raw_path, request.headers, body))
            if self.reply is not None:
                return await self.reply(request)
            return web.json_response({"raw": request.raw_path, "body_bytes": len(body)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    @property
    def last(self) -> Seen:
        assert self.seen, "the upstream got no request"
        return self.seen[-1]


def static(ca_file: str, **extra: Any) -> dict[str, Any]:
    return {
        "auth": {"type": "static", "token": TOKEN},
        "headers": {"Authorization": "Bearer {token}"},
        "ca_file": ca_file,
        **extra,
    }


def one_route(
    base: str, provider: dict[str, Any], prefix: str = "/r", **top: Any
) -> dict[str, Any]:
    return {
        "providers": {"p": provider},
        "routes": [{"prefix": prefix, "upstream": base, "provider": "p"}],
        **top,
    }


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def routed(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> Client:
    """keyhop with /r and the root route / both going to the recording upstream."""
    base = await upstream(recorder.app())
    return await proxy(
        {
            "providers": {"p": static(ca_file)},
            "routes": [
                {"prefix": "/r", "upstream": base + "/base", "provider": "p"},
                {"prefix": "/", "upstream": base + "/root", "provider": "p"},
            ],
        }
    )


# --- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> RawResponse:
    """Send bytes no client library would send; read one response."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        if "Content-Length" in headers:
            body = await asyncio.wait_for(
                reader.readexactly(int(headers["Content-Length"])), timeout
            )
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return RawResponse(status, headers, body)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def request_bytes(line: str, *headers: str) -> bytes:
    return ("\r\n".join([line, *headers, "Connection: close", "", ""])).encode("latin-1")


# --- only configured upstreams ----------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line, headers",
    [
        ("GET http://evil.test/x HTTP/1.1", ["Host: evil.test"]),
        ("GET http://evil.test/r/x HTTP/1.1", ["Host: 127.0.0.1"]),
        ("GET https://evil.test:443/x HTTP/1.1", ["Host: evil.test"]),
        ("CONNECT evil.test:443 HTTP/1.1", ["Host: evil.test:443"]),
        ("CONNECT 127.0.0.1:443 HTTP/1.1", ["Host: 127.0.0.1:443"]),
        ("GET //evil.test/x HTTP/1.1", ["Host: 127.0.0.1"]),
        ("GET //evil.test/r/x HTTP/1.1", ["Host: 127.0.0.1"]),
        ("OPTIONS * HTTP/1.1", ["Host: 127.0.0.1"]),
    ],
    ids=[
        "absolute-form",
        "absolute-form-to-a-route-path",
        "absolute-form-https",
        "connect",
        "connect-loopback",
        "double-slash",
        "double-slash-to-a-route-path",
        "asterisk-form",
    ],
)
async def test_a_target_naming_another_host_gets_400_and_reaches_no_upstream(
    routed: Client, recorder: Recorder, request_line: str, headers: list[str]
) -> None:
    response = await raw_exchange(routed.port, request_bytes(request_line, *headers))
    assert response.status == 400, response
    assert recorder.seen == []


async def test_an_absolute_form_target_gets_a_bad_request_json_answer(routed: Client) -> None:
    response = await raw_exchange(
        routed.port, request_bytes("GET http://evil.test/x HTTP/1.1", "Host: evil.test")
    )
    assert response.status == 400
    assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.test"},
        {"X-Forwarded-Host": "evil.test"},
        {"Host": "evil.test", "X-Forwarded-Host": "evil.test", "Forwarded": "host=evil.test"},
    ],
    ids=["host", "x-forwarded-host", "both"],
)
async def test_the_upstream_gets_its_own_host_whatever_the_client_says(
    routed: Client, recorder: Recorder, headers: dict[str, str]
) -> None:
    resp = await routed.session.get(raw_url(routed, "/r/x"), headers=headers)
    assert resp.status == 200, await resp.text()
    assert len(recorder.seen) == 1
    seen = recorder.last
    assert seen.raw == "/base/x"
    assert seen.headers.getall("Host") == [f"127.0.0.1:{seen_port(routed)}"]


def seen_port(client: Client) -> int:
    """The upstream's port, read back from the route map the proxy was built with."""
    from proxy.runtime import KEYHOP

    (route, *_) = client.app[KEYHOP].runtime.config.routes
    return route.upstream.port


@pytest.mark.parametrize(
    "target",
    [
        "/r/../other/x",
        "/r/%2e%2e/x",
        "/r/%2E%2E/x",
        "/r/.%2E/x",
        "/r/..%2fx",
        "/r/%252e%252e/x",
        "/r/./x",
        "/r/..",
    ],
    ids=str,
)
async def test_a_dot_segment_gets_400_bad_request_json(
    routed: Client, recorder: Recorder, target: str
) -> None:
    response = await raw_exchange(
        routed.port, request_bytes(f"GET {target} HTTP/1.1", "Host: 127.0.0.1")
    )
    assert response.status == 400, response
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "bad_request"
    assert body["message"]
    assert recorder.seen == []


async def test_an_unknown_path_gets_404_no_route_json(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> None:
    client = await proxy(one_route(await upstream(recorder.app()), static(ca_file)))
    for target in ("/nothing/here", "/rx", "/"):
        resp = await client.session.get(raw_url(client, target))
        assert resp.status == 404, target
        body = await resp.json()
        assert body["error"] == "no_route"
        assert isinstance(body["message"], str) and body["message"]
    assert recorder.seen == []


async def test_the_path_and_query_reach_the_upstream_byte_for_byte(
    routed: Client, recorder: Recorder
) -> None:
    target = "/r/a%2Fb/c%20d;v=1/%E6%97%A5?x=%2F&y=a+b&&z=%zz&q=../.."
    resp = await routed.session.get(raw_url(routed, target))
    assert resp.status == 200, await resp.text()
    assert recorder.last.raw == "/base" + target.removeprefix("/r")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_the_method_and_body_reach_the_upstream(
    routed: Client, recorder: Recorder, method: str
) -> None:
    body = b"" if method in ("GET", "OPTIONS") else b'{"a": 1}' * 1000
    resp = await routed.session.request(method, raw_url(routed, "/r/x"), data=body or None)
    assert resp.status == 200, await resp.text()
    assert (recorder.last.method, recorder.last.body) == (method, body)


# --- headers ----------------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_dropped(routed: Client, recorder: Recorder) -> None:
    headers = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Foo"),
            ("X-Foo", "named-in-connection"),
            ("TE", "trailers"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ("Proxy-Connection", "keep-alive"),
            ("X-End", "end-to-end"),
        ]
    )
    resp = await routed.session.get(raw_url(routed, "/r/x"), headers=headers)
    assert resp.status == 200, await resp.text()
    seen = recorder.last.headers
    for name in ("X-Foo", "TE", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection"):
        assert name not in seen, name
    assert "x-foo" not in seen.get("Connection", "").lower()
    assert seen.getall("X-End") == ["end-to-end"]


async def test_an_upgrade_on_a_route_without_websocket_gets_400_and_is_not_passed_on(
    routed: Client, recorder: Recorder
) -> None:
    response = await raw_exchange(
        routed.port,
        (
            b"GET /r/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    assert response.status == 400
    assert response.json()["error"] == "bad_request"
    assert recorder.seen == []


async def raw_upstream(
    server_ssl: ssl.SSLContext, response: bytes, seen: list[bytes]
) -> tuple[asyncio.Server, str]:
    """A TLS upstream that answers every request with exactly `response`, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            writer.write(response)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl)
    port = server.sockets[0].getsockname()[1]
    return server, f"https://127.0.0.1:{port}"


async def test_hop_by_hop_response_headers_are_dropped(
    proxy: MakeProxy, server_ssl: ssl.SSLContext, ca_file: str
) -> None:
    body = b'{"ok": true}'
    seen: list[bytes] = []
    server, base = await raw_upstream(
        server_ssl,
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: X-Bar, close\r\n"
        b"X-Bar: named-in-connection\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Kept: yes\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        seen,
    )
    async with server:
        client = await proxy(one_route(base, static(ca_file)))
        resp = await client.session.get(raw_url(client, "/r/x"))
        assert resp.status == 200
        assert await resp.read() == body
        for name in ("X-Bar", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
            assert name not in resp.headers, name
        assert "x-bar" not in resp.headers.get("Connection", "").lower()
        assert resp.headers["X-Kept"] == "yes"
        assert len(seen) == 1


async def test_a_clients_connection_header_cannot_remove_what_keyhop_adds(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> None:
    provider = static(
        ca_file,
        headers={"Authorization": "Bearer {token}", "X-Spaaza-Session-Key": "keyhop-session"},
    )
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    resp = await client.session.get(
        raw_url(client, "/r/x"),
        headers={
            "Connection": "Authorization, X-Spaaza-Session-Key",
            "Authorization": "Bearer the-clients-own",
            "X-Spaaza-Session-Key": "the-clients-own",
        },
    )
    assert resp.status == 200, await resp.text()
    seen = recorder.last.headers
    assert seen.getall("Authorization") == [f"Bearer {TOKEN}"]
    assert seen.getall("X-Spaaza-Session-Key") == ["keyhop-session"]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ({"auth": {"type": "static", "token": TOKEN}, "headers": {"X-Api-Key": "{token}"}}, []),
        (
            {"auth": {"type": "static", "token": TOKEN}, "headers": {"Authorization": "T {token}"}},
            [f"T {TOKEN}"],
        ),
        ({"auth": {"type": "none"}}, ["Bearer the-apps-own"]),
        ({"preset": "spaaza_user"}, ["Bearer the-apps-own"]),
    ],
    ids=["static-without-authorization", "static-with-authorization", "none", "spaaza-user"],
)
async def test_the_clients_authorization_passes_only_for_auth_none(
    upstream: StartUpstream,
    proxy: MakeProxy,
    recorder: Recorder,
    ca_file: str,
    provider: dict[str, Any],
    expected: list[str],
) -> None:
    client = await proxy(
        one_route(await upstream(recorder.app()), {**provider, "ca_file": ca_file})
    )
    resp = await client.session.get(
        raw_url(client, "/r/x"), headers={"Authorization": "Bearer the-apps-own"}
    )
    assert resp.status == 200, await resp.text()
    assert recorder.last.headers.getall("Authorization", []) == expected


@pytest.mark.parametrize(
    "provider",
    [
        {"auth": {"type": "static", "token": TOKEN}, "headers": {"X-Api-Key": "{token}"}},
        {"auth": {"type": "none"}},
        {"preset": "spaaza_user"},
    ],
    ids=["static", "none", "spaaza-user"],
)
async def test_x_keyhop_headers_never_reach_the_upstream(
    upstream: StartUpstream,
    proxy: MakeProxy,
    recorder: Recorder,
    ca_file: str,
    provider: dict[str, Any],
) -> None:
    client = await proxy(
        one_route(await upstream(recorder.app()), {**provider, "ca_file": ca_file})
    )
    resp = await client.session.get(
        raw_url(client, "/r/x"),
        headers={
            "X-Keyhop-Key": "not-configured",
            "X-Keyhop-Tenant": "shop-1",
            "X-Keyhop-Debug": "1",
            "Connection": "X-Unrelated",
        },
    )
    assert resp.status == 200, await resp.text()
    names = [name.lower() for name in recorder.last.headers]
    assert not [name for name in names if name.startswith("x-keyhop-")], names


async def test_spaaza_user_session_headers_pass_untouched(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> None:
    provider = {
        "preset": "spaaza_user",
        "headers": {"X-Spaaza-MyPrice-App-Hostname": "shop.example.test"},
        "ca_file": ca_file,
    }
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    sent = {
        "X-Spaaza-Session-User-Id": "4711",
        "X-Spaaza-Session-Key": "c2Vzc2lvbi1rZXk=",
        "X-Spaaza-Session-Chain-Id": "9",
    }
    resp = await client.session.get(raw_url(client, "/r/x"), headers=sent)
    assert resp.status == 200, await resp.text()
    seen = recorder.last.headers
    for name, value in sent.items():
        assert seen.getall(name) == [value], name
    assert seen.getall("X-Spaaza-MyPrice-App-Hostname") == ["shop.example.test"]


async def test_spaaza_privileged_sends_the_bearer_pair_and_the_app_hostname(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> None:
    provider = {
        "preset": "spaaza_privileged",
        "auth": {"token": "TOKENID42:TOKENSECRET99"},
        "headers": {"X-Spaaza-MyPrice-App-Hostname": "shop.example.test"},
        "ca_file": ca_file,
    }
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    resp = await client.session.get(
        raw_url(client, "/r/x"), headers={"Authorization": "Bearer the-apps-own"}
    )
    assert resp.status == 200, await resp.text()
    seen = recorder.last.headers
    assert seen.getall("Authorization") == ["Bearer TOKENID42:TOKENSECRET99"]
    assert seen.getall("X-Spaaza-MyPrice-App-Hostname") == ["shop.example.test"]


async def test_spaaza_privileged_sends_no_app_hostname_when_none_is_configured(
    upstream: StartUpstream,
    proxy: MakeProxy,
    recorder: Recorder,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the shipped config writes ${SPAAZA_APP_HOSTNAME:-}: unset means "not configured"
    monkeypatch.delenv("SPAAZA_APP_HOSTNAME", raising=False)
    provider = {
        "preset": "spaaza_privileged",
        "auth": {"token": "TOKENID42:TOKENSECRET99"},
        "headers": {"X-Spaaza-MyPrice-App-Hostname": "${SPAAZA_APP_HOSTNAME:-}"},
        "ca_file": ca_file,
    }
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    resp = await client.session.get(raw_url(client, "/r/x"))
    assert resp.status == 200, await resp.text()
    assert "X-Spaaza-MyPrice-App-Hostname" not in recorder.last.headers


async def test_header_templates_fill_token_client_id_and_vars_and_null_removes_a_default(
    upstream: StartUpstream,
    proxy: MakeProxy,
    recorder: Recorder,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYHOP_TEST_FIID", "FIID0042")
    provider = {
        "preset": "spaaza_privileged",
        "auth": {"token": "TOKENID42:TOKENSECRET99", "client_id": "the-client"},
        "vars": {"fiid": "${KEYHOP_TEST_FIID}"},
        "headers": {
            "Authorization": None,
            "X-Api-Key": "{token}",
            "X-Client": "id={client_id}",
            "X-Fiid": "{fiid}",
            "X-Literal": "{{not a placeholder}}",
        },
        "ca_file": ca_file,
    }
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    resp = await client.session.get(raw_url(client, "/r/x"))
    assert resp.status == 200, await resp.text()
    seen = recorder.last.headers
    assert "Authorization" not in seen
    assert seen.getall("X-Api-Key") == ["TOKENID42:TOKENSECRET99"]
    assert seen.getall("X-Client") == ["id=the-client"]
    assert seen.getall("X-Fiid") == ["FIID0042"]
    assert seen.getall("X-Literal") == ["{not a placeholder}"]


# --- responses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["https://evil.test/", "/base/elsewhere", "//evil.test/x"], ids=str
)
async def test_a_redirect_is_returned_as_is_never_followed(
    routed: Client, recorder: Recorder, location: str
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location}, text="moved")

    recorder.reply = redirect
    resp = await routed.session.get(raw_url(routed, "/r/x"), allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == location
    assert await resp.text() == "moved"
    assert [s.raw for s in recorder.seen] == ["/base/x"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_gzip_body_arrives_byte_identical_and_still_encoded(
    routed: Client, recorder: Recorder, chunked: bool
) -> None:
    payload = gzip.compress(json.dumps({"n": list(range(5000))}).encode())

    async def gzipped(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
        if not chunked:
            response.content_length = len(payload)
        await response.prepare(request)
        for i in range(0, len(payload), 4096):
            await response.write(payload[i : i + 4096])
        await response.write_eof()
        return response

    recorder.reply = gzipped
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        resp = await session.get(
            raw_url(routed, "/r/x"), skip_auto_headers=["Accept-Encoding", "User-Agent"]
        )
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == payload
    assert "Accept-Encoding" not in recorder.last.headers


async def test_the_clients_accept_encoding_passes_as_sent(
    routed: Client, recorder: Recorder
) -> None:
    resp = await routed.session.get(raw_url(routed, "/r/x"), headers={"Accept-Encoding": "br"})
    assert resp.status == 200
    assert recorder.last.headers.getall("Accept-Encoding") == ["br"]


RATE_HEADERS = [
    ("X-Plan-QPS-Allotted", "20"),
    ("X-Plan-QPS-Current", "21"),
    ("X-Plan-Quota-Allotted", "5000"),
    ("X-Plan-Quota-Current", "4999"),
    ("X-Plan-Quota-Reset", "Monday, November 23, 2026 12:00:00 AM GMT"),
    ("X-RateLimit-Limit", "100"),
    ("X-RateLimit-Remaining", "0"),
    ("X-RateLimit-Reset", "1795000000"),
    ("Retry-After", "7"),
]


@pytest.mark.parametrize("status", [200, 429, 403], ids=str)
async def test_rate_limit_headers_come_back_untouched(
    routed: Client, recorder: Recorder, status: int
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers=CIMultiDict(RATE_HEADERS), text="slow down")

    recorder.reply = limited
    resp = await routed.session.get(raw_url(routed, "/r/x"))
    assert resp.status == status
    assert await resp.text() == "slow down"
    for name, value in RATE_HEADERS:
        assert resp.headers.getall(name) == [value], name


@pytest.mark.parametrize("status", [201, 204, 400, 404, 418, 500, 503], ids=str)
async def test_the_upstreams_status_and_body_are_kept(
    routed: Client, recorder: Recorder, status: int
) -> None:
    body = b"" if status == 204 else b'{"upstream": "said so"}'

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type="application/json")

    recorder.reply = answer
    resp = await routed.session.get(raw_url(routed, "/r/x"))
    assert resp.status == status
    assert await resp.read() == body


# --- upstream failures ------------------------------------------------------------------------


async def test_a_slow_upstream_gets_504_upstream_timeout(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(release.wait(), 5)
        except TimeoutError:
            pass
        return web.Response(text="too late")

    recorder.reply = slow
    base = await upstream(recorder.app())
    client = await proxy(one_route(base, static(ca_file, timeouts={"connect": 2, "read": 0.3})))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        resp = await asyncio.wait_for(client.session.get(raw_url(client, "/r/x")), 4)
        elapsed = loop.time() - started
        assert resp.status == 504
        body = await resp.json()
        assert body["error"] == "upstream_timeout"
        assert body["message"]
        assert elapsed < 2.5
    finally:
        release.set()


async def test_a_port_nobody_listens_on_gets_502_upstream_unreachable(
    proxy: MakeProxy, ca_file: str
) -> None:
    client = await proxy(one_route(f"https://127.0.0.1:{free_port()}", static(ca_file)))
    resp = await asyncio.wait_for(client.session.get(raw_url(client, "/r/x")), 10)
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "upstream_unreachable"
    assert body["message"]


async def test_an_upstream_certificate_from_another_ca_gets_502_and_no_request(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    other_ca_ssl: ssl.SSLContext,
    proxy: MakeProxy,
    recorder: Recorder,
    ca_file: str,
) -> None:
    server = await aiohttp_server(recorder.app(), ssl=other_ca_ssl)
    client = await proxy(one_route(f"https://127.0.0.1:{server.port}", static(ca_file)))
    resp = await asyncio.wait_for(client.session.get(raw_url(client, "/r/x")), 10)
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_unreachable"
    assert recorder.seen == []


async def test_without_ca_file_an_upstream_is_verified_against_the_system_store(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder
) -> None:
    provider = {"auth": {"type": "static", "token": TOKEN}, "headers": {"X-Api-Key": "{token}"}}
    client = await proxy(one_route(await upstream(recorder.app()), provider))
    resp = await asyncio.wait_for(client.session.get(raw_url(client, "/r/x")), 10)
    assert resp.status == 502
    assert recorder.seen == []


async def test_a_plain_http_route_works(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder
) -> None:
    base = await upstream(recorder.app(), tls=False)
    assert base.startswith("http://")
    provider = {"auth": {"type": "static", "token": TOKEN}, "headers": {"X-Api-Key": "{token}"}}
    client = await proxy(one_route(base + "/v2", provider))
    resp = await client.session.get(raw_url(client, "/r/x?y=1"))
    assert resp.status == 200, await resp.text()
    assert recorder.last.raw == "/v2/x?y=1"
    assert recorder.last.headers["X-Api-Key"] == TOKEN


# --- client keys and admin endpoints ----------------------------------------------------------


@pytest.fixture
async def keyed(
    upstream: StartUpstream, proxy: MakeProxy, recorder: Recorder, ca_file: str
) -> Client:
    config = one_route(
        await upstream(recorder.app()), static(ca_file), clients={"keys": [CLIENT_KEY]}
    )
    config["listen"] = "127.0.0.1:8080"
    return await proxy(config)


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Keyhop-Key": "wrong"}, {"X-Keyhop-Key": ""}, {"X-Keyhop-Key": CLIENT_KEY + "x"}],
    ids=["none", "wrong", "empty", "longer"],
)
async def test_client_keys_are_enforced_on_loopback(
    keyed: Client, recorder: Recorder, headers: dict[str, str]
) -> None:
    resp = await keyed.session.get(raw_url(keyed, "/r/x"), headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] == "client_key_required"
    assert body["message"]
    assert CLIENT_KEY not in json.dumps(body)
    assert recorder.seen == []


async def test_the_right_client_key_passes_and_never_reaches_the_upstream(
    keyed: Client, recorder: Recorder
) -> None:
    resp = await keyed.session.get(raw_url(keyed, "/r/x"), headers={"X-Keyhop-Key": CLIENT_KEY})
    assert resp.status == 200, await resp.text()
    seen = recorder.last
    assert "X-Keyhop-Key" not in seen.headers
    assert CLIENT_KEY not in repr(list(seen.headers.items())) + seen.raw


@pytest.mark.parametrize("path", ["/-/health", "/-/ready"])
async def test_health_and_ready_answer_200(routed: Client, path: str) -> None:
    resp = await routed.session.get(raw_url(routed, path))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_health_needs_no_client_key_so_a_container_healthcheck_works(keyed: Client) -> None:
    resp = await keyed.session.get(raw_url(keyed, "/-/health"))
    assert resp.status == 200


async def test_expect_100_continue_gets_exactly_one_interim_answer_and_the_body_arrives(
    upstream: StartUpstream, proxy: MakeProxy, echo_app: web.Application
) -> None:
    base = await upstream(echo_app, tls=False)
    client = await proxy(
        {
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /p/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 200"), status
    writer.close()
