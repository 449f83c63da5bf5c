"""The soak's upstreams, in one process: a PayNet-like API with its token endpoint, and a
misbehaving upstream.

    python bench/soak_upstream.py --port 18091 --flaky-port 18092 --ttl 70 --revoke-every 45

- `POST /token` (port): client_credentials with `client_id`/`client_secret` in the form body
  (PayNet's token call); tokens live `--ttl` seconds (expires_in), and every
  `--revoke-every` seconds all of them are revoked, so keyhop meets both expiry and a 401.
- `GET /v1/...` (port): answers 200 only to `Authorization: Bearer <live token>`, `X-Fiid`,
  an `X-Timestamp` within 300 s and `X-Signature = hex(HMAC-SHA256(secret, X-Timestamp))`
  (SPEC 4.3); 401 for a dead token, 400 `Invalid signature` otherwise (as PayNet does).
- `GET /stats` (port): the counters, as JSON.
- any request on `flaky-port`: raw bytes chosen by the path's first segment: `ok`, `cut`
  (a head promising 100 bytes, 10 of them, then the connection closed), `garbage` (not
  HTTP), `stall` (never answered; held until keyhop gives up).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import secrets
import signal
import time
from collections import Counter
from typing import Final
from urllib.parse import parse_qs

from aiohttp import web

CLIENT_ID: Final = "soak-client"
CLIENT_SECRET: Final = "soak-secret"
FIID: Final = "FI0001"
BODY: Final = json.dumps({"status": "ok", "amount": "12.34", "pad": "x" * 120}).encode()
FLAKY: Final = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    "garbage": b"\x16\x03\x01\x00\xa5 this is not HTTP\r\n\r\n",
}


class PayNetish:
    def __init__(self, ttl: int, revoke_every: float) -> None:
        self.ttl = ttl
        self.revoke_every = revoke_every
        self.tokens: dict[str, float] = {}  # token -> expiry (unix seconds)
        self.counts: Counter[str] = Counter()

    async def revoker(self) -> None:
        while True:
            await asyncio.sleep(self.revoke_every)
            self.tokens.clear()
            self.counts["revocations"] += 1

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.method == "POST" and request.path == "/token":
            return await self.token(request)
        if request.method == "GET" and request.path == "/stats":
            return web.json_response(dict(self.counts))
        return self.resource(request)

    async def token(self, request: web.BaseRequest) -> web.Response:
        form = parse_qs((await request.read()).decode("latin-1"))
        ok = form.get("client_id") == [CLIENT_ID] and form.get("client_secret") == [CLIENT_SECRET]
        if form.get("grant_type") != ["client_credentials"] or not ok:
            self.counts["token_refused"] += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        now = time.time()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_urlsafe(24)
        self.tokens[token] = now + self.ttl
        self.counts["tokens_issued"] += 1
        body = {"access_token": token, "token_type": "bearer", "expires_in": self.ttl}
        return web.json_response(body)

    def resource(self, request: web.BaseRequest) -> web.Response:
        now = time.time()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or self.tokens.get(token, 0.0) <= now:
            self.counts["answered_401"] += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        stamp = request.headers.get("X-Timestamp", "")
        want = hmac.new(CLIENT_SECRET.encode(), stamp.encode(), hashlib.sha256).hexdigest()
        signature = request.headers.get("X-Signature", "")
        if not stamp.isdigit() or abs(int(stamp) - now) > 300:
            self.counts["answered_400_timestamp"] += 1
            return web.json_response({"error": "Timestamp not within valid range"}, status=400)
        if not hmac.compare_digest(signature, want) or request.headers.get("X-Fiid") != FIID:
            self.counts["answered_400_signature"] += 1
            return web.json_response({"error": "Invalid signature"}, status=400)
        self.counts["answered_200"] += 1
        return web.Response(body=BODY, content_type="application/json")


async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of the misbehaving upstream: it answers one request per connection
    at most, then closes, except `ok`, which keeps the connection."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            mode = head.split(b" ", 2)[1].split(b"/")[1].decode("latin-1")
            if mode == "stall":
                async with asyncio.timeout(60):
                    while await reader.read(65536):
                        pass
                return
            writer.write(FLAKY.get(mode, FLAKY["garbage"]))
            await writer.drain()
            if mode != "ok":
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError):
        return
    finally:
        writer.close()


async def serve(port: int, flaky_port: int, ttl: int, revoke_every: float) -> None:
    api = PayNetish(ttl, revoke_every)
    server = web.Server(api.handle, access_log=None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    main = await loop.create_server(server, "127.0.0.1", port, backlog=1024)
    bad = await asyncio.start_server(flaky, "127.0.0.1", flaky_port, backlog=1024)
    revoker = asyncio.create_task(api.revoker())
    async with main, bad:
        await stop.wait()
    revoker.cancel()
    await server.shutdown(timeout=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flaky-port", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=70)
    parser.add_argument("--revoke-every", type=float, default=45.0)
    args = parser.parse_args()
    coro = serve(args.port, args.flaky_port, args.ttl, args.revoke_every)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)


if __name__ == "__main__":
    main()
