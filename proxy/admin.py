"""keyhop's own endpoints under /-/ (SPEC 4.6): health, readiness, metrics, providers, and
the inbound OAuth callbacks (proxy/callbacks.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.callbacks import handle_oauth
from proxy.console import handle_console
from proxy.errors import NoRoute
from proxy.gate import check_client_key
from proxy.runtime import Keyhop

if TYPE_CHECKING:
    from proxy.access import AccessInfo


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def providers_view(kh: Keyhop) -> dict[str, Any]:
    """Per provider and tenant: credential state, expiry, last error. Never a secret."""
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
        tenants = []
        for key in sorted(keys):
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
        }
    view = {"providers": out, "store": {"engine": kh.store.description, "ok": store_ok}}
    if kh.peers is not None:
        kh.peers.merge_providers(view, now)  # SPEC 7: every worker's states, as one process
    return view


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
        return web.Response(body=kh.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
    if path == "/-/providers":
        check_client_key(kh.runtime, request)
        return web.json_response(await providers_view(kh))
    if path.startswith("/-/oauth/"):
        return await handle_oauth(kh, request, info)
    if path == "/-/console" or path.startswith("/-/console/"):
        return await handle_console(kh, request, info, providers_view)  # its own access rules
    raise NoRoute(f"no keyhop endpoint {path}")
