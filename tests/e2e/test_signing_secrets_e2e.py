"""No signing key in any log line or answer (SPEC 3.1, 5.4): a real `keyhop serve` at debug
level signs with every signer (accepted, refused upstream, 413, 502), and its captured log
and every answer, `/-/` endpoints included, are searched for each key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from http_message_signatures.algorithms import ED25519

from tests.conftest import StartUpstream
from tests.e2e.signing_fakes import (
    HmacUpstream,
    MessageSignatureUpstream,
    OAuth1Upstream,
    SigV4Upstream,
    sha_message,
)
from tests.e2e.signing_helpers import RFC9421
from tests.e2e.test_signing_headers_e2e import token_endpoint
from tests.support import ROOT, KeyhopProcess, assert_no_secrets, write_config

ED25519_PEM = (RFC9421 / "test-key-ed25519.key").read_text()
SECRETS = {
    "E2E_AWS_SECRET": "aws/Secret+Key-e2e-7Q1",
    "E2E_AWS_SESSION": "aws-session-token-e2e-9Z",
    "E2E_OAUTH_CONSUMER_SECRET": "oauth-consumer-secret-e2e",
    "E2E_OAUTH_TOKEN_SECRET": "oauth-token-secret-e2e",
    "E2E_HMAC_KEY": "hmac-recipe-key-e2e-3K",
    "E2E_CLIENT_SECRET": "client-secret-e2e-5M",
}
ISSUED = "issued-token-e2e-8P"  # a credential from a token endpoint is a secret too


class DebugKeyhop(KeyhopProcess):
    """`keyhop serve --log-level debug`: the most a log can say."""

    def start(self, wait: bool = True) -> KeyhopProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config)]
            + ["--listen", f"127.0.0.1:{self.port}", "--log-level", "debug"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self


def provider(ca_file: str, sign: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"auth": {"type": "static"}, "sign": sign, "ca_file": ca_file, **extra}


async def test_no_signing_key_reaches_a_log_line_or_an_answer(
    upstream: StartUpstream, tmp_path: Path, ca_file: str
) -> None:
    aws = SigV4Upstream("AKIDSECRETS", SECRETS["E2E_AWS_SECRET"], "eu-west-1", "execute-api")
    oauth = OAuth1Upstream(
        {"ck-e2e": SECRETS["E2E_OAUTH_CONSUMER_SECRET"]},
        {"tk-e2e": SECRETS["E2E_OAUTH_TOKEN_SECRET"]},
        "HMAC-SHA256",
    )
    ed_public = serialization.load_pem_public_key((RFC9421 / "test-key-ed25519.pem").read_bytes())
    rfc = MessageSignatureUpstream(ED25519, {"ed": ed_public}, ("@method", "content-digest"))
    partner = HmacUpstream(SECRETS["E2E_HMAC_KEY"], sha_message)
    hmac_sign = {
        "type": "hmac",
        "key": "${E2E_HMAC_KEY}",
        "message": "{timestamp}{method}{target}{body_sha256}",
        "timestamp": "unix_ms",
        "headers": {"X-Timestamp": "{timestamp}", "X-Signature": "{signature}"},
        "body_max_bytes": 1024,
    }
    tokens = await upstream(token_endpoint(ISSUED + "\r\nX-Injected: yes"))
    providers = {
        "aws": provider(
            ca_file,
            {
                "type": "aws_sigv4",
                "region": "eu-west-1",
                "service": "execute-api",
                "access_key_id": "AKIDSECRETS",
                "secret_access_key": "${E2E_AWS_SECRET}",
                "session_token": "${E2E_AWS_SESSION}",
            },
        ),
        "oauth": provider(
            ca_file,
            {
                "type": "oauth1",
                "signature_method": "HMAC-SHA256",
                "consumer_key": "ck-e2e",
                "consumer_secret": "${E2E_OAUTH_CONSUMER_SECRET}",
                "token": "tk-e2e",
                "token_secret": "${E2E_OAUTH_TOKEN_SECRET}",
            },
        ),
        "rfc": provider(
            ca_file,
            {
                "type": "http_message_signature",
                "algorithm": "ed25519",
                "key_id": "ed",
                "key": ED25519_PEM,
                "components": ["@method", "content-digest"],
            },
        ),
        "partner": provider(ca_file, hmac_sign),
        "broken": {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": tokens + "/token",
                "client_id": "cid",
                "client_secret": "${E2E_CLIENT_SECRET}",
            },
            "sign": {**hmac_sign, "headers": {"X-Signature": "{token}:{signature}"}},
            "ca_file": ca_file,
        },
    }
    bases = {
        "aws": await upstream(aws.app),
        "oauth": await upstream(oauth.app),
        "rfc": await upstream(rfc.app),
        "partner": await upstream(partner.app),
        "broken": await upstream(partner.app),
    }
    data = {
        "store": "memory:",
        "providers": providers,
        "routes": [{"prefix": f"/{n}", "upstream": b, "provider": n} for n, b in bases.items()],
    }
    config = write_config(tmp_path / "keyhop.yaml", data)
    proc = DebugKeyhop(config, tmp_path, env=SECRETS).start()
    answers: list[str] = []
    statuses: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as session:

            async def call(name: str, method: str, path: str, **kw: Any) -> None:
                async with session.request(method, proc.url + path, **kw) as resp:
                    answers.append(str(resp.headers) + await resp.text())
                    statuses[name] = resp.status

            await call("aws", "POST", "/aws/x?a=1", data=b'{"a": 1}')
            await call("oauth", "GET", "/oauth/x?b=2")
            await call("rfc", "POST", "/rfc/x", data=b"{}")
            await call("partner", "POST", "/partner/x", data=b"p" * 100)
            await call("too_large", "POST", "/partner/x", data=b"p" * 2048)
            await call("crlf", "GET", "/broken/x")
            for path in ("/-/providers", "/-/metrics", "/-/health", "/-/ready", "/-/console"):
                await call(path, "GET", path)
    finally:
        proc.stop()
    assert statuses["aws"] == statuses["oauth"] == statuses["rfc"] == statuses["partner"] == 200
    assert (statuses["too_large"], statuses["crlf"]) == (413, 502)
    logs = proc.logs()
    # the capture works: an access line per request, the failures named
    assert logs.count('"route":') == 11, logs
    assert '"error":"body_too_large"' in logs and '"error":"credential_error"' in logs
    keys = [*SECRETS.values(), ISSUED, ED25519_PEM.splitlines()[1]]
    assert_no_secrets([logs, *answers], keys)
