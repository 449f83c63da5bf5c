"""Every request's path through keyhop, top to bottom (STYLE: mitmproxy's default_addons()):

    gate -> route -> tenant -> budget -> credential -> outbound -> send -> rules -> relay

Each stage is a named function in a module with one job (gate.py, routing.py, tenants.py,
budget.py, token_cache.py, outbound.py, send.py, exchange.py, relay.py); this module
only puts them in order, maps keyhop's own failures to answers and writes the access line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import hdrs, web

from proxy.access import AccessInfo, log_access
from proxy.admin import handle_admin
from proxy.aiohttp_private import handover_note
from proxy.bodies import read_body, read_whole_body
from proxy.budget import wait_for_budget
from proxy.errors import BadRequest, BodyTooLarge, NoRoute, ProxyError, RateLimited
from proxy.exchange import exchange
from proxy.gate import check_client_key, check_target
from proxy.handover import Handover
from proxy.headers import clean_request_headers
from proxy.outbound import Outbound
from proxy.relay import UpstreamCut
from proxy.runtime import KEYHOP, Keyhop, ProviderRuntime
from proxy.tenants import pick_tenant
from proxy.tokens import Credential
from proxy.websocket import is_upgrade, relay_websocket

log = logging.getLogger("keyhop")


async def proxy_request(
    kh: Keyhop, request: web.BaseRequest, info: AccessInfo
) -> web.StreamResponse:
    rt = kh.runtime
    check_client_key(rt, request)
    match = rt.table.match(request.raw_path)
    if match is None:
        raise NoRoute(f"no route matches {request.raw_path.partition('?')[0]}")
    route = match.route
    prt = rt.providers[route.provider]
    provider = prt.config
    info.route, info.provider = route.prefix, provider.name
    tenant = info.tenant = pick_tenant(request.headers, match, provider)
    # the express lane (proxy/lane/) may have sent this request already: go on from there
    handover: Handover | None = handover_note(request)
    budgeted = handover is not None  # the lane spent the request's rate_limit slot
    if handover is not None:
        info.began = handover.began
        if handover.answer is None:
            handover = None  # nothing it did to go on from: sent afresh
    try:
        upgrade = is_upgrade(request)
        if upgrade and not route.websocket:
            raise BadRequest(
                f"protocol upgrades are not allowed on {route.prefix} (websocket: false)"
            )
        cleaned = clean_request_headers(
            request.headers, keep_authorization=provider.passes_client_auth
        )
        if handover is None:
            if not budgeted:
                await wait_for_budget(kh, provider)
            credential = await get_credential(kh, prt, tenant, info)
        else:
            credential, info.credential = handover.credential, handover.source

        upstream = route.upstream
        path = upstream.base_path + match.path or "/"
        if upgrade:
            outbound = prt.inject.build(
                "GET", upstream, path, match.query, cleaned, None, credential, tenant, kh.clock()
            )
            return await relay_websocket(kh, request, prt, outbound)

        if kh.answers_expect and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            # only the low-level server leaves this to us (an Application answers it itself):
            # now that route and credential are settled, ask for the body
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        want_replay = bool(provider.refresh_on and prt.needs_credential) or provider.retry_throttled
        signer = provider.sign
        if signer is not None and signer.needs_body:
            body, replayable = await read_whole_body(request, signer.body_max_bytes), True
        else:
            body, replayable = await read_body(request, provider.replay_max_bytes, want_replay)

        def build(credential: Credential | None, traceparent: str | None) -> Outbound:
            return prt.inject.build(
                request.method,
                upstream,
                path,
                match.query,
                cleaned,
                body,
                credential,
                tenant,
                kh.clock(),
                traceparent,
            )

        sent, handover = handover, None  # exchange() reads the answer and releases it
        return await exchange(kh, request, info, prt, build, credential, tenant, replayable, sent)
    except ProxyError as exc:
        exc.route = exc.route or route.prefix
        exc.provider = exc.provider or provider.name
        raise
    finally:
        if handover is not None:
            handover.discard()


async def get_credential(
    kh: Keyhop, prt: ProviderRuntime, tenant: str | None, info: AccessInfo
) -> Credential | None:
    """The provider's credential for the tenant (memory, store or fetched; single-flight)."""
    provider = prt.config
    if not prt.needs_credential:
        info.credential = provider.kind
        return None
    if kh.tracing is None:
        credential, info.credential = await kh.manager.get(provider, tenant)
        return credential
    with kh.tracing.span("credential", {"keyhop.provider": provider.name}) as span:
        credential, info.credential = await kh.manager.get(provider, tenant)
        span.set_attribute("keyhop.credential_source", info.credential)
    return credential


def error_response(kh: Keyhop | None, exc: ProxyError) -> web.Response:
    """keyhop's own answer for one of its errors (SPEC 4.6), secrets redacted."""
    body = exc.body()
    if kh is not None:
        body = {k: kh.runtime.redact(v) for k, v in body.items()}
    response = web.json_response(body, status=exc.status)
    if isinstance(exc, RateLimited):
        response.headers[hdrs.RETRY_AFTER] = str(exc.retry_after)
    return response


# -- the one entry point -----------------------------------------------------------------------


@web.middleware
async def unrouted(request: web.Request, handler: Any) -> web.StreamResponse:
    """Targets the catch-all route cannot see (CONNECT's authority form) still get keyhop's
    own JSON answer, never aiohttp's plain 404."""
    if request.match_info.http_exception is not None:
        return await handle(request.app[KEYHOP], request)
    response: web.StreamResponse = await handler(request)
    return response


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The Application's catch-all route (in-process apps, tests)."""
    return await handle(request.app[KEYHOP], request)


async def handle(kh: Keyhop, request: web.BaseRequest) -> web.StreamResponse:
    """Every request lands here. Matching is done on the raw target, never on the decoded
    path or an absolute-form URL; `keyhop serve` calls this from aiohttp's low-level server
    (no router, no middlewares), in-process apps through `dispatch`."""
    started = time.perf_counter()
    task = asyncio.current_task(kh.deadlines.loop)  # a given loop: no getpid() (3.11)
    assert task is not None
    info = AccessInfo(task)
    status = 500
    kh.metrics.in_flight.add(task)
    tracing = kh.tracing
    if tracing is not None and not request.raw_path.startswith("/-/"):
        span, token = tracing.start_request(
            request.method,
            request.raw_path.partition("?")[0],
            request.headers.get("traceparent"),
        )
    else:
        tracing = None
    try:
        check_target(request)
        if request.raw_path.startswith("/-/"):
            response = await handle_admin(kh, request, info)
        else:
            response = await proxy_request(kh, request, info)
        status = response.status
        return response
    except ProxyError as exc:
        info.error = exc.code
        status = exc.status
        response = error_response(kh, exc)
        if isinstance(exc, BodyTooLarge) or (
            request.headers.get(hdrs.EXPECT) and not request.content.is_eof()
        ):
            # a body left unread (too large to sign, or a client waiting for "100 Continue"
            # that will never send it): close the connection instead of lingering for it
            # (aiohttp would wait 10 s, also on drain)
            response.force_close()
            request.content.feed_eof()  # nothing to linger on: the connection just closes
        return response
    except UpstreamCut as cut:
        # the connection is already aborted; aiohttp's last write onto it fails quietly
        status = cut.response.status if cut.response is not None else 502
        return cut.response or web.Response(status=502)
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        # the client went away mid-answer: an ordinary event, logged as 499 (nginx's "client
        # closed request"), not as an error; aiohttp's last write onto the closed
        # connection fails quietly
        info.aborted = True
        status = 499
        return web.Response(status=499)
    except asyncio.CancelledError:
        info.aborted = True
        status = 499
        raise
    except Exception:
        log.exception("unexpected error handling a request")
        kh.metrics.internal_error()  # every one is a bug
        info.error = "internal_error"
        status = 500
        return error_response(None, ProxyError("keyhop failed; see its log"))
    finally:
        kh.metrics.in_flight.discard(task)
        log_access(request.method, request.raw_path, info, status, started, kh)
        if tracing is not None:
            tracing.end_request(span, token, trace_attributes(info), status)


def trace_attributes(info: AccessInfo) -> dict[str, str | None]:
    """What a request's span carries: names and outcomes, never a value a client sent."""
    return {
        "keyhop.route": info.route,
        "keyhop.provider": info.provider,
        "keyhop.tenant": info.tenant,
        "keyhop.credential_source": info.credential,
        "keyhop.error": info.error,
    }
