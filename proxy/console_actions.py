"""The console's actions (SPEC 6.1), each answered with a 303 back to the console and a
flash saying what happened or why nothing did. The caller (proxy/console.py) has checked
access and the CSRF token; Revoke asks first (`confirm=yes` on the second form).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

from proxy.auth.app_install import AppInstall
from proxy.auth.oauth2 import AuthorizationCode
from proxy.callbacks import begin_login, callback_url
from proxy.console_html import Html, confirm_page, install_page
from proxy.console_session import CONSOLE, csrf_token, forget_key, set_flash
from proxy.console_view import when
from proxy.errors import ProxyError
from proxy.providers import TENANT_RE, TENANT_RULE
from proxy.runtime import Keyhop, ProviderRuntime

# no inline script or style, nothing from elsewhere, never framed (a Revoke button under
# someone else's page would be clickjacking); form-action stays open: Connect's 303 goes
# to the provider's login page
HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def html_response(kh: Keyhop, doc: Html, status: int = 200) -> web.Response:
    return web.Response(
        text=kh.runtime.redact(doc), status=status, content_type="text/html", headers=HEADERS
    )


def back(kh: Keyhop, text: str, ok: bool = True) -> web.Response:
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **HEADERS})
    set_flash(response, kh.runtime.redact(text), ok)
    return response


def _who(name: str, tenant: str | None) -> str:
    return f"{name} (tenant {tenant})" if tenant else name


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
        return back(kh, found, ok=False)
    prt, tenant = found
    provider, scheme = prt.config, prt.config.scheme
    if not isinstance(scheme, AuthorizationCode):
        return back(kh, f"{provider.name} ({provider.kind}) has no login to start.", ok=False)
    tenant = tenant or provider.default_tenant
    if provider.tenants and not tenant:
        return back(kh, f"{provider.name} serves several accounts: give a tenant.", ok=False)
    try:
        redirect_uri = scheme.redirect_uri or callback_url(request, provider.name)
        url = await begin_login(kh, provider, tenant, redirect_uri, to_console=True)
    except ProxyError as exc:
        return back(kh, exc.message, ok=False)
    return web.Response(status=303, headers={hdrs.LOCATION: url, **HEADERS})


async def _renew(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return back(kh, found, ok=False)
    prt, tenant = found
    provider = prt.config
    who = _who(provider.name, tenant)
    if not prt.needs_credential or isinstance(provider.scheme, AppInstall):
        return back(kh, f"{who} has no credential keyhop can renew.", ok=False)
    state = kh.manager.states.get((provider.name, tenant or ""))
    now = kh.clock()
    if state is not None and state.next_attempt > now:
        # a renewal now would be refused by the backoff and lose the current token
        return back(kh, f"{who} is backing off until {when(state.next_attempt)}.", ok=False)
    current = kh.manager.cached(provider.name, tenant) or await kh.store.get(provider.name, tenant)
    if isinstance(provider.scheme, AuthorizationCode) and not (current and current.refresh_token):
        return back(kh, f"{who} is not connected: Connect first.", ok=False)
    try:
        credential, failure = await kh.manager.renew(provider, tenant)
    except ProxyError as exc:
        return back(kh, f"Renewing {who} failed: {exc.message}", ok=False)
    if failure is not None:  # the current credential stays in use until it expires
        return back(kh, f"Renewing {who} failed: {failure}", ok=False)
    until = (
        "never expires"
        if credential.expires_at is None
        else f"valid until {when(credential.expires_at)}"
    )
    return back(kh, f"Renewed {who}: {until}.")


async def _revoke(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return back(kh, found, ok=False)
    prt, tenant = found
    name = prt.config.name
    if fields.get("confirm") != "yes":
        response = html_response(kh, Html(""))
        response.text = kh.runtime.redact(confirm_page(csrf_token(request, response), name, tenant))
        return response
    # as `keyhop tokens revoke` (proxy/cli.py), and this process stops using it at once
    removed = await kh.store.delete(name, tenant)
    kh.manager.forget(name, tenant or "")
    if not removed and not kh.store.healthy:  # the store says nothing while it is down
        return back(kh, f"The token store {kh.store.description} is unreachable; try again.", False)
    if not removed:
        return back(kh, f"Nothing is stored for {_who(name, tenant)}; nothing was revoked.", False)
    return back(kh, f"Revoked {_who(name, tenant)}.")


async def _install(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    found = _provider(kh, fields)
    if isinstance(found, str):
        return back(kh, found, ok=False)
    prt, shop = found
    scheme = prt.config.scheme
    if not isinstance(scheme, AppInstall):
        return back(kh, f"{prt.config.name} is not installed as an app.", ok=False)
    try:
        redirect_uri = scheme.redirect_uri or callback_url(request, prt.config.name)
    except ProxyError as exc:
        return back(kh, exc.message, ok=False)
    base, _, last = redirect_uri.rpartition("/")
    app_url = f"{base}/install" if last == "callback" else f"/-/oauth/{prt.config.name}/install"
    link = scheme.install_url(shop, redirect_uri) if shop else None
    return html_response(kh, install_page(prt.config.name, app_url, shop, link))


async def _logout(kh: Keyhop, request: web.BaseRequest, fields: Fields) -> web.StreamResponse:
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **HEADERS})
    forget_key(response)
    return response


Action = Callable[[Keyhop, web.BaseRequest, Fields], Awaitable[web.StreamResponse]]
ACTIONS: Final[dict[str, Action]] = {
    "connect": _connect,
    "renew": _renew,
    "revoke": _revoke,
    "install": _install,
    "logout": _logout,
}
