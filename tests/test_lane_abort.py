"""A client that goes away while the upstream is still answering a lane request: keyhop
logs it as 499 (nginx's "client closed request") with `aborted`, keeps serving others, and
never reuses the upstream connection that still carries part of that answer."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import (
    TOKEN_PREFIX,
    OpenConn,
    Serve,
    TokenEndpoint,
    access_lines,
    cc_provider,
    connect,
    in_flight,
    lane_served,
    one_route,
    request,
    serve,
)
from tests.test_upstream import OK, RawConn, StartRaw, raw_upstream, until

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures

LATE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nLATE-LATE"
#: the head and the first kilobyte of a 100 kB body; the rest never comes
PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"P" * 1000


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
@pytest.mark.parametrize("when", ["before-the-head", "mid-body"])
async def test_a_client_gone_mid_answer_is_logged_499_and_its_upstream_connection_not_reused(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn, express: bool, when: str
) -> None:
    answering = asyncio.Event()  # the upstream has the slow request (and sent PARTIAL)
    release = asyncio.Event()

    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path != "/slow":
                await conn.send(OK)
                continue
            if when == "mid-body":
                await conn.send(PARTIAL)
            answering.set()
            await release.wait()
            await conn.send(LATE)  # whatever still comes must reach no one

    up = await raw_upstream(behave)
    client = await serve(one_route(up.base, {"auth": {"type": "none"}}), express=express)
    lines = access_lines(client)
    gone = await connect(client.port)
    for _ in range(2):
        assert (await gone.ask("GET", "/r/warm")).body == b"ok"
    served = await lane_served(client)
    assert served == (1 if express else 0)

    gone.writer.write(request("GET", "/r/slow"))
    await asyncio.wait_for(answering.wait(), 5)
    await asyncio.sleep(0.05)  # (mid-body: the partial answer reaches keyhop)
    await gone.close()
    await asyncio.sleep(0.1)
    release.set()  # (with the lane off keyhop notices the client is gone when it writes)
    await until(lambda: any('"status":499' in line for line in lines))

    record = json.loads(next(line for line in lines if '"status":499' in line))
    assert (record["path"], record["method"], record.get("aborted")) == ("/r/slow", "GET", True)
    assert (record["route"], record["provider"]) == ("/r", "p")

    other = await connect(client.port)
    for _ in range(2):
        answer = await other.ask("GET", "/r/next")
        assert (answer.status, answer.body) == (200, b"ok")
    if when == "mid-body":  # (a whole late answer leaves its connection clean for reuse)
        slow_conn = next(w.conn for w in up.requests if w.path == "/slow")
        assert all(w.conn != slow_conn for w in up.requests if w.path == "/next")
        await until(lambda: slow_conn in up.endings)  # keyhop closed it
    assert await in_flight(client) == 1  # the scrape itself
    # the lane serves again (how many of the two /next depends on the idle connections left)
    if express:
        assert await lane_served(client) >= served + 1
    else:
        assert await lane_served(client) == 0


async def test_a_client_gone_before_a_read_timeout_is_logged_alike_with_the_lane_on_or_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/never":
                await asyncio.sleep(5)  # past timeouts.read (1 s)
            await conn.send(OK)

    logged = []
    for express in (True, False):
        up = await raw_upstream(behave)
        provider = {"auth": {"type": "none"}, "timeouts": {"connect": 2, "read": 1}}
        client = await serve(one_route(up.base, provider), express=express)
        lines = access_lines(client)
        gone = await connect(client.port)
        for _ in range(2):
            assert (await gone.ask("GET", "/r/warm")).body == b"ok"
        gone.writer.write(request("GET", "/r/never"))
        await until(lambda: any(w.path == "/never" for w in up.requests))  # noqa: B023
        await gone.close()
        await until(lambda: any("/r/never" in line for line in lines), timeout=4)  # noqa: B023
        (record,) = [json.loads(line) for line in lines if "/r/never" in line]
        logged.append({k: record.get(k) for k in ("status", "error", "aborted")})
        assert await in_flight(client) == 1  # the scrape itself
    assert logged[0] == logged[1]


async def test_a_refresh_on_answer_after_the_client_left_still_renews_the_credential(
    upstream: StartUpstream, serve: Serve, connect: OpenConn
) -> None:
    """SPEC 4.4: a token is renewed on a refresh_on status from upstream; a client that
    left does not make the refused token good again."""
    renewed = []
    for express in (True, False):
        seen: list[tuple[str, str | None]] = []
        release = asyncio.Event()

        async def handle(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization")
            seen.append((request.path, auth))  # noqa: B023
            if request.path == "/x":
                await release.wait()  # noqa: B023
            if auth == f"Bearer {TOKEN_PREFIX}-1" and request.path != "/warm":
                return web.json_response({"why": "revoked"}, status=401)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        base = await upstream(app, tls=False)
        tokens = TokenEndpoint()
        token_base = await upstream(tokens.app(), tls=False)
        client = await serve(one_route(base, cc_provider(token_base + "/token")), express=express)
        lines = access_lines(client)
        gone = await connect(client.port)
        for _ in range(2):
            assert (await gone.ask("GET", "/r/warm")).body == b"ok"
        gone.writer.write(request("GET", "/r/x"))
        await until(lambda: any(path == "/x" for path, _ in seen))  # noqa: B023
        await gone.close()
        await asyncio.sleep(0.1)
        release.set()
        await until(lambda: any('"status":499' in line for line in lines))  # noqa: B023
        other = await connect(client.port)
        assert (await other.ask("GET", "/r/y")).status == 200
        renewed.append([auth for path, auth in seen if path == "/y"])
    # the refused token is not sent again: /y goes out once, with the new one
    assert renewed[0] == renewed[1] == [f"Bearer {TOKEN_PREFIX}-2"]


async def test_a_throttle_on_answer_after_the_client_left_still_blocks_the_provider(
    upstream: StartUpstream, serve: Serve, connect: OpenConn
) -> None:
    """SPEC 4.1: once the upstream said 429 with Retry-After, further requests are answered
    429 `rate_limited` by keyhop until then, instead of being sent."""
    outcomes = []
    for express in (True, False):
        seen: list[str] = []
        release = asyncio.Event()

        async def handle(request: web.Request) -> web.Response:
            seen.append(request.path)  # noqa: B023
            if request.path == "/x":
                await release.wait()  # noqa: B023
                return web.json_response(
                    {"why": "quota"}, status=429, headers={"Retry-After": "30"}
                )
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        base = await upstream(app, tls=False)
        client = await serve(one_route(base, {"auth": {"type": "none"}}), express=express)
        lines = access_lines(client)
        gone = await connect(client.port)
        for _ in range(2):
            assert (await gone.ask("GET", "/r/warm")).body == b"ok"
        gone.writer.write(request("GET", "/r/x"))
        await until(lambda: "/x" in seen)  # noqa: B023
        await gone.close()
        await asyncio.sleep(0.1)
        release.set()
        await until(lambda: any('"status":499' in line for line in lines))  # noqa: B023
        other = await connect(client.port)
        answer = await other.ask("GET", "/r/y")
        outcomes.append((answer.status, "/y" in seen))
    assert outcomes[0] == outcomes[1] == (429, False)
