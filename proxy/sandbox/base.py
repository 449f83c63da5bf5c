"""What every provider fake shares: counters, the misbehaviour knobs, the echo resource and
the `/-/sandbox/` control API.

A fake is a plain object owning one `aiohttp.web.Application` (`.app`). Tests serve that
app and read the counters directly; `keyhop sandbox` mounts it under a prefix. The knobs are
Python methods first (tests call them) and HTTP endpoints second (people call those).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

Clock = Callable[[], float]
FailMode = Literal["status", "garbage", "slow"]
FAIL_MODES: Final[tuple[FailMode, ...]] = ("status", "garbage", "slow")

#: token answers must not be cached by anything in between (RFC 6749 5.1)
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}

#: what a token endpoint told to answer "garbage" sends: claims JSON, is not JSON
GARBAGE_BODY: Final = '{"access_token": "<html>502 Bad Gateway</html>'


def mask(value: str) -> str:
    """A value shortened so an echo tells credentials apart without ever returning one whole."""
    return value[: min(4, len(value) // 2)] + "..." if value else ""


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two strings (secrets, signatures, API keys)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def new_token(prefix: str = "") -> str:
    """An opaque, unguessable token."""
    return prefix + secrets.token_urlsafe(24)


def json_error(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL on this machine: the only kind a control endpoint may target."""
    try:
        parsed = URL(url)
    except ValueError:
        return False
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return False
    if parsed.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        return False


class BadControl(web.HTTPBadRequest):
    """A malformed control request: a JSON 400 naming the parameter."""

    def __init__(self, message: str) -> None:
        super().__init__(
            text=json.dumps({"error": "bad_request", "message": message}),
            content_type="application/json",
        )


def query_number(query: Mapping[str, str], name: str, default: float | None = None) -> float:
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise BadControl(f"{name} is required")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadControl(f"{name}: not a number") from None
    if not 0 <= value < 1e9:
        raise BadControl(f"{name}: out of range")
    return value


def query_int(query: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = query_number(query, name, None if default is None else float(default))
    if value != int(value):
        raise BadControl(f"{name}: not an integer")
    return int(value)


class FakeProvider:
    """Base of the five fakes. Subclasses add their routes in `setup_routes` and decide in
    `authenticate` whether a resource request carries valid credentials."""

    name: ClassVar[str] = "provider"
    #: counters reported by `stats()` and `GET /-/sandbox/stats`
    counter_names: ClassVar[tuple[str, ...]] = (
        "token_requests",
        "resource_requests",
        "throttled_requests",
    )

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self.token_requests = 0
        self.resource_requests = 0
        self.throttled_requests = 0
        self.last_resource_headers: CIMultiDict[str] = CIMultiDict()
        self._throttle_left = 0
        self._throttle_retry_after = 1
        self._fail_until = 0.0
        self._fail_status = 500
        self._fail_mode: FailMode = "status"
        self._fail_delay = 0.0
        self._closing = asyncio.Event()
        self.app = web.Application()
        # wake handlers sleeping in "slow" mode so a server shuts down at once
        self.app.on_shutdown.append(self._wake_sleepers)
        router = self.app.router
        router.add_post("/-/sandbox/expire", self._control_expire)
        router.add_post("/-/sandbox/throttle", self._control_throttle)
        router.add_post("/-/sandbox/fail-token", self._control_fail_token)
        router.add_get("/-/sandbox/stats", self._control_stats)
        self.setup_routes(router)

    # --- for subclasses ----------------------------------------------------------------------

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        """Either the rejection to send, or the (masked) credentials to echo."""
        raise NotImplementedError

    def throttled_response(self, retry_after: int) -> web.StreamResponse:
        """The vendor's way of saying "too many requests"; 429 unless overridden."""
        return json_error(
            429,
            {"error": "rate_limited", "message": "sandbox: throttled"},
            {"Retry-After": str(retry_after)},
        )

    def decorate(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Headers the vendor adds to every resource answer (Kibo's X-Plan-*)."""
        return response

    async def token_gate(self) -> web.StreamResponse | None:
        """Count a token/login request and apply `fail_token`; None means answer normally."""
        self.token_requests += 1
        if self.clock() >= self._fail_until:
            return None
        if self._fail_mode == "status":
            return json_error(
                self._fail_status,
                {"error": "server_error", "message": "sandbox: token endpoint told to fail"},
            )
        if self._fail_mode == "garbage":
            return web.Response(status=200, text=GARBAGE_BODY, content_type="application/json")
        await self.pause(self._fail_delay)
        return None

    async def handle_resource(self, request: web.Request) -> web.StreamResponse:
        """Every resource request: count, copy headers, throttle or authenticate, echo."""
        self.resource_requests += 1
        self.last_resource_headers = CIMultiDict(request.headers)
        response: web.StreamResponse
        if self._throttle_left > 0:
            self._throttle_left -= 1
            self.throttled_requests += 1
            response = self.throttled_response(self._throttle_retry_after)
        else:
            verdict = self.authenticate(request)
            if isinstance(verdict, web.StreamResponse):
                response = verdict
            else:
                response = await self.echo(request, verdict)
        return self.decorate(request, response)

    async def echo(self, request: web.Request, credentials: Mapping[str, Any]) -> web.Response:
        """What arrived, credentials masked; the body is counted, never buffered."""
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        path, _, query = request.raw_path.partition("?")
        return web.json_response(
            {
                "provider": self.name,
                "method": request.method,
                "path": path,
                "query": query,
                "credentials": dict(credentials),
                "body_bytes": size,
            }
        )

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake as soon as the server shuts down."""
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # --- knobs -------------------------------------------------------------------------------

    def expire_all(self) -> None:
        """Invalidate every issued access token or session now."""
        raise NotImplementedError

    def throttle(self, n: int, *, retry_after: int = 1) -> None:
        """The next `n` resource requests are throttled the vendor's way."""
        if n < 0 or retry_after < 0:
            raise ValueError("n and retry_after must not be negative")
        self._throttle_left = n
        self._throttle_retry_after = retry_after

    def fail_token(
        self,
        seconds: float,
        status: int = 500,
        mode: str = "status",
        *,
        duration: float | None = None,
    ) -> None:
        """Make the token/login endpoint misbehave.

        `status`: answer `status` for `seconds`; `garbage`: answer 200 with a body that is not
        JSON for `seconds`; `slow`: every token request arriving within `duration` (default
        `seconds`) sleeps `seconds` and then answers normally. `seconds=0` heals it.
        """
        if mode not in FAIL_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAIL_MODES)}")
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status")
        if seconds < 0 or (duration is not None and duration < 0):
            raise ValueError("seconds and duration must not be negative")
        self._fail_mode = mode
        self._fail_status = status
        self._fail_delay = seconds
        self._fail_until = self.clock() + (seconds if duration is None else duration)

    def stats(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.counter_names}

    # --- control API -------------------------------------------------------------------------

    async def _wake_sleepers(self, _app: web.Application) -> None:
        self._closing.set()

    async def _control_expire(self, request: web.Request) -> web.Response:
        self.expire_all()
        return web.json_response({"ok": True, "expired": self.name})

    def throttle_from_query(self, query: Mapping[str, str]) -> None:
        self.throttle(query_int(query, "n"), retry_after=query_int(query, "retry_after", 1))

    async def _control_throttle(self, request: web.Request) -> web.Response:
        try:
            self.throttle_from_query(request.query)
        except ValueError as exc:
            raise BadControl(str(exc)) from None
        return web.json_response({"ok": True, "throttled_next": self._throttle_left})

    async def _control_fail_token(self, request: web.Request) -> web.Response:
        query = request.query
        duration = query_number(query, "duration") if "duration" in query else None
        try:
            self.fail_token(
                query_number(query, "seconds"),
                status=query_int(query, "status", 500),
                mode=query.get("mode", "status"),
                duration=duration,
            )
        except ValueError as exc:
            raise BadControl(str(exc)) from None
        return web.json_response({"ok": True, "mode": self._fail_mode})

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


class BearerIssuer:
    """The client_credentials grant as Kibo and PayNet answer it, once client authentication
    has passed (RFC 6749 4.4.2-4.4.3): check the grant, issue an expiring bearer token."""

    clock: Clock
    token_ttl: int
    tokens_issued: int
    _tokens: dict[str, float]

    def client_credentials_answer(
        self, form: Mapping[str, Any], token_type: str = "bearer"
    ) -> web.Response:
        grant = form.get("grant_type")
        if grant is None:
            return json_error(400, {"error": "invalid_request"})
        if grant != "client_credentials":
            return json_error(400, {"error": "unsupported_grant_type"})
        now = self.clock()
        for stale in [t for t, expiry in self._tokens.items() if expiry <= now]:
            del self._tokens[stale]
        token = new_token()
        self._tokens[token] = now + self.token_ttl
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "token_type": token_type, "expires_in": self.token_ttl},
            headers=NO_STORE,
        )
