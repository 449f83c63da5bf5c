"""private_key_jwt, client_secret_jwt, the JWT bearer grant and GitHub App installation tokens
through keyhop, against fakes that verify every JWT with the public key (tests/e2e/jwt_fakes.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.auth.client_auth import ClientAuth
from proxy.jose import JwtSigner, load_private_key
from proxy.schema import Secret
from tests.conftest import MakeProxy, StartUpstream
from tests.e2e.jwt_fakes import ASSERTION_TYPE, FakeGitHub, FakeTokenEndpoint, key_pair
from tests.support import ROOT, Clock, assert_no_secrets, write_config

CLIENT = "enterprise-client-1"
APP_ID = "424242"


def pkjwt_config(base: str, ca_file: str, pem: str, alg: str = "RS256") -> dict[str, Any]:
    return {
        "providers": {
            "bank": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": base + "/token",
                    "client_id": CLIENT,
                    "client_auth": {"type": "private_key_jwt", "key": pem, "alg": alg},
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/bank", "upstream": base, "provider": "bank"}],
    }


def github_config(base: str, ca_file: str, pem: str, app_id: str = APP_ID) -> dict[str, Any]:
    return {
        "providers": {
            "gh": {
                "preset": "github_app",
                "auth": {
                    "iss": app_id,
                    "key": pem,
                    "token_url": base + "/app/installations/{tenant}/access_tokens",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/gh", "upstream": base, "provider": "gh"}],
    }


async def start_bank(upstream: StartUpstream, alg: str = "RS256", **kw: Any) -> tuple[Any, str]:
    fake = FakeTokenEndpoint(**kw)
    fake.clients[CLIENT] = (alg, key_pair(alg)[1])
    return fake, await upstream(fake.app)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_private_key_jwt_one_verified_assertion_serves_50_concurrent_requests(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, alg: str
) -> None:
    fake, base = await start_bank(upstream, alg)
    client = await proxy(pkjwt_config(base, ca_file, key_pair(alg)[0], alg))
    responses = await asyncio.gather(*(client.get(f"/bank/api/a/{i}") for i in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert fake.token_requests == 1 and fake.refusals == []
    assert fake.claims[0]["aud"] == base + "/token"
    assert fake.claims[0]["header"]["alg"] == alg


async def test_a_refetch_after_a_401_sends_a_fresh_assertion_that_is_accepted(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_bank(upstream)
    client = await proxy(pkjwt_config(base, ca_file, key_pair("RS256")[0]))
    assert (await client.get("/bank/api/a")).status == 200
    fake.issued.clear()  # the upstream forgets the token: 401, refetch, replay
    assert (await client.get("/bank/api/b")).status == 200
    assert fake.token_requests == 2 and fake.refusals == []
    assert len({c["jti"] for c in fake.claims}) == 2


async def test_the_fake_refuses_a_replayed_assertion(upstream: StartUpstream, ca_file: str) -> None:
    """The fake itself: a jti seen before is invalid_client (RFC 7523 3, item 7)."""
    fake, base = await start_bank(upstream)
    signer = JwtSigner("RS256", load_private_key(Secret(key_pair("RS256")[0]), "RS256"))
    auth = ClientAuth("private_key_jwt", CLIENT, signer=signer, audience=base + "/token")
    _, fields = auth.encode(now=fake.clock(), jti="once-only")
    fields["grant_type"] = "client_credentials"
    assert fields["client_assertion_type"] == ASSERTION_TYPE
    context = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            async with session.post(base + "/token", data=fields, ssl=context) as resp:
                statuses.append((resp.status, (await resp.json()).get("error")))
    assert statuses == [(200, None), (401, "invalid_client")]
    assert fake.refusals == ["invalid_client"]


async def test_a_refused_assertion_is_502_credential_error_with_its_code_and_backs_off(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    fake, base = await start_bank(upstream, clock=clock)
    fake.clients[CLIENT] = ("RS256", key_pair("RS256", "registered-elsewhere")[1])
    pem = key_pair("RS256")[0]
    client = await proxy(pkjwt_config(base, ca_file, pem), clock=clock)
    first = await client.get("/bank/api/a")
    assert first.status == 502
    body = await first.json()
    assert body["error"] == "credential_error" and body["provider"] == "bank"
    assert "invalid_client" in body["message"]
    for _ in range(10):  # inside the first backoff step: no new attempt
        assert (await client.get("/bank/api/a")).status == 502
    assert fake.token_requests == 1
    clock.advance(1.5)  # past the first step (1 s, jitter up to 25 %)
    assert (await client.get("/bank/api/a")).status == 502
    assert fake.token_requests == 2
    logs = [r.getMessage() for r in caplog.records]
    bodies = [json.dumps(body), await (await client.get("/-/providers")).text()]
    assert_no_secrets(logs + bodies, [*_pem_lines(pem), *fake.jwts])


def _pem_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if "-----" not in line]


async def test_client_secret_jwt_end_to_end(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    secret = "cs-" + "9" * 40
    fake = FakeTokenEndpoint()
    fake.clients[CLIENT] = ("HS256", secret)
    base = await upstream(fake.app)
    config = pkjwt_config(base, ca_file, "")
    config["providers"]["bank"]["auth"].update(
        client_auth="client_secret_jwt", client_secret=secret
    )
    client = await proxy(config)
    assert (await client.get("/bank/api/a")).status == 200
    assert fake.claims[0]["header"]["alg"] == "HS256"
    assert "client_secret" not in fake.forms[0]


async def test_a_google_style_jwt_bearer_grant_from_a_service_account_file(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, tmp_path: Path
) -> None:
    fake = FakeTokenEndpoint()
    base = await upstream(fake.app)
    pem, public = key_pair("RS256", "sa")
    email = "robot@demo.iam.gserviceaccount.com"
    fake.issuers[email] = ("RS256", public)
    account = {
        "type": "service_account",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": email,
        "token_uri": base + "/token",
    }
    (tmp_path / "sa.json").write_text(json.dumps(account))
    config = {
        "providers": {
            "g": {
                "auth": {
                    "type": "oauth2_jwt_bearer",
                    "service_account_file": str(tmp_path / "sa.json"),
                    "scope": "https://www.googleapis.com/auth/drive.readonly",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/g", "upstream": base, "provider": "g"}],
    }
    client = await proxy(config)
    assert [(await client.get(f"/g/api/{i}")).status for i in range(3)] == [200] * 3
    assert fake.token_requests == 1
    assert fake.claims[0]["header"]["kid"] == "kid-1"
    assert fake.claims[0]["scope"] == "https://www.googleapis.com/auth/drive.readonly"


async def test_github_app_each_installation_gets_its_own_token(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    pem, public = key_pair("RS256", "gh-app")
    fake = FakeGitHub(APP_ID, public)
    fake.installations.update({"111", "222"})
    base = await upstream(fake.app)
    client = await proxy(github_config(base, ca_file, pem))
    seen = {}
    for installation in ("111", "222", "111", "222"):
        resp = await client.get(
            "/gh/installation/repositories", headers={"X-Keyhop-Tenant": installation}
        )
        assert resp.status == 200
        seen[installation] = (await resp.json())["installation"]
    assert seen == {"111": "111", "222": "222"}
    assert fake.token_requests == 2
    assert all(h["X-GitHub-Api-Version"] == "2022-11-28" for h in fake.headers)
    missing = await client.get("/gh/installation/repositories")
    assert (await missing.json())["error"] == "tenant_required"


async def test_github_refusing_the_app_jwt_is_502_naming_githubs_message(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    pem, public = key_pair("RS256", "gh-app")
    fake = FakeGitHub(APP_ID, public)
    fake.installations.add("111")
    base = await upstream(fake.app)
    client = await proxy(github_config(base, ca_file, pem, app_id="999"))
    resp = await client.get("/gh/installation/repositories", headers={"X-Keyhop-Tenant": "111"})
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "credential_error"
    assert "Integration not found (HTTP 401)" in body["message"]
    await client.get("/gh/installation/repositories", headers={"X-Keyhop-Tenant": "111"})
    assert fake.token_requests == 1  # backed off


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_keyhop_serve_never_shows_a_key_an_assertion_or_a_jwt(
    upstream: StartUpstream, ca_file: str, tmp_path: Path, processes: Any
) -> None:
    bank, bank_base = await start_bank(upstream)
    pem = key_pair("RS256")[0]
    gh_pem, gh_public = key_pair("RS256", "gh-app")
    github = FakeGitHub(APP_ID, gh_public)
    github.installations.add("111")
    gh_base = await upstream(github.app)
    key_file = tmp_path / "bank.pem"
    key_file.write_text(pem)
    config: dict[str, Any] = pkjwt_config(bank_base, ca_file, f"${{file:{key_file}}}")
    gh = github_config(gh_base, ca_file, gh_pem)
    config["providers"].update(gh["providers"])
    config["routes"] += gh["routes"]
    config["store"] = f"sqlite://{tmp_path / 'tokens.db'}"
    path = write_config(tmp_path / "keyhop.yaml", config)
    proc = processes(path)
    exposed: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for target, headers in [
            ("/bank/api/a", {}),
            ("/gh/installation/repositories", {"X-Keyhop-Tenant": "111"}),
            ("/gh/installation/repositories", {"X-Keyhop-Tenant": "404"}),
            ("/-/providers", {}),
            ("/-/metrics", {}),
        ]:
            async with session.get(proc.url + target, headers=headers) as resp:
                exposed.append(await resp.text())
                exposed.append(repr(list(resp.headers.items())))
    assert json.loads(exposed[0])["ok"] is True
    assert json.loads(exposed[2])["installation"] == "111"
    assert json.loads(exposed[4])["error"] == "credential_error"
    rc, out, err = await _cli("tokens", "list", "--config", str(path))
    assert rc == 0, err
    assert "bank" in out and "gh" in out
    proc.stop()
    assert "/gh/installation/repositories" in proc.logs()  # the grep below reads real lines
    secrets = [*_pem_lines(pem), *_pem_lines(gh_pem), *bank.jwts, *github.jwts]
    secrets += [*bank.issued, *github.tokens]
    assert len(bank.jwts) == 1 and len(github.jwts) == 2
    assert_no_secrets([proc.logs(), out, err, *exposed], secrets)


async def test_github_app_with_the_installation_as_the_first_path_segment(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    pem, public = key_pair("RS256", "gh-app")
    fake = FakeGitHub(APP_ID, public)
    fake.installations.add("12345678")
    base = await upstream(fake.app)
    config = github_config(base, ca_file, pem)
    config["routes"][0]["tenant"] = "path"
    client = await proxy(config)
    resp = await client.get("/gh/12345678/installation/repositories")
    assert resp.status == 200
    assert (await resp.json())["installation"] == "12345678"


async def test_keyhop_check_reports_a_vector_mismatch_by_key_path_without_the_key(
    tmp_path: Path,
) -> None:
    pem = key_pair("ES256")[0]
    vector = {
        "given": {"now": 1_700_000_000, "jti": "abc"},
        "expect": {"header": {"alg": "RS256", "typ": "JWT"}},
    }
    config = pkjwt_config("https://idp.test", str(tmp_path), pem, "ES256")
    del config["providers"]["bank"]["ca_file"]
    config["providers"]["bank"]["auth"]["client_auth"]["vectors"] = [vector]
    path = write_config(tmp_path / "keyhop.yaml", {"store": "memory:", **config})
    rc, out, err = await _cli("check", "--config", str(path))
    assert rc == 2
    assert (
        "providers.bank.auth.client_auth.vectors[0].expect.header: computed "
        '{"alg": "ES256", "typ": "JWT"}, expected {"alg": "RS256", "typ": "JWT"}'
    ) in err
    assert_no_secrets([out, err], _pem_lines(pem))
