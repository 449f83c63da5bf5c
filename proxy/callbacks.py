"""Inbound OAuth endpoints under /-/oauth/<provider>/ (SPEC 4.5).

Authorization code: `login` redirects to the provider with a `state` it later checks (and
PKCE when configured); `callback` exchanges the code. Pending logins live in the store,
so a callback that lands on another replica, or a `keyhop login` started from a terminal,
is still recognised.

App install (Sesami): `install` and `callback` must carry a valid `hmac`; `webhook` takes
the signed `uninstall_app` event. A bad hmac gets 401 and changes nothing.
"""

from __future__ import annotations

import html
import ipaddress
import secrets
from typing import TYPE_CHECKING, Final

from aiohttp import web

from proxy.auth.app_install import AppInstall
from proxy.auth.oauth2 import AuthorizationCode, pkce_pair
from proxy.console_session import CONSOLE, set_flash
from proxy.errors import BadRequest, BadSignature, CredentialError, NoRoute
from proxy.flows import run_flow
from proxy.messages import parse_json
from proxy.providers import TENANT_RE, TENANT_RULE, ProviderConfig
from proxy.runtime import Keyhop
from proxy.tokens import Credential

if TYPE_CHECKING:
    from proxy.access import AccessInfo

LOGIN_STATE: Final = "-login-"  # store namespace for pending logins (not a provider name)
LOGIN_TTL: Final = 600.0


def _page(title: str, text: str, status: int = 200) -> web.Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>keyhop</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return web.Response(text=body, status=status, content_type="text/html")


def _back_to_console(text: str, ok: bool = True) -> web.Response:
    """The end of a login started from the console: a page that moves on to it by itself.

    Not a 303: this answer ends a redirect chain the provider's site started, and a
    browser sends no SameSite=Strict cookie (the console's client key) on such a chain; a
    refresh from keyhop's own page is a same-site navigation, which does carry them.
    """
    body = (
        "<!doctype html><meta charset=utf-8><title>keyhop</title>"
        f'<meta http-equiv="refresh" content="0; url={CONSOLE}">'
        f"<h1>{'Connected' if ok else 'Not connected'}</h1><p>{html.escape(text)}</p>"
        f'<p><a href="{CONSOLE}">Back to the console</a></p>'
    )
    response = web.Response(text=body, content_type="text/html")
    set_flash(response, text, ok)
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def is_loopback_host(request: web.BaseRequest) -> bool:
    """The request names a loopback address or localhost in its Host: a page that rebinds
    its own DNS name to 127.0.0.1 still sends that name, and is refused."""
    host = request.headers.get("Host", "")
    name = (
        host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    )
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def callback_url(request: web.BaseRequest, provider: str) -> str:
    """keyhop's own callback as the browser reaches it, when none is configured.

    Only a loopback Host is trusted to build it: a code must never be sent to whatever host
    a request claims to be (DNS rebinding). Elsewhere, configure `auth.redirect_uri`.
    """
    if not is_loopback_host(request):
        raise BadRequest(
            f"set providers.{provider}.auth.redirect_uri: keyhop builds its callback URL "
            "only for loopback addresses"
        )
    return f"http://{request.headers['Host']}/-/oauth/{provider}/callback"


async def begin_login(
    kh: Keyhop,
    provider: ProviderConfig,
    tenant: str | None,
    redirect_uri: str | None,
    *,
    to_console: bool = False,
) -> str:
    """Record a pending login and return the provider's authorize URL. A login started from
    the console (`to_console`) ends back on it; only that flag is kept, never a URL to
    send the browser to (no open redirect)."""
    scheme = provider.scheme
    assert isinstance(scheme, AuthorizationCode)
    state = secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair() if scheme.pkce else (None, None)
    now = kh.clock()
    fields = {"provider": provider.name, "tenant": tenant or "", "redirect_uri": redirect_uri or ""}
    if verifier:
        fields["verifier"] = verifier
    if to_console:
        fields["then"] = "console"
    await kh.store.put(
        LOGIN_STATE,
        state,
        Credential(token=state, expires_at=now + LOGIN_TTL, obtained_at=now, fields=fields),
    )
    return scheme.authorization_url(state, tenant, redirect_uri, challenge)


async def finish_login(
    kh: Keyhop, provider: ProviderConfig, code: str, state: str
) -> tuple[str | None, bool]:
    """Exchange a code for the login `state` started; returns the tenant and whether the
    login was started from the console."""
    pending = await kh.store.get(LOGIN_STATE, state)
    if pending is None or pending.is_expired(kh.clock()):
        raise BadRequest("unknown or expired login state; start the login again")
    if pending.fields.get("provider") != provider.name:
        raise BadRequest("this login was started for another provider")
    await kh.store.delete(LOGIN_STATE, state)  # single use
    scheme = provider.scheme
    assert isinstance(scheme, AuthorizationCode)
    tenant = pending.fields.get("tenant") or None
    flow = scheme.exchange_flow(
        code, pending.fields.get("redirect_uri") or None, pending.fields.get("verifier"), kh.clock()
    )
    credential = await run_flow(kh, provider, flow)
    await kh.manager.remember(provider, tenant, credential)
    return tenant, pending.fields.get("then") == "console"


async def _started_from_console(kh: Keyhop, provider: ProviderConfig, state: str | None) -> bool:
    """A refused login the console started: its pending state is dropped, the console says why."""
    pending = await kh.store.get(LOGIN_STATE, state) if state else None
    if pending is None or pending.fields.get("provider") != provider.name:
        return False
    await kh.store.delete(LOGIN_STATE, state)
    return pending.fields.get("then") == "console"


def _tenant_param(request: web.BaseRequest, provider: ProviderConfig) -> str | None:
    tenant = request.query.get("tenant") or provider.default_tenant
    if provider.tenants and not tenant:
        raise BadRequest(f"{provider.name} serves several accounts: add ?tenant=ID")
    if tenant and not TENANT_RE.fullmatch(tenant):
        raise BadRequest(TENANT_RULE)
    return tenant if provider.tenants else None


async def _authorization_code(
    kh: Keyhop, request: web.BaseRequest, provider: ProviderConfig, action: str
) -> web.StreamResponse:
    scheme = provider.scheme
    assert isinstance(scheme, AuthorizationCode)
    if action == "login" and request.method == "GET":
        tenant = _tenant_param(request, provider)
        redirect_uri = scheme.redirect_uri or callback_url(request, provider.name)
        return _redirect(await begin_login(kh, provider, tenant, redirect_uri))
    if action == "callback" and request.method == "GET":
        query = request.query
        if "error" in query:
            refused = query.get("error", "")[:64]
            if await _started_from_console(kh, provider, query.get("state")):
                return _back_to_console(f"{provider.name} refused the login: {refused}", ok=False)
            raise BadRequest(f"{provider.name} refused the login: {refused}")
        code, state = query.get("code"), query.get("state")
        if not code or not state:
            raise BadRequest("the callback needs code and state")
        tenant, to_console = await finish_login(kh, provider, code, state)
        who = f" for {tenant}" if tenant else ""
        if to_console:
            return _back_to_console(f"Connected {provider.name}{who}.")
        return _page("Connected", f"keyhop is connected to {provider.name}{who}.")
    raise NoRoute(f"no endpoint /-/oauth/{provider.name}/{action}")


async def _app_install(
    kh: Keyhop, request: web.BaseRequest, provider: ProviderConfig, action: str
) -> web.StreamResponse:
    scheme = provider.scheme
    assert isinstance(scheme, AppInstall)
    if action in ("install", "callback") and request.method == "GET":
        params = {k: v for k, v in request.query.items()}
        if len(params) != len(request.query):
            raise BadRequest("a query parameter is repeated")
        why = scheme.verify(params, kh.clock())
        if why is not None:
            raise BadSignature(f"{action} refused: {why}", provider=provider.name)
        shop = params.get("shopId", "")
        if not TENANT_RE.fullmatch(shop):
            raise BadRequest("shopId is missing or not a valid id")
        if action == "install":
            redirect_uri = scheme.redirect_uri or callback_url(request, provider.name)
            return _redirect(scheme.install_url(shop, redirect_uri))
        code = params.get("code")
        if not code:
            raise BadRequest("the callback carries no code")
        credential = await run_flow(kh, provider, scheme.exchange_flow(code, shop, kh.clock()))
        await kh.manager.remember(provider, shop, credential)
        if scheme.after_install_url:
            return _redirect(scheme.after_install_url)
        return _page("Connected", f"Shop {shop} is connected to keyhop ({provider.name}).")
    if action == "webhook" and request.method == "POST":
        payload = parse_json(await request.content.read(64 * 1024))
        if payload is None:
            raise BadRequest("the webhook body is not JSON")
        if not isinstance(payload, dict) or not scheme.verify_webhook(payload):
            raise BadSignature("webhook refused: the hmac does not match", provider=provider.name)
        data = payload["data"]
        if payload.get("event") == "uninstall_app":
            shop = str(data.get("shopId") or "")
            if TENANT_RE.fullmatch(shop):
                await kh.store.delete(provider.name, shop)
                kh.manager.forget(provider.name, shop)
            return web.json_response({"ok": True, "event": "uninstall_app", "shopId": shop})
        return web.json_response({"ok": True, "ignored": str(payload.get("event"))[:64]})
    raise NoRoute(f"no endpoint /-/oauth/{provider.name}/{action}")


async def handle_oauth(
    kh: Keyhop, request: web.BaseRequest, info: AccessInfo
) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    parts = path.split("/")  # ["", "-", "oauth", provider, action]
    if len(parts) != 5:
        raise NoRoute(f"no keyhop endpoint {path}")
    name, action = parts[3], parts[4]
    prt = kh.runtime.providers.get(name)
    if prt is None:
        raise NoRoute(f"no provider {name!r} in this config")
    provider = prt.config
    info.provider = name
    try:
        if isinstance(provider.scheme, AuthorizationCode):
            return await _authorization_code(kh, request, provider, action)
        if isinstance(provider.scheme, AppInstall):
            return await _app_install(kh, request, provider, action)
    except CredentialError as exc:
        exc.provider = name
        raise
    raise NoRoute(f"{name} ({provider.kind}) has no OAuth endpoints")
