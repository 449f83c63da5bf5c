"""Fake crypto exchange, Binance-like (Spot API "SIGNED (TRADE, USER_DATA) Endpoint security").

No token endpoint: every signed request carries the API key in `X-MBX-APIKEY` and, as query
parameters, a `timestamp` (milliseconds) and a `signature`: lowercase hex
HMAC-SHA256(secret, totalParams), where totalParams is the query string without its
`signature` parameter, followed by the request body (Binance: "totalParams is defined as
the query string concatenated with the request body"). The timestamp must lie within
`recvWindow` ms (default 5000, at most 60000) before the server's time and at most 1000 ms
after it. Failures answer Binance's JSON `{"code": ..., "msg": ...}`; keyhop signs such a
route with an `hmac` recipe (config/sandbox.yaml, README "Example: Binance").

The signature is recomputed here with Python's hmac over the bytes received, never through
keyhop's signers, so a bug in the recipe cannot hide behind the same bug in the fake.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl

from aiohttp import web

from proxy.sandbox.base import Clock, FakeProvider, json_error, mask, same
from proxy.sandbox.credentials import EXCHANGE_API_KEY, EXCHANGE_SECRET_KEY

#: Binance error codes (Spot API "Error codes": 10xx general, 11xx request issues, 20xx)
BAD_SIGNATURE: Final = {"code": -1022, "msg": "Signature for this request is not valid."}
BAD_API_KEY: Final = {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
OUTSIDE_WINDOW: Final = {
    "code": -1021,
    "msg": "Timestamp for this request is outside of the recvWindow.",
}
NO_TIMESTAMP: Final = {
    "code": -1102,
    "msg": "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
}
BAD_WINDOW: Final = {"code": -1131, "msg": "recvWindow must be less than 60000"}
MAX_RECV_WINDOW: Final = 60_000
DEFAULT_RECV_WINDOW: Final = 5_000
AHEAD_MS: Final = 1_000  # a timestamp may be this far ahead of the server's clock
_BODY: Final = web.RequestKey("exchange_body", bytes)  # the body _signed read, on the request


def split_signature(query: str) -> tuple[str, str | None]:
    """(the query string without its `signature` parameter, the signature or None).

    Binance signs the parameters as sent, so this cuts the raw text rather than re-encode
    parsed pairs: `a=1&signature=ab&b=2` -> (`a=1&b=2`, `ab`).
    """
    kept: list[str] = []
    signature: str | None = None
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        if name == "signature" and sep and signature is None:
            signature = value
        else:
            kept.append(item)
    return "&".join(kept), signature


def total_params(query: str, body: bytes) -> bytes:
    """What Binance signs: the query string (signature removed) followed by the body."""
    return split_signature(query)[0].encode() + body


def binance_signature(secret: str, message: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of `message` under the secret key."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class FakeExchange(FakeProvider):
    """Signed account and order endpoints, plus Binance's unsigned ping and server time."""

    name: ClassVar[str] = "exchange"
    counter_names: ClassVar[tuple[str, ...]] = (*FakeProvider.counter_names, "refused")

    def __init__(
        self,
        api_key: str = EXCHANGE_API_KEY,
        secret_key: str = EXCHANGE_SECRET_KEY,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.api_key = api_key
        self.secret_key = secret_key
        self.refused = 0
        super().__init__(clock=clock)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v3/ping", self._ping)
        router.add_get("/api/v3/time", self._time)
        router.add_route("*", "/api/{tail:.*}", self._signed)
        router.add_route("*", "/sapi/{tail:.*}", self._signed)

    def expire_all(self) -> None:
        """Nothing to expire: an exchange's API keys do not run out."""

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(self.clock() * 1000)})

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        # the body is part of what is signed: read it whole first (aiohttp keeps it for echo)
        request[_BODY] = await request.read()
        return await self.handle_resource(request)

    async def echo(self, request: web.Request, credentials: Any) -> web.Response:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        return web.json_response(
            {
                "provider": self.name,
                "method": request.method,
                "path": path,
                "query": query,
                "credentials": dict(credentials),
                "body_bytes": len(body),
            }
        )

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        verdict = self.verify(request)
        if isinstance(verdict, web.StreamResponse):
            self.refused += 1
        return verdict

    def verify(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        """Binance's checks; the signature first, so a request keyhop did not sign is told
        so (-1022) rather than that it lacks an API key."""
        query = request.raw_path.partition("?")[2]
        body = request.get(_BODY, b"")
        message = total_params(query, body)
        unsigned, signature = split_signature(query)
        expected = binance_signature(self.secret_key, message)
        # "signature is not case sensitive" (Spot API docs, SIGNED endpoint security)
        if not signature or not same(signature.lower(), expected):
            return json_error(401, BAD_SIGNATURE)
        api_key = request.headers.get("X-MBX-APIKEY", "")
        if not same(api_key, self.api_key):
            return json_error(401, BAD_API_KEY)
        # query and body are concatenated with nothing between them: parse each on its own
        text = unsigned + "&" + body.decode("utf-8", "replace")
        params = dict(parse_qsl(text, keep_blank_values=True))
        timestamp, window = params.get("timestamp", ""), params.get("recvWindow", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            return json_error(400, NO_TIMESTAMP)
        recv_window = int(window) if window.isascii() and window.isdigit() else DEFAULT_RECV_WINDOW
        if recv_window > MAX_RECV_WINDOW:
            return json_error(400, BAD_WINDOW)
        now_ms = int(self.clock() * 1000)
        # Spot API "Timing security": timestamp < serverTime + 1000 and
        # serverTime - timestamp <= recvWindow
        if not (int(timestamp) < now_ms + AHEAD_MS and now_ms - int(timestamp) <= recv_window):
            return json_error(400, OUTSIDE_WINDOW)
        return {"api_key": mask(api_key), "timestamp": timestamp, "signature": mask(signature)}
