"""Fake PayNet One Stop Portal.

Token: OAuth2 client_credentials at `/token` with `client_id` and `client_secret` in the
form body. Resources under `/api/` need the bearer token, `X-Fiid`, and a fresh
`X-Timestamp` signed by `X-Signature` = lowercase hex HMAC-SHA256(client_secret, timestamp).
PayNet answers a stale timestamp or a bad signature with **400**, not 401: a proxy must not
treat those as an expired token.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from aiohttp import web

from proxy.sandbox.base import (
    BearerIssuer,
    Clock,
    FakeProvider,
    bearer_token,
    json_error,
    mask,
    same,
)
from proxy.sandbox.credentials import PAYNET_CLIENT_ID, PAYNET_CLIENT_SECRET, PAYNET_FIID
from proxy.signing import x_signature


class FakePayNet(FakeProvider, BearerIssuer):
    """PayNet's token endpoint and signed resources."""

    name: ClassVar[str] = "paynet"
    counter_names: ClassVar[tuple[str, ...]] = (*FakeProvider.counter_names, "tokens_issued")

    def __init__(
        self,
        client_id: str = PAYNET_CLIENT_ID,
        client_secret: str = PAYNET_CLIENT_SECRET,
        fiid: str = PAYNET_FIID,
        token_ttl: int = 3600,
        max_skew: int = 300,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.fiid = fiid
        self.token_ttl = token_ttl
        self.max_skew = max_skew
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}  # access token -> expiry
        super().__init__(clock=clock)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/token", self._token)
        router.add_route("*", "/api/{tail:.*}", self.handle_resource)

    def expire_all(self) -> None:
        self._tokens.clear()

    revoke_tokens = expire_all

    async def _token(self, request: web.Request) -> web.StreamResponse:
        early = await self.token_gate()
        if early is not None:
            return early
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and same(client_id, self.client_id)
            and same(client_secret, self.client_secret)
        ):
            return json_error(401, {"error": "invalid_client"})
        return self.client_credentials_answer(form, "Bearer")

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        token = bearer_token(request)
        expiry = self._tokens.get(token) if token else None
        now = self.clock()
        if token is None or expiry is None or expiry <= now:
            return json_error(
                401,
                {"error": "invalid_token"},
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        fiid = request.headers.get("X-Fiid", "")
        if not same(fiid, self.fiid):
            return json_error(403, {"error": "Invalid FIID"})
        ts = request.headers.get("X-Timestamp", "")
        if not (ts.isascii() and ts.isdigit()) or abs(now - int(ts)) > self.max_skew:
            return json_error(400, {"error": "Timestamp not within valid range"})
        signature = request.headers.get("X-Signature", "")
        if not same(signature, x_signature(self.client_secret.encode(), ts)):
            return json_error(400, {"error": "Invalid signature"})
        return {
            "bearer": mask(token),
            "fiid": fiid,
            "timestamp": ts,
            "signature": mask(signature),
        }
