"""The newcomer's path: `keyhop sandbox` plus `keyhop serve --config config/sandbox.yaml`,
both real processes, every provider driven through keyhop, each credential kind expired."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support import ROOT, KeyhopProcess, free_port

SHOP = "65f0c0ffee00000000000001"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[str, str, KeyhopProcess]]:
    """The shipped sandbox config, moved to free ports and a private store."""
    sandbox_port, keyhop_port = free_port(), free_port()
    text = (ROOT / "config" / "sandbox.yaml").read_text()
    text = text.replace("127.0.0.1:9090", f"127.0.0.1:{sandbox_port}")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{keyhop_port}")
    text = text.replace("sqlite://~/.local/state/keyhop/sandbox.db", f"sqlite://{tmp_path}/s.db")
    config = tmp_path / "sandbox.yaml"
    config.write_text(text)
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sandbox", "--listen", f"127.0.0.1:{sandbox_port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    keyhop = KeyhopProcess(config, tmp_path, port=keyhop_port)
    keyhop.start(wait=False)
    sandbox_url, keyhop_url = f"http://127.0.0.1:{sandbox_port}", keyhop.url
    try:
        async with aiohttp.ClientSession() as s:
            for url in (f"{sandbox_url}/-/sandbox/stats", f"{keyhop_url}/-/health"):
                for _ in range(200):
                    try:
                        async with s.get(url) as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{url} did not come up:\n{keyhop.logs()}")
        yield sandbox_url, keyhop_url, keyhop
    finally:
        keyhop.stop()
        sandbox.terminate()
        sandbox.wait(10)


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, **kw: object
) -> tuple[int, dict[str, object]]:
    async with session.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.json(content_type=None)


async def test_all_five_providers_work_through_keyhop_against_the_sandbox(
    stack: tuple[str, str, KeyhopProcess],
) -> None:
    sandbox, keyhop, proc = stack
    async with aiohttp.ClientSession() as s:
        # Kibo: client credentials with Basic auth; API-Key and bearer arrive
        status, body = await _json(s, "GET", f"{keyhop}/kibo/api/v2/location/7?x=1")
        assert status == 200, body
        assert body["path"] == "/kibo/api/v2/location/7" and body["query"] == "x=1"
        # PayNet: token in the body, X-Fiid, a valid X-Signature (the sandbox checks it)
        status, body = await _json(s, "POST", f"{keyhop}/paynet/api/transfers", json={"a": 1})
        assert status == 200, body
        # Spaaza: privileged bearer pair, admin session, user passthrough
        status, body = await _json(s, "GET", f"{keyhop}/spaaza/get-card")
        assert status == 200, body
        status, body = await _json(s, "GET", f"{keyhop}/spaaza-admin/admin/users")
        assert status == 200, body
        status, user = await _json(s, "POST", f"{sandbox}/spaaza/-/sandbox/user-session")
        assert status == 200, user
        headers = {
            "X-Spaaza-Session-User-Id": str(user["session_user_id"]),
            "X-Spaaza-Session-Key": str(user["session_key"]),
        }
        status, body = await _json(s, "GET", f"{keyhop}/spaaza-user/get-basket", headers=headers)
        assert status == 200, body

        # Saison: not connected until a person logs in through the browser
        status, body = await _json(s, "GET", f"{keyhop}/saison/api/profile")
        assert status == 503 and body["error"] == "not_connected"
        async with s.get(f"{keyhop}/-/oauth/saison/login", allow_redirects=False) as r:
            assert r.status == 302
            authorize = r.headers["Location"]
        async with s.post(authorize, data={"decision": "allow"}, allow_redirects=False) as r:
            assert r.status == 302
            callback = r.headers["Location"]
        async with s.get(URL(callback, encoded=True)) as r:
            assert r.status == 200, await r.text()
        status, body = await _json(s, "GET", f"{keyhop}/saison/api/profile?a=1&b=2")
        assert status == 200, body

        # Sesami: the merchant installs the app; the shop's offline token is used after
        status, body = await _json(
            s, "GET", f"{keyhop}/sesami/api/v1/appointments", headers={"X-Keyhop-Tenant": SHOP}
        )
        assert status == 503 and body["error"] == "not_connected"
        install = URL(f"{sandbox}/sesami/-/sandbox/install").with_query(
            shopId=SHOP, installUrl=f"{keyhop}/-/oauth/sesami/install"
        )
        async with s.get(install) as r:  # follows: sandbox -> keyhop install -> sandbox -> callback
            assert r.status == 200, await r.text()
        status, body = await _json(
            s, "GET", f"{keyhop}/sesami/api/v1/appointments", headers={"X-Keyhop-Tenant": SHOP}
        )
        assert status == 200, body

        # /-/providers shows every credential kind, never a secret
        async with s.get(f"{keyhop}/-/providers") as r:
            view = await r.text()
        assert '"kind": "offline"' in view and '"kind": "session"' in view
        assert "sandbox-kibo-secret" not in view

        # forced expiry of each kind: keyhop renews what it can renew and the calls succeed
        async with s.post(f"{sandbox}/-/sandbox/expire") as r:
            assert r.status == 200
        for path in ("/kibo/api/a", "/paynet/api/b", "/saison/api/c", "/spaaza-admin/admin/d"):
            status, body = await _json(s, "GET", f"{keyhop}{path}")
            assert status == 200, (path, body)
        # an offline token cannot be renewed: the shop must reinstall, and it can
        status, body = await _json(
            s, "GET", f"{keyhop}/sesami/api/v1/x", headers={"X-Keyhop-Tenant": SHOP}
        )
        assert status == 401
        async with s.get(install) as r:
            assert r.status == 200
        status, body = await _json(
            s, "GET", f"{keyhop}/sesami/api/v1/x", headers={"X-Keyhop-Tenant": SHOP}
        )
        assert status == 200, body
    assert "sandbox-saison-secret" not in proc.logs()
