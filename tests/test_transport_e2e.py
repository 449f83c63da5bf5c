"""`tls:` and `egress_proxy:` end to end (SPEC 5.3): a real `keyhop serve`, a partner that
requires a client certificate on its token endpoint and its API, and the project's CONNECT
proxy in between. Skipped until the config carries `tls` and `egress` (the lead's wiring)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import ProviderConfig
from proxy.sandbox.connect_proxy import ConnectProxy
from tests.support import KeyhopProcess, assert_no_secrets, write_config

pytestmark = pytest.mark.skipif(
    "egress" not in ProviderConfig.__dataclass_fields__,
    reason="proxy/config.py does not read tls: and egress_proxy: yet",
)

PROXY_PASSWORD = "pr0xy-e2e-pa55"
CLIENT_SECRET = "bank-client-secret-e2e"
CLIENT_CN = "keyhop-e2e.example"


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def bank(
    aiohttp_server: Callable[..., Awaitable[TestServer]], ca: trustme.CA, client_ca: trustme.CA
) -> str:
    """A partner whose token endpoint and API both require a client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(ctx)

    def peer_cn(request: web.Request) -> str | None:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return dict(item[0] for item in peer["subject"]).get("commonName") if peer else None

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_secret") != CLIENT_SECRET or peer_cn(request) != CLIENT_CN:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"access_token": "tok-e2e", "expires_in": 3600})

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response(
            {"cn": peer_cn(request), "auth": request.headers.get("Authorization")}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/api/whoami", whoami)
    server = await aiohttp_server(app, ssl=ctx)
    return f"https://127.0.0.1:{server.port}"


@pytest.fixture
def client_pems(tmp_path: Path, client_ca: trustme.CA) -> dict[str, str]:
    leaf = client_ca.issue_cert("e2e@keyhop.example", common_name=CLIENT_CN)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return {"cert": str(cert), "key": str(key)}


def config(
    tmp_path: Path, bank: str, proxy: ConnectProxy, ca_file: str, auth: dict[str, Any], **p: Any
) -> Path:
    return write_config(
        tmp_path / "keyhop.yaml",
        {
            "store": "memory:",
            "egress_proxy": f"http://corp:${{PROXY_PASSWORD}}@{proxy.label}",
            "providers": {"bank": {"auth": auth, "ca_file": ca_file, **p}},
            "routes": [{"prefix": "/bank", "upstream": bank, "provider": "bank"}],
        },
    )


async def test_token_and_api_calls_go_through_the_proxy_with_the_client_certificate(
    tmp_path: Path,
    bank: str,
    ca_file: str,
    client_pems: dict[str, str],
    processes: Callable[..., KeyhopProcess],
) -> None:
    proxy = await ConnectProxy(user="corp", password=PROXY_PASSWORD).start()
    try:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{bank}/oauth/token",
            "client_id": "bank-client",
            "client_secret": CLIENT_SECRET,
            "client_auth": "body",
        }
        path = config(tmp_path, bank, proxy, ca_file, auth, tls=client_pems)
        keyhop = processes(path, env={"PROXY_PASSWORD": PROXY_PASSWORD})
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(f"{keyhop.url}/bank/api/whoami") as resp:
                    assert resp.status == 200, await resp.text()
                    assert await resp.json() == {"cn": CLIENT_CN, "auth": "Bearer tok-e2e"}
    finally:
        await proxy.stop()
    target = bank.split("//")[1]
    # one tunnel for the token endpoint (aiohttp's pool), one for the pooled API connection
    assert proxy.targets == [target, target]
    assert proxy.tunnels == 2
    assert_no_secrets([keyhop.logs()], [PROXY_PASSWORD, CLIENT_SECRET])


@pytest.mark.parametrize("mode", ["refuse", "reset"])
async def test_a_failing_proxy_is_502_upstream_unreachable_naming_it_and_nothing_goes_direct(
    tmp_path: Path,
    bank: str,
    ca_file: str,
    client_pems: dict[str, str],
    processes: Callable[..., KeyhopProcess],
    mode: Any,
) -> None:
    proxy = await ConnectProxy(mode=mode).start()
    try:
        auth = {"type": "static"}
        path = config(tmp_path, bank, proxy, ca_file, auth, tls=client_pems)
        keyhop = processes(path, env={"PROXY_PASSWORD": PROXY_PASSWORD})
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{keyhop.url}/bank/api/whoami") as resp,
        ):
            body = await resp.json()
    finally:
        await proxy.stop()
    assert resp.status == 502
    assert body["error"] == "upstream_unreachable"
    assert f"proxy {proxy.label}" in body["message"]
    assert PROXY_PASSWORD not in body["message"]
    assert_no_secrets([keyhop.logs()], [PROXY_PASSWORD])


async def test_a_proxy_refusing_the_token_endpoint_is_502_naming_it(
    tmp_path: Path,
    bank: str,
    ca_file: str,
    client_pems: dict[str, str],
    processes: Callable[..., KeyhopProcess],
) -> None:
    proxy = await ConnectProxy(mode="refuse").start()
    try:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{bank}/oauth/token",
            "client_id": "bank-client",
            "client_secret": CLIENT_SECRET,
        }
        path = config(tmp_path, bank, proxy, ca_file, auth, tls=client_pems)
        keyhop = processes(path, env={"PROXY_PASSWORD": PROXY_PASSWORD})
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{keyhop.url}/bank/api/whoami") as resp:
                body = await resp.json()
            # backing off now: the next request is not sent, and says the same thing
            async with session.get(f"{keyhop.url}/bank/api/whoami") as again:
                again_body = await again.json()
    finally:
        await proxy.stop()
    assert (again.status, again_body["error"]) == (502, "upstream_unreachable")
    assert "next attempt in" in again_body["message"]
    # SPEC 5.3: 502 upstream_unreachable naming the proxy (backed off like any failing token
    # endpoint, SPEC 4.4), never a direct connection
    assert (resp.status, body["error"]) == (502, "upstream_unreachable")
    assert f"proxy {proxy.label} refused CONNECT (403 Forbidden)" in body["message"]
    assert proxy.targets == [bank.split("//")[1]]  # the token endpoint's; nothing went direct
    assert_no_secrets([keyhop.logs(), body["message"]], [PROXY_PASSWORD, CLIENT_SECRET])
