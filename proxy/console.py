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
from proxy.callbacks import is_loopback_host
from proxy.console_actions import ACTIONS, HEADERS, html_response
from proxy.console_html import ASSETS, Html, key_page, message_page
from proxy.console_session import (
    CONSOLE,
    KEY_COOKIE,
    cookie_key,
    csrf_ok,
    csrf_token,
    keep_key,
    pop_flash,
)
from proxy.console_view import ProviderFacts, console_page
from proxy.errors import NoRoute
from proxy.gate import key_matches
from proxy.runtime import Keyhop, ProviderRuntime

if TYPE_CHECKING:
    from proxy.access import AccessInfo

ViewFn = Callable[[Keyhop], Awaitable[dict[str, Any]]]

_FILES: Final = resources.files("proxy") / "assets"
_ASSETS: Final = {
    "console.css": ("text/css", (_FILES / "console.css").read_bytes()),
    "console.js": ("text/javascript", (_FILES / "console.js").read_bytes()),
}


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
    response = web.Response(content_type="text/html", headers=HEADERS)
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
        can_leave=bool(kh.runtime.client_keys) and bool(request.cookies.get(KEY_COOKIE)),
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
        return html_response(kh, message_page("Refused", _REBIND, back=False), 403)
    if path == CONSOLE and request.method in ("GET", "HEAD"):
        if "key" in request.query:  # the key given once in the URL: kept, then dropped from it
            return _take_key(kh, request, request.query["key"])
        if not _allowed(kh, request):
            return _key_form(kh, request, refused=False)
        return await _render(kh, request, view_fn)
    action = path.removeprefix(CONSOLE + "/")
    if path == action or (action not in ACTIONS and action != "key"):
        raise NoRoute(f"no keyhop endpoint {path}")
    if request.method != "POST":
        return web.Response(status=405, headers={hdrs.ALLOW: "POST", **HEADERS})
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(request, fields.get("csrf", "")):
        return html_response(kh, message_page("Refused", _STALE), 403)
    if action == "key":
        return _take_key(kh, request, fields.get("key", ""))
    if not _allowed(kh, request):
        return _key_form(kh, request, refused=False)
    if fields.get("provider") in kh.runtime.providers:
        info.provider = fields["provider"]  # only a configured name reaches the access log
    return await ACTIONS[action](kh, request, fields)


_REBIND: Final = (
    "Open the console at 127.0.0.1 or localhost, or set clients.keys: without a client "
    "key keyhop serves it only to a loopback Host."
)
_STALE: Final = (
    "This form did not come from the console, or keyhop restarted since it was shown. "
    "Nothing was changed: reload the console and try again."
)


def _key_form(kh: Keyhop, request: web.BaseRequest, refused: bool) -> web.Response:
    response = html_response(kh, Html(""), 401)
    response.text = kh.runtime.redact(key_page(csrf_token(request, response), refused))
    return response


def _take_key(kh: Keyhop, request: web.BaseRequest, key: str) -> web.Response:
    keys = kh.runtime.client_keys
    if keys and not key_matches(keys, key.encode("utf-8", "surrogateescape")):
        return _key_form(kh, request, refused=True)
    response = web.Response(status=303, headers={hdrs.LOCATION: CONSOLE, **HEADERS})
    if keys:
        keep_key(response, key)
    return response
