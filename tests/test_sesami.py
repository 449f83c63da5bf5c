"""Sesami end to end: verified app installs per shop, offline tokens, uninstall, restarts.

The fake Sesami (proxy/sandbox/sesami.py) runs on a real TLS socket. Its authorization
endpoint redirects the browser to keyhop's callback with a signed query, its token endpoint
checks the JSON body, and its resources check `x-api-key`, `x-client-id` and `x-shop-id`.
keyhop reaches it through the `sesami` preset with only the endpoints pointed at it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.runtime import KEYHOP
from proxy.sandbox.sesami import FakeSesami
from proxy.store import SqliteStore
from tests.conftest import MakeProxy, StartUpstream, raw_url
from tests.support import Clock, KeyhopProcess, assert_no_secrets, wait_healthy, write_config

CLIENT_ID, CLIENT_SECRET = "sesami-client-3c4d", "sesami-secret-8e9f0a1b2c"
SHOP_A, SHOP_B = "64b7f0c2e1a2b3c4d5e6f708", "shop-b.0002"
SCOPES = ["read", "write"]
AUTHORIZE_PATH = "/api/v1/oauth/authorization"
TIMEOUT = aiohttp.ClientTimeout(total=10)


def sesami_config(
    base: str, ca_file: str, store: str = "memory:", **auth_extra: Any
) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorize_url": base + AUTHORIZE_PATH,
        "access_token_url": base + "/api/v1/oauth/access-token",
        "scopes": SCOPES,
        **auth_extra,
    }
    return {
        "store": store,
        "providers": {"sesami": {"preset": "sesami", "auth": auth, "ca_file": ca_file}},
        "routes": [
            {"prefix": "/sesami", "upstream": base, "provider": "sesami"},
            {"prefix": "/shops", "upstream": base, "provider": "sesami", "tenant": "path"},
        ],
    }


async def start_sesami(
    upstream: StartUpstream, clock: Callable[[], float] = time.time, **kw: Any
) -> tuple[FakeSesami, str]:
    fake = FakeSesami(CLIENT_ID, CLIENT_SECRET, clock=clock, **kw)
    return fake, await upstream(fake.app)


def keyhop_url(client: TestClient[Any, Any]) -> str:
    return f"http://127.0.0.1:{client.port}"


async def keyhop_app(
    proxy: MakeProxy,
    fake: FakeSesami,
    base: str,
    ca_file: str,
    clock: Callable[[], float] = time.time,
    **auth_extra: Any,
) -> TestClient[Any, Any]:
    """keyhop in process; the fake only accepts keyhop's own callback as `redirectUri`."""
    client = await proxy(sesami_config(base, ca_file, **auth_extra), clock=clock)
    if "redirect_uri" not in auth_extra:
        fake.callback_url = keyhop_url(client) + "/-/oauth/sesami/callback"
    return client


@dataclass
class Installed:
    authorize: URL  # where keyhop's install endpoint sent the browser
    callback: URL  # where the fake sent the browser back
    code: str
    status: int  # keyhop's answer to the callback
    location: str | None
    text: str


async def install_shop(
    keyhop: str, fake: FakeSesami, base: str, shop: str, ca_file: str
) -> Installed:
    """What a merchant's browser does: Sesami -> keyhop install -> Sesami -> keyhop callback."""
    ctx = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as browser:
        start = await browser.get(
            f"{keyhop}/-/oauth/sesami/install",
            params=fake.signed_install_query(shop),
            allow_redirects=False,
        )
        assert start.status == 302, await start.text()
        authorize = URL(start.headers["Location"])
        assert str(authorize.with_query(None)) == base + AUTHORIZE_PATH
        assert authorize.query.getall("clientId") == [CLIENT_ID]
        assert authorize.query.getall("scopes[]") == SCOPES
        assert authorize.query.getall("shopId") == [shop]
        assert authorize.query.getall("redirectUri") == [f"{keyhop}/-/oauth/sesami/callback"]
        consent = await browser.get(authorize, ssl=ctx, allow_redirects=False)
        assert consent.status == 302, await consent.text()
        callback = URL(consent.headers["Location"], encoded=True)
        assert str(callback).startswith(f"{keyhop}/-/oauth/sesami/callback?")
        assert callback.query["shopId"] == shop and "hmac" in callback.query
        done = await browser.get(callback, allow_redirects=False)
        return Installed(
            authorize,
            callback,
            callback.query["code"],
            done.status,
            done.headers.get("Location"),
            await done.text(),
        )


async def get_as(
    client: TestClient[Any, Any], shop: str | None, path: str = "/sesami/api/x"
) -> aiohttp.ClientResponse:
    headers = {"X-Keyhop-Tenant": shop} if shop is not None else {}
    return await client.get(path, headers=headers)


async def stored(client: TestClient[Any, Any], shop: str) -> Any:
    return await client.app[KEYHOP].store.get("sesami", shop)


def assert_shop_headers(fake: FakeSesami, shop: str) -> None:
    sent = fake.last_resource_headers
    assert sent.getall("x-api-key") == [fake.token_for(shop)]
    assert sent.getall("x-client-id") == [CLIENT_ID]
    assert sent.getall("x-shop-id") == [shop]
    assert "Authorization" not in sent
    assert "X-Keyhop-Tenant" not in sent


# --- install, callback and per-shop tokens -----------------------------------------------------


async def test_two_shops_install_through_the_redirect_chain_and_each_uses_its_own_token(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    for shop in (SHOP_A, SHOP_B):
        done = await install_shop(keyhop_url(client), fake, base, shop, ca_file)
        assert done.status == 200, done.text
        assert "connected" in done.text.lower() and shop in done.text
    assert fake.installs == 2 and fake.token_requests == 2
    assert fake.installed_shops == sorted([SHOP_A, SHOP_B])
    token_a, token_b = fake.token_for(SHOP_A), fake.token_for(SHOP_B)
    assert token_a and token_b and token_a != token_b
    for shop, token in ((SHOP_A, token_a), (SHOP_B, token_b)):
        credential = await stored(client, shop)
        assert credential is not None and credential.token == token
        assert credential.expires_at is None  # expireAt: NEVER

    # header tenant: each shop's own token and the three headers, never Authorization
    for shop in (SHOP_A, SHOP_B, SHOP_A):
        resp = await client.get(
            "/sesami/api/v1/bookings?x=1",
            headers={"X-Keyhop-Tenant": shop, "Authorization": "Bearer client-own"},
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["credentials"]["shop_id"] == shop
        assert body["path"] == "/api/v1/bookings" and body["query"] == "x=1"
        assert_shop_headers(fake, shop)

    # path tenant: the first segment names the shop and is stripped
    for shop in (SHOP_B, SHOP_A):
        resp = await client.post(f"/shops/{shop}/api/v1/customers", data=b"{}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["path"] == "/api/v1/customers"
        assert body["credentials"]["shop_id"] == shop
        assert_shop_headers(fake, shop)

    assert fake.token_requests == 2  # offline tokens: never fetched again
    assert fake.resource_requests == 5


async def test_the_browser_lands_on_after_install_url_when_configured(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    welcome = "https://merchant.example.test/welcome?from=keyhop"
    client = await keyhop_app(proxy, fake, base, ca_file, after_install_url=welcome)
    done = await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)
    assert done.status == 302, done.text
    assert done.location == welcome
    assert fake.installs == 1
    assert (await get_as(client, SHOP_A)).status == 200
    assert_shop_headers(fake, SHOP_A)


async def test_a_configured_redirect_uri_is_sent_as_is(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    public = "https://booking-app.example.test/-/oauth/sesami/callback"
    client = await keyhop_app(proxy, fake, base, ca_file, redirect_uri=public)
    resp = await client.get(
        "/-/oauth/sesami/install",
        params=fake.signed_install_query(SHOP_A),
        allow_redirects=False,
    )
    assert resp.status == 302
    authorize = URL(resp.headers["Location"])
    assert authorize.query.getall("redirectUri") == [public]
    assert authorize.query.getall("clientId") == [CLIENT_ID]
    assert authorize.query.getall("scopes[]") == SCOPES
    assert authorize.query.getall("shopId") == [SHOP_A]
    assert fake.token_requests == 0  # an install redirects, it exchanges nothing


async def test_a_shop_never_installed_is_not_connected_and_no_tenant_is_required(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)
    before = fake.resource_requests
    for resp in (await get_as(client, "shop-never"), await client.get("/shops/shop-never/x")):
        assert resp.status == 503
        body = await resp.json()
        assert body["error"] == "not_connected"
        assert body["provider"] == "sesami"
        assert "install" in body["message"]
    missing = await get_as(client, None)
    assert missing.status == 400
    assert (await missing.json())["error"] == "tenant_required"
    assert fake.resource_requests == before
    assert fake.token_requests == 1


@pytest.mark.parametrize(
    "tenant", ["../x", "a/b", "a" * 200, "%2e%2e", "a b", "shop\\x", ".."], ids=repr
)
async def test_a_tenant_header_that_is_not_an_id_is_refused_before_the_fake(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, tenant: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)
    resp = await get_as(client, tenant)
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"
    assert fake.resource_requests == 0 and fake.token_requests == 1


@pytest.mark.parametrize(
    "segment", ["a%2Fb", "a" * 200, "%2e%2e", "a%00b", "..%2f" + SHOP_A], ids=repr
)
async def test_a_path_tenant_that_is_not_an_id_is_refused_before_the_fake(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, segment: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)
    resp = await client.session.get(raw_url(client, f"/shops/{segment}/api/x"))
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"
    assert fake.resource_requests == 0 and fake.token_requests == 1


@pytest.mark.parametrize("action", ["install", "callback"])
async def test_a_signed_shop_id_that_is_not_an_id_is_refused(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, action: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    for shop in ("../x", "a/b", "a" * 200):
        if action == "install":
            query = fake.signed_install_query(shop)
        else:
            query = fake.signed_callback_query(fake.issue_code(shop), shop)
        resp = await client.get(f"/-/oauth/sesami/{action}", params=query, allow_redirects=False)
        assert resp.status == 400, await resp.text()
        assert "Location" not in resp.headers
    assert fake.token_requests == 0


# --- verification (SPEC 4.5) -------------------------------------------------------------------


def _tamper(
    fake: FakeSesami, action: str, how: str, clock: Clock
) -> tuple[dict[str, str], list[str]]:
    """A query Sesami did not send as it is; and the codes that would work if exchanged."""
    now = int(clock())
    if action == "install":
        query = fake.signed_install_query(SHOP_A)
        codes: list[str] = []
    elif how == "shopId":
        # the code is genuinely SHOP_B's; only the signature says the request is for SHOP_A
        codes = [fake.issue_code(SHOP_B)]
        query = fake.signed_callback_query(codes[0], SHOP_A)
    else:
        codes = [fake.issue_code(SHOP_A), fake.issue_code(SHOP_A)]
        query = fake.signed_callback_query(codes[0], SHOP_A)
    if how == "code":
        query["code"] = codes[1]  # another code that the fake would honour
    elif how == "shopId":
        query["shopId"] = SHOP_B
    elif how == "timestamp":
        query["timestamp"] = str(int(query["timestamp"]) - 1)
    elif how == "no hmac":
        del query["hmac"]
    elif how == "empty hmac":
        query["hmac"] = ""
    elif how == "hmac of other shop":
        other = fake.signed_install_query(SHOP_B)
        query["hmac"] = other["hmac"]
    elif how == "extra param":
        query["redirect"] = "https://evil.example.test/"
    elif how == "replay 6 min":
        clock.advance(6 * 60)  # keyhop receives it six minutes after Sesami signed it
    elif how == "old timestamp":
        signed = {k: v for k, v in query.items() if k not in ("timestamp", "hmac")}
        query = fake._signed(signed, now - 6 * 60, None)
    elif how == "future":
        signed = {k: v for k, v in query.items() if k not in ("timestamp", "hmac")}
        query = fake._signed(signed, now + 10 * 60, None)
    else:
        raise AssertionError(how)
    return query, codes


TAMPERS = [
    "shopId",
    "timestamp",
    "no hmac",
    "empty hmac",
    "hmac of other shop",
    "extra param",
    "replay 6 min",
    "old timestamp",
    "future",
]
REFUSALS = [("install", how) for how in TAMPERS] + [("callback", how) for how in ["code", *TAMPERS]]


@pytest.mark.parametrize(("action", "how"), REFUSALS, ids=[f"{a}-{h}" for a, h in REFUSALS])
async def test_a_tampered_missing_or_stale_hmac_is_refused_and_changes_nothing(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, action: str, how: str
) -> None:
    clock = Clock()
    fake, base = await start_sesami(upstream, clock)
    client = await keyhop_app(proxy, fake, base, ca_file, clock)
    query, codes = _tamper(fake, action, how, clock)
    resp = await client.get(f"/-/oauth/sesami/{action}", params=query, allow_redirects=False)
    text = await resp.text()
    assert resp.status == 401, text
    assert "Location" not in resp.headers
    body = await resp.json()
    assert body["error"] == "bad_signature"
    assert_no_secrets([text], [CLIENT_SECRET, *codes])
    assert fake.token_requests == 0 and fake.installs == 0
    assert await stored(client, SHOP_A) is None and await stored(client, SHOP_B) is None
    for shop in (SHOP_A, SHOP_B):
        assert (await get_as(client, shop)).status == 503
    assert fake.resource_requests == 0


@pytest.mark.parametrize("action", ["install", "callback"])
@pytest.mark.parametrize("form", ["number", "string", "uppercase"])
async def test_timestamp_hashed_as_number_or_string_and_uppercase_hex_are_accepted(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, action: str, form: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    as_ = "string" if form == "string" else "number"
    if action == "install":
        query = fake.signed_install_query(SHOP_A, as_=as_)
    else:
        query = fake.signed_callback_query(fake.issue_code(SHOP_A), SHOP_A, as_=as_)
    # the two forms really are different digests
    other = "number" if as_ == "string" else "string"
    assert query["hmac"] != fake.sign({k: v for k, v in query.items() if k != "hmac"}, other)
    if form == "uppercase":
        query["hmac"] = query["hmac"].upper()
    resp = await client.get(f"/-/oauth/sesami/{action}", params=query, allow_redirects=False)
    if action == "install":
        assert resp.status == 302, await resp.text()
        assert URL(resp.headers["Location"]).query["shopId"] == SHOP_A
        assert fake.token_requests == 0
    else:
        assert resp.status == 200, await resp.text()
        assert fake.token_requests == 1 and fake.installs == 1
        assert (await stored(client, SHOP_A)).token == fake.token_for(SHOP_A)
        assert (await get_as(client, SHOP_A)).status == 200
        assert_shop_headers(fake, SHOP_A)


# the issue's vectors: secret my_client_secret, code abc123, timestamp 1700000000
VECTOR_QUERY = {"code": "abc123", "shopId": "64b7f0c2e1a2b3c4d5e6f708", "timestamp": "1700000000"}
VECTOR_NUMBER = "ec16e96f0a72d7a6769478ecdba2e9bfbe797a41820248b6afcd26b973cef2fd"
VECTOR_STRING = "d9fe94fe3e08e6bc88103509adfc4084a1d976242b585a74068fa49725dc96ae"


@pytest.mark.parametrize("digest", [VECTOR_NUMBER, VECTOR_STRING], ids=["number", "string"])
async def test_the_published_vectors_are_accepted_and_a_flipped_digit_is_not(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, digest: str
) -> None:
    fake = FakeSesami(CLIENT_ID, "my_client_secret")
    base = await upstream(fake.app)
    config = sesami_config(base, ca_file, client_secret="my_client_secret")
    client = await proxy(config, clock=Clock(1_700_000_000 + 30))
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    refused = await client.get("/-/oauth/sesami/callback", params={**VECTOR_QUERY, "hmac": flipped})
    assert refused.status == 401
    assert fake.token_requests == 0
    install = await client.get(
        "/-/oauth/sesami/install", params={**VECTOR_QUERY, "hmac": digest}, allow_redirects=False
    )
    assert install.status == 302, await install.text()
    # the callback is accepted and exchanged (the fake never issued abc123: it refuses it)
    callback = await client.get("/-/oauth/sesami/callback", params={**VECTOR_QUERY, "hmac": digest})
    assert callback.status == 502, await callback.text()
    assert (await callback.json())["error"] == "credential_error"
    assert fake.token_requests == 1
    assert await stored(client, VECTOR_QUERY["shopId"]) is None


async def test_a_timestamp_within_five_minutes_is_accepted(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    clock = Clock()
    fake, base = await start_sesami(upstream, clock)
    client = await keyhop_app(proxy, fake, base, ca_file, clock)
    query = fake.signed_callback_query(fake.issue_code(SHOP_A), SHOP_A)
    clock.advance(4 * 60)
    resp = await client.get("/-/oauth/sesami/callback", params=query, allow_redirects=False)
    assert resp.status == 200, await resp.text()
    assert fake.installs == 1


# --- uninstall webhook -------------------------------------------------------------------------


async def test_uninstall_deletes_that_shop_only_and_a_bad_hmac_deletes_nothing(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    for shop in (SHOP_A, SHOP_B):
        assert (await install_shop(keyhop_url(client), fake, base, shop, ca_file)).status == 200
        assert (await get_as(client, shop)).status == 200
    webhook = keyhop_url(client) + "/-/oauth/sesami/webhook"

    # forged webhooks for SHOP_B: nothing is deleted, SHOP_B keeps working
    good = fake.uninstall_webhook(SHOP_B)
    forged = [
        {**good, "hmac": good["hmac"][:-1] + ("0" if good["hmac"][-1] != "0" else "1")},
        {k: v for k, v in good.items() if k != "hmac"},
        {**good, "hmac": fake.uninstall_webhook(SHOP_A)["hmac"]},
        {**good, "data": {"shopId": SHOP_B, "extra": "x"}},
    ]
    for body in forged:
        resp = await client.post("/-/oauth/sesami/webhook", json=body)
        assert resp.status == 401, await resp.text()
        assert (await resp.json())["error"] == "bad_signature"
    assert (await stored(client, SHOP_B)) is not None
    resp = await get_as(client, SHOP_B)
    assert resp.status == 200
    assert_shop_headers(fake, SHOP_B)

    # a genuine uninstall of SHOP_A, as Sesami sends it
    requests_before = fake.token_requests
    assert await fake.send_uninstall(webhook, SHOP_A) == 200
    assert await stored(client, SHOP_A) is None
    gone = await get_as(client, SHOP_A)
    assert gone.status == 503
    assert (await gone.json())["error"] == "not_connected"
    path_gone = await client.get(f"/shops/{SHOP_A}/api/x")
    assert path_gone.status == 503
    still = await get_as(client, SHOP_B)
    assert still.status == 200, await still.text()
    assert_shop_headers(fake, SHOP_B)
    assert fake.token_requests == requests_before  # nothing tried to fetch a new token

    # the merchant installs again: a new token, and SHOP_A works again
    assert (await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)).status == 200
    assert (await get_as(client, SHOP_A)).status == 200
    assert_shop_headers(fake, SHOP_A)


async def test_a_signed_event_other_than_uninstall_deletes_nothing(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    await install_shop(keyhop_url(client), fake, base, SHOP_A, ca_file)
    body = {**fake.uninstall_webhook(SHOP_A), "event": "update_app"}
    resp = await client.post("/-/oauth/sesami/webhook", json=body)
    assert resp.status == 200
    assert await stored(client, SHOP_A) is not None
    assert (await get_as(client, SHOP_A)).status == 200


# --- secrets -----------------------------------------------------------------------------------


async def test_no_secret_token_or_code_in_logs_or_error_bodies(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, base = await start_sesami(upstream)
    client = await keyhop_app(proxy, fake, base, ca_file)
    codes, bodies = [], []
    for shop in (SHOP_A, SHOP_B):
        done = await install_shop(keyhop_url(client), fake, base, shop, ca_file)
        assert done.status == 200
        codes.append(done.code)
        bodies.append(done.text)
        bodies.append(await (await get_as(client, shop)).text())
    # refused callbacks, a code the fake refuses, a failing token endpoint, bad tenants
    code = fake.issue_code(SHOP_A)
    bad = {**fake.signed_callback_query(code, SHOP_A), "hmac": "0" * 64}
    codes.append(code)
    late = fake.signed_callback_query(fake.issue_code(SHOP_B), SHOP_B)
    codes.append(late["code"])
    fake.fail_token(30, status=500)
    responses = [
        await client.get("/-/oauth/sesami/callback", params=bad),
        await client.get("/-/oauth/sesami/callback", params=late),
        await client.get(
            "/-/oauth/sesami/callback",
            params=fake.signed_callback_query("not-a-code-7d1e", SHOP_A),
        ),
        await client.post("/-/oauth/sesami/webhook", json={"data": {"shopId": SHOP_A}}),
        await client.post("/-/oauth/sesami/webhook", data=b"not json"),
        await get_as(client, "shop-never"),
        await get_as(client, "../x"),
        await get_as(client, None),
    ]
    statuses = [r.status for r in responses]
    assert statuses == [401, 502, 502, 401, 400, 503, 400, 400]
    for resp in responses:
        bodies.append(await resp.text())
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("keyhop")]
    assert logs, "keyhop logged nothing"
    tokens = [t for t in (fake.token_for(SHOP_A), fake.token_for(SHOP_B)) if t]
    assert len(tokens) == 2
    assert_no_secrets(logs + bodies, [CLIENT_SECRET, *tokens, *codes, "not-a-code-7d1e"])
    providers = await client.get("/-/providers")
    assert providers.status == 200
    assert_no_secrets([await providers.text()], [CLIENT_SECRET, *tokens, *codes])


# --- real processes ----------------------------------------------------------------------------


async def test_installed_shops_survive_a_restart_of_keyhop_serve(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    fake, base = await start_sesami(upstream)
    db = tmp_path / "state" / "tokens.db"
    config = write_config(tmp_path / "k.yaml", sesami_config(base, ca_file, f"sqlite://{db}"))
    proc = KeyhopProcess(config, tmp_path)
    fake.callback_url = proc.url + "/-/oauth/sesami/callback"
    logs: list[str] = []
    codes: list[str] = []
    try:
        proc.start(wait=False)  # without blocking the event loop the fake runs on
        await wait_healthy(proc.url)
        for shop in (SHOP_A, SHOP_B):
            done = await install_shop(proc.url, fake, base, shop, ca_file)
            assert done.status == 200, done.text
            codes.append(done.code)
        assert fake.token_requests == 2
        assert proc.stop() == 0
        logs.append(proc.logs())

        store = SqliteStore(str(db))
        try:
            for shop in (SHOP_A, SHOP_B):
                credential = await store.get("sesami", shop)
                assert credential is not None and credential.token == fake.token_for(shop)
        finally:
            await store.close()

        port = proc.port
        proc = KeyhopProcess(config, tmp_path, port=port)
        proc.start(wait=False)
        await wait_healthy(proc.url)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            for shop in (SHOP_B, SHOP_A):
                async with s.get(
                    proc.url + "/sesami/api/x", headers={"X-Keyhop-Tenant": shop}
                ) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["credentials"]["shop_id"] == shop
                assert_shop_headers(fake, shop)
                async with s.get(f"{proc.url}/shops/{shop}/api/y") as r:
                    assert r.status == 200, await r.text()
                assert_shop_headers(fake, shop)
            async with s.get(proc.url + "/sesami/api/x", headers={"X-Keyhop-Tenant": "s9"}) as r:
                assert r.status == 503
        assert fake.token_requests == 2 and fake.authorizations == 2  # nothing new
    finally:
        if proc.proc is not None:
            proc.stop()
        logs.append(proc.logs())
    tokens = [t for t in (fake.token_for(SHOP_A), fake.token_for(SHOP_B)) if t]
    assert len(tokens) == 2
    assert_no_secrets(logs, [CLIENT_SECRET, *tokens, *codes])
