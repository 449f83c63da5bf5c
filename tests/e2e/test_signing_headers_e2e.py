"""What a signer puts into headers at run time (SPEC 5.1, issue 13 "Bad input"): a value that
would carry a line break into a header is 502 `credential_error` and nothing is sent; a
client's obs-text header value (RFC 9110 5.5) is covered as the bytes it arrived as."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import MakeProxy, StartUpstream
from tests.e2e.signing_fakes import HmacUpstream, Received
from tests.e2e.signing_helpers import config

SECRET = "headers-secret-e2e"


def signed(headers: dict[str, str], message: str = "{timestamp}{method}{target}") -> dict[str, Any]:
    return {
        "type": "hmac",
        "key": SECRET,
        "message": message,
        "timestamp": "unix_ms",
        "headers": {"X-Timestamp": "{timestamp}", **headers},
    }


def ts_target(rec: Received, ts: str) -> bytes:
    return (ts + rec.method + rec.raw_path).encode()


def token_endpoint(token: str) -> web.Application:
    """A token endpoint that issues `token` as it is (a broken or hostile provider)."""

    async def issue(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"access_token": token, "token_type": "bearer", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/token", issue)
    return app


@pytest.mark.parametrize("token", ["tok-1\r\nX-Injected: yes", "tok-1\nX-Injected: yes"])
async def test_a_token_with_a_line_break_copied_into_a_signature_header_is_502_nothing_sent(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, token: str
) -> None:
    fake = HmacUpstream(SECRET, ts_target)
    base = await upstream(fake.app)
    tokens = await upstream(token_endpoint(token))
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": tokens + "/token",
        "client_id": "cid",
        "client_secret": "client-secret-e2e",
    }
    sign = signed({"X-Signature": "{token}:{signature}"})
    client = await proxy(config(base, ca_file, sign, auth=auth))
    resp = await client.get("/p/x")
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "credential_error"
    assert "X-Injected" not in body["message"] and "tok-1" not in body["message"]
    assert fake.requests == 0


async def test_a_form_field_with_a_line_break_copied_into_a_header_is_502_nothing_sent(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = HmacUpstream(SECRET, ts_target)
    client = await proxy(
        config(
            await upstream(fake.app),
            ca_file,
            signed({"X-Signature": "{signature}", "X-Note": "{form:note}"}),
        )
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post("/p/x", data="note=a%0D%0AX-Injected%3A%20yes&n=1", headers=form)
    assert resp.status == 502
    assert (await resp.json())["error"] == "credential_error"
    assert fake.requests == 0
    # the same recipe with a clean field is signed and sent
    resp = await client.post("/p/x", data="note=plain%20text&n=1", headers=form)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    assert fake.received[0].headers["X-Note"] == "plain text"


async def raw_get(port: int, target: str, header: bytes) -> tuple[int, bytes]:
    """A request with a header written byte for byte (aiohttp's client would not send
    obs-text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + header
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


def ts_client(rec: Received, ts: str) -> bytes:
    # the header's bytes as received: aiohttp decodes obs-text with surrogateescape
    return ts.encode() + rec.headers.get("X-Client", "").encode("utf-8", "surrogateescape")


async def test_an_obs_text_header_covered_by_a_recipe_is_signed_as_received_not_a_500(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = HmacUpstream(SECRET, ts_client)
    sign = signed({"X-Signature": "{signature}"}, message="{timestamp}{header:X-Client}")
    client = await proxy(config(await upstream(fake.app), ca_file, sign))
    status, body = await raw_get(client.port, "/p/x", b"X-Client: caf\xe9")  # Latin-1 e-acute
    assert status == 200, body
    assert fake.refusals == []
    assert fake.received[0].headers["X-Client"].encode("utf-8", "surrogateescape") == b"caf\xe9"


async def test_an_obs_text_header_reaches_the_upstream_byte_for_byte(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    seen: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        seen.extend(v for k, v in request.raw_headers if k.lower() == b"x-client")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    data = config(await upstream(app), ca_file, {})
    del data["providers"]["p"]["sign"]
    client = await proxy(data)
    status, _ = await raw_get(client.port, "/p/x", b"X-Client: caf\xe9")
    assert status == 200
    assert seen == [b"caf\xe9"]
