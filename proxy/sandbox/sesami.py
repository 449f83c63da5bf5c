"""Fake Sesami: app install per shop.

Sesami signs what it sends to an app: the install request (`shopId`, `timestamp`, `hmac`),
the authorization callback (`code`, `shopId`, `timestamp`, `hmac`) and the `uninstall_app`
webhook. The hmac is lowercase hex HMAC-SHA256 under the client secret over the compact
JSON of the other parameters with sorted keys; `timestamp` is hashed as a JSON number or a
string (`timestamp_as`), since apps must accept both. The code is exchanged with a JSON body
for an offline token (`expireAt: NEVER`) that works for that shop until it uninstalls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.sandbox.base import (
    BadControl,
    Clock,
    FakeProvider,
    is_loopback_url,
    json_error,
    mask,
    new_token,
    same,
)
from proxy.sandbox.credentials import (
    SESAMI_CLIENT_ID,
    SESAMI_CLIENT_SECRET,
    SESAMI_INSTALL_URL,
    SESAMI_SHOP_ID,
    SESAMI_WEBHOOK_URL,
)
from proxy.signing import hmac_hex, sesami_message

CODE_TTL: Final = 600
TIMESTAMP_FORMS: Final = ("number", "string")


@dataclass
class _Code:
    shop_id: str
    expires: float


class FakeSesami(FakeProvider):
    """Sesami's authorization redirect, JSON token exchange, uninstall webhook and resources."""

    name: ClassVar[str] = "sesami"
    counter_names: ClassVar[tuple[str, ...]] = (
        *FakeProvider.counter_names,
        "authorizations",
        "installs",
        "uninstalls",
    )

    def __init__(
        self,
        client_id: str = SESAMI_CLIENT_ID,
        client_secret: str = SESAMI_CLIENT_SECRET,
        callback_url: str | None = None,
        timestamp_as: str = "number",
        *,
        install_url: str = SESAMI_INSTALL_URL,
        webhook_url: str = SESAMI_WEBHOOK_URL,
        clock: Clock = time.time,
    ) -> None:
        if timestamp_as not in TIMESTAMP_FORMS:
            raise ValueError("timestamp_as must be 'number' or 'string'")
        self.client_id = client_id
        self.client_secret = client_secret
        #: the app's registered redirect URI; when set, any other `redirectUri` is refused
        self.callback_url = callback_url
        self.timestamp_as = timestamp_as
        #: where `/-/sandbox/install` sends the merchant, and where uninstall webhooks go
        self.install_url = install_url
        self.webhook_url = webhook_url
        self.authorizations = 0  # codes issued by the authorization endpoint
        self.installs = 0  # successful code exchanges (a shop got its token)
        self.uninstalls = 0
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, str] = {}  # offline token -> shop id
        self._shop_tokens: dict[str, str] = {}  # shop id -> its current token
        super().__init__(clock=clock)

    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/oauth/authorization", self._authorization)
        router.add_post("/api/v1/oauth/access-token", self._access_token)
        router.add_get("/-/sandbox/install", self._control_install)
        router.add_post("/-/sandbox/uninstall", self._control_uninstall)
        router.add_route("*", "/api/{tail:.*}", self.handle_resource)

    # --- signing helpers ---------------------------------------------------------------------

    def sign(self, params: dict[str, str], as_: str | None = None) -> str:
        """The hmac Sesami puts beside `params`, `timestamp` hashed as a number or a string."""
        form = as_ or self.timestamp_as
        if form not in TIMESTAMP_FORMS:
            raise ValueError("as_ must be 'number' or 'string'")
        message: dict[str, Any] = dict(params)
        if form == "number" and "timestamp" in message:
            message["timestamp"] = int(message["timestamp"])
        return hmac_hex(self.client_secret.encode(), sesami_message(message))

    def _signed(
        self, params: dict[str, str], timestamp: int | None, as_: str | None
    ) -> dict[str, str]:
        ts = int(self.clock()) if timestamp is None else timestamp
        out = {**params, "timestamp": str(ts)}
        out["hmac"] = self.sign(out, as_)
        return out

    def signed_install_query(
        self, shop_id: str, timestamp: int | None = None, as_: str | None = None
    ) -> dict[str, str]:
        """What Sesami sends to the app's install URL: shopId, timestamp, hmac."""
        return self._signed({"shopId": shop_id}, timestamp, as_)

    def signed_callback_query(
        self,
        code: str,
        shop_id: str,
        timestamp: int | None = None,
        as_: str | None = None,
    ) -> dict[str, str]:
        """What Sesami sends to the app's redirect URI: code, shopId, timestamp, hmac."""
        return self._signed({"code": code, "shopId": shop_id}, timestamp, as_)

    def uninstall_webhook(self, shop_id: str) -> dict[str, Any]:
        """The `uninstall_app` webhook body (hmac over the sorted `data`); changes nothing."""
        data = {"shopId": shop_id}
        return {
            "event": "uninstall_app",
            "data": data,
            "hmac": hmac_hex(self.client_secret.encode(), sesami_message(data)),
        }

    # --- knobs -------------------------------------------------------------------------------

    def issue_code(self, shop_id: str) -> str:
        """A one-time code bound to `shop_id`, as the authorization endpoint would issue."""
        code = new_token()
        self._codes[code] = _Code(shop_id, self.clock() + CODE_TTL)
        self.authorizations += 1
        return code

    def uninstall(self, shop_id: str) -> bool:
        """The merchant uninstalls: the shop's token stops working. True if it had one."""
        token = self._shop_tokens.pop(shop_id, None)
        if token is None:
            return False
        self._tokens.pop(token, None)
        self.uninstalls += 1
        return True

    async def send_uninstall(self, url: str, shop_id: str) -> int:
        """Uninstall `shop_id` here and POST the signed webhook to `url`; the answer's status."""
        self.uninstall(shop_id)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(url, json=self.uninstall_webhook(shop_id)) as response,
        ):
            await response.read()
            return response.status

    def expire_all(self) -> None:
        """Offline tokens never expire; this revokes them all, as if every shop uninstalled."""
        self._tokens.clear()
        self._shop_tokens.clear()

    def token_for(self, shop_id: str) -> str | None:
        return self._shop_tokens.get(shop_id)

    @property
    def installed_shops(self) -> list[str]:
        return sorted(self._shop_tokens)

    # --- OAuth endpoints ---------------------------------------------------------------------

    async def _authorization(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        client_id = query.get("clientId", "")
        if not client_id or not same(client_id, self.client_id):
            return json_error(400, {"error": "invalid_client", "message": "unknown clientId"})
        shop_id = query.get("shopId", "")
        if not shop_id:
            return json_error(400, {"error": "invalid_request", "message": "shopId required"})
        redirect_uri = query.get("redirectUri") or self.callback_url
        if not redirect_uri:
            return json_error(400, {"error": "invalid_request", "message": "redirectUri required"})
        if self.callback_url is not None and redirect_uri != self.callback_url:
            return json_error(400, {"error": "redirect_uri_mismatch"})
        try:
            target = URL(redirect_uri)
        except ValueError:
            target = URL()
        if target.scheme not in ("http", "https"):
            return json_error(400, {"error": "invalid_request", "message": "bad redirectUri"})
        # the hmac covers every parameter the app will receive, its own query included
        params = {**dict(target.query), "code": self.issue_code(shop_id), "shopId": shop_id}
        signed = self._signed(params, None, None)
        raise web.HTTPFound(target.with_query(signed))

    async def _access_token(self, request: web.Request) -> web.StreamResponse:
        early = await self.token_gate()
        if early is not None:
            return early
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, {"error": "invalid_request", "message": "JSON body required"})
        fields = ("code", "shopId", "clientId", "clientSecret")
        if not isinstance(body, dict) or not all(isinstance(body.get(f), str) for f in fields):
            return json_error(
                400, {"error": "invalid_request", "message": f"need {', '.join(fields)}"}
            )
        if not (
            same(body["clientId"], self.client_id)
            and same(body["clientSecret"], self.client_secret)
        ):
            return json_error(401, {"error": "invalid_client"})
        code = self._codes.pop(body["code"], None)
        if code is None or code.expires <= self.clock() or code.shop_id != body["shopId"]:
            return json_error(400, {"error": "invalid_grant"})
        old = self._shop_tokens.get(code.shop_id)
        if old is not None:
            self._tokens.pop(old, None)
        token = new_token("sesami_")
        self._tokens[token] = code.shop_id
        self._shop_tokens[code.shop_id] = token
        self.installs += 1
        return web.json_response({"token": token, "expireAt": "NEVER"})

    # --- resources ---------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        client_id = request.headers.get("x-client-id", "")
        if not same(client_id, self.client_id):
            return json_error(401, {"error": "unauthorized", "message": "bad x-client-id"})
        api_key = request.headers.get("x-api-key", "")
        shop_id = self._tokens.get(api_key) if api_key else None
        if shop_id is None:
            return json_error(401, {"error": "unauthorized", "message": "bad x-api-key"})
        if request.headers.get("x-shop-id") != shop_id:
            return json_error(403, {"error": "forbidden", "message": "x-shop-id mismatch"})
        return {"shop_id": shop_id, "client_id": client_id, "api_key": mask(api_key)}

    # --- control -----------------------------------------------------------------------------

    def _control_url(self, given: str | None, default: str) -> str:
        if given is None:
            return default
        if not is_loopback_url(given):
            raise BadControl("only http(s) URLs on this machine may be targeted")
        return given

    async def _control_install(self, request: web.Request) -> web.StreamResponse:
        """The merchant clicks "install": a 302 to the app's install URL, freshly signed."""
        shop_id = request.query.get("shopId", SESAMI_SHOP_ID)
        target = self._control_url(request.query.get("installUrl"), self.install_url)
        raise web.HTTPFound(URL(target).with_query(self.signed_install_query(shop_id)))

    async def _control_uninstall(self, request: web.Request) -> web.StreamResponse:
        """The merchant uninstalls: the token dies here and the webhook goes to the app."""
        shop_id = request.query.get("shopId", SESAMI_SHOP_ID)
        target = self._control_url(request.query.get("webhookUrl"), self.webhook_url)
        try:
            status = await self.send_uninstall(target, shop_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return json_error(
                502, {"error": "webhook_failed", "message": f"{type(exc).__name__}: {exc}"}
            )
        return web.json_response({"ok": True, "shopId": shop_id, "webhook_status": status})
