"""The benchmark's upstream: a resource server and an OAuth2 token endpoint in one process.

    python bench/upstream.py --port 18081

Endpoints (all on 127.0.0.1):

- `GET /small`          a fixed JSON body of about 200 bytes
- `GET /bytes/<N>`      N bytes of zeros, generated in 64 KiB chunks (constant memory)
- `POST /sink`          reads and discards the request body, answers `{"received": N}`
- `GET /headers`        echoes the request headers as JSON (the bench's sanity checks)
- `POST /echo`          the request headers, target and the body's SHA-256 (signed POSTs)
- `POST /oauth/token`   client_credentials grant for `bench-client:bench-secret`, with the
                        client authenticated by HTTP Basic or in the form body; answers after
                        50 ms so that a cold-cache burst overlaps the fetch
- `GET /stats`          counters: token requests (good and refused), sink bytes

Built on aiohttp's low-level server (no router, no middlewares) on uvloop: `direct` in the
results is this server alone, and it has to stay well above what the proxies reach.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import socket
from typing import Final
from urllib.parse import parse_qs

from aiohttp import web

CLIENT_ID: Final = "bench-client"
CLIENT_SECRET: Final = "bench-secret"
TOKEN_DELAY: Final = 0.05
CHUNK: Final = 64 * 1024
MAX_BYTES: Final = 1 << 40  # /bytes/<N> refuses anything above 1 TiB

_ZEROS: Final = bytes(CHUNK)
_JSON: Final = {"Content-Type": "application/json"}
SMALL_BODY: Final = json.dumps(
    {
        "id": 7,
        "name": "bench location",
        "code": "BENCH-0007",
        "active": True,
        "address": {"line1": "1 Loopback Way", "city": "Localhost", "country": "ZZ"},
        "tags": ["bench", "keyhop", "small"],
        "padding": "x" * 32,
    },
    separators=(",", ":"),
).encode()


class Upstream:
    def __init__(self) -> None:
        self.token_requests = 0
        self.token_refused = 0
        self.sink_bytes = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path
        if method == "GET" and path == "/small":
            return web.Response(body=SMALL_BODY, headers=_JSON)
        if method == "GET" and path.startswith("/bytes/"):
            return await self.stream_bytes(request, path[len("/bytes/") :])
        if method == "POST" and path == "/sink":
            return await self.sink(request)
        if method == "POST" and path == "/oauth/token":
            return await self.token(request)
        if method == "GET" and path == "/headers":
            return self.json({"headers": dict(request.headers)})
        if method == "POST" and path == "/echo":
            body = await request.read()
            return self.json(
                {
                    "headers": dict(request.headers),
                    "target": request.raw_path,
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "body_bytes": len(body),
                }
            )
        if method == "GET" and path == "/stats":
            return self.json(
                {
                    "token_requests": self.token_requests,
                    "token_refused": self.token_refused,
                    "sink_bytes": self.sink_bytes,
                }
            )
        return self.json({"error": "not_found", "path": path}, status=404)

    @staticmethod
    def json(payload: object, status: int = 200) -> web.Response:
        return web.Response(body=json.dumps(payload).encode(), status=status, headers=_JSON)

    async def stream_bytes(self, request: web.BaseRequest, size: str) -> web.StreamResponse:
        if not size.isdigit() or int(size) > MAX_BYTES:
            return self.json({"error": "bad_size"}, status=400)
        remaining = int(size)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = remaining
        await response.prepare(request)
        view = memoryview(_ZEROS)
        while remaining > 0:
            n = min(remaining, CHUNK)
            await response.write(view[:n])  # back-pressured by the client's reading
            remaining -= n
        await response.write_eof()
        return response

    async def sink(self, request: web.BaseRequest) -> web.Response:
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        self.sink_bytes += received
        return self.json({"received": received})

    async def token(self, request: web.BaseRequest) -> web.Response:
        self.token_requests += 1
        form = parse_qs((await request.read()).decode("latin-1"))
        await asyncio.sleep(TOKEN_DELAY)
        if form.get("grant_type") != ["client_credentials"]:
            self.token_refused += 1
            return self.json({"error": "unsupported_grant_type"}, status=400)
        if not (_basic_ok(request.headers.get("Authorization", "")) or _body_ok(form)):
            self.token_refused += 1
            return self.json({"error": "invalid_client"}, status=401)
        return self.json(
            {
                "access_token": f"bench-token-{self.token_requests}",
                "token_type": "bearer",
                "expires_in": 3600,
            }
        )


def _basic_ok(header: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except ValueError:
        return False
    return decoded == f"{CLIENT_ID}:{CLIENT_SECRET}"


def _body_ok(form: dict[str, list[str]]) -> bool:
    return form.get("client_id") == [CLIENT_ID] and form.get("client_secret") == [CLIENT_SECRET]


async def serve(port: int) -> None:
    upstream = Upstream()
    server = web.Server(upstream.handle, access_log=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    srv = await loop.create_server(server, sock=sock, backlog=1024)
    async with srv:
        await stop.wait()
    await server.shutdown(timeout=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.port))


if __name__ == "__main__":
    main()
