"""The proxy handler: match, credential, sign, send, stream back (SPEC 4.1).

Only this module (and the admin/callback handlers) touches the network. Bodies stream both
ways; a body is buffered only when a retry may need it, up to `replay_max_bytes`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from aiohttp import HttpVersion11, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy.access import AccessInfo, log_access
from proxy.auth import CredentialFlow
from proxy.authorize import new_nonce, signature_headers
from proxy.config import TENANT_RE, TENANT_RULE, ProviderConfig
from proxy.deadlines import Deadline
from proxy.errors import (
    BadRequest,
    ClientKeyRequired,
    CredentialError,
    NoRoute,
    ProxyError,
    RateLimited,
    TenantRequired,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.headers import UnrelayableHeader, clean_request_headers, clean_response_headers
from proxy.messages import HttpRequest, HttpResponse, dotted
from proxy.ratelimit import MAX_PACING_WAIT, reset_time, retry_after_seconds
from proxy.routing import RouteMatch, Upstream
from proxy.runtime import KEYHOP, Keyhop, ProviderRuntime
from proxy.tokens import Credential
from proxy.upstream import BadUpstreamAnswer, RequestBodyLost, UnsafeHeader, UpstreamResponse
from proxy.websocket import is_upgrade, relay_websocket

log = logging.getLogger("keyhop")

MAX_THROTTLE_RETRIES: Final = 2
MAX_THROTTLE_WAIT: Final = 10.0
MAX_TOKEN_RESPONSE: Final = 1024 * 1024
MAX_PEEK: Final = 64 * 1024  # how much of an error body is read to match `json:` rules
SMALL_BODY: Final = 64 * 1024  # answers up to this size are sent whole, in one write


class UpstreamCut(Exception):
    """The upstream ended its body early; the client connection was aborted to match.
    `response` is what the client already got (None when nothing was sent yet)."""

    def __init__(self, response: web.StreamResponse | None = None) -> None:
        super().__init__("the upstream cut its answer short")
        self.response = response


# -- credential flows --------------------------------------------------------------------------


async def run_flow(kh: Keyhop, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
    """Drive a scheme's flow: send each request it yields, return what it returns."""
    prt = kh.runtime.providers.get(provider.name)
    try:
        request = next(flow)
        while True:
            response = await _send_flow_request(kh, prt, provider.name, request)
            request = flow.send(response)
    except StopIteration as done:
        credential: Credential = done.value
        return credential
    finally:
        flow.close()


async def _send_flow_request(
    kh: Keyhop, prt: ProviderRuntime | None, provider: str, request: HttpRequest
) -> HttpResponse:
    url = URL(request.url)
    read = prt.config.timeouts.read if prt else 30.0
    try:
        async with (
            asyncio.timeout(read),
            kh.http.request(
                request.method,
                url,
                headers=dict(request.headers),
                data=request.body,
                allow_redirects=False,
                ssl=prt.ssl if prt else True,
                timeout=prt.timeout if prt else aiohttp.ClientTimeout(total=30),
            ) as response,
        ):
            body = await response.content.read(MAX_TOKEN_RESPONSE)
            return HttpResponse(response.status, dict(response.headers), body)
    except TimeoutError:
        raise CredentialError(
            f"token endpoint of {provider} ({url.host}) timed out", provider=provider
        ) from None
    except aiohttp.ClientError as exc:
        raise CredentialError(
            f"token endpoint of {provider} ({url.host}) unreachable: {type(exc).__name__}",
            provider=provider,
        ) from None


# -- the request path --------------------------------------------------------------------------


def error_response(kh: Keyhop | None, exc: ProxyError) -> web.Response:
    body = exc.body()
    if kh is not None:
        body = {k: kh.runtime.redact(v) for k, v in body.items()}
    response = web.json_response(body, status=exc.status)
    if isinstance(exc, RateLimited):
        response.headers[hdrs.RETRY_AFTER] = str(exc.retry_after)
    return response


def _check_client_key(kh: Keyhop, request: web.BaseRequest) -> None:
    keys = kh.runtime.client_keys
    if not keys:
        return
    given = request.headers.get("X-Keyhop-Key", "").encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    if not ok:
        raise ClientKeyRequired("this proxy needs a valid X-Keyhop-Key header")


def _tenant(request: web.BaseRequest, match: RouteMatch, provider: ProviderConfig) -> str | None:
    if not provider.tenants:
        return None
    if match.route.tenant == "path":
        tenant = match.tenant
    else:
        tenant = request.headers.get("X-Keyhop-Tenant")
    tenant = tenant or provider.default_tenant
    if not tenant:
        how = (
            f"the first path segment after {match.route.prefix}"
            if match.route.tenant == "path"
            else "an X-Keyhop-Tenant header"
        )
        raise TenantRequired(
            f"{provider.name} serves several accounts: name one with {how}",
            route=match.route.prefix,
            provider=provider.name,
        )
    if not TENANT_RE.fullmatch(tenant):
        raise BadRequest(
            TENANT_RULE,
            route=match.route.prefix,
            provider=provider.name,
        )
    return tenant


async def _body(request: web.BaseRequest, limit: int, replay: bool) -> tuple[Any, bool]:
    """The body to send and whether it can be sent again."""
    if not request.body_exists:
        return None, True
    if not replay or (request.content_length or 0) > limit:
        return request.content, False
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return _prefixed(b"".join(chunks), request.content), False


async def _prefixed(prefix: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    yield prefix
    async for chunk in rest.iter_any():
        yield chunk


def _matches(rules: Any, up: UpstreamResponse, body: Any) -> bool:
    for rule in rules:
        if rule.matches_head(up.status, up.headers) and all(
            dotted(body, path) == want for path, want in rule.json.items()
        ):
            return True
    return False


def _needs_body(rules: Any, up: UpstreamResponse) -> bool:
    return any(r.json and r.matches_head(up.status, up.headers) for r in rules)


async def _peek(kh: Keyhop, up: UpstreamResponse, deadline: Deadline) -> tuple[Any, bytes]:
    """Read up to MAX_PEEK bytes of the body for a rule that looks at its JSON; (parsed, raw
    bytes read). The body may come in many segments; the read timeout applies to each wait."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
    try:
        while size < MAX_PEEK:
            deadline.extend(loop.time())
            chunk = await up.content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except asyncio.CancelledError:
        if kh.deadlines.expired(deadline):
            raise UpstreamTimeout(
                f"{up.host} sent the head of its answer, then nothing for {deadline.seconds:g} s"
            ) from None
        raise
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        raise UpstreamUnreachable(f"{up.host} cut its answer short") from None
    finally:
        deadline.at = math.inf
    raw = b"".join(chunks)
    try:
        return json.loads(raw), raw
    except ValueError:
        return None, raw


async def _send(
    kh: Keyhop,
    deadline: Deadline,
    prt: ProviderRuntime,
    method: str,
    upstream: Upstream,
    target: str,
    headers: CIMultiDict[str],
    data: Any,
) -> UpstreamResponse:
    host = upstream.host
    deadline.extend(asyncio.get_running_loop().time())
    try:
        return await kh.upstreams.request(
            upstream, prt.ssl, prt.config.timeouts.connect, method, target, headers, data
        )
    except asyncio.CancelledError:
        if kh.deadlines.expired(deadline):
            raise UpstreamTimeout(
                f"{host} did not answer within {prt.config.timeouts.read:g} s"
            ) from None
        raise
    except ssl.SSLCertVerificationError:
        raise UpstreamUnreachable(f"the TLS certificate of {host} could not be verified") from None
    except ssl.SSLError:
        raise UpstreamUnreachable(f"the TLS handshake with {host} failed") from None
    except TimeoutError:
        raise UpstreamTimeout(
            f"{host} did not accept a connection within {prt.config.timeouts.connect:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"{host} failed before answering ({type(exc).__name__})"
        ) from None
    except RequestBodyLost:
        raise  # the client went away mid-upload: handle() logs it as 499
    except UnsafeHeader:
        raise CredentialError(
            f"a header for {prt.config.name} (a credential or a configured value) holds a "
            "line break or control character; the request was not sent"
        ) from None
    except BadUpstreamAnswer as exc:
        raise UpstreamUnreachable(f"{host} answered with {exc}") from None
    except OSError:
        raise UpstreamUnreachable(f"cannot connect to {host}:{upstream.port}") from None
    finally:
        deadline.at = math.inf  # not waiting on the upstream any more


class _Relayed:
    """Mixin for the answers keyhop relays: aiohttp adds a default Content-Type and its own
    Server header to every response; an upstream's answer keeps only what the upstream sent."""

    _upstream_sent: frozenset[str] = frozenset()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # type: ignore[misc]
        headers: CIMultiDict[str] = self.headers  # type: ignore[attr-defined]
        for name in (hdrs.CONTENT_TYPE, hdrs.SERVER):
            if name not in self._upstream_sent:
                headers.popall(name, None)


class RelayedResponse(_Relayed, web.Response):
    pass


class RelayedStreamResponse(_Relayed, web.StreamResponse):
    pass


def _relayed(response: _Relayed, upstream_headers: Any) -> None:
    response._upstream_sent = frozenset(
        name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in upstream_headers
    )


def _cut_short(
    request: web.BaseRequest, info: AccessInfo, sent: web.StreamResponse | None = None
) -> UpstreamCut:
    """The upstream ended its body early: the client must see a cut too, never a clean end."""
    info.aborted = True
    if request.transport is not None:
        request.transport.abort()
    return UpstreamCut(sent)


async def _stream_back(
    kh: Keyhop,
    request: web.BaseRequest,
    up: UpstreamResponse,
    info: AccessInfo,
    deadline: Deadline,
    prefix: bytes = b"",
) -> web.StreamResponse:
    length = up.headers.get(hdrs.CONTENT_LENGTH)
    declared = int(length) if length is not None and length.isdigit() else None
    loop = asyncio.get_running_loop()
    deadline.extend(loop.time())
    sent: web.StreamResponse | None = None
    try:
        headers = clean_response_headers(up.headers)
        if declared is not None and declared <= SMALL_BODY and request.method != hdrs.METH_HEAD:
            # a small body of known length goes out in one write with its headers
            chunks = [prefix] if prefix else []
            try:
                while chunk := await up.content.readany():
                    chunks.append(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # what arrived goes out under the declared length, then the cut: the
                # client sees a short body, exactly as on the streamed path
                partial = RelayedStreamResponse(status=up.status, reason=up.reason, headers=headers)
                _relayed(partial, up.headers)
                partial.content_length = declared
                await partial.prepare(request)
                await partial.write(b"".join(chunks))
                raise _cut_short(request, info, partial) from None
            body = b"".join(chunks)
            small = RelayedResponse(status=up.status, reason=up.reason, headers=headers, body=body)
            _relayed(small, up.headers)
            return small
        response = RelayedStreamResponse(status=up.status, reason=up.reason, headers=headers)
        _relayed(response, up.headers)
        if declared is not None:
            response.content_length = declared
        elif request.version < HttpVersion11:
            # an HTTP/1.0 client knows the end of a body of unknown length only by the
            # connection closing (aiohttp would keep a keep-alive one open: a hang)
            response.force_close()
        await response.prepare(request)
        sent = response
        if prefix:
            await response.write(prefix)
        while True:
            # the read timeout is the longest silence from the upstream, not the client's pace
            deadline.extend(loop.time())
            chunk = await up.content.readany()
            if not chunk:
                break
            deadline.at = math.inf
            await response.write(chunk)
        await response.write_eof()
        return response
    except asyncio.CancelledError:
        if kh.deadlines.expired(deadline):
            if sent is None and not request.writer.output_size:
                # nothing went out yet (a small answer being gathered): a clean 504
                raise UpstreamTimeout(
                    f"{up.host} went silent for {deadline.seconds:g} s in the middle of its answer"
                ) from None
            raise _cut_short(request, info, sent) from None
        raise
    except UnrelayableHeader as exc:  # nothing was sent yet
        raise UpstreamUnreachable(f"{up.host} {exc}") from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError):
            raise  # the client went away; nothing to tell it
        raise _cut_short(request, info, sent) from None
    finally:
        deadline.at = math.inf
        up.release()


async def proxy_request(
    kh: Keyhop, request: web.BaseRequest, info: AccessInfo
) -> web.StreamResponse:
    rt = kh.runtime
    _check_client_key(kh, request)
    match = rt.table.match(request.raw_path)
    if match is None:
        raise NoRoute(f"no route matches {request.raw_path.partition('?')[0]}")
    route = match.route
    prt = rt.providers[route.provider]
    provider = prt.config
    info.route, info.provider = route.prefix, provider.name
    tenant = _tenant(request, match, provider)
    info.tenant = tenant
    try:
        return await _forward(kh, request, info, match, prt, tenant)
    except ProxyError as exc:
        exc.route = exc.route or route.prefix
        exc.provider = exc.provider or provider.name
        raise


def set_auth_headers(
    kh: Keyhop,
    prt: ProviderRuntime,
    headers: CIMultiDict[str],
    credential: Credential | None,
    tenant: str | None,
    method: str,
    match: RouteMatch,
) -> None:
    """keyhop's headers, set after the client's were cleaned (they replace same-named ones)."""
    for name, value in prt.headers_for(credential, tenant):
        headers[name] = value
    sign = prt.config.sign
    if sign is not None:
        nonce = new_nonce() if sign.type == "mac" else ""
        now = kh.clock()
        upstream, target = match.route.upstream, match.upstream_target
        for name, value in signature_headers(
            prt.config, credential, method, upstream, target, now, nonce
        ):
            headers[name] = value


async def _wait_for_budget(kh: Keyhop, provider: ProviderConfig) -> None:
    now = kh.clock()
    until = await kh.limiter.blocked_until(provider.name)
    if until > now:
        if provider.retry_throttled and until - now <= MAX_THROTTLE_WAIT:
            await asyncio.sleep(until - now)
        else:
            kh.metrics.throttle(provider.name, "local")
            raise RateLimited(
                f"{provider.name} said its request budget is spent; retry later",
                retry_after=retry_after_seconds(until, now),
            )
    if provider.rate_limit is not None:
        wait = await kh.limiter.reserve(provider.name, provider.rate_limit)
        if wait > MAX_PACING_WAIT:
            kh.metrics.throttle(provider.name, "local")
            raise RateLimited(
                f"more requests queued for {provider.name} than its rate_limit allows",
                retry_after=retry_after_seconds(now + wait, now),
            )
        if wait > 0:
            await asyncio.sleep(wait)


async def _forward(
    kh: Keyhop,
    request: web.BaseRequest,
    info: AccessInfo,
    match: RouteMatch,
    prt: ProviderRuntime,
    tenant: str | None,
) -> web.StreamResponse:
    provider = prt.config
    route = match.route
    upgrade = is_upgrade(request)
    if upgrade and not route.websocket:
        raise BadRequest(f"protocol upgrades are not allowed on {route.prefix} (websocket: false)")
    await _wait_for_budget(kh, provider)
    target = match.upstream_target
    headers = clean_request_headers(request.headers, keep_authorization=provider.passes_client_auth)
    credential: Credential | None = None
    if prt.needs_credential:
        credential, info.credential = await kh.manager.get(provider, tenant)
    else:
        info.credential = provider.kind

    if upgrade:
        url = URL(route.upstream.origin + target, encoded=True)
        return await relay_websocket(kh, request, prt, match, url, headers, credential, tenant)

    if kh.answers_expect and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        # only the low-level server leaves this to us (an Application answers it itself):
        # now that route and credential are settled, ask for the body
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    want_replay = bool(provider.refresh_on and prt.needs_credential) or provider.retry_throttled
    data, replayable = await _body(request, provider.replay_max_bytes, want_replay)

    # one read deadline for the whole exchange; armed only while waiting on the upstream
    deadline = kh.deadlines.arm(provider.timeouts.read, info.task)
    deadline.at = math.inf
    try:
        refreshed = False
        throttle_retries = 0
        waited = 0.0
        while True:
            set_auth_headers(kh, prt, headers, credential, tenant, request.method, match)
            started = time.perf_counter()
            up = await _send(
                kh, deadline, prt, request.method, route.upstream, target, headers, data
            )
            elapsed = time.perf_counter() - started
            info.upstream_ms = round(elapsed * 1000, 3)
            kh.metrics.upstream(provider.name, elapsed)

            try:
                peeked, raw = None, b""
                check_refresh = credential is not None and not refreshed and provider.refresh_on
                if _needs_body(provider.throttle_on, up) or (
                    check_refresh and _needs_body(provider.refresh_on, up)
                ):
                    peeked, raw = await _peek(kh, up, deadline)

                if provider.throttle_on and _matches(provider.throttle_on, up, peeked):
                    kh.metrics.throttle(provider.name, "upstream")
                    until = reset_time(up.headers, kh.clock())
                    if until is not None:
                        await kh.limiter.block(provider.name, until)
                    if provider.retry_throttled and replayable:
                        delay = max(0.0, until - kh.clock()) if until is not None else 1.0
                        if (
                            throttle_retries >= MAX_THROTTLE_RETRIES
                            or waited + delay > MAX_THROTTLE_WAIT
                        ):
                            raise RateLimited(
                                f"{provider.name} is throttling and asks to wait {delay:.0f} s",
                                retry_after=retry_after_seconds(kh.clock() + delay, kh.clock()),
                            )
                        up.release()
                        throttle_retries += 1
                        waited += delay
                        await asyncio.sleep(delay)
                        continue
                elif check_refresh and _matches(provider.refresh_on, up, peeked):
                    assert credential is not None
                    await kh.manager.invalidate(provider, tenant, credential)
                    if replayable:
                        up.release()
                        refreshed = True
                        credential, info.credential = await kh.manager.get(provider, tenant)
                        continue
            except BaseException:
                up.release()  # whatever went wrong, the connection is not left taken
                raise
            return await _stream_back(kh, request, up, info, deadline, raw)
    finally:
        kh.deadlines.disarm(deadline)


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
    from proxy.admin import handle_admin

    started = time.perf_counter()
    task = asyncio.current_task()
    assert task is not None
    info = AccessInfo(task)
    status = 500
    kh.metrics.in_flight.add(task)
    try:
        target = request.raw_path
        if request.method == hdrs.METH_CONNECT or not target.startswith("/"):
            raise BadRequest("only origin-form request targets (/path) are accepted")
        if target.startswith("/-/"):
            response = await handle_admin(kh, request, info)
        else:
            response = await proxy_request(kh, request, info)
        status = response.status
        return response
    except ProxyError as exc:
        info.error = exc.code
        status = exc.status
        response = error_response(kh, exc)
        if request.headers.get(hdrs.EXPECT) and not request.content.is_eof():
            # the client waits for "100 Continue" and will never send the body: close the
            # connection instead of lingering for it (aiohttp would wait 10 s, also on drain)
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
        info.error = "internal_error"
        status = 500
        return web.json_response(
            {"error": "internal_error", "message": "keyhop failed; see its log"}, status=500
        )
    finally:
        kh.metrics.in_flight.discard(task)
        log_access(request, info, status, started, kh)
