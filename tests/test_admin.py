"""/-/providers stays bounded however many tenants there are (issue 12 item 6): tenants are
paged per provider with `?offset=&limit=`, and tenants that never got a credential are not
listed at all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from proxy.admin import TENANTS_PAGE
from tests.conftest import MakeProxy, StartUpstream
from tests.support import Clock
from tests.test_token_cache import CountingStore


def token_app() -> web.Application:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok-1234567890", "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/token", token)
    return app


def echo() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


async def tenants_config(upstream: StartUpstream) -> dict[str, Any]:
    token_base = await upstream(token_app(), tls=False)
    base = await upstream(echo(), tls=False)
    return {
        "providers": {
            "cc": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": token_base + "/token",
                    "client_id": "c",
                    "client_secret": "secret-0a1b2c3d",
                },
                "tenants": True,
            },
            "login": {
                "preset": "saison",
                "auth": {
                    "client_id": "c",
                    "client_secret": "secret-4e5f6a7b",
                    "token_url": token_base + "/never",
                    "authorize_url": token_base + "/authorize",
                },
            },
        },
        "routes": [
            {"prefix": "/cc", "upstream": base, "provider": "cc"},
            {"prefix": "/login", "upstream": base, "provider": "login"},
        ],
    }


async def test_tenants_are_listed_a_page_at_a_time(
    upstream: StartUpstream, proxy: MakeProxy
) -> None:
    client = await proxy(await tenants_config(upstream))
    names = [f"shop-{i:03d}" for i in range(250)]
    for name in names:
        resp = await client.get("/cc/x", headers={"X-Keyhop-Tenant": name})
        assert resp.status == 200, await resp.text()

    view = (await (await client.get("/-/providers")).json())["providers"]["cc"]
    assert [t["tenant"] for t in view["tenants"]] == names[:TENANTS_PAGE]
    assert (view["tenants_total"], view["tenants_next_offset"]) == (250, 100)

    view = (await (await client.get("/-/providers?offset=200&limit=100")).json())["providers"]
    assert [t["tenant"] for t in view["cc"]["tenants"]] == names[200:]
    assert view["cc"]["tenants_next_offset"] is None

    view = (await (await client.get("/-/providers?limit=1000")).json())["providers"]
    assert len(view["cc"]["tenants"]) == 250


@pytest.mark.parametrize(
    "query", ["offset=-1", "limit=0", "limit=1001", "offset=x", "limit=1e3", "offset=\u00b2"]
)
async def test_a_bad_page_parameter_is_a_400(
    upstream: StartUpstream, proxy: MakeProxy, query: str
) -> None:
    client = await proxy(await tenants_config(upstream))
    resp = await client.get(f"/-/providers?{query}")
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"


async def test_requests_naming_unknown_tenants_list_nothing_and_write_nothing(
    upstream: StartUpstream, proxy: MakeProxy
) -> None:
    store = CountingStore(Clock())
    client = await proxy(await tenants_config(upstream), store=store)

    async def ask(i: int) -> int:
        resp = await client.get("/login/x", headers={"X-Keyhop-Tenant": f"member-{i}"})
        body = await resp.json()
        assert body["error"] == "not_connected"
        return resp.status

    for first in range(0, 2000, 200):
        statuses = await asyncio.gather(*(ask(i) for i in range(first, first + 200)))
        assert set(statuses) == {503}
    assert store.writes == 0
    view = (await (await client.get("/-/providers")).json())["providers"]["login"]
    assert (view["tenants"], view["tenants_total"]) == ([], 0)
