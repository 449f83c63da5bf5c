"""Fake Kibo OMS (Shopatron) behind its Mashery gateway.

Token: OAuth2 client_credentials at `/oauthserver/oauth2/token`, client authenticated with
HTTP Basic over the issued strings exactly as they are (not form-encoded first, unlike
RFC 6749 2.3.1). Resources under `/api/`: the gateway checks `API-Key` (403 with
`X-Mashery-Error-Code: ERR_403_NOT_AUTHORIZED`), the backend the bearer token (401). Every
resource answer carries the plan headers; throttling is a **403** with
`ERR_403_DEVELOPER_OVER_QPS` or `..._OVER_RATE` and `Retry-After`, which a proxy must not
mistake for a credential problem.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

from aiohttp import web

from proxy.sandbox.base import (
    BearerIssuer,
    Clock,
    FakeProvider,
    bearer_token,
    json_error,
    mask,
    query_int,
    same,
)
from proxy.sandbox.credentials import KIBO_CLIENT_ID, KIBO_CLIENT_SECRET

OVER_QPS: Final = "ERR_403_DEVELOPER_OVER_QPS"
OVER_RATE: Final = "ERR_403_DEVELOPER_OVER_RATE"
NOT_AUTHORIZED: Final = "ERR_403_NOT_AUTHORIZED"
THROTTLE_CODES: Final = (OVER_QPS, OVER_RATE)

_DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def mashery_date(when: datetime) -> str:
    """Mashery's long date form, locale-free: `Tuesday, January 16, 2024 12:00:00 AM GMT`."""
    when = when.astimezone(UTC)
    hour = when.hour % 12 or 12
    half = "AM" if when.hour < 12 else "PM"
    return (
        f"{_DAYS[when.weekday()]}, {_MONTHS[when.month - 1]} {when.day}, {when.year} "
        f"{hour}:{when.minute:02d}:{when.second:02d} {half} GMT"
    )


class FakeKibo(FakeProvider, BearerIssuer):
    """Kibo's token endpoint and Mashery-fronted resources."""

    name: ClassVar[str] = "kibo"
    counter_names: ClassVar[tuple[str, ...]] = (
        *FakeProvider.counter_names,
        "tokens_issued",
    )

    def __init__(
        self,
        client_id: str = KIBO_CLIENT_ID,
        client_secret: str = KIBO_CLIENT_SECRET,
        token_ttl: int = 3600,
        *,
        qps_allotted: int = 20,
        quota_allotted: int = 100_000,
        clock: Clock = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.qps_allotted = qps_allotted
        self.quota_allotted = quota_allotted
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}  # access token -> expiry (unix seconds)
        self._throttle_code = OVER_QPS
        self._qps_second = -1
        self._qps_count = 0
        super().__init__(clock=clock)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/oauthserver/oauth2/token", self._token)
        router.add_route("*", "/api/{tail:.*}", self.handle_resource)

    # --- knobs -------------------------------------------------------------------------------

    def expire_all(self) -> None:
        self._tokens.clear()

    def revoke_tokens(self) -> None:
        """Revoke every issued token: resources answer 401 until a new one is fetched."""
        self._tokens.clear()

    def throttle(self, n: int, *, retry_after: int = 1, code: str = OVER_QPS) -> None:
        """The next `n` resource requests get Mashery's 403 `code` with `Retry-After`."""
        if code not in THROTTLE_CODES:
            raise ValueError(f"code must be one of {', '.join(THROTTLE_CODES)}")
        super().throttle(n, retry_after=retry_after)
        self._throttle_code = code

    def throttle_from_query(self, query: Mapping[str, str]) -> None:
        self.throttle(
            query_int(query, "n"),
            retry_after=query_int(query, "retry_after", 1),
            code=query.get("code", OVER_QPS),
        )

    def live_tokens(self) -> int:
        now = self.clock()
        return sum(1 for expiry in self._tokens.values() if expiry > now)

    # --- token endpoint ----------------------------------------------------------------------

    def _basic_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.client_id}:{self.client_secret}".encode()
        return hmac.compare_digest(given, expected)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        early = await self.token_gate()
        if early is not None:
            return early
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return json_error(
                401, {"error": "invalid_client"}, {"WWW-Authenticate": 'Basic realm="oauth2"'}
            )
        return self.client_credentials_answer(await request.post(), "bearer")

    # --- resources ---------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        api_key = request.headers.get("API-Key", "")
        if not api_key or not same(api_key, self.client_id):
            return json_error(
                403,
                {"error": NOT_AUTHORIZED, "message": "Not Authorized"},
                {"X-Mashery-Error-Code": NOT_AUTHORIZED},
            )
        token = bearer_token(request)
        expiry = self._tokens.get(token) if token else None
        if token is None or expiry is None or expiry <= self.clock():
            return json_error(
                401,
                {"error": "invalid_token"},
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return {"api_key": mask(api_key), "bearer": mask(token)}

    def throttled_response(self, retry_after: int) -> web.StreamResponse:
        message = "Developer Over Qps" if self._throttle_code == OVER_QPS else "Developer Over Rate"
        return json_error(
            403,
            {"error": self._throttle_code, "message": message},
            {"X-Mashery-Error-Code": self._throttle_code, "Retry-After": str(retry_after)},
        )

    def decorate(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        now = self.clock()
        second = int(now)
        if second != self._qps_second:
            self._qps_second, self._qps_count = second, 0
        self._qps_count += 1
        today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        response.headers["X-Plan-QPS-Allotted"] = str(self.qps_allotted)
        response.headers["X-Plan-QPS-Current"] = str(self._qps_count)
        response.headers["X-Plan-Quota-Allotted"] = str(self.quota_allotted)
        response.headers["X-Plan-Quota-Current"] = str(self.resource_requests)
        response.headers["X-Plan-Quota-Reset"] = mashery_date(today + timedelta(days=1))
        return response
