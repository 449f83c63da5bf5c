"""Saison end to end: browser login through the callback, MAC-signed requests, rotating
refresh tokens, the store surviving restarts, `keyhop login` and `keyhop tokens`."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.sandbox.saison import FakeSaison
from proxy.store import SqliteStore
from tests.conftest import MakeProxy, StartUpstream
from tests.support import (
    ROOT,
    KeyhopProcess,
    assert_no_secrets,
    free_port,
    wait_healthy,
    write_config,
)

CLIENT_ID, CLIENT_SECRET = "saison-client-5e6f", "saison-secret-7a8b9c0d"


def saison_config(base: str, ca_file: str, store: str = "memory:", **extra: Any) -> dict[str, Any]:
    return {
        "store": store,
        "providers": {
            "saison": {
                "preset": "saison",
                "auth": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                "ca_file": ca_file,
                **extra,
            }
        },
        "routes": [{"prefix": "/saison", "upstream": base, "provider": "saison"}],
    }


async def start_saison(upstream: StartUpstream, **kw: Any) -> tuple[FakeSaison, str]:
    fake = FakeSaison(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kw)
    return fake, await upstream(fake.app)


async def browser_login(keyhop_url: str, member: str, ca_file: str) -> str:
    """What a person does: open keyhop's login URL, log in at Saison, land on the callback."""
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession() as browser:
        login = await browser.get(
            f"{keyhop_url}/-/oauth/saison/login?tenant={member}", allow_redirects=False
        )
        assert login.status == 302, await login.text()
        authorize = login.headers["Location"]
        assert f"/auth/screen/{member}/authorize" in authorize
        assert "state=" in authorize
        page = await browser.get(authorize, ssl=ctx)
        assert page.status == 200
        submit = await browser.post(
            authorize, data={"decision": "allow"}, ssl=ctx, allow_redirects=False
        )
        assert submit.status == 302
        callback = submit.headers["Location"]
        assert callback.startswith(f"{keyhop_url}/-/oauth/saison/callback?")
        done = await browser.get(URL(callback, encoded=True))
        assert done.status == 200, await done.text()
        return await done.text()


def keyhop_url(client: TestClient[Any, Any]) -> str:
    return f"http://127.0.0.1:{client.port}"


async def test_login_through_the_callback_then_mac_signed_requests_work(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    client = await proxy(saison_config(base, ca_file))
    page = await browser_login(keyhop_url(client), "m1", ca_file)
    assert "connected" in page.lower()
    # many requests: fresh nonce each (the fake refuses a reused one), valid MAC each
    for method in ("GET", "POST", "PUT", "DELETE"):
        resp = await client.request(
            method, "/saison/auth/account/profile?a=1&b=2", headers={"X-Keyhop-Tenant": "m1"}
        )
        assert resp.status == 200, await resp.text()
    assert fake.last_member == "m1"
    assert fake.last_resource_headers["X-API-VERSION"] == "1"
    assert fake.last_resource_headers["Authorization"].startswith('MAC id="')
    assert "X-Keyhop-Tenant" not in fake.last_resource_headers
    burst = await asyncio.gather(
        *(client.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"}) for _ in range(30))
    )
    assert [r.status for r in burst] == [200] * 30


async def test_a_member_must_be_named_and_an_unknown_one_says_how_to_connect(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    client = await proxy(saison_config(base, ca_file))
    missing = await client.get("/saison/api/x")
    assert missing.status == 400
    assert (await missing.json())["error"] == "tenant_required"
    unknown = await client.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m9"})
    assert unknown.status == 503
    body = await unknown.json()
    assert body["error"] == "not_connected"
    assert "keyhop login saison --tenant m9" in body["message"]
    assert "/-/oauth/saison/login?tenant=m9" in body["message"]
    bad = await client.get("/saison/api/x", headers={"X-Keyhop-Tenant": "../m1"})
    assert bad.status == 400


async def test_tenant_from_the_path_is_stripped_before_forwarding(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    config = saison_config(base, ca_file)
    config["routes"][0]["tenant"] = "path"
    client = await proxy(config)
    await browser_login(keyhop_url(client), "m2", ca_file)
    resp = await client.get("/saison/m2/api/orders?x=1")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["path"] == "/api/orders"
    assert fake.last_member == "m2"


async def test_a_callback_with_an_unknown_state_exchanges_nothing(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    client = await proxy(saison_config(base, ca_file))
    code = fake.issue_code("m1")
    resp = await client.get(f"/-/oauth/saison/callback?code={code}&state=forged")
    assert resp.status == 400
    assert fake.token_requests == 0


async def test_an_expired_access_token_is_refreshed_once_and_the_rotation_stored(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    client = await proxy(saison_config(base, ca_file))
    await browser_login(keyhop_url(client), "m1", ca_file)
    fake.expire_all()
    responses = await asyncio.gather(
        *(
            client.post("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"}, data=b"body")
            for _ in range(100)
        )
    )
    assert [r.status for r in responses] == [200] * 100
    assert fake.refresh_requests == 1
    from proxy.runtime import KEYHOP

    stored = await client.app[KEYHOP].store.get("saison", "m1")
    assert stored is not None and stored.refresh_token is not None
    assert fake.refresh_token_valid(stored.refresh_token)


async def test_a_revoked_refresh_token_turns_into_not_connected_without_a_storm(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_saison(upstream)
    client = await proxy(saison_config(base, ca_file))
    await browser_login(keyhop_url(client), "m1", ca_file)
    fake.expire_all()
    fake.revoke_refresh_tokens()
    responses = await asyncio.gather(
        *(client.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"}) for _ in range(20))
    )
    assert {r.status for r in responses} == {503}
    body = await responses[0].json()
    assert body["error"] == "not_connected"
    assert "keyhop login saison --tenant m1" in body["message"]
    assert fake.refresh_requests == 1


async def test_a_lost_rotation_race_reads_the_winners_token_from_the_store(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    db = str(tmp_path / "shared.db")
    config = saison_config(base, ca_file, store=f"sqlite://{db}")
    config["fetch_lock_ttl"] = 1  # the first fetch outlives its lock: the race is on
    a = await proxy(config, store=SqliteStore(db))
    b = await proxy(config, store=SqliteStore(db))
    await browser_login(keyhop_url(a), "m1", ca_file)
    assert (await b.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"})).status == 200
    fake.expire_all()
    fake.fail_token(1.6, mode="slow", duration=5)  # every refresh takes 1.6 s
    first = asyncio.create_task(a.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"}))
    await asyncio.sleep(1.2)  # a's lock has expired, a's refresh is still in flight
    second = await b.get("/saison/api/x", headers={"X-Keyhop-Tenant": "m1"})
    assert (await first).status == 200
    assert second.status == 200, await second.text()
    assert fake.refresh_requests == 2  # b lost the race (invalid_grant) and took a's token


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT)}


async def _run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **_env()},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_keyhop_login_takes_a_pasted_redirect_url_and_tokens_lists_without_secrets(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    db = tmp_path / "state" / "tokens.db"
    config = write_config(tmp_path / "k.yaml", saison_config(base, ca_file, f"sqlite://{db}"))

    # the person opens the printed URL; Saison shows the code on its own page
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "login", "saison", "--tenant", "m7", "--config",
        str(config), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    printed = b""
    while b"/authorize" not in printed:
        printed += await asyncio.wait_for(proc.stdout.readline(), 10)
    url = next(w for w in printed.decode().split() if "/authorize" in w)
    state = URL(url).query["state"]
    code = fake.issue_code("m7")
    proc.stdin.write(f"https://vendor.example/done?code={code}&state={state}\n".encode())
    await proc.stdin.drain()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "connected" in out.decode()

    rc, out, err = await _run_cli("tokens", "list", "--config", str(config))
    assert rc == 0, err
    assert "saison" in out and "m7" in out and "yes" in out
    store = SqliteStore(str(db))
    stored = await store.get("saison", "m7")
    await store.close()
    assert stored is not None and stored.refresh_token
    assert_no_secrets([out, err], [stored.token, stored.refresh_token, CLIENT_SECRET])
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600

    rc, out, _ = await _run_cli(
        "tokens", "revoke", "saison", "--tenant", "m7", "--config", str(config)
    )
    assert rc == 0 and "revoked" in out
    rc, out, _ = await _run_cli("tokens", "list", "--config", str(config))
    assert "m7" not in out


async def test_keyhop_login_with_a_code_that_saison_refuses_fails_cleanly(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    config = write_config(
        tmp_path / "k.yaml", saison_config(base, ca_file, f"sqlite://{tmp_path}/t.db")
    )
    rc, out, err = await _run_cli(
        "login", "saison", "--tenant", "m1", "--code", "not-a-code", "--config", str(config)
    )
    assert rc == 1
    assert "invalid_grant" in err
    assert "Traceback" not in err


def _start(config: Path, tmp_path: Path, port: int = 0) -> KeyhopProcess:
    # started without blocking the event loop the fakes run on
    proc = KeyhopProcess(config, tmp_path, port=port)
    proc.start(wait=False)
    return proc


async def test_a_login_survives_a_restart_and_two_processes_share_one_sqlite_file(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    db = tmp_path / "tokens.db"
    config = write_config(tmp_path / "k.yaml", saison_config(base, ca_file, f"sqlite://{db}"))
    a = _start(config, tmp_path)
    b = _start(config, tmp_path)
    try:
        await wait_healthy(a.url, timeout=5)
        await wait_healthy(b.url, timeout=5)
        await browser_login(a.url, "m1", ca_file)
        async with aiohttp.ClientSession(headers={"X-Keyhop-Tenant": "m1"}) as s:
            for url in (a.url, b.url):
                async with s.get(url + "/saison/api/x") as r:
                    assert r.status == 200, await r.text()
            fake.expire_all()
            statuses = await asyncio.gather(
                *(s.get(u + "/saison/api/y") for u in [a.url, b.url] * 20)
            )
            assert [r.status for r in statuses] == [200] * 40
            for r in statuses:
                r.release()
        assert fake.refresh_requests == 1  # one refresh across both processes
        assert a.stop() == 0
        port = a.port
        a = _start(config, tmp_path, port=port)
        await wait_healthy(a.url, timeout=5)
        async with aiohttp.ClientSession(headers={"X-Keyhop-Tenant": "m1"}) as s:
            async with s.get(a.url + "/saison/api/z") as r:
                assert r.status == 200
        assert fake.codes_issued == 1  # nobody logged in again
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
        assert_no_secrets([a.logs(), b.logs()], [CLIENT_SECRET])
    finally:
        a.stop()
        b.stop()


async def test_kill_9_during_a_refresh_leaves_a_usable_refresh_token(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    db = tmp_path / "tokens.db"
    config = write_config(tmp_path / "k.yaml", saison_config(base, ca_file, f"sqlite://{db}"))
    proc = _start(config, tmp_path)
    try:
        await wait_healthy(proc.url, timeout=5)
        await browser_login(proc.url, "m1", ca_file)
        fake.expire_all()
        fake.fail_token(2, mode="slow", duration=1)
        async with aiohttp.ClientSession(headers={"X-Keyhop-Tenant": "m1"}) as s:
            pending = asyncio.ensure_future(s.get(proc.url + "/saison/api/x"))
            await asyncio.sleep(0.8)  # the refresh is in flight at the fake
            proc.send(signal.SIGKILL)
            with pytest.raises(aiohttp.ClientError):
                await pending
        proc.stop()
        store = SqliteStore(str(db))
        stored = await store.get("saison", "m1")
        await store.close()
        assert stored is not None and stored.refresh_token  # old or new, never none
        proc = _start(config, tmp_path)
        await wait_healthy(proc.url, timeout=5)
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession(headers={"X-Keyhop-Tenant": "m1"}) as s:
            while True:
                async with s.get(proc.url + "/saison/api/y") as r:
                    if r.status == 200 or time.monotonic() > deadline:
                        assert r.status == 200, await r.text()
                        break
                await asyncio.sleep(0.2)
    finally:
        proc.stop()


async def test_keyhop_login_notices_when_a_running_keyhops_callback_finishes_the_login(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_saison(upstream)
    db = tmp_path / "tokens.db"
    port = free_port()
    config_data = saison_config(base, ca_file, f"sqlite://{db}")
    config_data["providers"]["saison"]["auth"]["redirect_uri"] = (
        f"http://127.0.0.1:{port}/-/oauth/saison/callback"
    )
    config = write_config(tmp_path / "k.yaml", config_data)
    server = _start(config, tmp_path, port=port)
    try:
        await wait_healthy(server.url, timeout=5)
        login = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "login", "saison", "--tenant", "m3", "--config",
            str(config), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert login.stdout is not None
        printed = b""
        while b"/authorize" not in printed:
            printed += await asyncio.wait_for(login.stdout.readline(), 10)
        authorize = next(w for w in printed.decode().split() if "/authorize" in w)
        import ssl

        ctx = ssl.create_default_context(cafile=ca_file)
        async with aiohttp.ClientSession() as browser:
            async with browser.post(
                authorize, data={"decision": "allow"}, ssl=ctx, allow_redirects=False
            ) as submit:
                callback = submit.headers["Location"]
            assert callback.startswith(f"{server.url}/-/oauth/saison/callback?")
            async with browser.get(URL(callback, encoded=True)) as done:
                assert done.status == 200, await done.text()
        out, err = await asyncio.wait_for(login.communicate(), 15)
        assert login.returncode == 0, err.decode()
        assert "connected" in out.decode()
        async with aiohttp.ClientSession(headers={"X-Keyhop-Tenant": "m3"}) as s:
            async with s.get(server.url + "/saison/api/x") as r:
                assert r.status == 200
        assert fake.codes_issued == 1
    finally:
        server.stop()
