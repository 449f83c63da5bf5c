"""`keyhop sandbox`: the five fakes, and a signed exchange, in one loopback server, each under
its own prefix.

The root app adds an index page (what is where, the sandbox credentials, links a person can
click) and two controls spanning every provider: `POST /-/sandbox/expire` and
`GET /-/sandbox/stats`. Each provider's own controls live under `<prefix>/-/sandbox/`.
"""

from __future__ import annotations

import html
import ipaddress
import sys
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from proxy.sandbox import credentials as creds
from proxy.sandbox.base import FakeProvider
from proxy.sandbox.exchange import FakeExchange
from proxy.sandbox.kibo import FakeKibo
from proxy.sandbox.paynet import FakePayNet
from proxy.sandbox.saison import FakeSaison
from proxy.sandbox.sesami import FakeSesami
from proxy.sandbox.spaaza import FakeSpaaza

#: the fakes behind a sandbox app, by provider name (tests and the index read them)
FAKES: Final = web.AppKey[dict[str, FakeProvider]]("sandbox_fakes")


def build_sandbox(
    *,
    sesami_install_url: str = creds.SESAMI_INSTALL_URL,
    sesami_webhook_url: str = creds.SESAMI_WEBHOOK_URL,
) -> web.Application:
    """One app emulating all five providers, and a Binance-like exchange whose requests keyhop
    signs with an `hmac` recipe, with the sandbox credentials."""
    fakes: dict[str, FakeProvider] = {
        "kibo": FakeKibo(),
        "paynet": FakePayNet(),
        "saison": FakeSaison(),
        "sesami": FakeSesami(install_url=sesami_install_url, webhook_url=sesami_webhook_url),
        "spaaza": FakeSpaaza(),
        "exchange": FakeExchange(),
    }
    app = web.Application()
    app[FAKES] = fakes
    app.router.add_get("/", _index)
    app.router.add_post("/-/sandbox/expire", _expire_all)
    app.router.add_get("/-/sandbox/stats", _stats)
    for name, fake in fakes.items():
        app.add_subapp(creds.PREFIXES[name], fake.app)
    return app


async def _expire_all(request: web.Request) -> web.Response:
    fakes = request.app[FAKES]
    for fake in fakes.values():
        fake.expire_all()
    return web.json_response({"ok": True, "expired": sorted(fakes)})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({name: fake.stats() for name, fake in request.app[FAKES].items()})


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _code(value: str) -> str:
    return f"<code>{html.escape(value)}</code>"


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


async def _index(request: web.Request) -> web.Response:
    saison_login = f"{creds.SAISON_PREFIX}/auth/screen/{creds.SAISON_MEMBER}/authorize?" + (
        urlencode({"client_id": creds.SAISON_CLIENT_ID, "response_type": "code"})
    )
    sesami_install = f"{creds.SESAMI_PREFIX}/-/sandbox/install?shopId={creds.SESAMI_SHOP_ID}"
    rows = [
        _row("kibo", _code(creds.KIBO_PREFIX), "client_id / API-Key", _code(creds.KIBO_CLIENT_ID)),
        _row("", "", "client_secret", _code(creds.KIBO_CLIENT_SECRET)),
        _row("paynet", _code(creds.PAYNET_PREFIX), "client_id", _code(creds.PAYNET_CLIENT_ID)),
        _row("", "", "client_secret", _code(creds.PAYNET_CLIENT_SECRET)),
        _row("", "", "X-Fiid", _code(creds.PAYNET_FIID)),
        _row("saison", _code(creds.SAISON_PREFIX), "client_id", _code(creds.SAISON_CLIENT_ID)),
        _row("", "", "client_secret", _code(creds.SAISON_CLIENT_SECRET)),
        _row("", "", "member (any)", _code(creds.SAISON_MEMBER)),
        _row("sesami", _code(creds.SESAMI_PREFIX), "clientId", _code(creds.SESAMI_CLIENT_ID)),
        _row("", "", "clientSecret", _code(creds.SESAMI_CLIENT_SECRET)),
        _row("", "", "shopId (any)", _code(creds.SESAMI_SHOP_ID)),
        _row("spaaza", _code(creds.SPAAZA_PREFIX), "username", _code(creds.SPAAZA_USERNAME)),
        _row("", "", "password", _code(creds.SPAAZA_PASSWORD)),
        _row("", "", "token_id", _code(creds.SPAAZA_TOKEN_ID)),
        _row("", "", "token_secret", _code(creds.SPAAZA_TOKEN_SECRET)),
        _row(
            "exchange",
            _code(creds.EXCHANGE_PREFIX),
            "API key (X-MBX-APIKEY)",
            _code(creds.EXCHANGE_API_KEY),
        ),
        _row("", "", "secret key (HMAC-SHA256 signing)", _code(creds.EXCHANGE_SECRET_KEY)),
    ]
    controls = [
        "<li>POST <code>/-/sandbox/expire</code>: every provider's tokens and sessions</li>",
        "<li>GET <code>/-/sandbox/stats</code>: every provider's counters</li>",
        "<li>POST <code>&lt;prefix&gt;/-/sandbox/expire</code>, "
        "<code>throttle?n=N[&amp;retry_after=S]</code> (kibo: <code>&amp;code=ERR_403_DEVELOPER_"
        "OVER_RATE</code>), <code>fail-token?seconds=S[&amp;status=500][&amp;mode=status|garbage"
        "|slow]</code>; GET <code>&lt;prefix&gt;/-/sandbox/stats</code></li>",
        "<li>saison: POST <code>/saison/-/sandbox/revoke-refresh</code></li>",
        "<li>sesami: GET <code>/sesami/-/sandbox/install?shopId=ID</code> (the merchant clicks"
        " install), POST <code>/sesami/-/sandbox/uninstall?shopId=ID</code>"
        " (sends the webhook)</li>",
        "<li>spaaza: POST <code>/spaaza/-/sandbox/user-session</code> (an app user's session)</li>",
        "<li>exchange: GET <code>/exchange/api/v3/time</code> (server time, unsigned); every"
        " other <code>/exchange/api/</code> request needs <code>X-MBX-APIKEY</code> and a"
        " Binance-style <code>timestamp</code> and <code>signature</code> in its query</li>",
    ]
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>keyhop sandbox</title>"
        "<style>body{font-family:sans-serif;max-width:52em;margin:2em auto}"
        "td{padding:.2em .8em}</style></head><body>"
        "<h1>keyhop sandbox</h1>"
        "<p>Local emulation of five providers' auth and of a signed exchange."
        " These credentials are fixed test values"
        " (also in <code>proxy/sandbox/credentials.py</code>); they work nowhere else.</p>"
        "<table><tr><th>provider</th><th>prefix</th><th>field</th><th>value</th></tr>"
        + "".join(rows)
        + "</table><h2>Try in a browser</h2><ul>"
        + f"<li>Saison login screen: {_link(saison_login, 'log in as ' + creds.SAISON_MEMBER)}"
        " (through keyhop: <code>/-/oauth/saison/login?tenant=...</code>)</li>"
        + "<li>Sesami install of a shop: "
        + _link(sesami_install, "install " + creds.SESAMI_SHOP_ID)
        + "</li></ul><h2>Misbehave on purpose</h2><ul>"
        + "".join(controls)
        + "</ul></body></html>"
    )
    return web.Response(text=body, content_type="text/html")


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) on a loopback address; ValueError otherwise."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"--listen {listen!r}: the sandbox serves loopback only (127.0.0.1, ::1)"
            )
    return host, int(port_text)


def main(listen: str) -> int:
    """Serve the sandbox until SIGINT or SIGTERM; one line on stdout says where."""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        print(f"keyhop sandbox: {exc}", file=sys.stderr)
        return 2
    shown = f"[{host}]" if ":" in host else host
    prefixes = ", ".join(creds.PREFIXES.values())
    line = (
        f"keyhop sandbox: listening on http://{shown}:{port} ({prefixes});"
        f" credentials and controls at http://{shown}:{port}/ and in proxy/sandbox/credentials.py"
    )
    try:
        web.run_app(
            build_sandbox(),
            host=host,
            port=port,
            shutdown_timeout=2.0,
            access_log=None,
            print=lambda _message: print(line, flush=True),
        )
    except OSError as exc:
        print(f"keyhop sandbox: cannot listen on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
