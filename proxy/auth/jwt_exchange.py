"""`jwt_exchange`: a signed JWT, sent as a bearer token, bought a short-lived token (GitHub Apps).

GitHub ("Authenticating as a GitHub App installation"): the app signs an RS256 JWT with
iss = app (or client) id, iat 60 s in the past against clock drift, exp at most 10 minutes
ahead, and POSTs it to /app/installations/{installation_id}/access_tokens, which answers
201 {token, expires_at}. The installation is the tenant. Nothing here is GitHub-specific
beyond the preset: the URL, the claims and where the answer keeps token and expiry are config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import quote

from proxy.auth.base import CredentialFlow, FetchedBearer, SchemeContext
from proxy.auth.oauth2 import read_header_map
from proxy.auth.session_login import parse_expiry
from proxy.errors import CredentialError
from proxy.jose import JwtSigner, check_vectors, read_signer
from proxy.messages import HttpRequest, HttpResponse, dotted
from proxy.schema import Node, Secret
from proxy.tokens import DEFAULT_EXPIRES_IN, Credential

DEFAULT_LIFETIME: Final = 540  # with GitHub's 60 s backdating: a 10-minute window in all


def exchange_claims(
    iss: str,
    sub: str | None,
    aud: str | None,
    extra: Mapping[str, str],
    now: float,
    backdate: int,
    lifetime: int,
) -> dict[str, Any]:
    """iat = now - backdate (GitHub: 60 s, for clock drift), exp = now + lifetime."""
    claims: dict[str, Any] = dict(extra)
    claims.update({"iat": int(now) - backdate, "exp": int(now) + lifetime, "iss": iss})
    if sub:
        claims["sub"] = sub
    if aud:
        claims["aud"] = aud
    return claims


@dataclass(frozen=True)
class JwtExchange(FetchedBearer):
    """POST to `token_url` with `Authorization: Bearer <jwt>`; token and expiry read from
    dotted paths of the JSON answer."""

    kind: ClassVar[str] = "jwt_exchange"

    provider: str
    token_url: str
    signer: JwtSigner
    iss: str
    sub: str | None = None
    aud: str | None = None
    claims: Mapping[str, str] = field(default_factory=dict)
    lifetime: int = DEFAULT_LIFETIME
    backdate: int = 0
    token_path: str = "token"
    expires_at_path: str | None = None
    expires_in_path: str | None = None
    error_path: str | None = None
    token_headers: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    key: Secret | None = field(default=None, repr=False)  # the PEM, for the redactor

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> JwtExchange:
        token_url = node.url("token_url", required=True, base=ctx.base_url) or ""
        iss = node.string("iss", required=True) or ""
        sub, aud = node.string("sub"), node.string("aud")
        cnode = node.child("claims")
        extra = {str(k): cnode.string(str(k), required=True) or "" for k in cnode.raw}
        for reserved in ("iss", "sub", "aud", "iat", "exp"):
            if reserved in extra:
                cnode.error(reserved, f"set by keyhop; use `{reserved}` on the auth block")
        lifetime = node.integer("lifetime", DEFAULT_LIFETIME, minimum=1)
        backdate = node.integer("backdate", 0, minimum=0)
        signer, pem = read_signer(node)
        check_vectors(
            node,
            lambda now, jti: (
                signer.header() if signer else {},
                exchange_claims(iss, sub, aud, extra, now, backdate, lifetime),
            ),
        )
        expires_at_path = node.string("expires_at_path")
        expires_in_path = node.string("expires_in_path")
        if expires_at_path and expires_in_path:
            node.error("expires_in_path", "give expires_at_path or expires_in_path, not both")
        return cls(
            provider=ctx.provider,
            token_url=token_url,
            signer=signer or JwtSigner("RS256", b"", None),  # None only with problems reported
            iss=iss,
            sub=sub,
            aud=aud,
            claims=extra,
            lifetime=lifetime,
            backdate=backdate,
            token_path=node.string("token_path", "token") or "token",
            expires_at_path=expires_at_path,
            expires_in_path=expires_in_path,
            error_path=node.string("error_path"),
            token_headers=read_header_map(node, "token_headers"),
            key=pem,
        )

    @property
    def client_id(self) -> str | None:
        return None

    @property
    def signing_key(self) -> Secret | None:
        return None

    def template_vars(self) -> Mapping[str, str | Secret]:
        return {}

    def credential_headers(self, credential: Credential) -> Mapping[str, str]:
        return {}

    def identity(self) -> str:
        return f"{self.kind}|{self.token_url}|{self.iss}"

    def url_for(self, tenant: str | None) -> str:
        if "{tenant}" not in self.token_url:
            return self.token_url
        if not tenant:
            raise CredentialError(
                f"{self.provider}'s token_url needs a tenant (`tenants: true` and X-Keyhop-Tenant)",
                provider=self.provider,
            )
        return self.token_url.replace("{tenant}", quote(tenant, safe=""))

    def exchange_request(self, tenant: str | None, now: float) -> HttpRequest:
        claims = exchange_claims(
            self.iss, self.sub, self.aud, self.claims, now, self.backdate, self.lifetime
        )
        headers = {"Accept": "application/json"}
        headers.update({k: v.reveal() for k, v in self.token_headers.items()})
        headers["Authorization"] = "Bearer " + self.signer.sign(claims)
        return HttpRequest("POST", self.url_for(tenant), headers, b"")

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow:
        response = yield self.exchange_request(tenant, now)
        return self.parse(response, now)

    def parse(self, response: HttpResponse, now: float) -> Credential:
        body = response.json()
        if not 200 <= response.status < 300:
            raise self._refused(body, response.status)
        token = dotted(body, self.token_path)
        if not isinstance(token, str) or not token.strip():
            raise CredentialError(
                f"token endpoint of {self.provider} answered without {self.token_path}",
                provider=self.provider,
            )
        if self.expires_at_path:
            expires_at = parse_expiry(dotted(body, self.expires_at_path))
        elif self.expires_in_path:
            life = dotted(body, self.expires_in_path)
            ok = isinstance(life, int | float) and not isinstance(life, bool)
            expires_at = now + float(life) if ok and life > 0 else None
        else:
            expires_at = now + DEFAULT_EXPIRES_IN
        if expires_at is None or not math.isfinite(expires_at) or expires_at <= now:
            raise CredentialError(
                f"token endpoint of {self.provider} answered a missing or past expiry",
                provider=self.provider,
            )
        return Credential(token=token, expires_at=expires_at, obtained_at=now, kind="access")

    def _refused(self, body: Any, status: int) -> CredentialError:
        """The endpoint's own error code (RFC 6749 `error`, or `error_path`: GitHub says
        `message`), short and printable only; never the body at length."""
        code = dotted(body, self.error_path) if self.error_path else None
        if code is None and isinstance(body, Mapping):
            code = body.get("error")
        if isinstance(code, str) and code and len(code) <= 80 and code.isprintable():
            error = CredentialError(
                f"token endpoint of {self.provider} refused: {code} (HTTP {status})",
                provider=self.provider,
            )
            error.vendor_code = code
            return error
        return CredentialError(
            f"token endpoint of {self.provider} answered HTTP {status}", provider=self.provider
        )
