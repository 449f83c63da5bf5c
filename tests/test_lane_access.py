"""One session of requests through keyhop with the express lane on and off: the access
lines (SPEC 4.7) name the same route, provider, status, credential source, error and
`aborted` for each request, whether the lane served it, gave it back or declined it; only
the timings differ. The upstream sees the same requests with the same credentials."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import StartUpstream, raw_url
from tests.lane_support import (
    CLIENT_SECRET,
    TOKEN_PREFIX,
    Serve,
    TokenEndpoint,
    access_lines,
    cc_provider,
    lane_served,
    one_route,
    serve,
)

__all__ = ["serve"]  # fixture

TIMINGS = {"ts", "duration_ms", "upstream_ms"}
SESSION = [
    "/r/warm",  # fetched: the pipeline
    "/r/warm",  # memory: the lane
    "/r/empty",  # 204: given back
    "/r/chunked",  # no Content-Length: given back
    "/r/big",  # over 64 KiB: given back
    "/r/refuse-once",  # 401 -> one refresh -> 200
    "/r/slow",  # over timeouts.read: 504
    "/r/items?code=SECRET-CODE-77&x=1",  # query names only; a new upstream connection
    "/r/again",  # the lane again
    "/r/%2e%2e/x",  # 400 before any upstream
    "/r/throttle",  # the upstream's 429, relayed
    "/r/after-throttle",  # keyhop's own 429
]


def resource(seen: list[tuple[str, str | None]]) -> web.Application:
    refused: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        seen.append((request.path, auth))
        path = request.path
        if path == "/empty":
            return web.Response(status=204)
        if path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"part one,")
            await response.write(b"part two")
            await response.write_eof()
            return response
        if path == "/big":
            return web.Response(body=b"b" * 100_000)
        if path == "/refuse-once" and not refused:
            refused.append(auth)
            return web.json_response({"why": "revoked"}, status=401)
        if path == "/slow":
            await asyncio.sleep(2)
        if path == "/throttle":
            return web.json_response({"why": "quota"}, status=429, headers={"Retry-After": "30"})
        return web.json_response({"path": path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@dataclass
class Session:
    records: list[dict[str, Any]]  # access lines
    statuses: list[int]
    errors: list[str]  # JSON error bodies (keyhop's own and the upstream's), hosts masked
    seen: list[tuple[str, str | None]]  # what the upstream got: path, Authorization
    served: int  # by the lane


async def session(upstream: StartUpstream, serve: Serve, ca_file: str, express: bool) -> Session:
    seen: list[tuple[str, str | None]] = []
    base = await upstream(resource(seen))
    tokens = TokenEndpoint()
    token_base = await upstream(tokens.app())
    provider = cc_provider(token_base + "/token", ca_file, timeouts={"connect": 2, "read": 1})
    client = await serve(one_route(base, provider), express=express)
    lines = access_lines(client)
    statuses = []
    errors: list[str] = []  # keyhop's own and the upstream's JSON error bodies
    for target in SESSION:
        resp = await client.session.get(raw_url(client, target))
        exposed = (await resp.read()).decode("latin-1") + repr(list(resp.headers.items()))
        assert CLIENT_SECRET not in exposed and TOKEN_PREFIX not in exposed, exposed
        statuses.append(resp.status)
        if resp.content_type == "application/json" and resp.status >= 400:
            errors.append(re.sub(r"127\.0\.0\.1:\d+", "HOST", await resp.text()))
    served = await lane_served(client)
    records = [json.loads(line) for line in lines if '"path":"/-/' not in line]
    for line in lines:
        assert CLIENT_SECRET not in line and TOKEN_PREFIX not in line and "SECRET-CODE" not in line
    return Session(records, statuses, errors, seen, served)


async def test_a_session_logs_the_same_access_lines_with_the_lane_on_or_off(
    upstream: StartUpstream, serve: Serve, ca_file: str
) -> None:
    on = await session(upstream, serve, ca_file, True)
    off = await session(upstream, serve, ca_file, False)
    assert (
        on.statuses == off.statuses == [200, 200, 204, 200, 200, 200, 504, 200, 200, 400, 429, 429]
    )
    assert (on.served, off.served) == (2, 0)  # the second /r/warm and /r/again
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in on.records] == [
        {k: v for k, v in r.items() if k not in TIMINGS} for r in off.records
    ]
    assert [r["upstream_ms"] is None for r in on.records] == [
        r["upstream_ms"] is None for r in off.records
    ]
    assert [sorted(r) for r in on.records] == [sorted(r) for r in off.records]
    assert len(on.errors) == 4 and on.errors == off.errors  # 504, 400 and the two 429s
    assert on.seen == off.seen


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_the_logged_duration_covers_the_whole_request_and_its_upstream_time(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    """SPEC 4.7: duration is the request's; the upstream's time is part of it, and a 504
    after timeouts.read (1 s) took at least that long."""
    records = (await session(upstream, serve, ca_file, express)).records
    for record in records:
        if record["upstream_ms"] is not None:
            assert record["duration_ms"] >= record["upstream_ms"], record
    (slow,) = [r for r in records if r["path"] == "/r/slow"]
    assert slow["duration_ms"] >= 1000, slow
