"""WebSocket routes (SPEC 4.1): credentials at the handshake, then frames relayed both ways.
An upgrade on any other route is refused (forward.py), never passed on bare."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy.egress import session_proxy
from proxy.errors import UpstreamRefusedUpgrade, UpstreamUnreachable
from proxy.outbound import Outbound
from proxy.runtime import Keyhop, ProviderRuntime


def is_upgrade(request: web.BaseRequest) -> bool:
    return "upgrade" in request.headers.get(hdrs.CONNECTION, "").lower() and bool(
        request.headers.get(hdrs.UPGRADE)
    )


async def relay_websocket(
    kh: Keyhop, request: web.BaseRequest, prt: ProviderRuntime, outbound: Outbound
) -> web.StreamResponse:
    """Credentials at the handshake (`outbound` carries them), then frames relayed both ways
    until either side closes."""
    url = URL(outbound.upstream.origin + outbound.target, encoded=True)
    headers = CIMultiDict(outbound.headers)
    for name in list(headers):
        if name.lower().startswith("sec-websocket-"):
            del headers[name]
    protocols = [
        p.strip()
        for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")
        if p.strip()
    ]
    try:
        via = session_proxy(prt.config.egress, url.scheme, url.host or "")
        headers.update(via.request_headers)
        ws = await kh.http.ws_connect(
            url,
            headers=headers,
            proxy=via.url,
            proxy_headers=via.headers or None,
            protocols=protocols,
            ssl=prt.ssl,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamRefusedUpgrade(f"upstream answered {exc.status}") from None
    except (aiohttp.ClientError, TimeoutError):
        raise UpstreamUnreachable(f"cannot open a WebSocket to {url.host}") from None
    client = web.WebSocketResponse(protocols=[ws.protocol] if ws.protocol else ())
    await client.prepare(request)

    async def pump(
        source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    ) -> None:
        async for msg in source:
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            else:
                break
        await sink.close()

    tasks = [asyncio.create_task(pump(client, ws)), asyncio.create_task(pump(ws, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
        await client.close()
    return client
