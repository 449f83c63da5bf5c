"""Tenants (SPEC 3.3) with the express lane on and off: the same credential per tenant
reaches the upstream, the tenant's path segment is stripped alike, and the access lines name
the same tenant (SPEC 4.7), whether the lane or the pipeline served the request."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.conftest import StartUpstream, raw_url
from tests.lane_support import (
    CLIENT_SECRET,
    TOKEN_PREFIX,
    Serve,
    access_lines,
    cc_provider,
    lane_served,
    serve,
)

__all__ = ["serve"]  # fixture

TIMINGS = {"ts", "duration_ms", "upstream_ms"}
REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/t/x", {"X-Keyhop-Tenant": "shop-a"}),
    ("/t/x", {"X-Keyhop-Tenant": "shop-a"}),
    ("/t/x", {"X-Keyhop-Tenant": "shop-b"}),
    ("/t/x", {"X-Keyhop-Tenant": "shop-b"}),
    ("/t/x", {"X-Keyhop-Tenant": "shop-a"}),
    ("/t/x", {}),  # 400 tenant_required
    ("/t/x", {"X-Keyhop-Tenant": "bad tenant!"}),
    ("/p/shop-a/y?q=1", {}),
    ("/p/shop-a/y?q=1", {}),
    ("/p/shop-c/z", {}),
    ("/p/shop-c/z", {"X-Keyhop-Tenant": "shop-a"}),  # the path names it
]


async def run(
    upstream: StartUpstream, serve: Serve, express: bool
) -> tuple[list[int], list[dict[str, Any]], list[tuple[str, str | None]]]:
    seen: list[tuple[str, str | None]] = []
    issued: dict[str, str] = {}  # client tenant form field -> token

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        issued[str(form.get("n", len(issued)))] = value = f"{TOKEN_PREFIX}-{len(issued) + 1}"
        return web.json_response({"access_token": value, "expires_in": 3600})

    async def resource(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/{tail:.*}", resource)
    base = await upstream(app, tls=False)
    provider = {**cc_provider(base + "/token"), "tenants": True}
    client = await serve(
        {
            "providers": {"p": provider},
            "routes": [
                {"prefix": "/t", "upstream": base, "provider": "p"},
                {"prefix": "/p", "upstream": base + "/v1", "provider": "p", "tenant": "path"},
            ],
        },
        express=express,
    )
    lines = access_lines(client)
    statuses = []
    for target, headers in REQUESTS:
        resp = await client.session.get(raw_url(client, target), headers=headers)
        text = await resp.text()
        assert CLIENT_SECRET not in text and TOKEN_PREFIX not in text
        statuses.append(resp.status)
    records = [json.loads(line) for line in lines]
    assert (await lane_served(client) >= 4) is express  # the warm repeats (lane on main)
    return statuses, records, seen


async def test_tenants_reach_the_upstream_and_the_log_alike_with_the_lane_on_or_off(
    upstream: StartUpstream, serve: Serve
) -> None:
    on = await run(upstream, serve, True)
    off = await run(upstream, serve, False)
    assert on[0] == off[0] == [200, 200, 200, 200, 200, 400, 400, 200, 200, 200, 200]
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in on[1]] == [
        {k: v for k, v in r.items() if k not in TIMINGS} for r in off[1]
    ]
    assert [r["tenant"] for r in on[1]] == [
        "shop-a",
        "shop-a",
        "shop-b",
        "shop-b",
        "shop-a",
        None,
        None,
        "shop-a",
        "shop-a",
        "shop-c",
        "shop-c",
    ]
    assert on[2] == off[2]
    tokens = {path: auth for path, auth in on[2]}
    assert tokens["/v1/y?q=1"] == on[2][0][1]  # shop-a's credential, by path as by header
    assert len({auth for _, auth in on[2]}) == 3  # one credential per tenant
