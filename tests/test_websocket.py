"""WebSocket routes: credentials at the handshake, frames relayed both ways (SPEC 4.1)."""

from __future__ import annotations

from typing import Any

from aiohttp import WSMsgType, web

from tests.conftest import MakeProxy, StartUpstream


def ws_upstream(seen: dict[str, Any]) -> web.Application:
    async def socket(request: web.Request) -> web.WebSocketResponse:
        seen["headers"] = dict(request.headers)
        seen["path"] = request.raw_path
        ws = web.WebSocketResponse(protocols=("v1.json",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", socket)
    return app


async def test_a_websocket_route_authenticates_the_handshake_and_relays_both_ways(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    seen: dict[str, Any] = {}
    base = await upstream(ws_upstream(seen))
    client = await proxy(
        {
            "providers": {
                "p": {
                    "auth": {"type": "static", "token": "ws-token-123456"},
                    "headers": {"Authorization": "Bearer {token}"},
                    "ca_file": ca_file,
                }
            },
            "routes": [{"prefix": "/live", "upstream": base, "provider": "p", "websocket": True}],
        }
    )
    ws = await client.ws_connect(
        "/live/stream?x=1",
        protocols=("v1.json",),
        headers={"Authorization": "Bearer client-own", "X-Keyhop-Key": "k"},
    )
    await ws.send_str("hello")
    assert (await ws.receive()).data == "echo:hello"
    await ws.send_bytes(b"abc")
    assert (await ws.receive()).data == b"cba"
    assert ws.protocol == "v1.json"
    await ws.close()
    assert seen["path"] == "/stream?x=1"
    assert seen["headers"]["Authorization"] == "Bearer ws-token-123456"
    assert "X-Keyhop-Key" not in seen["headers"]
    assert seen["headers"]["Host"].startswith("127.0.0.1:")


async def test_an_upstream_that_refuses_the_upgrade_is_reported_not_hung(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, echo_app: web.Application
) -> None:
    base = await upstream(echo_app)  # answers 200 JSON, never upgrades
    client = await proxy(
        {
            "providers": {"p": {"auth": {"type": "none"}, "ca_file": ca_file}},
            "routes": [{"prefix": "/live", "upstream": base, "provider": "p", "websocket": True}],
        }
    )
    resp = await client.get(
        "/live/x",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 502
