"""`oauth2_app_install`: one offline token per tenant, from a merchant's app install (Sesami).

The install and callback requests come from the provider through the merchant's browser
and carry an `hmac` (SPEC 4.5); verification is pure (proxy/signing.py). The token never
expires: it is kept until the shop uninstalls, and only an install can create it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlencode

from proxy.auth.base import ClientApp, CredentialFlow, SchemeContext
from proxy.auth.session_login import parse_expiry
from proxy.errors import CredentialError, NotConnected
from proxy.messages import HttpRequest
from proxy.schema import Node, Secret
from proxy.signing import hmac_hex, sesami_message, verify_sesami
from proxy.tokens import Credential, token_error


@dataclass(frozen=True)
class AppInstall(ClientApp):
    kind: ClassVar[str] = "oauth2_app_install"
    default_headers: ClassVar[Mapping[str, str]] = {"Authorization": "Bearer {token}"}
    refetchable: ClassVar[bool] = False
    needs_credential: ClassVar[bool] = True
    passes_client_auth: ClassVar[bool] = False

    provider: str
    authorize_url: str
    access_token_url: str
    client_id_value: str
    client_secret: Secret = field(repr=False)
    scopes: tuple[str, ...] = ()
    redirect_uri: str | None = None
    after_install_url: str | None = None
    max_age: float = 300.0  # SPEC 4.5: older than 5 minutes is refused
    max_skew: float = 60.0  # a timestamp this far in the future is still accepted
    token_field: str = "token"

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> AppInstall:
        hmac_node = node.child("hmac")
        max_age = hmac_node.number("max_age", 300.0, minimum=0.0, exclusive=True)
        max_skew = hmac_node.number("max_skew", 60.0, minimum=0.0)
        hmac_node.finish()
        return cls(
            provider=ctx.provider,
            authorize_url=node.url("authorize_url", required=True, base=ctx.base_url) or "",
            access_token_url=node.url("access_token_url", required=True, base=ctx.base_url) or "",
            client_id_value=node.string("client_id", required=True) or "",
            client_secret=node.secret("client_secret", required=True) or Secret(""),
            scopes=tuple(node.str_list("scopes")),
            redirect_uri=node.url("redirect_uri"),
            after_install_url=node.url("after_install_url"),
            max_age=max_age,
            max_skew=max_skew,
            token_field=node.string("token_field", "token") or "token",
        )

    @property
    def endpoint(self) -> str:
        return self.access_token_url

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow | None:
        if previous is None:
            raise NotConnected(
                f"{self.provider} is not installed for {tenant or 'this tenant'}: install the "
                f"app from {self.provider} (or open /-/oauth/{self.provider}/install with the "
                "signed query the provider sends)",
                provider=self.provider,
            )
        return None

    # -- install, callback, webhook ----------------------------------------------------------

    def verify(self, params: Mapping[str, str], now: float) -> str | None:
        """Why a signed install/callback query is refused, or None when it is genuine."""
        given = params.get("hmac")
        if not given:
            return "the request carries no hmac"
        rest = {k: v for k, v in params.items() if k != "hmac"}
        if not verify_sesami(self.client_secret.reveal().encode(), rest, given.lower()):
            return "the hmac does not match"
        ts = rest.get("timestamp", "")
        if not ts.isdigit():
            return "the timestamp is missing or not a number"
        stamp = int(ts) / 1000 if len(ts) >= 13 else int(ts)  # milliseconds or seconds
        if now - stamp > self.max_age:
            return "the request is too old"
        if stamp - now > self.max_skew:
            return "the request's timestamp is in the future"
        return None

    def verify_webhook(self, payload: Mapping[str, object]) -> bool:
        data, given = payload.get("data"), payload.get("hmac")
        if not isinstance(data, Mapping) or not isinstance(given, str):
            return False
        expected = hmac_hex(self.client_secret.reveal().encode(), sesami_message(data))
        return hmac.compare_digest(
            expected.encode(), given.lower().encode("utf-8", "surrogateescape")
        )

    def install_url(self, shop: str, redirect_uri: str) -> str:
        query: list[tuple[str, str]] = [("clientId", self.client_id_value)]
        query.extend(("scopes[]", scope) for scope in self.scopes)
        query.extend([("redirectUri", redirect_uri), ("shopId", shop)])
        sep = "&" if "?" in self.authorize_url else "?"
        return self.authorize_url + sep + urlencode(query)

    def exchange_flow(self, code: str, shop: str, now: float) -> CredentialFlow:
        body = {
            "code": code,
            "shopId": shop,
            "clientId": self.client_id_value,
            "clientSecret": self.client_secret.reveal(),
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        response = yield HttpRequest(
            "POST", self.access_token_url, headers, json.dumps(body).encode()
        )
        if response.status not in (200, 201):
            raise token_error(self.provider, response)
        answer = response.json()
        data = answer.get("data", answer) if isinstance(answer, Mapping) else None
        token = data.get(self.token_field) if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise CredentialError(
                f"token endpoint of {self.provider} answered without {self.token_field}",
                provider=self.provider,
            )
        expire = data.get("expireAt") if isinstance(data, Mapping) else None
        expires_at = None if expire in (None, "NEVER", "never") else parse_expiry(expire)
        return Credential(token=token, expires_at=expires_at, obtained_at=now, kind="offline")
