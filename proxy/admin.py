"""keyhop's own endpoints under /-/ (SPEC 4.6): health, readiness, metrics, providers, and
the inbound OAuth callbacks (proxy/callbacks.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.callbacks import handle_oauth
from proxy.console import handle_console
from proxy.errors import BadRequest, NoRoute
from proxy.gate import check_client_key
from proxy.runtime import Keyhop

if TYPE_CHECKING:
    from proxy.access import AccessInfo


#: tenants listed per provider in one /-/providers answer; `?offset=&limit=` pages on
TENANTS_PAGE: Final = 100
TENANTS_PAGE_MAX: Final = 1000


def _page_params(query: Any) -> tuple[int, int]:
    """`offset` and `limit` from the query; a value that is not a small whole number is a 400."""
    values = []
    for name, default, most in (("offset", 0, None), ("limit", TENANTS_PAGE, TENANTS_PAGE_MAX)):
        raw = query.get(name)
        if raw is None:
            values.append(default)
            continue
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise BadRequest(f"{name} must be a whole number, found {raw[:20]!r}")
        value = int(raw)
        if most is not None and not 1 <= value <= most:
            raise BadRequest(f"{name} must be between 1 and {most}")
        values.append(value)
    return values[0], values[1]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def providers_view(kh: Keyhop, offset: int = 0, limit: int = TENANTS_PAGE) -> dict[str, Any]:
    """Per provider and tenant: credential state, expiry, last error. Never a secret.

    Tenants are listed in order, `limit` per provider from `offset`, so the answer stays
    bounded however many tenants there are; `tenants_total` and `tenants_next_offset`
    (null on the last page) say what else there is."""
    now = kh.clock()
    stored: dict[tuple[str, str], Any] = {}
    store_ok = await kh.store.ping()
    if store_ok:
        for item in await kh.store.items():
            if item.provider in kh.runtime.providers:
                stored[(item.provider, item.tenant or "")] = item.credential
    out: dict[str, Any] = {}
    for name, prt in kh.runtime.providers.items():
        provider = prt.config
        keys = {k for k in stored if k[0] == name} | {k for k in kh.manager.states if k[0] == name}
        if not provider.tenants:
            keys.add((name, ""))  # a single-account provider is always listed
        ordered = sorted(keys)
        tenants = []
        for key in ordered[offset : offset + limit]:
            credential = kh.manager.cached(*key) or stored.get(key)
            state = kh.manager.states.get(key)
            if not prt.needs_credential:
                status = "static"  # headers only (static) or the client's own (none)
            elif credential is None:
                status = "missing"
            elif credential.is_expired(now):
                status = "expired"
            elif now >= credential.renew_at():
                status = "renewing"
            else:
                status = "valid"
            tenants.append(
                {
                    "tenant": key[1] or None,
                    "state": status,
                    "kind": credential.kind if credential else None,
                    "expires_at": _iso(credential.expires_at) if credential else None,
                    "renewable": bool(credential and credential.refresh_token)
                    or provider.scheme.refetchable,
                    "fetches": state.fetches if state else 0,
                    "last_fetch_at": _iso(state.last_fetch_at) if state else None,
                    "last_error": kh.runtime.redact(state.last_error)
                    if state and state.last_error
                    else None,
                    "last_error_at": _iso(state.last_error_at) if state else None,
                    "next_attempt_at": _iso(state.next_attempt)
                    if state and state.next_attempt > now
                    else None,
                }
            )
        out[name] = {
            "auth": provider.kind,
            "routes": [r.prefix for r in kh.runtime.config.routes if r.provider == name],
            "tenants_required": provider.tenants,
            "tenants": tenants,
            "tenants_total": len(ordered),
            "tenants_next_offset": offset + limit if offset + limit < len(ordered) else None,
        }
    view = {"providers": out, "store": {"engine": kh.store.description, "ok": store_ok}}
    if kh.peers is not None:
        kh.peers.merge_providers(view, now)  # SPEC 7: every worker's states, as one process
    return view


async def _console_view(kh: Keyhop) -> dict[str, Any]:
    """The console lists up to TENANTS_PAGE_MAX tenants a provider on one page."""
    return await providers_view(kh, 0, TENANTS_PAGE_MAX)


async def handle_admin(
    kh: Keyhop, request: web.BaseRequest, info: AccessInfo
) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    info.route = "/-/"
    if path == "/-/health":
        return web.json_response({"status": "ok", "uptime_s": round(time.time() - kh.started_at)})
    if path == "/-/ready":
        # an unreachable store degrades keyhop (memory only) but does not stop it serving
        store_ok = await kh.store.ping()
        body = {
            "ready": True,
            "store": kh.store.description,
            "store_ok": store_ok,
            "degraded": not store_ok,
        }
        return web.json_response(body)
    if path == "/-/metrics":
        # "throttled until" lives in the limiter (Redis with replicas): asked here, once a
        # scrape, since the collectors that render it cannot wait
        kh.throttled_until = {
            name: await kh.limiter.blocked_until(name) for name in kh.runtime.providers
        }
        return web.Response(body=kh.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
    if path == "/-/providers":
        check_client_key(kh.runtime, request)
        offset, limit = _page_params(request.query)
        return web.json_response(await providers_view(kh, offset, limit))
    if path.startswith("/-/oauth/"):
        return await handle_oauth(kh, request, info)
    if path == "/-/console" or path.startswith("/-/console/"):
        return await handle_console(kh, request, info, _console_view)  # its own access rules
    raise NoRoute(f"no keyhop endpoint {path}")
