"""The rules still hold when the express lane sent the request (proxy/lane.py gives the
answer back to exchange.py): refresh_on (SPEC 4.4: one refresh, one retry), throttle_on
(SPEC 4.1: the provider is then answered 429 `rate_limited` locally), the read timeout
(SPEC 4.6: 504 `upstream_timeout`), an upstream that closes kept-alive connections, and
`clients.keys` (SPEC 4.1/4.6: 401 `client_key_required`, nothing sent)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import (
    TOKEN_PREFIX,
    Client,
    Serve,
    TokenEndpoint,
    cc_provider,
    in_flight,
    lane_served,
    one_route,
    serve,
)
from tests.test_upstream import OK, RawConn, StartRaw, answers_once_per_connection, raw_upstream

__all__ = ["raw_upstream", "serve"]  # fixtures

CLIENT_KEY = "ckey-Lane-R8t2w"


@dataclass
class Resource:
    """An upstream whose answer to each token the test chooses; records what it got."""

    refuse: set[str] = field(default_factory=set)  # tokens answered 401
    throttle: bool = False  # answer 429 with Retry-After: 30
    delay: float = 0.0  # seconds before answering /slow
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization")
            self.seen.append((request.path, auth))
            if request.path == "/slow":
                await asyncio.sleep(self.delay)
            if self.throttle:
                return web.json_response(
                    {"why": "over quota"}, status=429, headers={"Retry-After": "30"}
                )
            if auth is not None and auth.removeprefix("Bearer ") in self.refuse:
                return web.json_response({"why": "token revoked"}, status=401)
            return web.json_response({"path": request.path})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        return app


async def keyhop(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool, **extra: object
) -> tuple[Client, Resource, TokenEndpoint]:
    res, tokens = Resource(), TokenEndpoint()
    base = await upstream(res.app())
    token_base = await upstream(tokens.app())
    provider = cc_provider(token_base + "/token", ca_file, **extra)
    client = await serve(one_route(base, provider), express=express)
    resp = await client.get("/r/warm")  # the credential and an upstream connection, warm
    assert resp.status == 200, await resp.text()
    return client, res, tokens


LANE = pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])


@LANE
async def test_a_401_on_a_warm_credential_refreshes_once_and_the_client_gets_the_200(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    client, res, tokens = await keyhop(upstream, serve, ca_file, express)
    res.refuse.add(f"{TOKEN_PREFIX}-1")
    before = len(res.seen)
    resp = await client.get("/r/a")
    assert (resp.status, await resp.json()) == (200, {"path": "/a"})
    assert tokens.calls == 2
    assert res.seen[before:] == [
        ("/a", f"Bearer {TOKEN_PREFIX}-1"),
        ("/a", f"Bearer {TOKEN_PREFIX}-2"),
    ]
    assert await lane_served(client) == 0  # given back to the pipeline, not served whole
    resp = await client.get("/r/b")  # the new credential is warm: on the lane again
    assert resp.status == 200
    assert await lane_served(client) == (1 if express else 0)


@LANE
async def test_a_401_again_after_the_refresh_is_relayed_without_a_second_refresh(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    client, res, tokens = await keyhop(upstream, serve, ca_file, express)
    res.refuse.update(f"{TOKEN_PREFIX}-{n}" for n in range(1, 5))
    before = len(res.seen)
    resp = await client.get("/r/a")
    assert (resp.status, await resp.json()) == (401, {"why": "token revoked"})
    assert tokens.calls == 2
    assert len(res.seen) - before == 2


@LANE
async def test_a_429_with_retry_after_is_relayed_and_the_next_request_is_answered_locally(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    client, res, _ = await keyhop(upstream, serve, ca_file, express)
    res.throttle = True
    before = len(res.seen)
    resp = await client.get("/r/a")
    # SPEC 4.1: the upstream's answer keeps its status, body and Retry-After
    assert (resp.status, await resp.json()) == (429, {"why": "over quota"})
    assert resp.headers["Retry-After"] == "30"
    assert len(res.seen) - before == 1
    resp = await client.get("/r/b")
    body = await resp.json()
    assert (resp.status, body["error"]) == (429, "rate_limited"), body
    assert 28 <= int(resp.headers["Retry-After"]) <= 30
    assert len(res.seen) - before == 1, "a throttled provider's request reached the upstream"
    assert await lane_served(client) == 0


@LANE
async def test_an_upstream_slower_than_the_read_timeout_is_a_504_and_the_next_request_works(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    client, res, _ = await keyhop(
        upstream, serve, ca_file, express, timeouts={"connect": 2, "read": 1}
    )
    res.delay = 3.0
    started = time.monotonic()
    resp = await client.get("/r/slow")
    took = time.monotonic() - started
    body = await resp.json()
    assert (resp.status, body["error"]) == (504, "upstream_timeout"), body
    assert 0.9 <= took <= 1.5, f"504 after {took:.2f} s with timeouts.read 1"
    resp = await client.get("/r/fast")
    assert (resp.status, await resp.json()) == (200, {"path": "/fast"})
    resp = await client.get("/r/fast")
    assert resp.status == 200
    # the slow one was given back; the first /fast needed a new connection; the second is warm
    assert await lane_served(client) == (1 if express else 0)


@LANE
async def test_an_upstream_answering_connection_close_keeps_being_served(
    upstream: StartUpstream, serve: Serve, express: bool
) -> None:
    async def closing(request: web.Request) -> web.Response:
        response = web.Response(text=f"n{len(hits)}")
        hits.append(request.path)
        response.force_close()  # RFC 9112 9.6: "Connection: close", then the close
        return response

    hits: list[str] = []
    app = web.Application()
    app.router.add_get("/{tail:.*}", closing)
    base = await upstream(app, tls=False)
    client = await serve(one_route(base, {"auth": {"type": "none"}}), express=express)
    for i in range(5):
        resp = await client.get(f"/r/{i}")
        assert (resp.status, await resp.text()) == (200, f"n{i}")
    assert hits == [f"/{i}" for i in range(5)]


@LANE
async def test_an_upstream_that_drops_each_kept_alive_connection_unanswered_keeps_being_served(
    raw_upstream: StartRaw, serve: Serve, express: bool
) -> None:
    """The upstream's idle timeout races keyhop's next request: that request is read,
    then the connection closes unanswered; a bodyless GET is sent once more on a fresh
    connection (RFC 9112 9.3.1 allows retrying an idempotent request)."""
    up = await raw_upstream(answers_once_per_connection())
    client = await serve(one_route(up.base, {"auth": {"type": "none"}}), express=express)
    for i in range(4):
        resp = await client.get(f"/r/{i}")
        assert (resp.status, await resp.read()) == (200, b"ok"), i
    # each request after the first went out twice: on the dropped connection, then fresh
    assert [w.path for w in up.requests] == ["/0", "/1", "/1", "/2", "/2", "/3", "/3"]
    assert up.connections == 4


@LANE
async def test_an_upstream_that_closes_after_each_answer_keeps_being_served(
    raw_upstream: StartRaw, serve: Serve, express: bool
) -> None:
    async def one_answer(conn: RawConn) -> None:
        if await conn.request() is not None:
            await conn.send(OK)  # then the connection closes, without saying so

    up = await raw_upstream(one_answer)
    client = await serve(one_route(up.base, {"auth": {"type": "none"}}), express=express)
    for i in range(4):
        resp = await client.get(f"/r/{i}")
        assert (resp.status, await resp.read()) == (200, b"ok"), i
        await asyncio.sleep(0.05)  # the upstream's FIN arrives while the connection is idle
    assert [w.path for w in up.requests] == [f"/{i}" for i in range(4)]


async def test_without_the_client_key_a_lane_request_is_401_and_never_sent(
    upstream: StartUpstream, serve: Serve
) -> None:
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    base = await upstream(app, tls=False)
    client = await serve(
        {**one_route(base, {"auth": {"type": "none"}}), "clients": {"keys": [CLIENT_KEY]}}
    )
    key = {"X-Keyhop-Key": CLIENT_KEY}
    for _ in range(2):  # warm: an idle upstream connection
        assert (await client.get("/r/warm", headers=key)).status == 200
    served = await lane_served(client)
    assert served == 1
    for headers in ({}, {"X-Keyhop-Key": CLIENT_KEY + "x"}, {"X-Keyhop-Key": ""}):
        resp = await client.get("/r/secret", headers=headers)
        body = await resp.json()
        assert (resp.status, body["error"]) == (401, "client_key_required"), body
        assert CLIENT_KEY not in await resp.text()
    assert "/secret" not in hits
    assert await lane_served(client) == served
    resp = await client.get("/r/again", headers=key)
    assert (resp.status, await resp.text()) == (200, "ok")
    assert await lane_served(client) == served + 1


@LANE
async def test_a_burst_of_clients_on_a_cold_credential_fetches_one_token_then_rides_the_lane(
    upstream: StartUpstream, serve: Serve, ca_file: str, express: bool
) -> None:
    """SPEC 4.4: one token fetch however many requests wait for it; the lane takes what it
    can of the next burst (an idle connection each) and the pipeline the rest."""
    res, tokens = Resource(), TokenEndpoint()
    base = await upstream(res.app())
    token_base = await upstream(tokens.app())
    client = await serve(
        one_route(base, cc_provider(token_base + "/token", ca_file)), express=express
    )
    for burst in range(2):
        resps = await asyncio.gather(*(client.get(f"/r/{burst}-{i}") for i in range(60)))
        assert sorted(r.status for r in resps) == [200] * 60
        for resp in resps:
            assert (await resp.json())["path"].startswith(f"/{burst}-")
    assert tokens.calls == 1
    assert len(res.seen) == 120
    assert {auth for _, auth in res.seen} == {f"Bearer {TOKEN_PREFIX}-1"}
    assert (await lane_served(client) > 0) is express
    assert await in_flight(client) == 1  # the scrape itself
