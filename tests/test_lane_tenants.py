"""The express lane on a provider with `tenants` (SPEC 3.3): the tenant named by header or
path picks the credential, as in the pipeline; a request naming none is the pipeline's."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.runtime import KEYHOP
from proxy.store import MemoryStore
from tests.conftest import ServeTestServer, make_config
from tests.support import assert_no_secrets

SECRET = "tenant-lane-secret-9f3"


async def lane_served(client: Any) -> float:
    async with client.get("/-/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "keyhop_express_requests_total":
                return float(sample.value)
    return 0.0


async def test_each_tenants_credential_is_used_on_the_lane_and_a_missing_tenant_is_refused(
    upstream: Any, aiohttp_client: Any, ca_file: str
) -> None:
    issued: list[str] = []
    seen: list[tuple[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        await request.post()
        issued.append(f"tok-{len(issued) + 1}")
        return web.json_response({"access_token": issued[-1], "expires_in": 3600})

    async def resource(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers["Authorization"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/{tail:.*}", resource)
    base = await upstream(app)
    provider = {
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": f"{base}/token",
            "client_id": "c",
            "client_secret": SECRET,
        },
        "tenants": True,
        "ca_file": ca_file,
    }
    config = {
        "providers": {"p": provider},
        "routes": [
            {"prefix": "/h", "upstream": base, "provider": "p"},
            {"prefix": "/t", "upstream": base, "provider": "p", "tenant": "path"},
        ],
    }
    app = create_app(make_config(config), store=MemoryStore())
    client = await aiohttp_client(ServeTestServer(app, express=True))
    lines: list[str] = []
    client.server.app[KEYHOP].access_log = lines.append  # type: ignore[union-attr]

    for tenant in ("a", "b"):  # cold: fetched by the pipeline
        resp = await client.get("/h/x", headers={"X-Keyhop-Tenant": tenant})
        assert resp.status == 200, await resp.text()
    before = await lane_served(client)
    for tenant in ("a", "b", "a"):
        resp = await client.get("/h/x", headers={"X-Keyhop-Tenant": tenant})
        assert resp.status == 200
    resp = await client.get("/t/b/y")
    assert resp.status == 200
    assert await lane_served(client) == before + 4  # all four warm requests on the lane
    assert seen[2:] == [
        ("/x", "Bearer tok-1"),
        ("/x", "Bearer tok-2"),
        ("/x", "Bearer tok-1"),
        ("/y", "Bearer tok-2"),
    ]

    resp = await client.get("/h/x")  # no tenant: the pipeline's answer, nothing sent
    assert resp.status == 400
    assert (await resp.json())["error"] == "tenant_required"
    assert len(seen) == 6 and await lane_served(client) == before + 4

    records = [json.loads(line) for line in lines if '"route"' in line]
    tenants = [r["tenant"] for r in records if r["path"] in ("/h/x", "/t/b/y")]
    assert tenants[:4] == ["a", "b", "a", "b"]
    assert_no_secrets(lines, [SECRET, *issued])
