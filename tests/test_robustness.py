"""Bad input and changed circumstances: a clear answer, never a crash, a leak or a stale token."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.runtime import KEYHOP
from proxy.sandbox.kibo import FakeKibo
from proxy.sandbox.saison import FakeSaison
from tests.conftest import MakeProxy, StartUpstream, make_config
from tests.support import ROOT, Clock, free_port, write_config

ROUTE = [{"prefix": "/p", "upstream": "https://api.test", "provider": "p"}]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"\xff\xfe", "not UTF-8", id="not-utf8"),
        pytest.param(b"providers: {p: {preset: [kibo]}}\nroutes: []\n", "preset", id="list-preset"),
        pytest.param(b"- a\n- b\n", "expected a mapping", id="list-at-top"),
        pytest.param(b"", "no routes", id="empty-file"),
    ],
)
def test_keyhop_check_reports_odd_files_without_a_traceback(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "k.yaml"
    path.write_bytes(content)
    result = cli("check", "--config", str(path))
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_that_cannot_be_created_is_named_as_such(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "k.yaml",
        {
            "store": "sqlite:///proc/no/such/dir/tokens.db",
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/p", "upstream": "http://127.0.0.1:9", "provider": "p"}],
        },
    )
    served = cli("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert served.returncode == 1
    assert "cannot open the token store" in served.stderr
    assert "cannot listen" not in served.stderr
    listed = cli("tokens", "--config", str(config))
    assert listed.returncode == 1 and "Traceback" not in listed.stderr


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"clients": {"keys": [None]}}, "clients.keys[0]: expected a non-empty key"),
        ({"clients": {"keys": [""]}}, "clients.keys[0]: expected a non-empty key"),
        ({"store": "sqlite://"}, "store: sqlite:// needs a file path"),
    ],
    ids=["null-key", "empty-key", "empty-sqlite-path"],
)
def test_config_values_that_would_silently_weaken_keyhop_are_errors(
    data: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"p": {"auth": {"type": "none"}}}, "routes": ROUTE, **data}, "k")
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_store_memory_is_accepted_with_or_without_the_colon() -> None:
    data = {"providers": {"p": {"auth": {"type": "none"}}}, "routes": ROUTE}
    assert parse_config({**data, "store": "memory"}, "k").store == "memory:"


async def test_a_non_utf8_client_key_is_refused_not_a_crash(
    upstream: StartUpstream, proxy: MakeProxy, echo_app: web.Application
) -> None:
    base = await upstream(echo_app, tls=False)
    client = await proxy(
        {
            "clients": {"keys": ["right-key-123"]},
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
        }
    )
    for path in (b"/p/x", b"/-/providers"):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nX-Keyhop-Key: \xff\xfe\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 401"), status
        writer.close()


def sesami_config(base: str, ca_file: str) -> dict[str, Any]:
    return {
        "providers": {
            "sesami": {
                "preset": "sesami",
                "auth": {
                    "client_id": "cid",
                    "client_secret": "sesami-secret-1",
                    "authorize_url": base + "/api/v1/oauth/authorization",
                    "access_token_url": base + "/api/v1/oauth/access-token",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/sesami", "upstream": base, "provider": "sesami"}],
    }


async def test_a_non_ascii_hmac_is_refused_with_401_not_a_crash(
    upstream: StartUpstream, proxy: MakeProxy, echo_app: web.Application, ca_file: str
) -> None:
    base = await upstream(echo_app)
    client = await proxy(sesami_config(base, ca_file))
    install = await client.get("/-/oauth/sesami/install?shopId=a&timestamp=1&hmac=%C3%A9")
    assert install.status == 401
    webhook = await client.post(
        "/-/oauth/sesami/webhook",
        json={"event": "uninstall_app", "data": {"shopId": "a"}, "hmac": "é"},
    )
    assert webhook.status == 401


async def test_login_builds_its_callback_only_for_a_loopback_host(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = FakeSaison()
    base = await upstream(fake.app)
    client = await proxy(
        {
            "providers": {
                "saison": {
                    "preset": "saison",
                    "auth": {"client_id": "c", "client_secret": "s"},
                    "ca_file": ca_file,
                }
            },
            "routes": [{"prefix": "/saison", "upstream": base, "provider": "saison"}],
        }
    )
    evil = await client.get(
        "/-/oauth/saison/login?tenant=m1", headers={"Host": "evil.test"}, allow_redirects=False
    )
    assert evil.status == 400
    assert "redirect_uri" in (await evil.json())["message"]
    local = await client.get("/-/oauth/saison/login?tenant=m1", allow_redirects=False)
    assert local.status == 302
    assert "redirect_uri=http%3A%2F%2F127.0.0.1" in local.headers["Location"]


async def test_an_answer_keeps_only_the_headers_the_upstream_sent(proxy: MakeProxy) -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await proxy(
            {
                "providers": {"p": {"auth": {"type": "none"}}},
                "routes": [
                    {"prefix": "/p", "upstream": f"http://127.0.0.1:{port}", "provider": "p"}
                ],
            }
        )
        resp = await client.get("/p/x")
        assert await resp.read() == b"hello"
        assert resp.headers["X-Up"] == "1"
        assert "Content-Type" not in resp.headers
        assert "Server" not in resp.headers
    finally:
        server.close()


async def test_providers_lists_single_account_providers_before_any_request(
    proxy: MakeProxy,
) -> None:
    client = await proxy(
        {
            "providers": {
                "cc": {
                    "auth": {
                        "type": "oauth2_client_credentials",
                        "token_url": "https://auth.test/t",
                        "client_id": "c",
                        "client_secret": "s",
                    }
                },
                "st": {"auth": {"type": "static", "token": "static-token-1"}},
            },
            "routes": [
                {"prefix": "/cc", "upstream": "https://a.test", "provider": "cc"},
                {"prefix": "/st", "upstream": "https://a.test", "provider": "st"},
            ],
        }
    )
    view = (await (await client.get("/-/providers")).json())["providers"]
    assert view["cc"]["tenants"] == [
        {**view["cc"]["tenants"][0], "tenant": None, "state": "missing"}
    ]
    assert view["st"]["tenants"][0]["state"] == "static"


def kibo_config(base: str, ca_file: str, token_path: str) -> dict[str, Any]:
    return {
        "providers": {
            "kibo": {
                "preset": "kibo",
                "auth": {"client_id": "kc", "client_secret": "ks", "token_url": base + token_path},
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/kibo", "upstream": base, "provider": "kibo"}],
    }


async def test_a_reload_that_changes_the_token_endpoint_never_reuses_the_old_token(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    old, new = (
        FakeKibo(client_id="kc", client_secret="ks"),
        FakeKibo(client_id="kc", client_secret="ks"),
    )
    old_base, new_base = await upstream(old.app), await upstream(new.app)
    client = await proxy(kibo_config(old_base, ca_file, "/oauthserver/oauth2/token"))
    assert (await client.get("/kibo/api/a")).status == 200
    kh = client.app[KEYHOP]
    kh.reload(make_config(kibo_config(new_base, ca_file, "/oauthserver/oauth2/token")))
    assert (await client.get("/kibo/api/b")).status == 200
    assert new.token_requests == 1
    # the old endpoint's token was never tried (a 401 and a replay would make this 2)
    assert new.resource_requests == 1
    assert old.token_requests == 1


async def test_a_revoked_login_stops_being_used_by_a_running_keyhop(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    clock = Clock()
    fake = FakeSaison(client_id="c", client_secret="s", clock=clock)
    base = await upstream(fake.app)
    client = await proxy(
        {
            "providers": {
                "saison": {
                    "preset": "saison",
                    "auth": {"client_id": "c", "client_secret": "s"},
                    "ca_file": ca_file,
                }
            },
            "routes": [{"prefix": "/saison", "upstream": base, "provider": "saison"}],
        },
        clock=clock,
    )
    code = fake.issue_code("m1")
    kh = client.app[KEYHOP]
    from proxy.callbacks import LOGIN_STATE
    from proxy.tokens import Credential

    await kh.store.put(
        LOGIN_STATE,
        "st1",
        Credential("st1", clock() + 600, clock(), fields={"provider": "saison", "tenant": "m1"}),
    )
    assert (await client.get(f"/-/oauth/saison/callback?code={code}&state=st1")).status == 200
    member = {"X-Keyhop-Tenant": "m1"}
    assert (await client.get("/saison/api/a", headers=member)).status == 200
    await kh.store.delete("saison", "m1")  # what `keyhop tokens revoke saison --tenant m1` does
    clock.advance(6)  # past the recheck interval
    assert (await client.get("/saison/api/b", headers=member)).status == 200
    await asyncio.sleep(0.1)  # the recheck ran in the background
    gone = await client.get("/saison/api/c", headers=member)
    assert gone.status == 503
    assert (await gone.json())["error"] == "not_connected"


def test_tokens_list_shows_no_pending_login_and_filters_by_provider(tmp_path: Path) -> None:
    import asyncio as aio

    from proxy.callbacks import LOGIN_STATE
    from proxy.store import SqliteStore
    from proxy.tokens import Credential

    db = tmp_path / "t.db"

    async def seed() -> None:
        store = SqliteStore(str(db))
        await store.put(LOGIN_STATE, "secret-state-value", Credential("x", 9e9))
        await store.put("a", None, Credential("tok-a", 9e9))
        await store.put("b", None, Credential("tok-b", 9e9))
        await store.close()

    aio.run(seed())
    config = write_config(
        tmp_path / "k.yaml",
        {
            "store": f"sqlite://{db}",
            "providers": {"a": {"auth": {"type": "none"}}, "b": {"auth": {"type": "none"}}},
            "routes": [
                {"prefix": "/a", "upstream": "https://a.test", "provider": "a"},
                {"prefix": "/b", "upstream": "https://a.test", "provider": "b"},
            ],
        },
    )
    out = cli("tokens", "list", "a", "--config", str(config)).stdout
    assert "secret-state-value" not in out and LOGIN_STATE not in out
    lines = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert lines == ["a"]
