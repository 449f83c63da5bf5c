"""The token client: drives a scheme's sans-IO credential flow over HTTP (STYLE: httpx's
`_send_handling_auth`). The only code that sends what an auth scheme yields."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from yarl import URL

from proxy.auth import CredentialFlow
from proxy.errors import CredentialError
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
