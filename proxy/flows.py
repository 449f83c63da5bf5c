"""The token client: drives a scheme's sans-IO credential flow over HTTP (STYLE: httpx's
`_send_handling_auth`). The only code that sends what an auth scheme yields."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from yarl import URL

from proxy.auth import CredentialFlow
from proxy.egress import SessionProxy, session_proxy
from proxy.errors import CredentialError, EgressFailed
from proxy.messages import HttpRequest, HttpResponse
from proxy.providers import ProviderConfig
from proxy.runtime import Keyhop, ProviderRuntime
from proxy.tokens import Credential

MAX_TOKEN_RESPONSE: Final = 1024 * 1024


async def run_flow(kh: Keyhop, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
    """Drive a scheme's flow: send each request it yields, return what it returns."""
    if kh.tracing is None:
        return await _run_flow(kh, provider, flow)
    with kh.tracing.span("credential.fetch", {"keyhop.provider": provider.name}, client=True):
        return await _run_flow(kh, provider, flow)


async def _run_flow(kh: Keyhop, provider: ProviderConfig, flow: CredentialFlow) -> Credential:
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
    # through the provider's egress proxy when it has one (SPEC 5.3), never around it
    via = session_proxy(prt.config.egress, url.scheme, url.host or "") if prt else SessionProxy()
    try:
        async with (
            asyncio.timeout(read),
            kh.http.request(
                request.method,
                url,
                headers={**request.headers, **via.request_headers},
                data=request.body,
                allow_redirects=False,
                ssl=prt.ssl if prt else True,
                timeout=prt.timeout if prt else aiohttp.ClientTimeout(total=30),
                proxy=via.url,
                proxy_headers=via.headers or None,
            ) as response,
        ):
            body = await response.content.read(MAX_TOKEN_RESPONSE)
            return HttpResponse(response.status, dict(response.headers), body)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # a CredentialError either way (502 credential_error), so that a failing token
        # endpoint, or the proxy in front of it, is backed off like any other (SPEC 4.4)
        failure = via.failure(exc)
        if failure is not None:
            raise EgressFailed(
                f"token endpoint of {provider} ({url.host}): {failure}", provider=provider
            ) from None
        if isinstance(exc, TimeoutError):
            raise CredentialError(
                f"token endpoint of {provider} ({url.host}) timed out", provider=provider
            ) from None
        raise CredentialError(
            f"token endpoint of {provider} ({url.host}) unreachable: {type(exc).__name__}",
            provider=provider,
        ) from None
