"""/-/console in process (SPEC 6.1): what it shows, how it escapes, its actions, who may use it.

Pages are read with the standard library's html.parser (what a browser would see as
elements and text), cookies with http.cookies, links with urllib: never with keyhop's own
rendering helpers.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.runtime import KEYHOP
from proxy.store import MemoryStore
from proxy.tokens import Credential
from tests.conftest import MakeProxy, StartUpstream
from tests.test_saison import CLIENT_SECRET as SAISON_SECRET
from tests.test_saison import saison_config, start_saison

Client = TestClient[web.Request, web.Application]
HOSTILE = "<script>alert(1)</script>"
CC_SECRET = "cc-secret-Hq81zP"
SESAMI_SECRET = "sesami-secret-Lw42vT"
STATIC_TOKEN = "static-token-Ny73kR"
CLIENT_KEY = "console-key-Pm26xB"


class Page(HTMLParser):
    """The elements and text of a page, as a browser parses them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[dict[str, str]] = []
        self._text: list[str] = []
        self._in_script = False
        self.feed(text)
        self.text = " ".join(" ".join(self._text).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "form":
            self.forms.append({"action": a.get("action"), "fields": {}, "buttons": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["fields"][a.get("name")] = a.get("value", "")
        elif tag == "button" and self.forms:
            self.forms[-1]["buttons"].append(a)
        elif tag == "tr" and "data-provider" in a:
            self.rows.append(a)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self._text.append(data)

    def form(self, action: str, **fields: str) -> dict[str, str]:
        """The fields of the first form posting to `action` whose hidden fields match."""
        for f in self.forms:
            if f["action"] == action and all(f["fields"].get(k) == v for k, v in fields.items()):
                return dict(f["fields"])
        raise AssertionError(f"no form {action} {fields} in: {self.text[:500]}")

    def state(self, provider: str, tenant: str = "") -> str:
        for row in self.rows:
            if row["data-provider"] == provider and row["data-tenant"] == tenant:
                return row["data-state"]
        raise AssertionError(f"no row {provider}/{tenant}: {self.rows}")


def token_app(calls: list[str], fail: dict[str, Any]) -> web.Application:
    """A client-credentials token endpoint that counts calls and fails on demand."""

    async def token(request: web.Request) -> web.Response:
        calls.append("token")
        if fail:
            return web.json_response(fail, status=400)
        return web.json_response(
            {"access_token": f"tok-{len(calls)}", "token_type": "Bearer", "expires_in": 3600}
        )

    async def resource(request: web.Request) -> web.Response:
        if request.path == "/busy":
            return web.json_response({"busy": True}, status=429, headers={"Retry-After": "120"})
        return web.json_response({"auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/{tail:.*}", resource)
    return app


async def console_stack(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, **top: Any
) -> tuple[Client, list[str], dict[str, Any], MemoryStore]:
    calls: list[str] = []
    fail: dict[str, Any] = {}
    base = await upstream(token_app(calls, fail))
    _, saison_base = await start_saison(upstream)
    data = saison_config(saison_base, ca_file, default_tenant="sandbox-member")
    data["providers"].update(
        {
            "kibo": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": base + "/token",
                    "client_id": "cc-client",
                    "client_secret": CC_SECRET,
                },
                "ca_file": ca_file,
            },
            "sesami": {
                "preset": "sesami",
                "auth": {"client_id": "sesami-client", "client_secret": SESAMI_SECRET},
            },
            "fixed": {"auth": {"type": "static", "token": STATIC_TOKEN}, "ca_file": ca_file},
        }
    )
    data["routes"] += [
        {"prefix": "/kibo", "upstream": base, "provider": "kibo"},
        {"prefix": "/fixed", "upstream": base, "provider": "fixed"},
    ]
    data.update(top)
    store = MemoryStore()
    client = await proxy(data, store=store)
    return client, calls, fail, store


async def open_console(client: Client, **kw: Any) -> Page:
    resp = await client.get("/-/console", **kw)
    assert resp.status == 200, await resp.text()
    return Page(await resp.text())


def flash_of(page: Page) -> str:
    for tag, attrs in page.tags:
        if tag == "p" and "flash" in attrs.get("class", ""):
            return attrs["class"]
    return ""


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def test_each_state_is_said_in_words_with_expiry_fetches_routes_and_store_health(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, calls, fail, store = await console_stack(upstream, proxy, ca_file)
    now = time.time()
    await store.put("saison", "m-expired", Credential("a", now - 30, now - 3630, "r"))
    # inside the renewal margin (SPEC 4.4: 60 s or 10 % of the life before expiry)
    await store.put("saison", "m-renewing", Credential("b", now + 30, now - 3570, "r"))
    assert (await client.get("/kibo/x")).status == 200  # fetched: valid for an hour
    assert (await client.get("/fixed/busy")).status == 429  # Retry-After: 120 -> throttled
    page = await open_console(client)
    assert page.state("kibo") == "valid"
    assert page.state("saison", "m-expired") == "expired"
    assert page.state("saison", "m-renewing") == "renewing"
    assert page.state("saison", "sandbox-member") == "not connected"  # its default tenant
    assert "no tenant connected yet" in page.text  # sesami: no shop installed
    assert page.state("fixed") == "static"
    fixed = page.text[page.text.index("fixed static") :]
    assert fixed.startswith("fixed static throttled until")
    assert "Token store memory: is reachable" in page.text
    assert "Routes: /kibo" in page.text and "Routes: /saison" in page.text
    # expiry as a countdown (3600 s from the fetch: "in 59 min ..") and the fetch count
    kibo = next(r for r in page.rows if r["data-provider"] == "kibo")
    assert kibo["data-state"] == "valid"
    assert "in 59 min" in page.text or "in 1 h 00 min" in page.text
    assert calls == ["token"]
    # a failing token endpoint: the error, when, and backing off
    fail["error"] = "invalid_client"
    await store.delete("kibo", None)
    client.app[KEYHOP].manager.forget("kibo")
    assert (await client.get("/kibo/x")).status == 502
    page = await open_console(client)
    assert "token endpoint of kibo refused: invalid_client (HTTP 400)" in page.text
    assert "backing off until" in page.text
    assert page.state("kibo") == "missing"


async def test_a_hostile_tenant_id_and_a_hostile_error_message_are_shown_as_text(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, fail, store = await console_stack(upstream, proxy, ca_file)
    # a tenant id reaches the page from the store (written by another process or version;
    # requests cannot name such a tenant), an error message from the token endpoint
    await store.put("saison", HOSTILE, Credential("a", time.time() + 600, time.time(), "r"))
    fail["error"] = HOSTILE
    assert (await client.get("/kibo/x")).status == 502
    resp = await client.get("/-/console")
    text = await resp.text()
    assert HOSTILE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{"src": "/-/console/assets/console.js", "defer": ""}]
    assert page.state("saison", HOSTILE) == "valid"  # the id survives as data, escaped
    assert f"refused: {HOSTILE}" in page.text  # and the message as text
    # a hostile value posted to an action comes back in the flash as text too
    csrf = page.forms[0]["fields"]["csrf"]
    resp = await client.post(
        "/-/console/revoke", data={"csrf": csrf, "provider": HOSTILE, "confirm": "yes"}
    )
    assert resp.status == 200  # the 303 was followed to the console
    text = await resp.text()
    assert HOSTILE not in text and "There is no provider" in Page(text).text


async def test_a_post_without_a_valid_csrf_token_is_403_and_changes_nothing(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, store = await console_stack(upstream, proxy, ca_file)
    await store.put("saison", "m1", Credential("a", time.time() + 600, time.time(), "r"))
    fields = {"provider": "saison", "tenant": "m1", "confirm": "yes"}
    # no cookie and no token (a cross-site form), then a token that is not the cookie's
    resp = await client.post("/-/console/revoke", data=fields, allow_redirects=False)
    assert resp.status == 403
    page = await open_console(client)  # sets the CSRF cookie
    good = page.form("/-/console/revoke", provider="saison", tenant="m1")["csrf"]
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    for token in (bad, "", good[:-1]):
        resp = await client.post(
            "/-/console/revoke", data={**fields, "csrf": token}, allow_redirects=False
        )
        assert resp.status == 403
        assert "Nothing was changed" in Page(await resp.text()).text
    assert await store.get("saison", "m1") is not None
    # a GET is never an action
    assert (await client.get("/-/console/revoke")).status == 405
    assert await store.get("saison", "m1") is not None


async def test_revoke_asks_for_confirmation_then_revokes_like_keyhop_tokens_revoke(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, store = await console_stack(upstream, proxy, ca_file)
    await store.put("saison", "m1", Credential("a", time.time() + 600, time.time(), "r"))
    page = await open_console(client)
    assert page.state("saison", "m1") == "valid"
    first = page.form("/-/console/revoke", provider="saison", tenant="m1")
    resp = await client.post("/-/console/revoke", data=first)
    assert resp.status == 200
    confirm = Page(await resp.text())
    assert "Revoke saison for tenant m1?" in confirm.text
    assert await store.get("saison", "m1") is not None  # asking changed nothing
    fields = confirm.form("/-/console/revoke", confirm="yes")
    resp = await client.post("/-/console/revoke", data=fields, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/-/console"
    assert await store.get("saison", "m1") is None
    page = await open_console(client)
    assert "Revoked saison (tenant m1)." in page.text
    assert "ok" in flash_of(page)
    assert all(r["data-tenant"] != "m1" or r["data-state"] == "not connected" for r in page.rows)
    # the flash is shown once
    assert "Revoked" not in (await open_console(client)).text


async def test_revoking_an_unknown_provider_or_tenant_is_a_clear_message(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, _ = await console_stack(upstream, proxy, ca_file)
    csrf = (await open_console(client)).forms[0]["fields"]["csrf"]
    cases = [
        ({"provider": "nope"}, "There is no provider 'nope' in this config; nothing was changed."),
        ({"provider": "saison", "tenant": "m9"}, "Nothing is stored for saison (tenant m9)"),
        ({"provider": "kibo", "tenant": "m9"}, "kibo has no tenants; nothing was changed."),
        ({"provider": "saison", "tenant": "a b"}, "a tenant id is 1-128 characters"),
    ]
    for fields, expected in cases:
        resp = await client.post(
            "/-/console/revoke", data={**fields, "confirm": "yes", "csrf": csrf}
        )
        assert resp.status == 200, fields  # 303 followed back to the console
        page = Page(await resp.text())
        assert expected in page.text, (fields, page.text[:300])
        assert "error" in flash_of(page)


async def test_renew_now_fetches_a_fresh_credential_that_requests_then_use(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, calls, fail, _ = await console_stack(upstream, proxy, ca_file)
    assert (await (await client.get("/kibo/x")).json())["auth"] == "Bearer tok-1"
    page = await open_console(client)
    resp = await client.post(
        "/-/console/renew", data=page.form("/-/console/renew", provider="kibo")
    )
    page = Page(await resp.text())
    assert "Renewed kibo: valid until" in page.text
    assert calls == ["token", "token"]
    assert (await (await client.get("/kibo/x")).json())["auth"] == "Bearer tok-2"
    # a refused renewal says why; while it backs off, a second Renew sends nothing
    fail["error"] = "invalid_client"
    renew = page.form("/-/console/renew", provider="kibo")
    page = Page(await (await client.post("/-/console/renew", data=renew)).text())
    assert "Renewing kibo failed: token endpoint of kibo refused: invalid_client" in page.text
    assert len(calls) == 3
    page = Page(await (await client.post("/-/console/renew", data=renew)).text())
    assert "kibo is backing off until" in page.text and len(calls) == 3
    # nothing to renew for a static provider or an app install
    csrf = page.forms[0]["fields"]["csrf"]
    for name in ("fixed", "sesami"):
        resp = await client.post("/-/console/renew", data={"provider": name, "csrf": csrf})
        assert "has no credential keyhop can renew" in Page(await resp.text()).text


async def test_connect_goes_through_the_login_page_and_back_to_the_console_now_valid(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    import ssl

    client, _, _, _ = await console_stack(upstream, proxy, ca_file)
    page = await open_console(client)
    assert page.state("saison", "sandbox-member") == "not connected"
    fields = page.form("/-/console/connect", provider="saison", tenant="sandbox-member")
    resp = await client.post("/-/console/connect", data=fields, allow_redirects=False)
    assert resp.status == 303
    authorize = resp.headers["Location"]
    assert "/auth/screen/sandbox-member/authorize" in authorize
    ctx = ssl.create_default_context(cafile=ca_file)
    login = await client.session.post(
        authorize, data={"decision": "allow"}, ssl=ctx, allow_redirects=False
    )
    assert login.status == 302
    callback = login.headers["Location"]
    done = await client.session.get(URL(callback, encoded=True))
    assert done.status == 200
    # the page moves on to the console by itself (a same-site navigation)
    refresh = [a for t, a in Page(await done.text()).tags if a.get("http-equiv") == "refresh"]
    assert refresh == [{"http-equiv": "refresh", "content": "0; url=/-/console"}]
    page = await open_console(client)
    assert page.state("saison", "sandbox-member") == "valid"
    assert "Connected saison for sandbox-member." in page.text
    # a login the person denies also ends on the console, which says so
    fields = {**page.form("/-/console/connect", provider="saison"), "tenant": "m2"}
    resp = await client.post("/-/console/connect", data=fields, allow_redirects=False)
    deny = await client.session.post(
        resp.headers["Location"], data={"decision": "deny"}, ssl=ctx, allow_redirects=False
    )
    done = await client.session.get(URL(deny.headers["Location"], encoded=True))
    assert done.status == 200
    page = await open_console(client)
    assert "saison refused the login: access_denied" in page.text
    assert "error" in flash_of(page)


async def test_the_install_link_is_the_providers_authorize_url_for_the_shop(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, _ = await console_stack(upstream, proxy, ca_file)
    page = await open_console(client)
    fields = page.form("/-/console/install", provider="sesami")
    resp = await client.post("/-/console/install", data={**fields, "tenant": "shop-1"})
    assert resp.status == 200
    install = Page(await resp.text())
    link = next(a["href"] for t, a in install.tags if t == "a" and "install" in a.get("class", ""))
    parts = urlsplit(link)
    # SPEC 4.5: clientId, scopes[], redirectUri, shopId on the preset's authorize URL
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://api.sesami.co/api/v1/oauth/authorization"
    )
    query = parse_qs(parts.query)
    assert query["clientId"] == ["sesami-client"] and query["shopId"] == ["shop-1"]
    assert query["redirectUri"] == [f"http://127.0.0.1:{client.port}/-/oauth/sesami/callback"]
    assert f"http://127.0.0.1:{client.port}/-/oauth/sesami/install" in install.text


async def test_with_client_keys_the_console_takes_the_key_once_and_keeps_it_in_a_cookie(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, _ = await console_stack(upstream, proxy, ca_file, clients={"keys": [CLIENT_KEY]})
    resp = await client.get("/-/console")
    assert resp.status == 401
    ask = Page(await resp.text())
    assert "requires a client key" in ask.text and not ask.rows
    form = ask.form("/-/console/key")
    resp = await client.post("/-/console/key", data={**form, "key": "wrong"})
    assert resp.status == 401 and "That key is not accepted." in Page(await resp.text()).text
    resp = await client.post(
        "/-/console/key", data={**form, "key": CLIENT_KEY}, allow_redirects=False
    )
    assert resp.status == 303
    cookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie"):
        cookie.load(header)
    kept = cookie["keyhop_key"]
    assert kept["httponly"] and kept["samesite"] == "Strict" and kept["path"] == "/-/"
    assert CLIENT_KEY not in kept.value  # not in clear either
    page = await open_console(client)
    assert page.state("kibo") == "missing"
    assert CLIENT_KEY not in await (await client.get("/-/console")).text()
    # the cookie serves the console only; /-/providers and the proxy want the header
    assert (await client.get("/-/providers")).status == 401
    # the header works for the console as for /-/providers; a wrong cookie does not
    client.session.cookie_jar.clear()
    assert (await client.get("/-/console", headers={"X-Keyhop-Key": CLIENT_KEY})).status == 200
    assert (await client.get("/-/console", cookies={"keyhop_key": "d3Jvbmc"})).status == 401
    # an action without the key changes nothing
    csrf = Page(await (await client.get("/-/console")).text()).form("/-/console/key")["csrf"]
    resp = await client.post("/-/console/revoke", data={"provider": "kibo", "csrf": csrf})
    assert resp.status == 401
    # ?key= once: kept in the cookie, dropped from the URL
    resp = await client.get(f"/-/console?key={CLIENT_KEY}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/-/console"
    assert (await client.get("/-/console")).status == 200


async def test_without_client_keys_only_a_loopback_host_is_served(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, _ = await console_stack(upstream, proxy, ca_file)
    for host in ("attacker.example:8080", "192.0.2.1"):
        resp = await client.get("/-/console", headers={"Host": host})
        assert resp.status == 403, host
    for host in ("localhost:1", "[::1]:8080", "127.0.0.1"):
        assert (await client.get("/-/console", headers={"Host": host})).status == 200


async def test_no_configured_secret_is_on_the_page_or_in_its_assets(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, fail, store = await console_stack(
        upstream, proxy, ca_file, clients={"keys": [CLIENT_KEY]}
    )
    key = {"X-Keyhop-Key": CLIENT_KEY}
    await store.put("saison", "m1", Credential("acc-Zx81", time.time() + 600, 0, "refresh-Qv7"))
    assert (await client.get("/kibo/x", headers=key)).status == 200
    fail["error"] = "invalid_client"
    await client.get("/kibo/x", headers={**key, "X-Keyhop-Tenant": "x"})
    texts = []
    for path in ("/-/console", "/-/console/assets/console.css", "/-/console/assets/console.js"):
        resp = await client.get(path, headers=key)
        assert resp.status == 200
        texts.append(await resp.text())
    page = Page(texts[0])
    resp = await client.post(
        "/-/console/install",
        headers=key,
        data={**page.form("/-/console/install", provider="sesami"), "tenant": "s1"},
    )
    texts.append(await resp.text())
    blob = "\n".join(texts)
    for secret in (CC_SECRET, SESAMI_SECRET, SAISON_SECRET, STATIC_TOKEN, CLIENT_KEY):
        assert secret not in blob, secret[:4]
    for token in ("acc-Zx81", "refresh-Qv7", "tok-1"):  # credentials themselves
        assert token not in blob


async def test_the_page_loads_nothing_from_elsewhere_and_cannot_be_framed(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, _ = await console_stack(upstream, proxy, ca_file)
    resp = await client.get("/-/console")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    page = Page(await resp.text())
    sources = [a.get("src") or a.get("href") for t, a in page.tags if t in ("script", "link")]
    assert sources == ["/-/console/assets/console.css", "/-/console/assets/console.js"]
    for src in sources:
        asset = await client.get(src)
        assert asset.status == 200 and asset.content_type in ("text/css", "text/javascript")
    assert (await client.get("/-/console/assets/../admin.py")).status == 404


async def test_two_hundred_tenants_render_quickly(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    client, _, _, store = await console_stack(upstream, proxy, ca_file)
    now = time.time()
    for i in range(200):
        await store.put("saison", f"member-{i:03d}", Credential("a", now + i * 60, now, "r"))
    await open_console(client)  # warm
    started = time.perf_counter()
    for _ in range(5):
        resp = await client.get("/-/console")
        text = await resp.text()
    per_page = (time.perf_counter() - started) / 5
    page = Page(text)
    assert len([r for r in page.rows if r["data-provider"] == "saison"]) == 201  # + default
    assert per_page < 0.25, f"{per_page * 1000:.0f} ms per page"
    print(f"console with 200 tenants: {per_page * 1000:.1f} ms per page, {len(text)} chars")
