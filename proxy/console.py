"""`/-/console` (SPEC 6.1): keyhop's state in a browser, and the actions a person takes.

Rules:
- Access as `/-/providers`: with `clients.keys` set, the X-Keyhop-Key header or the key
  given once to the console and kept in its cookie (proxy/console_session.py). Without
  keys, only a loopback Host is served: a web page that rebinds its own name to 127.0.0.1
  (DNS rebinding) gets nothing.
- Every action is a POST with a CSRF token; a POST without a valid one is 403 and changes
  nothing. Revoke asks first. Each answer is a 303 back to the console with a flash.
- Nothing secret reaches the page: errors come redacted from providers_view, flashes are
  redacted here, and the whole page goes through the config's redactor as a last guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from aiohttp import hdrs, web

from proxy.auth.app_install import AppInstall
from proxy.auth.oauth2 import AuthorizationCode
from proxy.callbacks import begin_login, callback_url, is_loopback_host
from proxy.console_html import ASSETS, Html, confirm_page, install_page, key_page, message_page
from proxy.console_session import (
    CONSOLE,
    cookie_key,
    csrf_ok,
    csrf_token,
    forget_key,
    keep_key,
    key_matches,
    pop_flash,
    set_flash,
)
from proxy.console_view import ProviderFacts, console_page, when
from proxy.errors import NoRoute, ProxyError
from proxy.providers import TENANT_RE, TENANT_RULE
from proxy.runtime import Keyhop, ProviderRuntime

if TYPE_CHECKING:
    from proxy.access import AccessInfo

ViewFn = Callable[[Keyhop], Awaitable[dict[str, Any]]]

_FILES: Final = resources.files("proxy") / "assets"
_ASSETS: Final = {
    "console.css": ("text/css", (_FILES / "console.css").read_bytes()),
    "console.js": ("text/javascript", (_FILES / "console.js").read_bytes()),
}
# no inline script or style, nothing from elsewhere, never framed (a Revoke button under
# someone else's page would be clickjacking); form-action stays open: Connect's 303 goes
# to the provider's login page
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(kh: Keyhop, doc: Html, status: int = 200) -> web.Response:
    return web.Response(
        text=kh.runtime.redact(doc), status=status, content_type="text/html", headers=_HEADERS
    )


def _back(kh: Keyhop, text: str, ok: bool = True) -> web.Response:
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **_HEADERS})
    set_flash(response, kh.runtime.redact(text), ok)
    return response


def _who(name: str, tenant: str | None) -> str:
    return f"{name} (tenant {tenant})" if tenant else name


def _allowed(kh: Keyhop, request: web.BaseRequest) -> bool:
    keys = kh.runtime.client_keys
    if not keys:
        return is_loopback_host(request)
    header = request.headers.get("X-Keyhop-Key")
    if header is not None:
        return key_matches(keys, header.encode("utf-8", "surrogateescape"))
    return key_matches(keys, cookie_key(request))


def _facts(prt: ProviderRuntime) -> ProviderFacts:
    scheme = prt.config.scheme
    connect = (
        "login"
        if isinstance(scheme, AuthorizationCode)
        else "install"
        if isinstance(scheme, AppInstall)
        else None
    )
    return ProviderFacts(connect=connect, default_tenant=prt.config.default_tenant)


async def _render(kh: Keyhop, request: web.BaseRequest, view_fn: ViewFn) -> web.Response:
    response = web.Response(content_type="text/html", headers=_HEADERS)
    names = list(kh.runtime.providers)
    view, blocked = await asyncio.gather(
        view_fn(kh), asyncio.gather(*(kh.limiter.blocked_until(n) for n in names))
    )
    now = kh.clock()
    doc = console_page(
        view,
        now,
        facts={n: _facts(p) for n, p in kh.runtime.providers.items()},
        throttled={n: until for n, until in zip(names, blocked, strict=True) if until > now},
        csrf=csrf_token(request, response),
        flash=pop_flash(request, response),
        can_leave=bool(kh.runtime.client_keys) and bool(request.cookies.get("keyhop_key")),
    )
    response.text = kh.runtime.redact(doc)
    return response


async def handle_console(
    kh: Keyhop, request: web.BaseRequest, info: AccessInfo, view_fn: ViewFn
) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    info.route = CONSOLE
    if path.startswith(ASSETS + "/") and request.method in ("GET", "HEAD"):
        asset = _ASSETS.get(path[len(ASSETS) + 1 :])
        if asset is None:
            raise NoRoute(f"no keyhop endpoint {path}")
        return web.Response(
            body=asset[1], content_type=asset[0], headers={"Cache-Control": "no-cache"}
        )
    if not kh.runtime.client_keys and not is_loopback_host(request):
        return _html(kh, message_page("Refused", _REBIND, back=False), 403)
    if path == CONSOLE and request.method in ("GET", "HEAD"):
        if "key" in request.query:  # the key given once in the URL: kept, then dropped from it
            return _take_key(kh, request, request.query["key"])
        if not _allowed(kh, request):
            return _key_form(kh, request, refused=False)
        return await _render(kh, request, view_fn)
    action = path.removeprefix(CONSOLE + "/")
    if path == action or (action not in _ACTIONS and action != "key"):
        raise NoRoute(f"no keyhop endpoint {path}")
    if request.method != "POST":
        return web.Response(status=405, headers={hdrs.ALLOW: "POST", **_HEADERS})
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(request, fields.get("csrf", "")):
        return _html(kh, message_page("Refused", _STALE), 403)
    if action == "key":
        return _take_key(kh, request, fields.get("key", ""))
    if not _allowed(kh, request):
        return _key_form(kh, request, refused=False)
    info.provider = fields.get("provider") or None
    return await _ACTIONS[action](kh, request, fields)


_REBIND: Final = (
    "Open the console at 127.0.0.1 or localhost, or set clients.keys: without a client "
    "key keyhop serves it only to a loopback Host."
)
_STALE: Final = (
    "This form did not come from the console, or keyhop restarted since it was shown. "
    "Nothing was changed: reload the console and try again."
)


def _key_form(kh: Keyhop, request: web.BaseRequest, refused: bool) -> web.Response:
    response = _html(kh, Html(""), 401)
    response.text = kh.runtime.redact(key_page(csrf_token(request, response), refused))
    return response


def _take_key(kh: Keyhop, request: web.BaseRequest, key: str) -> web.Response:
    keys = kh.runtime.client_keys
    if keys and not key_matches(keys, key.encode("utf-8", "surrogateescape")):
        return _key_form(kh, request, refused=True)
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **_HEADERS})
    if keys:
        keep_key(response, key)
    return response


Fields = dict[str, str]


def _provider(kh: Keyhop, fields: Fields) -> tuple[ProviderRuntime, str | None] | str:
    """The provider and tenant an action names, or why they are not acceptable."""
    name = fields.get("provider", "")
    prt = kh.runtime.providers.get(name)
    if prt is None:
        return f"There is no provider {name!r} in this config; nothing was changed."
    tenant = fields.get("tenant") or None
    if tenant is not None and not TENANT_RE.fullmatch(tenant):
        return f"{TENANT_RULE}; nothing was changed."
    if tenant is not None and not prt.config.tenants:
        return f"{name} has no tenants; nothing was changed."
    return prt, tenant


async def _connect(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return _back(kh, found, ok=False)
    prt, tenant = found
    provider, scheme = prt.config, prt.config.scheme
    if not isinstance(scheme, AuthorizationCode):
        return _back(kh, f"{provider.name} ({provider.kind}) has no login to start.", ok=False)
    tenant = tenant or provider.default_tenant
    if provider.tenants and not tenant:
        return _back(kh, f"{provider.name} serves several accounts: give a tenant.", ok=False)
    try:
        redirect_uri = scheme.redirect_uri or callback_url(request, provider.name)
        url = await begin_login(kh, provider, tenant, redirect_uri, to_console=True)
    except ProxyError as exc:
        return _back(kh, exc.message, ok=False)
    return web.Response(status=303, headers={hdrs.LOCATION: url, **_HEADERS})


async def _renew(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return _back(kh, found, ok=False)
    prt, tenant = found
    provider = prt.config
    who = _who(provider.name, tenant)
    if not prt.needs_credential or isinstance(provider.scheme, AppInstall):
        return _back(kh, f"{who} has no credential keyhop can renew.", ok=False)
    state = kh.manager.states.get((provider.name, tenant or ""))
    now = kh.clock()
    if state is not None and state.next_attempt > now:
        # a renewal now would be refused by the backoff and lose the current token
        return _back(kh, f"{who} is backing off until {when(state.next_attempt)}.", ok=False)
    current = kh.manager.cached(provider.name, tenant) or await kh.store.get(provider.name, tenant)
    if isinstance(provider.scheme, AuthorizationCode) and not (current and current.refresh_token):
        return _back(kh, f"{who} is not connected: Connect first.", ok=False)
    try:
        if current is not None:
            await kh.manager.invalidate(provider, tenant, current)
        credential, _ = await kh.manager.get(provider, tenant)
    except ProxyError as exc:
        return _back(kh, f"Renewing {who} failed: {exc.message}", ok=False)
    until = (
        "never expires"
        if credential.expires_at is None
        else f"valid until {when(credential.expires_at)}"
    )
    return _back(kh, f"Renewed {who}: {until}.")


async def _revoke(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return _back(kh, found, ok=False)
    prt, tenant = found
    name = prt.config.name
    if fields.get("confirm") != "yes":
        response = _html(kh, Html(""))
        response.text = kh.runtime.redact(confirm_page(csrf_token(request, response), name, tenant))
        return response
    # as `keyhop tokens revoke` (proxy/cli.py), and this process stops using it at once
    removed = await kh.store.delete(name, tenant)
    kh.manager.forget(name, tenant or "")
    if not removed:
        return _back(kh, f"Nothing is stored for {_who(name, tenant)}; nothing was revoked.", False)
    return _back(kh, f"Revoked {_who(name, tenant)}.")


async def _install(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return _back(kh, found, ok=False)
    prt, shop = found
    scheme = prt.config.scheme
    if not isinstance(scheme, AppInstall):
        return _back(kh, f"{prt.config.name} is not installed as an app.", ok=False)
    try:
        redirect_uri = scheme.redirect_uri or callback_url(request, prt.config.name)
    except ProxyError as exc:
        return _back(kh, exc.message, ok=False)
    base, _, last = redirect_uri.rpartition("/")
    app_url = f"{base}/install" if last == "callback" else f"/-/oauth/{prt.config.name}/install"
    link = scheme.install_url(shop, redirect_uri) if shop else None
    return _html(kh, install_page(prt.config.name, app_url, shop, link))


async def _logout(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **_HEADERS})
    forget_key(response)
    return response


Action = Callable[[Keyhop, web.BaseRequest, Fields], Awaitable[web.StreamResponse]]
_ACTIONS: Final[dict[str, Action]] = {
    "connect": _connect,
    "renew": _renew,
    "revoke": _revoke,
    "install": _install,
    "logout": _logout,
}
