"""A reload (SIGHUP, SPEC 4.7) takes effect on the express lane at the next request: new
headers are sent, a provider whose credentials changed fetches a new token (its old one is
never sent again), and a route that is gone is gone."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.conftest import StartUpstream, make_config
from tests.lane_support import (
    TOKEN_PREFIX,
    Serve,
    TokenEndpoint,
    cc_provider,
    keyhop,
    lane_served,
    serve,
)

__all__ = ["serve"]  # fixture


def config(base: str, token_url: str, version: str, secret: str) -> dict[str, Any]:
    provider = cc_provider(token_url, headers={"X-Config-Version": version})
    provider["auth"]["client_secret"] = secret
    return {
        "providers": {"p": provider, "n": {"auth": {"type": "none"}}},
        "routes": [
            {"prefix": "/r", "upstream": base, "provider": "p"},
            {"prefix": "/gone", "upstream": base, "provider": "n"},
        ],
    }


async def reloads(
    upstream: StartUpstream, serve: Serve, express: bool
) -> tuple[list[tuple[str, str | None, str | None]], int, int]:
    """Requests around two reloads; what the upstream saw, token fetches, lane count."""
    seen: list[tuple[str, str | None, str | None]] = []

    async def handle(request: web.Request) -> web.Response:
        headers = request.headers
        seen.append((request.path, headers.get("X-Config-Version"), headers.get("Authorization")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    base = await upstream(app, tls=False)
    tokens = TokenEndpoint()
    token_url = await upstream(tokens.app(), tls=False) + "/token"
    client = await serve(config(base, token_url, "one", "secret-one-123"), express=express)
    for _ in range(2):
        assert (await client.get("/r/a")).status == 200
    kh = keyhop(client)
    kh.reload(make_config(config(base, token_url, "two", "secret-one-123")))
    for _ in range(2):
        assert (await client.get("/r/b")).status == 200
    new = config(base, token_url, "three", "secret-two-456")
    del new["routes"][1]
    kh.reload(make_config(new))
    for _ in range(2):
        assert (await client.get("/r/c")).status == 200
    resp = await client.get("/gone/x")
    assert (resp.status, (await resp.json())["error"]) == (404, "no_route")
    return seen, tokens.calls, await lane_served(client)


async def test_a_reload_applies_to_the_next_lane_request_as_with_the_lane_off(
    upstream: StartUpstream, serve: Serve
) -> None:
    on, on_fetches, on_lane = await reloads(upstream, serve, True)
    off, off_fetches, off_lane = await reloads(upstream, serve, False)
    assert on == off
    assert on_fetches == off_fetches
    assert [(path, version) for path, version, _ in on] == [
        ("/a", "one"),
        ("/a", "one"),
        ("/b", "two"),
        ("/b", "two"),
        ("/c", "three"),
        ("/c", "three"),
    ]
    assert all(auth and auth.startswith(f"Bearer {TOKEN_PREFIX}-") for _, _, auth in on)
    assert off_lane == 0 and on_lane >= 2  # after each reload the lane serves again
