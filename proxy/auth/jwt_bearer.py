"""`oauth2_jwt_bearer`: the JWT bearer grant (RFC 7523 2.1), Google service accounts, Salesforce.

The grant itself is a JWT the client signs; nobody logs in, so it is fetched again at will.
`service_account_file:` reads a Google service-account JSON key (client_email, private_key,
private_key_id, token_uri) at load time; options written beside it override its values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from proxy.auth.base import CredentialFlow, FetchedBearer, SchemeContext
from proxy.auth.client_auth import ClientAuth, read_client_auth
from proxy.auth.oauth2 import read_header_map, read_secret_map, token_request
from proxy.jose import JwtSigner, check_vectors, new_jti, read_signer
from proxy.schema import Node, Secret, is_url
from proxy.tokens import Credential, parse_token_response

#: RFC 7523 2.1
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_LIFETIME: Final = 300  # Google accepts up to 3600; shorter is safer if one leaks


def grant_claims(
    iss: str, sub: str | None, aud: str, scope: str | None, now: float, lifetime: int, jti: str
) -> dict[str, Any]:
    """RFC 7523 3: iss, sub (when the grant acts for someone), aud, exp, iat, jti; Google
    reads the requested `scope` from the claims (developers.google.com, "Using OAuth 2.0 for
    Server to Server Applications", the JWT claim set)."""
    iat = int(now)
    claims: dict[str, Any] = {"iss": iss}
    if sub:
        claims["sub"] = sub
    claims["aud"] = aud
    if scope:
        claims["scope"] = scope
    claims.update({"iat": iat, "exp": iat + lifetime, "jti": jti})
    return claims


def read_service_account(node: Node, key: str) -> dict[str, str]:
    """A Google service-account key file: its fields, or {} with the problem reported."""
    path = node.string(key)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        node.error(key, f"cannot read {path}: {exc.strerror}")
        return {}
    except (ValueError, UnicodeDecodeError):
        node.error(key, f"{path} is not JSON (a service-account key file is)")
        return {}
    # the file's content is never quoted: it holds the private key
    fields = ("client_email", "private_key", "token_uri")
    if not isinstance(data, Mapping) or data.get("type") != "service_account":
        node.error(key, f'{path} is not a service-account key ("type": "service_account")')
        return {}
    missing = [name for name in fields if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        node.error(key, f"{path} lacks {', '.join(missing)}")
        return {}
    if not is_url(data["token_uri"], ("https",)):
        node.error(key, f"{path}: token_uri is not an https URL")
        return {}
    out = {name: str(data[name]) for name in fields}
    if isinstance(data.get("private_key_id"), str):
        out["private_key_id"] = data["private_key_id"]
    return out


@dataclass(frozen=True)
class JwtBearer(FetchedBearer):
    """POST grant_type=jwt-bearer with `assertion` = a JWT signed with `key`."""

    kind: ClassVar[str] = "oauth2_jwt_bearer"

    provider: str
    token_url: str
    signer: JwtSigner
    iss: str
    aud: str
    sub: str | None = None
    scope: str | None = None
    lifetime: int = DEFAULT_LIFETIME
    client_auth: ClientAuth | None = None
    token_headers: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    token_params: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    key: Secret | None = field(default=None, repr=False)  # the PEM, for the redactor
    client_secret: Secret | None = field(default=None, repr=False)  # likewise

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> JwtBearer:
        # with a file given, a problem with it is reported once, not again as missing keys
        given = node.has("service_account_file")
        account = read_service_account(node, "service_account_file")
        token_url = node.url("token_url", required=not given, base=ctx.base_url)
        token_url = token_url or account.get("token_uri", "")
        iss = node.string("iss", required=not given) or account.get("client_email", "")
        aud = node.string("aud") or token_url
        sub, scope = node.string("sub"), node.string("scope")
        lifetime = node.integer("lifetime", DEFAULT_LIFETIME, minimum=1)
        pem = Secret(account["private_key"]) if "private_key" in account else None
        signer, pem = read_signer(
            node, key=pem, kid=account.get("private_key_id"), key_required=not given
        )
        check_vectors(
            node,
            lambda now, jti: (
                signer.header() if signer else {},
                grant_claims(iss, sub, aud, scope, now, lifetime, jti),
            ),
        )
        client_auth = None
        if node.has("client_auth") or node.has("client_id"):
            # RFC 7523 3.1: client authentication is optional with this grant
            client_id = node.string("client_id", required=True) or ""
            client_auth, _ = read_client_auth(
                node, ctx, default="body", client_id=client_id, token_url=token_url
            )
        return cls(
            provider=ctx.provider,
            token_url=token_url,
            signer=signer or JwtSigner("RS256", b"", None),  # None only with problems reported
            iss=iss,
            aud=aud,
            sub=sub,
            scope=scope,
            lifetime=lifetime,
            client_auth=client_auth,
            token_headers=read_header_map(node, "token_headers"),
            token_params=read_secret_map(node, "token_params"),
            key=pem,
            client_secret=client_auth.secret if client_auth else None,
        )

    @property
    def client_id(self) -> str | None:
        return self.client_auth.client_id if self.client_auth else None

    @property
    def signing_key(self) -> Secret | None:
        return self.client_auth.secret if self.client_auth else None

    def template_vars(self) -> Mapping[str, str | Secret]:
        return {"client_id": self.client_auth.client_id} if self.client_auth else {}

    def credential_headers(self, credential: Credential) -> Mapping[str, str]:
        return {}

    def identity(self) -> str:
        return f"{self.kind}|{self.token_url}|{self.iss}|{self.sub or ''}|{self.scope or ''}"

    def grant_request_form(self, now: float, jti: str) -> dict[str, str]:
        claims = grant_claims(self.iss, self.sub, self.aud, self.scope, now, self.lifetime, jti)
        form = {"grant_type": GRANT_TYPE, "assertion": self.signer.sign(claims)}
        form.update({k: v.reveal() for k, v in self.token_params.items()})
        return form

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow:
        form = self.grant_request_form(now, new_jti())
        request = token_request(self.token_url, form, self.client_auth, self.token_headers, now)
        response = yield request
        return parse_token_response(self.provider, response, now)
