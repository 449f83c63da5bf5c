"""proxy/egress.py: which proxy a connection takes (curl's rules, with curl itself as the
oracle), and the CONNECT tunnel through tests/connect_proxy.py to a real TLS upstream."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from proxy.egress import (
    DIRECT,
    EgressError,
    EgressSettings,
    NoProxy,
    ProxyTarget,
    SessionProxy,
    open_tunnel,
    proxy_for,
    read_egress,
    session_proxy,
)
from proxy.sandbox.connect_proxy import ConnectProxy, Mode
from proxy.schema import Node, Problems, Secret
from tests.conftest import StartUpstream
from tests.support import free_port

PROXY_PASSWORD = "pr0xy-pa55word"

StartProxy = Callable[..., Awaitable[ConnectProxy]]


@pytest.fixture
async def connect_proxy() -> AsyncIterator[StartProxy]:
    started: list[ConnectProxy] = []

    async def start(mode: Mode = "tunnel", **kw: Any) -> ConnectProxy:
        proxy = await ConnectProxy(mode=mode, **kw).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
def client_tls(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


@pytest.fixture
async def tls_upstream(upstream: StartUpstream) -> int:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    base = await upstream(app)
    return int(base.rsplit(":", 1)[1])


class Accepts:
    """A TCP listener that only counts connections: proof that nothing went direct."""

    def __init__(self) -> None:
        self.count = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def accepted(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.count += 1
            w.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def direct() -> AsyncIterator[Accepts]:
    accepts = Accepts()
    yield accepts
    if accepts.server is not None:
        accepts.server.close()
        await accepts.server.wait_closed()


def target_of(proxy: ConnectProxy, *, user: str | None = None, password: str | None = None):  # type: ignore[no-untyped-def]
    return ProxyTarget(proxy.host, proxy.port, user, Secret(password) if password else None)


async def get_through(sock: Any, host: str, context: ssl.SSLContext, path: str = "/x") -> bytes:
    """One request over the tunnel with aiohttp's response protocol, as proxy/upstream.py
    drives it: create_connection(sock=..., ssl=..., server_hostname=...)."""
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(
        lambda: ResponseHandler(loop), sock=sock, ssl=context, server_hostname=host
    )
    try:
        conn.set_response_params(read_until_eof=True)
        transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        message, payload = await conn.read()
        assert message.code == 200
        return await payload.read()
    finally:
        transport.close()


# --- the tunnel ----------------------------------------------------------------------------


async def test_tls_through_the_tunnel_is_verified_end_to_end_and_the_proxy_records_the_target(
    connect_proxy: StartProxy, tls_upstream: int, client_tls: ssl.SSLContext
) -> None:
    proxy = await connect_proxy()
    sock = await open_tunnel(target_of(proxy), "localhost", tls_upstream, timeout=5)
    assert not sock.getblocking()
    assert await get_through(sock, "localhost", client_tls) == b"hello /x"
    assert proxy.targets == [f"localhost:{tls_upstream}"]
    assert proxy.tunnels == 1


async def test_keep_alive_requests_on_a_tunnelled_connection_cost_one_connect(
    connect_proxy: StartProxy, tls_upstream: int, client_tls: ssl.SSLContext
) -> None:
    proxy = await connect_proxy()
    sock = await open_tunnel(target_of(proxy), "localhost", tls_upstream, timeout=5)
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(
        lambda: ResponseHandler(loop), sock=sock, ssl=client_tls, server_hostname="localhost"
    )
    try:
        for i in range(5):
            conn.set_response_params(read_until_eof=False)
            transport.write(f"GET /{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            message, payload = await conn.read()
            assert (message.code, await payload.read()) == (200, f"hello /{i}".encode())
            assert not message.should_close
    finally:
        transport.close()
    assert proxy.targets == [f"localhost:{tls_upstream}"]
    assert proxy.tunnels == 1


async def test_a_partner_certificate_from_another_ca_fails_through_the_tunnel(
    connect_proxy: StartProxy,
    aiohttp_server: Callable[..., Awaitable[Any]],
    other_ca_ssl: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    server = await aiohttp_server(web.Application(), ssl=other_ca_ssl)
    proxy = await connect_proxy()
    sock = await open_tunnel(target_of(proxy), "127.0.0.1", server.port, timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        await get_through(sock, "127.0.0.1", client_tls)
    sock.close()
    assert proxy.targets == [f"127.0.0.1:{server.port}"]


async def test_basic_proxy_credentials_are_sent_and_accepted(
    connect_proxy: StartProxy, tls_upstream: int, client_tls: ssl.SSLContext
) -> None:
    proxy = await connect_proxy(user="corp", password=PROXY_PASSWORD)
    target = target_of(proxy, user="corp", password=PROXY_PASSWORD)
    sock = await open_tunnel(target, "127.0.0.1", tls_upstream, timeout=5)
    assert await get_through(sock, "127.0.0.1", client_tls) == b"hello /x"
    # the header's value as an independent encoder (aiohttp's, RFC 7617) writes it
    assert proxy.authorizations == [aiohttp.encode_basic_auth("corp", PROXY_PASSWORD)]


@pytest.mark.parametrize(
    "user, password, expected",
    [
        (None, None, "requires credentials (407 Proxy Authentication Required)"),
        ("corp", "not-the-password", "rejected the credentials (407"),
    ],
    ids=["no credentials", "wrong credentials"],
)
async def test_a_proxy_demanding_credentials_raises_egress_error_naming_it(
    connect_proxy: StartProxy,
    direct: Accepts,
    user: str | None,
    password: str | None,
    expected: str,
) -> None:
    port = await direct.start()
    proxy = await connect_proxy(user="corp", password=PROXY_PASSWORD)
    with pytest.raises(EgressError) as caught:
        await open_tunnel(
            target_of(proxy, user=user, password=password), "127.0.0.1", port, timeout=5
        )
    assert str(caught.value).startswith(f"proxy {proxy.label} {expected}")
    assert password is None or password not in str(caught.value)
    assert direct.count == 0


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("refuse", "refused CONNECT to 127.0.0.1:{port} (403 Forbidden)"),
        ("fail", "closed the connection during CONNECT"),
        ("reset", "failed during CONNECT: Connection reset by peer"),
        ("garbage", "did not answer CONNECT with HTTP"),
        ("silent", "did not open a tunnel to 127.0.0.1:{port} within 0.3 s"),
    ],
    ids=["refusal", "closed mid-handshake", "reset mid-handshake", "not HTTP", "no answer"],
)
async def test_a_proxy_that_refuses_or_fails_raises_egress_error_and_nothing_goes_direct(
    connect_proxy: StartProxy, direct: Accepts, mode: Mode, expected: str
) -> None:
    port = await direct.start()
    proxy = await connect_proxy(mode)
    with pytest.raises(EgressError) as caught:
        await open_tunnel(target_of(proxy), "127.0.0.1", port, timeout=0.3)
    assert str(caught.value) == f"proxy {proxy.label} {expected.format(port=port)}"
    assert proxy.targets == [f"127.0.0.1:{port}"]
    assert direct.count == 0


async def test_a_proxy_that_is_not_listening_raises_egress_error(direct: Accepts) -> None:
    port = await direct.start()
    dead = ProxyTarget("127.0.0.1", free_port())
    with pytest.raises(EgressError, match=rf"^cannot connect to proxy {dead.label}: "):
        await open_tunnel(dead, "127.0.0.1", port, timeout=2)
    assert direct.count == 0


async def _fake_proxy(answer: bytes) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "answer, expected",
    [
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000, "sent an answer head over 16384"),
        (b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0", "sent data before the tunnel to 127.0.0.1:9 was used"),
        (
            b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n",
            "refused CONNECT to 127.0.0.1:9 (302 Found)",
        ),
        (b"HTTP/1.1 407\r\n\r\n", "requires credentials (407)"),
        (b"HTTP/1.1 403 \x1b[31mno\r\n\r\n", "refused CONNECT to 127.0.0.1:9 (403 ?[31mno)"),
    ],
    ids=["an endless head", "bytes after the 200", "a redirect", "no reason", "control chars"],
)
async def test_answers_that_are_not_an_open_tunnel_are_egress_errors(
    answer: bytes, expected: str
) -> None:
    server = await _fake_proxy(answer)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(EgressError) as caught:
            await open_tunnel(ProxyTarget("127.0.0.1", port), "127.0.0.1", 9, timeout=2)
        assert str(caught.value).startswith(f"proxy 127.0.0.1:{port} {expected}")
    finally:
        server.close()
        await server.wait_closed()


async def test_the_connect_request_names_the_target_in_authority_form() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.0 200 Connection established\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = ProxyTarget("127.0.0.1", port, "u", Secret("p"))
        (await open_tunnel(target, "2001:db8::1", 443, timeout=2)).close()
        (await open_tunnel(target, "bücher.example", 443, timeout=2)).close()
    finally:
        server.close()
        await server.wait_closed()
    # RFC 9110 9.3.6 authority-form, IPv6 in brackets (RFC 3986 3.2.2), IDNA A-label
    assert seen == [
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n",
        b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\nHost: xn--bcher-kva.example:443\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n\r\n",
    ]


# --- token endpoints through aiohttp's ClientSession -------------------------------------------


async def test_a_token_request_goes_through_the_proxy_with_session_proxy(
    connect_proxy: StartProxy, upstream: StartUpstream, client_tls: ssl.SSLContext
) -> None:
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"access_token": f"tok-{form['grant_type']}", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    base = await upstream(app)
    plain = await upstream(app, tls=False)
    proxy = await connect_proxy(user="corp", password=PROXY_PASSWORD)
    settings = EgressSettings("url", *(target_of(proxy, user="corp", password=PROXY_PASSWORD),) * 2)
    async with aiohttp.ClientSession() as session:
        for url in (base, plain):
            via = session_proxy(settings, url.split(":")[0], "127.0.0.1")
            assert via.url == proxy.url and PROXY_PASSWORD not in via.url
            async with session.post(
                url + "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Accept": "application/json", **via.request_headers},
                proxy=via.url,
                proxy_headers=via.headers,
                ssl=client_tls,
            ) as resp:
                assert (await resp.json())["access_token"] == "tok-client_credentials"
    # the https one was tunnelled (CONNECT), the http one forwarded in absolute form
    assert proxy.targets == [base.split("//")[1], plain.split("//")[1]]
    assert proxy.tunnels == 1
    assert proxy.authorizations == [aiohttp.encode_basic_auth("corp", PROXY_PASSWORD)] * 2


async def test_session_proxy_is_empty_for_a_direct_connection() -> None:
    via = session_proxy(DIRECT, "https", "auth.example")
    assert via == SessionProxy()
    assert via.failure(aiohttp.ClientConnectionError()) is None


@pytest.mark.parametrize(
    "mode, user, expected",
    [
        ("refuse", None, "proxy {label} refused CONNECT (403 Forbidden)"),
        (
            "tunnel",
            "corp",
            "proxy {label} refused the credentials (407 Proxy Authentication Required)",
        ),
        ("reset", None, "the connection through proxy {label} failed (ClientOSError)"),
        ("dead", None, "cannot connect to proxy {label}"),
    ],
)
async def test_a_token_request_through_a_failing_proxy_is_described_naming_it(
    connect_proxy: StartProxy, direct: Accepts, mode: str, user: str | None, expected: str
) -> None:
    port = await direct.start()
    if mode == "dead":
        target = ProxyTarget("127.0.0.1", free_port())
    else:
        proxy = await connect_proxy(mode, user=user, password=PROXY_PASSWORD)
        target = target_of(proxy)
    via = session_proxy(EgressSettings("url", target, target), "https", "127.0.0.1")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.post(
                f"https://127.0.0.1:{port}/token", proxy=via.url, proxy_headers=via.headers
            )
    assert via.failure(caught.value) == expected.format(label=target.label)
    assert direct.count == 0


# --- reading egress_proxy ------------------------------------------------------------------


def read(raw: dict[str, Any], env: dict[str, str] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    problems = Problems("test.yaml")
    node = Node(raw, "providers.bank", problems)
    settings = read_egress(node, environ=env or {}, **kw)
    node.finish()
    return settings, problems.items


def test_egress_is_direct_by_default_and_with_none() -> None:
    assert read({}) == (DIRECT, [])
    top = EgressSettings("url", ProxyTarget("p", 1), ProxyTarget("p", 1))
    assert read({}, inherit=top) == (top, [])  # a provider without the key inherits
    assert read({"egress_proxy": "none"}, inherit=top) == (DIRECT, [])  # and `none` overrides


def test_a_proxy_url_with_credentials_keeps_the_password_out_of_the_repr() -> None:
    settings, problems = read({"egress_proxy": f"http://corp%40x:{PROXY_PASSWORD}@proxy.corp:3128"})
    assert problems == []
    target = proxy_for(settings, "https", "api.partner.example")
    assert target is not None
    assert (target.host, target.port, target.username) == ("proxy.corp", 3128, "corp@x")
    assert target.password == Secret(PROXY_PASSWORD)
    assert PROXY_PASSWORD not in repr(settings) and "corp@x" not in repr(settings)
    assert settings.secrets() == {PROXY_PASSWORD}
    assert proxy_for(settings, "http", "api.partner.example") == target


@pytest.mark.parametrize(
    "value, expected",
    [
        ("proxy.corp:3128", "expected none, env or http://[user:pass@]host:port"),
        (f"socks5://u:{PROXY_PASSWORD}@proxy.corp:1080", "a socks5:// proxy is not supported"),
        (f"https://u:{PROXY_PASSWORD}@proxy.corp:443", "a https:// proxy is not supported"),
        (f"http://u:{PROXY_PASSWORD}@proxy.corp", "the proxy URL for proxy.corp needs a port"),
        (f"http://u:{PROXY_PASSWORD}@proxy.corp:99999", "not a valid proxy URL"),
        (
            f"http://u:{PROXY_PASSWORD}@proxy.corp:3128/x",
            "a proxy URL is http://[user:pass@]host:port, without a path",
        ),
        ("http://:3128", "the proxy URL names no host"),
    ],
)
def test_bad_proxy_urls_are_config_errors_that_never_quote_the_password(
    value: str, expected: str
) -> None:
    settings, problems = read({"egress_proxy": value})
    assert settings == DIRECT
    assert len(problems) == 1
    assert problems[0].startswith(f"test.yaml: providers.bank.egress_proxy: {expected}")
    assert PROXY_PASSWORD not in problems[0]


def test_a_bad_proxy_variable_is_a_config_error_naming_the_variable() -> None:
    _, problems = read(
        {"egress_proxy": "env"}, {"HTTPS_PROXY": f"socks5h://u:{PROXY_PASSWORD}@s:1"}
    )
    assert problems == [
        "test.yaml: providers.bank.egress_proxy: env: HTTPS_PROXY: a socks5h:// proxy is not "
        "supported; expected http://[user:pass@]host:port (an HTTP proxy that speaks CONNECT)"
    ]


def test_a_bad_all_proxy_is_reported_once() -> None:
    _, problems = read({"egress_proxy": "env"}, {"ALL_PROXY": "ftp://proxy.corp:21"})
    assert len(problems) == 1 and "env: ALL_PROXY: a ftp:// proxy is not supported" in problems[0]


def test_a_proxy_variable_without_scheme_or_port_is_read_as_curl_does() -> None:
    # curl: no scheme means http://, no port means 1080 (CURLOPT_PROXYPORT's default)
    settings, _ = read({"egress_proxy": "env"}, {"https_proxy": "proxy.corp"})
    assert proxy_for(settings, "https", "x.example") == ProxyTarget("proxy.corp", 1080)


# --- curl's rules, checked against curl ----------------------------------------------------

CURL = shutil.which("curl")


async def curl_used_proxy(
    env: dict[str, str], url: str, resolve: str | None, proxies: list[ConnectProxy]
) -> str | None:
    """Which of `proxies` curl itself asked for `url` under `env` (None: it went direct)."""
    assert CURL is not None
    for proxy in proxies:
        proxy.targets.clear()
    args = [CURL, "-q", "-s", "-o", os.devnull, "--max-time", "3", "--connect-timeout", "1"]
    if resolve:
        args += ["--resolve", resolve]
    proc = await asyncio.create_subprocess_exec(
        *args, url, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    )
    await proc.wait()
    used = [p.label for p in proxies if p.targets]
    assert len(used) <= 1
    return used[0] if used else None


NO_PROXY_CASES = [
    # (NO_PROXY, host, goes direct) - curl's CURLOPT_NOPROXY docs and lib/noproxy.c
    ("*", "www.example.com", True),  # "a single * character, which matches all hosts"
    ("example.com", "example.com", True),  # the hostname itself
    ("example.com", "www.example.com", True),  # "a domain which contains the hostname"
    ("example.com", "nonexample.com", False),  # a suffix only on a label boundary
    ("ample.com", "ample.com.org", False),  # curl docs' own example
    (".example.com", "www.example.com", True),  # a leading dot: the domain (everything.curl.dev)
    (".example.com", "example.com", True),  # noproxy.c drops the token's leading dot
    ("EXAMPLE.com", "www.Example.COM", True),  # case-insensitive
    ("example.com.", "www.example.com", True),  # a trailing dot on the entry is ignored
    ("*.example.com", "www.example.com", False),  # no globbing: only a lone * is a wildcard
    ("localhost,*", "www.example.com", False),  # ... and only when it is the whole value
    ("foo.test,,  example.com ,", "www.example.com", True),  # blanks and empty entries
    ("127.0.0.1", "127.0.0.1", True),  # IP literals
    ("127.0.0.1", "127.0.0.2", False),
    ("127.0.0.0/8", "127.9.9.9", True),  # CIDR (curl 7.86)
    ("localhost", "127.0.0.1", False),  # names never match an IP host
    ("127.0.0.1", "localhost", False),  # nor addresses a named one
    ("::1", "[::1]", True),  # IPv6 written without brackets
    ("fd00::/8", "[::1]", False),
    ("", "www.example.com", False),
]


@pytest.mark.parametrize("no_proxy, host, goes_direct", NO_PROXY_CASES)
async def test_no_proxy_matches_as_curl_does(
    connect_proxy: StartProxy, no_proxy: str, host: str, goes_direct: bool
) -> None:
    assert NoProxy.parse(no_proxy).matches(host) is goes_direct
    if CURL is None:
        pytest.skip("curl is not installed: the table stands alone")
    proxy = await connect_proxy("refuse")
    port = free_port()  # nothing listens: a direct attempt fails at once
    resolve = None if host[0] in "[0123456789" else f"{host}:{port}:127.0.0.1"
    env = {"http_proxy": proxy.url, "no_proxy": no_proxy}
    used = await curl_used_proxy(env, f"http://{host}:{port}/", resolve, [proxy])
    assert (used is None) is goes_direct


def test_a_port_on_a_no_proxy_entry_is_ignored() -> None:
    # keyhop's one leniency over curl (which never matches such an entry): the port is dropped
    assert NoProxy.parse("example.com:8443,[::1]:80").matches("api.example.com")
    assert NoProxy.parse("[::1]:80").matches("::1")


ENV_CASES = [
    # (environment, scheme, which proxy: "a", "b" or None) - curl lib/url.c detect_proxy()
    ({"https_proxy": "a", "HTTPS_PROXY": "b"}, "https", "a"),  # lowercase wins
    ({"HTTPS_PROXY": "b"}, "https", "b"),
    ({"http_proxy": "a"}, "http", "a"),
    ({"HTTP_PROXY": "b"}, "http", None),  # no uppercase http_proxy (httpoxy)
    ({"https_proxy": "a"}, "http", None),  # per scheme
    ({"all_proxy": "a"}, "https", "a"),  # the fallback for every scheme
    ({"ALL_PROXY": "b", "https_proxy": "a"}, "https", "a"),
    ({"https_proxy": "a", "no_proxy": "partner.test", "NO_PROXY": "other.test"}, "https", None),
    ({"https_proxy": "a", "NO_PROXY": "partner.test"}, "https", None),
    ({"https_proxy": "", "HTTPS_PROXY": "b"}, "https", "b"),  # empty counts as not set
    ({"https_proxy": "a", "no_proxy": "", "NO_PROXY": "partner.test"}, "https", None),
]


@pytest.mark.parametrize("env, scheme, expected", ENV_CASES)
async def test_proxy_variables_are_read_as_curl_reads_them(
    connect_proxy: StartProxy, env: dict[str, str], scheme: str, expected: str | None
) -> None:
    a, b = await connect_proxy("refuse"), await connect_proxy("refuse")
    labels = {"a": a, "b": b}
    environ = {k: labels[v].url if v in labels else v for k, v in env.items()}
    settings, problems = read({"egress_proxy": "env"}, environ)
    assert problems == []
    chosen = proxy_for(settings, scheme, "api.partner.test")
    assert (chosen.label if chosen else None) == (labels[expected].label if expected else None)
    if CURL is None:
        pytest.skip("curl is not installed: the table stands alone")
    port = free_port()
    url = f"{scheme}://api.partner.test:{port}/"
    used = await curl_used_proxy(environ, url, f"api.partner.test:{port}:127.0.0.1", [a, b])
    assert used == (labels[expected].label if expected else None)
