"""Rules that look past the status (a header, a JSON body) or retry (retry_throttled), on
answers to requests the express lane sent (SPEC 4.1, 4.4; Kibo's Mashery 403s, SPEC 1):
the pipeline judges the answer the lane gave back exactly as one it got itself."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import (
    TOKEN_PREFIX,
    Client,
    Serve,
    TokenEndpoint,
    cc_provider,
    lane_served,
    one_route,
    serve,
)

__all__ = ["serve"]  # fixture

LANE = pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
KIBO_RULES = {
    "refresh_on": [
        401,
        {"status": 403, "header": {"X-Mashery-Error-Code": "ERR_403_NOT_AUTHORIZED"}},
    ],
    "throttle_on": [
        429,
        {"status": 403, "header": {"X-Mashery-Error-Code": "ERR_403_DEVELOPER_OVER_QPS"}},
    ],
}


async def keyhop(
    upstream: StartUpstream,
    serve: Serve,
    ca_file: str,
    express: bool,
    answers: list[web.Response],
    **extra: Any,
) -> tuple[Client, list[str | None], TokenEndpoint]:
    """keyhop warm (credential and connection) in front of an upstream that gives `answers`
    in turn after the warm-up, then 200s."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        if request.path != "/warm":
            seen.append(request.headers.get("Authorization"))
            if answers:
                return answers.pop(0)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    base = await upstream(app)
    tokens = TokenEndpoint()
    token_base = await upstream(tokens.app())
    client = await serve(
        one_route(base, cc_provider(token_base + "/token", ca_file, **extra)), express=express
    )
    for _ in range(2):
        assert (await client.get("/r/warm")).status == 200
    assert await lane_served(client) == (1 if express else 0)
    return client, seen, tokens


@LANE
async def test_a_throttled_answer_is_retried_after_retry_after_with_retry_throttled(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    throttled = web.json_response({"why": "qps"}, status=429, headers={"Retry-After": "1"})
    client, seen, _ = await keyhop(
        upstream, serve, ca_file, express, [throttled], retry_throttled=True
    )
    started = time.monotonic()
    resp = await client.get("/r/x")
    took = time.monotonic() - started
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    assert 0.9 <= took <= 3.0, took
    assert len(seen) == 2


@LANE
async def test_a_mashery_over_qps_403_blocks_the_provider_and_a_not_authorized_403_refreshes(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    not_authorized = web.json_response(
        {"error": "auth"}, status=403, headers={"X-Mashery-Error-Code": "ERR_403_NOT_AUTHORIZED"}
    )
    over_qps = web.json_response(
        {"error": "qps"},
        status=403,
        headers={"X-Mashery-Error-Code": "ERR_403_DEVELOPER_OVER_QPS", "Retry-After": "20"},
    )
    plain_403 = web.json_response({"error": "forbidden"}, status=403)
    client, seen, tokens = await keyhop(
        upstream,
        serve,
        ca_file,
        express,
        [plain_403, not_authorized, web.json_response({"ok": True}), over_qps],
        **KIBO_RULES,
    )
    resp = await client.get("/r/a")  # a 403 no rule names: relayed, nothing else
    assert (resp.status, await resp.json(), tokens.calls) == (403, {"error": "forbidden"}, 1)
    resp = await client.get("/r/b")  # refresh_on: one refresh, the retry gets the 200
    assert (resp.status, await resp.json(), tokens.calls) == (200, {"ok": True}, 2)
    assert seen[1:3] == [f"Bearer {TOKEN_PREFIX}-1", f"Bearer {TOKEN_PREFIX}-2"]
    resp = await client.get("/r/c")  # throttle_on: relayed, then answered locally
    assert resp.status == 403 and resp.headers["X-Mashery-Error-Code"].endswith("OVER_QPS")
    resp = await client.get("/r/d")
    assert (resp.status, (await resp.json())["error"]) == (429, "rate_limited")
    assert len(seen) == 4 and tokens.calls == 2


@LANE
async def test_a_refresh_on_json_rule_refreshes_only_on_the_matching_body(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    """Spaaza's expired session: 401 with error.code 6 (SPEC 1); another 401 is relayed."""
    other_401 = web.json_response({"error": {"code": 5}}, status=401)
    expired = web.json_response({"error": {"code": 6}}, status=401)
    client, seen, tokens = await keyhop(
        upstream,
        serve,
        ca_file,
        express,
        [other_401, expired],
        refresh_on=[{"status": 401, "json": {"error.code": 6}}],
    )
    resp = await client.get("/r/a")
    assert (resp.status, await resp.json(), tokens.calls) == (401, {"error": {"code": 5}}, 1)
    resp = await client.get("/r/b")
    assert (resp.status, await resp.json(), tokens.calls) == (200, {"ok": True}, 2)
    assert len(seen) == 3
