"""The express lane (proxy/lane.py) answers exactly as the ordinary pipeline does: the
usual warm GET is served by the lane (keyhop_express_requests_total goes up) with the same
status line, header fields in the same order and body as with the lane off; a cold one is
not. Response headers per RFC 9110 7.6.1 (hop-by-hop and Connection-named fields dropped,
the rest relayed in order) and 6.6.1 (Date: the origin's when it sent one)."""

from __future__ import annotations

import email.utils
import time

from aiohttp import web

from tests.conftest import StartUpstream
from tests.lane_support import (
    Answer,
    Conn,
    OpenConn,
    Serve,
    TokenEndpoint,
    cc_provider,
    connect,
    lane_served,
    one_route,
    read_answer,
    serve,
)
from tests.test_upstream import StartRaw, Wire, keep_alive, raw_upstream

__all__ = ["connect", "raw_upstream", "serve"]  # fixtures

BODY = b'{"items": [1, 2, 3], "note": "lane"}'
FIXED_DATE = "Tue, 01 Jan 2030 00:00:00 GMT"
#: an origin's answer with end-to-end fields, hop-by-hop ones and one named in Connection
RICH_HEAD = (
    "HTTP/1.1 200 Fine Thanks\r\n"
    "Server: fake-origin/1.0\r\n"
    "Content-Type: application/json\r\n"
    "X-Custom-One: a\r\n"
    "Connection: keep-alive, X-Drop-Me\r\n"
    "X-Drop-Me: hop\r\n"
    "Keep-Alive: timeout=5\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "X-RateLimit-Remaining: 41\r\n"
    "Set-Cookie: a=1\r\n"
    "Set-Cookie: b=2\r\n"
    "{date}"
    "Content-Length: {length}\r\n"
    "\r\n"
)
END_TO_END = [
    ("Server", "fake-origin/1.0"),
    ("Content-Type", "application/json"),
    ("X-Custom-One", "a"),
    ("X-RateLimit-Remaining", "41"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
]
HOP = {"connection", "x-drop-me", "keep-alive", "proxy-connection", "transfer-encoding"}


def rich(date: bool) -> bytes:
    head = RICH_HEAD.format(date=f"Date: {FIXED_DATE}\r\n" if date else "", length=len(BODY))
    return head.encode() + BODY


async def twice(serve: Serve, connect: OpenConn, base: str, express: bool) -> list[Answer]:
    """Two GETs on one kept-alive connection (the second one warm), and the lane's count."""
    client = await serve(one_route(base, {"auth": {"type": "none"}}), express=express)
    conn = await connect(client.port)
    first = await conn.ask("GET", "/r/items?x=1")
    before = await lane_served(client)
    second = await conn.ask("GET", "/r/items?x=1")
    assert await lane_served(client) == before + (1 if express else 0)
    assert before == 0, "the first request (no idle upstream connection) went on the lane"
    return [first, second]


async def test_a_warm_get_is_served_by_the_lane_byte_for_byte_as_with_the_lane_off(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    up = await raw_upstream(keep_alive(lambda w: rich(date=True)))
    on = await twice(serve, connect, up.base, express=True)
    off = await twice(serve, connect, up.base, express=False)
    for answer in on + off:
        assert answer.status_line == "HTTP/1.1 200 Fine Thanks"
        assert answer.body == BODY
    # the upstream sent a Date: it is the origin's (RFC 9110 6.6.1), so even it is equal
    assert [a.head for a in on] == [a.head for a in off]
    assert len(up.requests) == 4


async def test_a_lane_answer_keeps_end_to_end_fields_in_order_and_drops_hop_by_hop_ones(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    up = await raw_upstream(keep_alive(lambda w: rich(date=True)))
    _, warm = await twice(serve, connect, up.base, express=True)
    assert not HOP & set(warm.names()), warm.fields
    relayed = [f for f in warm.fields if f[0].lower() not in {"content-length", "date"}]
    assert relayed == END_TO_END
    assert warm.get("Content-Length") == str(len(BODY))
    assert warm.get("Date") == FIXED_DATE


async def test_without_an_upstream_date_the_lane_adds_a_current_one_as_the_pipeline_does(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    up = await raw_upstream(keep_alive(lambda w: rich(date=False)))
    on = await twice(serve, connect, up.base, express=True)
    off = await twice(serve, connect, up.base, express=False)
    for answer in on + off:
        date = answer.get("Date")
        assert date is not None, answer.fields
        # RFC 9110 5.6.7: an IMF-fixdate, and now
        assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5
    assert [a.without("Date") for a in on] == [a.without("Date") for a in off]
    assert [a.body for a in on] == [a.body for a in off]


async def test_a_cold_credential_is_not_on_the_lane_and_the_warm_one_is(
    upstream: StartUpstream, serve: Serve, ca_file: str
) -> None:
    seen: list[str | None] = []

    async def resource(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", resource)
    base = await upstream(app)
    tokens = TokenEndpoint()
    token_base = await upstream(tokens.app())
    client = await serve(one_route(base, cc_provider(token_base + "/token", ca_file)))

    resp = await client.get("/r/a")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    assert (tokens.calls, await lane_served(client)) == (1, 0)
    resp = await client.get("/r/a")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    assert (tokens.calls, await lane_served(client)) == (1, 1)
    assert seen == ["Bearer tok-Lane-Qx7-1"] * 2


async def test_an_idle_connection_alone_does_not_put_a_cold_credential_on_the_lane(
    upstream: StartUpstream, serve: Serve
) -> None:
    """/n warms the shared upstream connection; /r's credential is still cold."""
    hits: list[str] = []

    async def resource(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", resource)
    base = await upstream(app, tls=False)
    tokens = TokenEndpoint()
    token_base = await upstream(tokens.app(), tls=False)
    client = await serve(
        {
            "providers": {"p": cc_provider(token_base + "/token"), "n": {"auth": {"type": "none"}}},
            "routes": [
                {"prefix": "/r", "upstream": base, "provider": "p"},
                {"prefix": "/n", "upstream": base, "provider": "n"},
            ],
        }
    )
    assert (await client.get("/n/warm")).status == 200
    assert await lane_served(client) == 0
    assert (await client.get("/n/warm")).status == 200
    assert await lane_served(client) == 1  # an idle connection is there now
    assert (await client.get("/r/cold")).status == 200
    assert (tokens.calls, await lane_served(client)) == (1, 1)
    assert (await client.get("/r/warm")).status == 200
    assert (tokens.calls, await lane_served(client)) == (1, 2)
    assert hits == ["/warm", "/warm", "/cold", "/warm"]


async def test_three_pipelined_gets_in_one_write_get_three_answers_in_order(
    raw_upstream: StartRaw, serve: Serve, connect: OpenConn
) -> None:
    def echo_path(wire: Wire) -> bytes:
        body = wire.path.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    up = await raw_upstream(keep_alive(echo_path))
    client = await serve(one_route(up.base, {"auth": {"type": "none"}}))
    conn = await connect(client.port)
    assert (await conn.ask("GET", "/r/warm")).body == b"/warm"
    before = await lane_served(client)
    conn.writer.write(b"".join(request_for(f"/r/p{i}") for i in range(3)))
    answers = [await _next(conn) for _ in range(3)]
    assert [a.body for a in answers] == [b"/p0", b"/p1", b"/p2"]
    assert all(a.status == 200 for a in answers)
    assert [w.path for w in up.requests] == ["/warm", "/p0", "/p1", "/p2"]
    assert await lane_served(client) == before + 3
    assert up.connections == 1


def request_for(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def _next(conn: Conn) -> Answer:
    return await read_answer(conn.reader)
