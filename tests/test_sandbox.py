"""The provider fakes reject what the real providers reject and accept the correct form.

Correct requests are computed here by hand with hashlib/hmac (not only through
proxy.signing), so a bug shared by the signer and the fakes cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import ssl
import string
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.sandbox import (
    FAKES,
    FakeKibo,
    FakePayNet,
    FakeSaison,
    FakeSesami,
    FakeSpaaza,
    build_sandbox,
    main,
    parse_listen,
)
from proxy.sandbox import credentials as creds
from proxy.sandbox.exchange import FakeExchange
from proxy.sandbox.kibo import mashery_date
from proxy.sandbox.saison import host_and_port

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
MakeServer = Callable[..., Awaitable[TestServer]]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A settable clock for the fakes' expiry rules."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hex_hmac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def saison_mac(secret: str, ts: str, nonce: str, method: str, pq: str, host: str, port: int) -> str:
    message = f"{ts}\n{nonce}\n{method}\n{pq}\n{host}\n{port}\n\n"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def nonce() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))


# --- Kibo ------------------------------------------------------------------------------------


async def kibo_token(client: Client, fake: FakeKibo, prefix: str = "") -> str:
    resp = await client.post(
        f"{prefix}/oauthserver/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(fake.client_id, fake.client_secret)},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == fake.token_ttl
    return str(body["access_token"])


async def test_kibo_token_endpoint_rejects_bad_client_and_grant(aiohttp_client: MakeClient) -> None:
    secret = "s3cr+t/with=chars"
    fake = FakeKibo(client_secret=secret)
    client = await aiohttp_client(fake.app)
    url = "/oauthserver/oauth2/token"
    grant = {"grant_type": "client_credentials"}

    resp = await client.post(url, data=grant)  # no Basic header
    assert resp.status == 401 and (await resp.json()) == {"error": "invalid_client"}
    resp = await client.post(url, data=grant, headers={"Authorization": basic(fake.client_id, "x")})
    assert resp.status == 401
    # RFC 6749 2.3.1 form-encoding of the issued strings is NOT what Kibo accepts
    encoded = basic(quote_plus(fake.client_id), quote_plus(secret))
    resp = await client.post(url, data=grant, headers={"Authorization": encoded})
    assert resp.status == 401
    resp = await client.post(
        url, data=grant, headers={"Authorization": "Bearer " + basic(fake.client_id, secret)[6:]}
    )
    assert resp.status == 401
    good = {"Authorization": basic(fake.client_id, secret)}
    resp = await client.post(url, data={"grant_type": "password"}, headers=good)
    assert resp.status == 400 and (await resp.json()) == {"error": "unsupported_grant_type"}
    assert fake.tokens_issued == 0

    token = await kibo_token(client, fake)
    assert token and fake.tokens_issued == 1
    assert fake.token_requests == 6  # every hit counts, rejected ones included


async def test_kibo_resources_need_api_key_and_live_bearer(aiohttp_client: MakeClient) -> None:
    clock = FakeClock()
    fake = FakeKibo(token_ttl=100, clock=clock)
    client = await aiohttp_client(fake.app)
    token = await kibo_token(client, fake)
    auth = {"Authorization": f"Bearer {token}"}

    resp = await client.get("/api/v2/location/7", headers=auth)  # no API-Key
    assert resp.status == 403
    assert resp.headers["X-Mashery-Error-Code"] == "ERR_403_NOT_AUTHORIZED"
    resp = await client.get("/api/v2/location/7", headers={**auth, "API-Key": "someone-else"})
    assert resp.status == 403
    resp = await client.get("/api/v2/location/7", headers={"API-Key": fake.client_id})
    assert resp.status == 401 and (await resp.json()) == {"error": "invalid_token"}
    resp = await client.get(
        "/api/x", headers={"API-Key": fake.client_id, "Authorization": "Bearer forged"}
    )
    assert resp.status == 401

    good = {**auth, "API-Key": fake.client_id}
    resp = await client.put("/api/v2/location/7?x=1", headers=good, data=b"a" * 1000)
    assert resp.status == 200
    text = await resp.text()
    body = json.loads(text)
    assert body["provider"] == "kibo" and body["method"] == "PUT"
    assert body["path"] == "/api/v2/location/7" and body["query"] == "x=1"
    assert body["body_bytes"] == 1000
    assert body["credentials"]["bearer"] == token[:4] + "..."
    assert token not in text and fake.client_secret not in text
    for name in ("QPS-Allotted", "QPS-Current", "Quota-Allotted", "Quota-Current", "Quota-Reset"):
        assert resp.headers[f"X-Plan-{name}"]
    assert resp.headers["X-Plan-Quota-Reset"].endswith(" 12:00:00 AM GMT")
    assert fake.last_resource_headers["api-key"] == fake.client_id  # case-insensitive copy

    clock.now += 101  # the token expires
    resp = await client.get("/api/x", headers=good)
    assert resp.status == 401
    assert resp.headers["X-Plan-QPS-Allotted"]  # on every resource answer

    token = await kibo_token(client, fake)
    good["Authorization"] = f"Bearer {token}"
    assert (await client.get("/api/x", headers=good)).status == 200
    fake.revoke_tokens()
    assert (await client.get("/api/x", headers=good)).status == 401


async def test_kibo_throttles_with_mashery_403(aiohttp_client: MakeClient) -> None:
    fake = FakeKibo()
    client = await aiohttp_client(fake.app)
    token = await kibo_token(client, fake)
    good = {"Authorization": f"Bearer {token}", "API-Key": fake.client_id}

    fake.throttle(2, code="ERR_403_DEVELOPER_OVER_RATE", retry_after=3)
    for _ in range(2):
        resp = await client.get("/api/x", headers=good)
        assert resp.status == 403
        assert resp.headers["X-Mashery-Error-Code"] == "ERR_403_DEVELOPER_OVER_RATE"
        assert resp.headers["Retry-After"] == "3"
        assert resp.headers["X-Plan-Quota-Reset"]
    assert (await client.get("/api/x", headers=good)).status == 200

    resp = await client.post("/-/sandbox/throttle?n=1")  # over HTTP, default code and wait
    assert resp.status == 200
    resp = await client.get("/api/x", headers=good)
    assert resp.status == 403
    assert resp.headers["X-Mashery-Error-Code"] == "ERR_403_DEVELOPER_OVER_QPS"
    assert resp.headers["Retry-After"] == "1"
    assert fake.token_requests == 1 and fake.throttled_requests == 3
    assert (await client.post("/-/sandbox/throttle?n=1&code=ERR_403_NOT_AUTHORIZED")).status == 400
    with pytest.raises(ValueError):
        fake.throttle(1, code="nope")


def test_mashery_long_date() -> None:
    assert mashery_date(datetime(2024, 1, 16, tzinfo=UTC)) == (
        "Tuesday, January 16, 2024 12:00:00 AM GMT"
    )
    assert mashery_date(datetime(2024, 3, 5, 13, 7, 9, tzinfo=UTC)) == (
        "Tuesday, March 5, 2024 1:07:09 PM GMT"
    )


async def test_token_endpoint_failure_modes(aiohttp_client: MakeClient) -> None:
    fake = FakeKibo()
    client = await aiohttp_client(fake.app)
    fake.fail_token(30, status=503)
    resp = await client.post(
        "/oauthserver/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(fake.client_id, fake.client_secret)},
    )
    assert resp.status == 503 and (await resp.json())["error"] == "server_error"

    fake.fail_token(30, mode="garbage")
    resp = await client.post("/oauthserver/oauth2/token")
    assert resp.status == 200
    with pytest.raises(ValueError):
        json.loads(await resp.text())

    fake.fail_token(0.3, mode="slow")
    started = time.monotonic()
    token = await kibo_token(client, fake)  # slow, then a normal answer
    assert token and time.monotonic() - started >= 0.25

    resp = await client.post("/-/sandbox/fail-token?seconds=30&status=500")
    assert resp.status == 200
    resp = await client.post("/oauthserver/oauth2/token")
    assert resp.status == 500
    fake.fail_token(0)  # heals
    assert await kibo_token(client, fake)
    assert (await client.post("/-/sandbox/fail-token?seconds=1&mode=bogus")).status == 400
    assert (await client.post("/-/sandbox/fail-token")).status == 400

    stats = await (await client.get("/-/sandbox/stats")).json()
    assert stats["token_requests"] == fake.token_requests == 5
    assert stats["tokens_issued"] == 2
    assert (await client.post("/-/sandbox/expire")).status == 200
    assert fake.live_tokens() == 0


async def test_slow_token_endpoint_does_not_hold_up_shutdown(aiohttp_server: MakeServer) -> None:
    fake = FakeKibo()
    server = await aiohttp_server(fake.app)
    fake.fail_token(60, mode="slow")
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(
            session.post(server.make_url("/oauthserver/oauth2/token"), data={"a": "b"})
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 5
        try:  # woken by the shutdown: answered, or cut off; never left hanging
            (await asyncio.wait_for(pending, 5)).release()
        except aiohttp.ClientError:
            pass


# --- PayNet ----------------------------------------------------------------------------------


def test_paynet_signature_vector_by_hand() -> None:
    assert hex_hmac("my_secret_key", "1700000000") == (
        "70ba7735fc01fec6d9d374332ea71c0c6183f4ac57273c8d8f7ca36fbf4dc359"
    )


async def paynet_token(client: Client, fake: FakePayNet) -> str:
    resp = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
        },
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


async def test_paynet_token_endpoint(aiohttp_client: MakeClient) -> None:
    fake = FakePayNet()
    client = await aiohttp_client(fake.app)
    form = {"grant_type": "client_credentials", "client_id": fake.client_id}
    resp = await client.post("/token", data={**form, "client_secret": "wrong"})
    assert resp.status == 401 and (await resp.json()) == {"error": "invalid_client"}
    resp = await client.post(  # Basic is not how PayNet takes the client
        "/token", data=form, headers={"Authorization": basic(fake.client_id, fake.client_secret)}
    )
    assert resp.status == 401
    resp = await client.post(
        "/token", data={**form, "client_secret": fake.client_secret, "grant_type": "password"}
    )
    assert resp.status == 400 and (await resp.json()) == {"error": "unsupported_grant_type"}
    assert await paynet_token(client, fake)
    assert fake.token_requests == 4 and fake.tokens_issued == 1


async def test_paynet_resources_check_fiid_timestamp_and_signature(
    aiohttp_client: MakeClient,
) -> None:
    fake = FakePayNet(client_secret="my_secret_key")
    client = await aiohttp_client(fake.app)
    token = await paynet_token(client, fake)

    def headers(ts: int, signature: str | None = None, fiid: str = fake.fiid) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "X-Fiid": fiid,
            "X-Timestamp": str(ts),
            "X-Signature": hex_hmac("my_secret_key", str(ts)) if signature is None else signature,
        }

    now = int(time.time())
    resp = await client.post("/api/v1/pay", headers=headers(now), json={"a": 1})
    assert resp.status == 200
    body = await resp.json()
    assert body["credentials"]["fiid"] == fake.fiid and body["credentials"]["timestamp"] == str(now)
    assert body["credentials"]["signature"].endswith("...")

    resp = await client.get("/api/x", headers=headers(now, fiid="OTHERFI"))
    assert resp.status == 403
    for stale in (now - 301, now + 301):
        resp = await client.get("/api/x", headers=headers(stale))
        assert resp.status == 400
        assert (await resp.json()) == {"error": "Timestamp not within valid range"}
    resp = await client.get("/api/x", headers=headers(now, hex_hmac("my_secret_key", str(now - 1))))
    assert resp.status == 400 and (await resp.json()) == {"error": "Invalid signature"}
    resp = await client.get(
        "/api/x", headers=headers(now, hex_hmac("my_secret_key", str(now)).upper())
    )
    assert resp.status == 400 and (await resp.json()) == {"error": "Invalid signature"}
    resp = await client.get("/api/x", headers=headers(now, hex_hmac("other_key", str(now))))
    assert resp.status == 400
    wrong_token = {**headers(now), "Authorization": "Bearer nope"}
    assert (await client.get("/api/x", headers=wrong_token)).status == 401

    fake.throttle(1, retry_after=7)
    resp = await client.get("/api/x", headers=headers(now))
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    fake.expire_all()
    assert (await client.get("/api/x", headers=headers(now))).status == 401


# --- Saison ----------------------------------------------------------------------------------


def test_saison_mac_vectors_by_hand() -> None:
    args = ("my_client_secret", "1700000000", "abcde12345")
    host = ("apit.saisoncard.co.jp", 443)
    assert saison_mac(*args, "POST", "/auth/account/profile", *host) == (
        "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU="
    )
    assert saison_mac(*args, "GET", "/auth/account/profile?a=1&b=2", *host) == (
        "+aIDodBL11maFQF2cIl4uO84nnZHEsDEyMzrfkFPR1Q="
    )


def test_host_and_port_of_host_header() -> None:
    assert host_and_port("API.Example.com", True) == ("api.example.com", 443)
    assert host_and_port("api.example.com", False) == ("api.example.com", 80)
    assert host_and_port("api.example.com:8443", True) == ("api.example.com", 8443)
    assert host_and_port("[::1]:9090", False) == ("::1", 9090)
    assert host_and_port("[::1]", True) == ("::1", 443)


async def saison_exchange(client: Client, fake: FakeSaison, form: dict[str, str]) -> Any:
    resp = await client.post(
        "/auth/token",
        data={"client_id": fake.client_id, "client_secret": fake.client_secret, **form},
        headers={"X-API-VERSION": "1"},
    )
    return resp.status, await resp.json()


async def test_saison_login_screen_issues_codes(aiohttp_client: MakeClient) -> None:
    fake = FakeSaison()
    client = await aiohttp_client(fake.app)
    base = f"/auth/screen/m-1/authorize?client_id={fake.client_id}&response_type=code"

    resp = await client.get(base + "&scope=profile,points")
    assert resp.status == 200 and "<form" in await resp.text()
    resp = await client.get("/auth/screen/m-1/authorize?client_id=bad&response_type=code")
    assert resp.status == 400
    resp = await client.get(f"/auth/screen/m-1/authorize?client_id={fake.client_id}")
    assert resp.status == 400

    target = base + "&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fcb&state=xyz"
    resp = await client.post(target, data={"decision": "allow"}, allow_redirects=False)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert location.netloc == "127.0.0.1:8080" and location.path == "/cb"
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"] and fake.codes_issued == 1

    resp = await client.post(target, data={"decision": "deny"}, allow_redirects=False)
    assert resp.status == 302 and "error=access_denied" in resp.headers["Location"]

    resp = await client.post(base, data={"decision": "allow"})  # no redirect_uri: a page
    assert resp.status == 200
    page = await resp.text()
    shown = page.split('<code id="code">')[1].split("</code>")[0]

    status, body = await saison_exchange(
        client,
        fake,
        {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": "http://127.0.0.1:8080/cb",
        },
    )
    assert status == 200 and body["token_type"] == "Bearer" and body["refresh_token"]
    assert fake.member_for_token(body["access_token"]) == "m-1"
    status, body = await saison_exchange(
        client, fake, {"grant_type": "authorization_code", "code": shown}
    )
    assert status == 200 and fake.last_member_for_token == "m-1"


async def test_saison_token_endpoint_rules(aiohttp_client: MakeClient) -> None:
    fake = FakeSaison()
    client = await aiohttp_client(fake.app)
    code = fake.issue_code("m-1")
    grant = {"grant_type": "authorization_code", "code": code}
    form = {"client_id": fake.client_id, "client_secret": fake.client_secret, **grant}

    resp = await client.post("/auth/token", data=form)  # no X-API-VERSION
    assert resp.status == 400
    resp = await client.post("/auth/token", json=form, headers={"X-API-VERSION": "1"})
    assert resp.status == 400  # JSON, not a form
    status, body = await saison_exchange(client, fake, {**grant, "client_secret": "wrong"})
    assert (status, body) == (401, {"error": "invalid_client"})
    status, first = await saison_exchange(client, fake, grant)
    assert status == 200
    status, body = await saison_exchange(client, fake, grant)  # a code works once
    assert (status, body) == (400, {"error": "invalid_grant"})
    status, body = await saison_exchange(client, fake, {"grant_type": "password"})
    assert (status, body) == (400, {"error": "unsupported_grant_type"})

    old = first["refresh_token"]
    status, second = await saison_exchange(
        client, fake, {"grant_type": "refresh_token", "refresh_token": old}
    )
    assert status == 200 and second["refresh_token"] != old
    status, body = await saison_exchange(  # rotated: the old one is spent
        client, fake, {"grant_type": "refresh_token", "refresh_token": old}
    )
    assert (status, body) == (400, {"error": "invalid_grant"})
    status, third = await saison_exchange(
        client, fake, {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert status == 200 and fake.refresh_requests == 3
    assert fake.token_requests == 9

    fake.revoke_refresh_tokens()
    status, body = await saison_exchange(
        client, fake, {"grant_type": "refresh_token", "refresh_token": third["refresh_token"]}
    )
    assert status == 400


async def test_saison_without_rotation_keeps_refresh_token(aiohttp_client: MakeClient) -> None:
    fake = FakeSaison(rotate_refresh=False)
    client = await aiohttp_client(fake.app)
    _, first = await saison_exchange(
        client, fake, {"grant_type": "authorization_code", "code": fake.issue_code("m")}
    )
    for _ in range(2):
        status, body = await saison_exchange(
            client, fake, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        )
        assert status == 200 and body["refresh_token"] == first["refresh_token"]


class SaisonCaller:
    """Signs Saison resource requests by hand, as the proxy should."""

    def __init__(self, client: Client, fake: FakeSaison, token: str) -> None:
        self.client, self.fake, self.token = client, fake, token
        self.host, self.port = "127.0.0.1", client.port

    def header(
        self,
        method: str,
        pq: str,
        *,
        ts: str | None = None,
        nonce_: str | None = None,
        host: str | None = None,
        port: int | None = None,
        token: str | None = None,
    ) -> dict[str, str]:
        ts = ts or str(int(time.time()))
        nonce_ = nonce_ or nonce()
        mac = saison_mac(
            self.fake.client_secret,
            ts,
            nonce_,
            method,
            pq,
            host or self.host,
            port or self.port or 0,
        )
        value = f'MAC id="{token or self.token}" ts="{ts}" nonce="{nonce_}" mac="{mac}"'
        return {"Authorization": value, "X-API-VERSION": "1"}

    async def call(self, method: str, pq: str, headers: dict[str, str]) -> tuple[int, Any]:
        resp = await self.client.request(method, pq, headers=headers)
        return resp.status, await resp.json()


async def saison_caller(client: Client, fake: FakeSaison) -> SaisonCaller:
    status, body = await saison_exchange(
        client, fake, {"grant_type": "authorization_code", "code": fake.issue_code("m-7")}
    )
    assert status == 200
    return SaisonCaller(client, fake, body["access_token"])


async def test_saison_mac_verification(aiohttp_client: MakeClient) -> None:
    fake = FakeSaison()
    client = await aiohttp_client(fake.app)
    caller = await saison_caller(client, fake)
    pq = "/auth/account/profile?b=2&a=1"

    status, body = await caller.call("GET", pq, caller.header("GET", pq))
    assert status == 200, body
    assert body["credentials"]["member"] == "m-7" and fake.last_member == "m-7"
    assert body["credentials"]["signed_over"]["port"] == client.port
    assert caller.token not in json.dumps(body)

    rejections = {
        "wrong method": ("POST", pq, caller.header("GET", pq)),
        "wrong path": ("GET", pq, caller.header("GET", "/auth/account/other?b=2&a=1")),
        "wrong query": ("GET", pq, caller.header("GET", "/auth/account/profile?a=1&b=2")),
        "wrong host": ("GET", pq, caller.header("GET", pq, host="api.example.com")),
        "wrong port": ("GET", pq, caller.header("GET", pq, port=443)),
        "stale ts": ("GET", pq, caller.header("GET", pq, ts=str(int(time.time()) - 400))),
        "future ts": ("GET", pq, caller.header("GET", pq, ts=str(int(time.time()) + 400))),
        "short nonce": ("GET", pq, caller.header("GET", pq, nonce_="abc123")),
        "bad nonce": ("GET", pq, caller.header("GET", pq, nonce_="abcde-1234")),
        "unknown token": ("GET", pq, caller.header("GET", pq, token="forged")),
    }
    for label, (method, target, headers) in rejections.items():
        status, body = await caller.call(method, target, headers)
        assert status == 401, label
        assert body["error"] == "invalid_token" and body["reason"], label

    reused = caller.header("POST", "/api/points")
    assert (await caller.call("POST", "/api/points", reused))[0] == 200
    status, body = await caller.call("POST", "/api/points", reused)
    assert (status, body["reason"]) == (401, "nonce_reused")

    headers = caller.header("GET", pq)
    del headers["X-API-VERSION"]
    assert (await caller.call("GET", pq, headers))[0] == 400
    status, body = await caller.call("GET", pq, {"X-API-VERSION": "1", "Authorization": "Bearer x"})
    assert status == 401

    fake.expire_all()  # access tokens die, refresh tokens live on
    status, body = await caller.call("GET", pq, caller.header("GET", pq))
    assert (status, body["reason"]) == (401, "unknown_token")


async def test_saison_mac_covers_the_raw_target(aiohttp_server: MakeServer) -> None:
    fake = FakeSaison()
    server = await aiohttp_server(fake.app)
    client_code = fake.issue_code("m")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            server.make_url("/auth/token"),
            data={
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "grant_type": "authorization_code",
                "code": client_code,
            },
            headers={"X-API-VERSION": "1"},
        )
        token = (await resp.json())["access_token"]
        raw = "/api/a%41b/x?q=%2F%7e"
        url = URL(f"http://127.0.0.1:{server.port}{raw}", encoded=True)
        caller = SaisonCaller.__new__(SaisonCaller)
        caller.fake, caller.token, caller.host, caller.port = fake, token, "127.0.0.1", server.port
        async with session.get(url, headers=caller.header("GET", raw)) as resp:
            assert resp.status == 200
            assert (await resp.json())["path"] == "/api/a%41b/x"
        decoded = "/api/aAb/x?q=/~"
        async with session.get(url, headers=caller.header("GET", decoded)) as resp:
            assert resp.status == 401


async def test_saison_default_port_follows_scheme(aiohttp_server: MakeServer) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    for secure in (True, False):
        fake = FakeSaison()
        server = await aiohttp_server(fake.app, ssl=server_ctx if secure else None)
        code = fake.issue_code("m")
        connector = aiohttp.TCPConnector(ssl=client_ctx if secure else False)
        async with aiohttp.ClientSession(connector=connector) as session:
            resp = await session.post(
                server.make_url("/auth/token"),
                data={
                    "client_id": fake.client_id,
                    "client_secret": fake.client_secret,
                    "grant_type": "authorization_code",
                    "code": code,
                },
                headers={"X-API-VERSION": "1"},
            )
            token = (await resp.json())["access_token"]
            caller = SaisonCaller.__new__(SaisonCaller)
            caller.fake, caller.token = fake, token
            caller.host, caller.port = "apit.saisoncard.co.jp", 443 if secure else 80
            url = server.make_url("/auth/account/profile")
            # the Host header names no port: the scheme's default is what was signed
            host = {"Host": "APIT.saisoncard.co.jp"}
            headers = {**caller.header("GET", "/auth/account/profile"), **host}
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            other = 80 if secure else 443
            headers = {**caller.header("GET", "/auth/account/profile", port=other), **host}
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 401


# --- Sesami ----------------------------------------------------------------------------------

VECTOR_SECRET = "my_client_secret"
VECTOR_SHOP = "64b7f0c2e1a2b3c4d5e6f708"
NUMBER_FORM = "ec16e96f0a72d7a6769478ecdba2e9bfbe797a41820248b6afcd26b973cef2fd"
STRING_FORM = "d9fe94fe3e08e6bc88103509adfc4084a1d976242b585a74068fa49725dc96ae"


def test_sesami_vectors_by_hand_and_by_the_fake() -> None:
    as_number = '{"code":"abc123","shopId":"64b7f0c2e1a2b3c4d5e6f708","timestamp":1700000000}'
    as_string = '{"code":"abc123","shopId":"64b7f0c2e1a2b3c4d5e6f708","timestamp":"1700000000"}'
    assert hex_hmac(VECTOR_SECRET, as_number) == NUMBER_FORM
    assert hex_hmac(VECTOR_SECRET, as_string) == STRING_FORM

    fake = FakeSesami(client_secret=VECTOR_SECRET)
    query = fake.signed_callback_query("abc123", VECTOR_SHOP, timestamp=1700000000)
    assert query == {
        "code": "abc123",
        "shopId": VECTOR_SHOP,
        "timestamp": "1700000000",
        "hmac": NUMBER_FORM,
    }
    stringly = fake.signed_callback_query("abc123", VECTOR_SHOP, 1700000000, as_="string")
    assert stringly["hmac"] == STRING_FORM
    assert (
        FakeSesami(client_secret=VECTOR_SECRET, timestamp_as="string").signed_callback_query(
            "abc123", VECTOR_SHOP, 1700000000
        )["hmac"]
        == STRING_FORM
    )

    install = fake.signed_install_query(VECTOR_SHOP, timestamp=1700000000)
    message = '{"shopId":"64b7f0c2e1a2b3c4d5e6f708","timestamp":1700000000}'
    assert install["hmac"] == hex_hmac(VECTOR_SECRET, message)

    # a tampered field no longer matches the hmac the fake sent
    for field, value in (("code", "abc124"), ("shopId", "x"), ("timestamp", "1700000001")):
        tampered = {k: v for k, v in {**query, field: value}.items() if k != "hmac"}
        tampered_ts: Any = int(tampered["timestamp"])
        body = json.dumps(
            {**tampered, "timestamp": tampered_ts}, sort_keys=True, separators=(",", ":")
        )
        assert hex_hmac(VECTOR_SECRET, body) != query["hmac"]

    hook = fake.uninstall_webhook(VECTOR_SHOP)
    assert hook["event"] == "uninstall_app" and hook["data"] == {"shopId": VECTOR_SHOP}
    assert hook["hmac"] == hex_hmac(VECTOR_SECRET, '{"shopId":"64b7f0c2e1a2b3c4d5e6f708"}')


async def sesami_install(client: Client, fake: FakeSesami, shop: str) -> str:
    resp = await client.get(
        "/api/v1/oauth/authorization",
        params=[
            ("clientId", fake.client_id),
            ("scopes[]", "read"),
            ("scopes[]", "write"),
            ("redirectUri", "http://127.0.0.1:8080/-/oauth/sesami/callback"),
            ("shopId", shop),
        ],
        allow_redirects=False,
    )
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/-/oauth/sesami/callback"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert set(query) == {"code", "shopId", "timestamp", "hmac"} and query["shopId"] == shop
    assert abs(int(query["timestamp"]) - time.time()) < 5
    signed = {k: v for k, v in query.items() if k != "hmac"}
    message = json.dumps(
        {**signed, "timestamp": int(signed["timestamp"])}, sort_keys=True, separators=(",", ":")
    )
    assert query["hmac"] == hex_hmac(fake.client_secret, message)
    resp = await client.post(
        "/api/v1/oauth/access-token",
        json={
            "code": query["code"],
            "shopId": shop,
            "clientId": fake.client_id,
            "clientSecret": fake.client_secret,
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["expireAt"] == "NEVER"
    return str(body["token"])


async def test_sesami_authorization_and_exchange_rules(aiohttp_client: MakeClient) -> None:
    fake = FakeSesami(callback_url="http://127.0.0.1:8080/-/oauth/sesami/callback")
    client = await aiohttp_client(fake.app)
    resp = await client.get(
        "/api/v1/oauth/authorization",
        params={"clientId": "other", "shopId": "s1"},
        allow_redirects=False,
    )
    assert resp.status == 400
    resp = await client.get(
        "/api/v1/oauth/authorization",
        params={"clientId": fake.client_id, "shopId": "s1", "redirectUri": "http://evil/cb"},
        allow_redirects=False,
    )
    assert resp.status == 400
    assert await sesami_install(client, fake, "s1")

    body = {"shopId": "s1", "clientId": fake.client_id, "clientSecret": fake.client_secret}
    url = "/api/v1/oauth/access-token"
    resp = await client.post(url, data="code=x", headers=FORM)
    assert resp.status == 400
    resp = await client.post(url, json={**body, "code": fake.issue_code("s1"), "clientSecret": "x"})
    assert resp.status == 401
    resp = await client.post(url, json={**body, "code": fake.issue_code("s1"), "shopId": "s2"})
    assert resp.status == 400  # a code is bound to its shop
    code = fake.issue_code("s1")
    resp = await client.post(url, json={**body, "code": code})
    assert resp.status == 200
    resp = await client.post(url, json={**body, "code": code})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    missing = {k: v for k, v in body.items() if k != "clientId"}
    assert (await client.post(url, json={**missing, "code": fake.issue_code("s1")})).status == 400
    assert fake.installs == 2 and fake.token_requests == 7


async def test_sesami_resources_and_uninstall(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer
) -> None:
    fake = FakeSesami()
    client = await aiohttp_client(fake.app)
    tokens = {shop: await sesami_install(client, fake, shop) for shop in ("shop-a", "shop-b")}

    def headers(
        shop: str, token: str | None = None, client_id: str | None = None
    ) -> dict[str, str]:
        return {
            "x-api-key": token or tokens[shop],
            "x-client-id": client_id or fake.client_id,
            "x-shop-id": shop,
        }

    for shop in tokens:
        resp = await client.get("/api/v1/orders", headers=headers(shop))
        assert resp.status == 200
        text = await resp.text()
        assert json.loads(text)["credentials"]["shop_id"] == shop and tokens[shop] not in text
    assert (await client.get("/api/x", headers=headers("shop-a", client_id="x"))).status == 401
    assert (await client.get("/api/x", headers=headers("shop-a", token="x"))).status == 401
    resp = await client.get("/api/x", headers=headers("shop-b", token=tokens["shop-a"]))
    assert resp.status == 403

    received: list[Any] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", webhook)
    receiver = await aiohttp_server(app)
    status = await fake.send_uninstall(str(receiver.make_url("/hook")), "shop-a")
    assert status == 204 and received == [fake.uninstall_webhook("shop-a")]
    assert (await client.get("/api/x", headers=headers("shop-a"))).status == 401
    assert (await client.get("/api/x", headers=headers("shop-b"))).status == 200
    assert fake.installed_shops == ["shop-b"] and fake.uninstalls == 1

    resp = await client.post(
        f"/-/sandbox/uninstall?shopId=shop-b&webhookUrl={receiver.make_url('/hook')}"
    )
    assert resp.status == 200 and (await resp.json())["webhook_status"] == 204
    assert (await client.get("/api/x", headers=headers("shop-b"))).status == 401
    resp = await client.post("/-/sandbox/uninstall?shopId=x&webhookUrl=http://example.com/hook")
    assert resp.status == 400


async def test_sesami_install_link(aiohttp_client: MakeClient) -> None:
    fake = FakeSesami(install_url="http://127.0.0.1:8080/-/oauth/sesami/install")
    client = await aiohttp_client(fake.app)
    resp = await client.get("/-/sandbox/install?shopId=s9", allow_redirects=False)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    message = json.dumps(
        {"shopId": "s9", "timestamp": int(query["timestamp"])}, separators=(",", ":")
    )
    assert query["hmac"] == hex_hmac(fake.client_secret, message)
    resp = await client.get(
        "/-/sandbox/install?installUrl=https://example.com/i", allow_redirects=False
    )
    assert resp.status == 400


# --- Spaaza ----------------------------------------------------------------------------------


async def spaaza_login(client: Client, fake: FakeSpaaza, **extra: str) -> Any:
    resp = await client.post(
        "/auth/login",
        data={"username": fake.username, "password": fake.password},
        headers=extra,
    )
    return resp.status, await resp.json()


def session_headers(info: dict[str, Any]) -> dict[str, str]:
    return {
        "X-Spaaza-Session-User-Id": str(info["session_user_id"]),
        "X-Spaaza-Session-Key": info["session_key"],
    }


async def test_spaaza_login_rules(aiohttp_client: MakeClient) -> None:
    fake = FakeSpaaza()
    client = await aiohttp_client(fake.app)
    status, body = await spaaza_login(client, fake, **{"X-Spaaza-MyPrice-App-Hostname": "shop.x"})
    assert status == 400 and body["error"]["name"] == "hostname_not_allowed"
    resp = await client.post("/auth/login", data={"username": fake.username, "password": "nope"})
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["name"] == "login_failed" and isinstance(error["code"], int)

    status, body = await spaaza_login(client, fake)
    assert status == 200
    info = body["results"]["session_info"]
    assert isinstance(info["session_user_id"], int) and info["session_key_validity"] == 24
    expires = datetime.strptime(info["session_expires_date"], "%Y-%m-%d %H:%M:%S")
    assert abs(expires.replace(tzinfo=UTC).timestamp() - time.time() - 24 * 3600) < 5
    assert fake.logins == 3 and fake.live_sessions == 1

    otp = FakeSpaaza(require_otp=True)
    otp_client = await aiohttp_client(otp.app)
    status, body = await spaaza_login(otp_client, otp)
    assert status == 401 and body["error"]["name"] == "otp_required"


async def test_spaaza_sessions_and_resources(aiohttp_client: MakeClient) -> None:
    clock = FakeClock()
    fake = FakeSpaaza(session_hours=1, clock=clock)
    client = await aiohttp_client(fake.app)
    _, first = await spaaza_login(client, fake)
    first_info = first["results"]["session_info"]
    hostname = {"X-Spaaza-MyPrice-App-Hostname": "shop.example"}
    resp = await client.get("/get-card", headers={**session_headers(first_info), **hostname})
    assert resp.status == 200
    body = await resp.json()
    assert body["credentials"]["kind"] == "admin"
    assert fake.last_hostname_header == "shop.example"

    _, second = await spaaza_login(client, fake)  # deletes the first session
    second_info = second["results"]["session_info"]
    resp = await client.get("/get-card", headers=session_headers(first_info))
    assert resp.status == 401
    assert (await resp.json())["error"] == {
        "code": 6,
        "name": "no_valid_session",
        "description": "No valid session; log in again",
    }
    resp = await client.post("/admin/x", headers=session_headers(second_info))
    assert resp.status == 200 and fake.last_hostname_header is None
    assert fake.live_sessions == 1
    wrong_user = {**session_headers(second_info), "X-Spaaza-Session-User-Id": "999"}
    assert (await client.get("/get-card", headers=wrong_user)).status == 401

    privileged = {"Authorization": f"Bearer {fake.token_id}:{fake.token_secret}"}
    resp = await client.get("/internal/get-user", headers=privileged)
    text = await resp.text()
    assert resp.status == 200 and json.loads(text)["credentials"]["kind"] == "privileged"
    assert fake.token_secret not in text
    forged = {"Authorization": f"Bearer {fake.token_id}:guess"}
    resp = await client.get("/internal/get-user", headers=forged)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == 6

    user_id, key = fake.create_user_session()
    user = {"X-Spaaza-Session-User-Id": str(user_id), "X-Spaaza-Session-Key": key}
    resp = await client.get("/get-card", headers=user)
    assert resp.status == 200 and (await resp.json())["credentials"]["kind"] == "user"
    resp = await client.post("/-/sandbox/user-session")
    assert resp.status == 200 and (await resp.json())["session_key"]

    clock.now += 3601  # sessions expire
    assert (await client.get("/get-card", headers=session_headers(second_info))).status == 401
    clock.now -= 3601
    fake.expire_all()
    assert fake.live_sessions == 0
    assert (await client.get("/get-card", headers=user)).status == 401
    fake.throttle(1, retry_after=2)
    resp = await client.get("/get-card", headers=privileged)
    assert resp.status == 429 and resp.headers["Retry-After"] == "2"


# --- Exchange (Binance-like) -----------------------------------------------------------------

#: Binance Spot API documentation, "SIGNED Endpoint Examples for POST /api/v3/order": the
#: example's secret key, its parameters and its published HMAC-SHA256 signature
BINANCE_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
BINANCE_PARAMS = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)
BINANCE_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_exchange_signature_vector_by_hand() -> None:
    assert hex_hmac(BINANCE_SECRET, BINANCE_PARAMS) == BINANCE_SIGNATURE


async def test_exchange_accepts_binances_documented_example_at_its_time(
    aiohttp_client: MakeClient,
) -> None:
    clock = FakeClock()
    clock.now = 1499827319.559 + 1.0  # a second after the example's timestamp
    fake = FakeExchange(api_key="doc-api-key", secret_key=BINANCE_SECRET, clock=clock)
    client = await aiohttp_client(fake.app)
    target = f"/api/v3/order?{BINANCE_PARAMS}&signature={BINANCE_SIGNATURE}"
    resp = await client.post(URL(target, encoded=True), headers={"X-MBX-APIKEY": "doc-api-key"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["credentials"]["timestamp"] == "1499827319559"
    # the example's "mixed" form: part of the parameters in a form body, signed after the
    # query with nothing in between (Binance: totalParams = query string + request body)
    query, _, body = BINANCE_PARAMS.partition("&quantity=")
    body = "quantity=" + body
    signature = hex_hmac(BINANCE_SECRET, query + body)
    resp = await client.post(
        URL(f"/api/v3/order?{query}&signature={signature}", encoded=True),
        data=body,
        headers={"X-MBX-APIKEY": "doc-api-key", **FORM},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["body_bytes"] == len(body)


async def test_exchange_refuses_a_bad_signature_key_or_timestamp(
    aiohttp_client: MakeClient,
) -> None:
    clock = FakeClock()
    fake = FakeExchange(clock=clock)
    client = await aiohttp_client(fake.app)
    key = {"X-MBX-APIKEY": creds.EXCHANGE_API_KEY}

    async def call(
        params: str, *, sign: str | None = None, headers: dict[str, str] = key, **kw: Any
    ) -> tuple[int, Any]:
        signed = params if sign is None else sign
        signature = hex_hmac(creds.EXCHANGE_SECRET_KEY, signed)
        target = f"/api/v3/account?{params}&signature={signature}"
        resp = await client.get(URL(target, encoded=True), headers=headers, **kw)
        return resp.status, await resp.json()

    now_ms = int(clock.now * 1000)
    ok = f"recvWindow=5000&timestamp={now_ms}"
    status, body = await call(ok)
    assert status == 200, body
    assert body["credentials"] == {
        "api_key": "sand...",
        "timestamp": str(now_ms),
        "signature": hex_hmac(creds.EXCHANGE_SECRET_KEY, ok)[:4] + "...",
    }
    bad_signature = {"code": -1022, "msg": "Signature for this request is not valid."}
    # a bare request, a parameter changed after signing, another key
    resp = await client.get("/api/v3/account?recvWindow=5000")
    assert resp.status == 401 and await resp.json() == bad_signature
    assert await call(ok, sign=ok.replace("5000", "6000")) == (401, bad_signature)
    upper = hex_hmac(creds.EXCHANGE_SECRET_KEY, ok).upper()  # not case sensitive (docs)
    resp = await client.get(
        URL(f"/api/v3/account?{ok}&signature={upper}", encoded=True), headers=key
    )
    assert resp.status == 200
    status, body = await call(ok, headers={"X-MBX-APIKEY": "someone-else"})
    assert (status, body["code"]) == (401, -2015)
    status, body = await call(ok, headers={})
    assert (status, body["code"]) == (401, -2015)
    # timing security: within recvWindow before the server's time, at most 1 s after it
    status, body = await call(f"timestamp={now_ms - 6000}")  # default window 5000
    assert (status, body["code"]) == (400, -1021)
    assert (await call(f"recvWindow=10000&timestamp={now_ms - 6000}"))[0] == 200
    assert (await call(f"timestamp={now_ms + 2000}"))[1]["code"] == -1021
    assert (await call(f"recvWindow=70000&timestamp={now_ms}"))[1]["code"] == -1131
    assert (await call("recvWindow=5000"))[1]["code"] == -1102
    # a body is part of what is signed
    form = "quantity=1&price=0.1"
    params = f"symbol=LTCBTC&timestamp={now_ms}"
    signature = hex_hmac(creds.EXCHANGE_SECRET_KEY, params)  # the query alone: wrong
    resp = await client.post(
        URL(f"/api/v3/order?{params}&signature={signature}", encoded=True),
        data=form,
        headers={**key, **FORM},
    )
    assert resp.status == 401
    assert fake.stats()["refused"] == 9 and fake.resource_requests == 12
    assert fake.token_requests == 0


async def test_exchange_server_time_and_ping_need_no_signature(
    aiohttp_client: MakeClient,
) -> None:
    clock = FakeClock()
    client = await aiohttp_client(FakeExchange(clock=clock).app)
    resp = await client.get("/api/v3/time")
    assert resp.status == 200 and await resp.json() == {"serverTime": int(clock.now * 1000)}
    resp = await client.get("/api/v3/ping")
    assert resp.status == 200 and await resp.json() == {}


# --- the whole sandbox -----------------------------------------------------------------------


async def test_sandbox_mounts_all_five(aiohttp_client: MakeClient) -> None:
    app = build_sandbox()
    fakes = app[FAKES]
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 200 and "keyhop sandbox" in await resp.text()

    kibo = fakes["kibo"]
    assert isinstance(kibo, FakeKibo)
    token = await kibo_token(client, kibo, prefix="/kibo")
    resp = await client.get(
        "/kibo/api/v2/x", headers={"Authorization": f"Bearer {token}", "API-Key": kibo.client_id}
    )
    assert resp.status == 200 and (await resp.json())["path"] == "/kibo/api/v2/x"

    # Saison: the login screen a person clicks, then the token, then a MAC-signed request
    saison = fakes["saison"]
    assert isinstance(saison, FakeSaison)
    authorize = (
        f"/saison/auth/screen/{creds.SAISON_MEMBER}/authorize?client_id={creds.SAISON_CLIENT_ID}"
        "&response_type=code&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2F-%2Foauth%2Fsaison"
        "%2Fcallback&state=s1"
    )
    resp = await client.get(authorize)
    assert resp.status == 200 and '<form method="post">' in await resp.text()
    resp = await client.post(authorize, data={"decision": "allow"}, allow_redirects=False)
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    resp = await client.post(
        "/saison/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": creds.SAISON_CLIENT_ID,
            "client_secret": creds.SAISON_CLIENT_SECRET,
        },
        headers={"X-API-VERSION": "1"},
    )
    access = (await resp.json())["access_token"]
    caller = SaisonCaller(client, saison, access)
    target = "/saison/auth/account/profile"
    status, body = await caller.call("GET", target, caller.header("GET", target))
    assert status == 200 and body["credentials"]["member"] == creds.SAISON_MEMBER

    # Sesami: the redirect through the prefix
    resp = await client.get(
        "/sesami/api/v1/oauth/authorization",
        params={
            "clientId": creds.SESAMI_CLIENT_ID,
            "shopId": creds.SESAMI_SHOP_ID,
            "redirectUri": "http://127.0.0.1:8080/-/oauth/sesami/callback",
        },
        allow_redirects=False,
    )
    assert resp.status == 302 and "hmac=" in resp.headers["Location"]

    resp = await client.post(
        "/paynet/token",
        data={
            "grant_type": "client_credentials",
            "client_id": creds.PAYNET_CLIENT_ID,
            "client_secret": creds.PAYNET_CLIENT_SECRET,
        },
    )
    assert resp.status == 200
    resp = await client.post(
        "/spaaza/auth/login",
        data={"username": creds.SPAAZA_USERNAME, "password": creds.SPAAZA_PASSWORD},
    )
    assert resp.status == 200

    resp = await client.post("/kibo/-/sandbox/throttle?n=1")
    assert resp.status == 200
    stats = await (await client.get("/-/sandbox/stats")).json()
    assert set(stats) == {"kibo", "paynet", "saison", "sesami", "spaaza", "exchange"}
    assert stats["spaaza"]["live_sessions"] == 1 and stats["kibo"]["tokens_issued"] == 1
    assert (await client.post("/-/sandbox/expire")).status == 200
    assert fakes["spaaza"].stats()["live_sessions"] == 0
    status, body = await caller.call("GET", target, caller.header("GET", target))
    assert status == 401


def test_parse_listen_refuses_non_loopback() -> None:
    assert parse_listen("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_listen("[::1]:9091") == ("::1", 9091)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("0.0.0.0:9090", "10.1.2.3:80", "example.com:80", "9090", "127.0.0.1:x", "::1:0"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert main("0.0.0.0:9090") == 2


def test_keyhop_sandbox_command_serves_and_stops() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sandbox", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line and "credentials" in line
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/sandbox/stats", timeout=5) as r:
            assert set(json.load(r)) == set(creds.PREFIXES)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == ""  # one line only
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
