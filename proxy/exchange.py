"""One proxied exchange: send, judge the answer by the provider's rules, retry or relay.

Rules (after h11's _state.py), each with a test named after it:
- An answer matching `refresh_on` (with a credential that was not just fetched) drops that
  credential; the request is sent once more with a new one, and only when its body was
  buffered (replayable). Never a second refresh for one request.
- An answer matching `throttle_on` blocks the provider until its Retry-After /
  X-Plan-Quota-Reset (capped, see ratelimit.py). With `retry_throttled: true` and a
  replayable body it is retried at most MAX_THROTTLE_RETRIES times and MAX_THROTTLE_WAIT
  seconds in all; a longer wait is answered 429 at once.
- Anything else is relayed as the upstream sent it.
- Deadlines: one read deadline per exchange, armed only while keyhop waits on the upstream
  (for the head of an answer, for a JSON body a rule looks at, between body chunks).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from aiohttp import hdrs, web

from proxy.access import AccessInfo
from proxy.budget import MAX_THROTTLE_RETRIES, MAX_THROTTLE_WAIT
from proxy.deadlines import Deadline
from proxy.errors import ProxyError, RateLimited, UpstreamTimeout, UpstreamUnreachable
from proxy.handover import Handover
from proxy.messages import dotted, parse_json
from proxy.outbound import Outbound
from proxy.providers import ResponseMatch
from proxy.ratelimit import reset_time, retry_after_seconds
from proxy.relay import stream_back
from proxy.runtime import Keyhop, ProviderRuntime
from proxy.send import send
from proxy.tokens import Credential
from proxy.upstream import UpstreamResponse

MAX_PEEK: Final = 64 * 1024  # how much of an error body is read to match `json:` rules


def _matches(rules: tuple[ResponseMatch, ...], up: UpstreamResponse, body: Any) -> bool:
    for rule in rules:
        if rule.matches_head(up.status, up.headers) and all(
            dotted(body, path) == want for path, want in rule.json.items()
        ):
            return True
    return False


def _needs_body(rules: tuple[ResponseMatch, ...], up: UpstreamResponse) -> bool:
    return any(r.json and r.matches_head(up.status, up.headers) for r in rules)


async def _peek(kh: Keyhop, up: UpstreamResponse, deadline: Deadline) -> tuple[Any, bytes]:
    """Read up to MAX_PEEK bytes of the body for a rule that looks at its JSON; (parsed, raw
    bytes read). The body may come in many segments; the read timeout applies to each wait."""
    loop = kh.deadlines.loop or asyncio.get_running_loop()
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
    return parse_json(raw), raw  # bounded: an answer nested 50,000 deep is just not JSON


async def settle(
    kh: Keyhop,
    prt: ProviderRuntime,
    up: UpstreamResponse,
    credential: Credential | None,
    tenant: str | None,
) -> None:
    """An answer nobody will read (its client left first), ended as the pipeline ends it:
    what the rules above do beside retrying still happens (a throttle_on answer blocks the
    provider, a refresh_on one drops the refused credential), and a small body of known
    length is read to its end, so its connection goes back to the pool. Releases `up`."""
    provider = prt.config
    task = asyncio.current_task(kh.deadlines.loop)
    assert task is not None
    deadline = kh.deadlines.arm(provider.timeouts.read, task)
    try:
        if up.status not in prt.rule_statuses:
            length = up.headers.get(hdrs.CONTENT_LENGTH)
            if length is not None and length.isdigit() and int(length) <= MAX_PEEK:
                await _peek(kh, up, deadline)  # the whole body: the connection is reusable
            return
        peeked: Any = None
        if _needs_body(provider.throttle_on, up) or (
            credential is not None and _needs_body(provider.refresh_on, up)
        ):
            peeked, _ = await _peek(kh, up, deadline)
        if provider.throttle_on and _matches(provider.throttle_on, up, peeked):
            kh.metrics.throttle(provider.name, "upstream")
            until = reset_time(up.headers, kh.clock())
            if until is not None:
                await kh.limiter.block(provider.name, until)
        elif (
            credential is not None
            and provider.refresh_on
            and _matches(provider.refresh_on, up, peeked)
        ):
            await kh.manager.invalidate(provider, tenant, credential)
    except (UpstreamTimeout, UpstreamUnreachable):
        pass  # a body that went silent or was cut: nothing to match, nothing to reuse
    finally:
        kh.deadlines.disarm(deadline)
        up.release()


async def exchange(
    kh: Keyhop,
    request: web.BaseRequest,
    info: AccessInfo,
    prt: ProviderRuntime,
    build: Callable[[Credential | None, str | None], Outbound],
    credential: Credential | None,
    tenant: str | None,
    replayable: bool,
    sent: Handover | None = None,
) -> web.StreamResponse:
    """Send what `build` makes for the credential (and trace context); apply the rules
    above; relay the answer. `sent`: the express lane sent the first attempt already."""
    provider = prt.config
    assert info.task is not None  # (the express lane, which has none, never comes here)
    deadline = kh.deadlines.arm(provider.timeouts.read, info.task)
    deadline.at = math.inf
    try:
        refreshed = False
        throttle_retries = 0
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            if sent is not None:
                assert sent.answer is not None  # (forward.py passes only one with an answer)
                outbound = build(credential, None)
                started = sent.started
                up = await send(kh, deadline, prt, outbound, sent.answer)
                sent = None
            elif kh.tracing is None:
                outbound = build(credential, None)
                started = time.perf_counter()
                up = await send(kh, deadline, prt, outbound)
            else:
                span, traceparent = kh.tracing.start_upstream(provider.name, attempt)
                try:
                    outbound = build(credential, traceparent)
                    started = time.perf_counter()
                    up = await send(kh, deadline, prt, outbound)
                    span.set_attribute("http.response.status_code", up.status)
                except ProxyError as exc:
                    span.set_attribute("keyhop.error", exc.code)
                    raise
                finally:
                    span.end()
            elapsed = time.perf_counter() - started
            info.upstream_ms = round(elapsed * 1000, 3)
            kh.metrics.upstream(provider.name, elapsed)
            if up.status not in prt.rule_statuses:  # the usual answer: no rule looks at it
                return await stream_back(kh, request, up, info, deadline)

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
            return await stream_back(kh, request, up, info, deadline, raw)
    finally:
        kh.deadlines.disarm(deadline)
