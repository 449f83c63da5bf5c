"""OAuth2 `client_credentials` (Kibo, PayNet) and `authorization_code` with refresh (Saison).

Pure: flows yield HttpRequests (RFC 6749 4.1.3, 4.4.2, 6) and parse the answers (5.1, 5.2).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final
from urllib.parse import urlencode

from proxy.auth.base import ClientApp, CredentialFlow, FetchedBearer, SchemeContext
from proxy.auth.client_auth import ClientAuth, read_client_auth
from proxy.errors import NotConnected
from proxy.headers import configured_header_problem
from proxy.messages import HttpRequest
from proxy.schema import Node, Secret
from proxy.tokens import Credential, parse_token_response

FORM: Final = "application/x-www-form-urlencoded"


def token_request(
    url: str,
    form: Mapping[str, str],
    client_auth: ClientAuth | None,
    extra_headers: Mapping[str, Secret],
    now: float,
) -> HttpRequest:
    """RFC 6749 3.2: a form POST with the client's authentication (client_auth.py) added."""
    auth_headers, auth_form = client_auth.encode(now) if client_auth else ({}, {})
    headers = {"Content-Type": FORM, "Accept": "application/json"}
    headers.update({k: v.reveal() for k, v in extra_headers.items()})
    headers.update(auth_headers)
    body = urlencode({**form, **auth_form}).encode()
    return HttpRequest("POST", url, headers, body)


def read_secret_map(node: Node, key: str) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    child = node.child(key)
    for name in child.raw:
        value = child.secret(str(name))
        if value is not None:
            out[str(name)] = value
    return out


def read_header_map(node: Node, key: str) -> dict[str, Secret]:
    """Headers for a token or login request, under the rules of a provider's `headers`:
    RFC 9110 5.1 names, values without CR, LF or other controls (5.5). The value is never
    quoted in the error: it may be a secret."""
    out: dict[str, Secret] = {}
    child = node.child(key)
    for name in child.raw:
        value = child.secret(str(name))
        problem = configured_header_problem(str(name), value.reveal() if value else None)
        if problem is not None:
            child.error(str(name), problem)
        elif value is not None:
            out[str(name)] = value
    return out


class OAuthClient(FetchedBearer, ClientApp):
    """An OAuth2 client with a token endpoint (RFC 6749 3.2)."""

    token_url: str
    client_auth: ClientAuth
    token_headers: Mapping[str, Secret]

    @property
    def endpoint(self) -> str:
        return self.token_url

    def token_request(self, form: Mapping[str, str], now: float) -> HttpRequest:
        return token_request(self.token_url, form, self.client_auth, self.token_headers, now)


def read_client(
    node: Node, ctx: SchemeContext, default_auth: str
) -> tuple[str, str, ClientAuth, Secret | None]:
    """token_url, client_id, client_auth and client_secret, shared by the OAuth2 types."""
    token_url = node.url("token_url", required=True, base=ctx.base_url) or ""
    client_id = node.string("client_id", required=True) or ""
    auth, secret = read_client_auth(
        node, ctx, default=default_auth, client_id=client_id, token_url=token_url
    )
    return token_url, client_id, auth, secret


@dataclass(frozen=True)
class ClientCredentials(OAuthClient):
    """RFC 6749 4.4: no refresh token; the grant is simply run again before expiry."""

    kind: ClassVar[str] = "oauth2_client_credentials"

    provider: str
    token_url: str
    client_id_value: str
    client_auth: ClientAuth
    client_secret: Secret | None = field(default=None, repr=False)
    scope: str | None = None
    token_headers: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    token_params: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    #: the private_key_jwt PEM, a field of its own so config.secrets (the redactor) finds it
    client_key: Secret | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> ClientCredentials:
        token_url, client_id, client_auth, secret = read_client(node, ctx, "basic")
        return cls(
            provider=ctx.provider,
            token_url=token_url,
            client_id_value=client_id,
            client_auth=client_auth,
            client_secret=secret,
            scope=node.string("scope"),
            token_headers=read_header_map(node, "token_headers"),
            token_params=read_secret_map(node, "token_params"),
            client_key=client_auth.key,
        )

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        form.update({k: v.reveal() for k, v in self.token_params.items()})
        response = yield self.token_request(form, now)
        return parse_token_response(self.provider, response, now)


def pkce_pair() -> tuple[str, str]:
    """RFC 7636 4.1/4.2: a verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class AuthorizationCode(OAuthClient):
    """RFC 6749 4.1 once (a person at a browser), then 6 (refresh) for as long as it lasts.

    The refresh token lives in the store; only a login can create the first one, so with
    none stored the flow raises NotConnected naming the command and URL that connect it.
    """

    kind: ClassVar[str] = "oauth2_authorization_code"

    provider: str
    authorize_url: str
    token_url: str
    client_id_value: str
    client_auth: ClientAuth
    client_secret: Secret | None = field(default=None, repr=False)
    scope: str | None = None
    redirect_uri: str | None = None
    pkce: bool = False
    token_headers: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    client_key: Secret | None = field(default=None, repr=False)  # for the redactor

    @classmethod
    def from_options(cls, node: Node, ctx: SchemeContext) -> AuthorizationCode:
        params = node.child("authorize_params")
        authorize_url = node.url("authorize_url", required=True, base=ctx.base_url) or ""
        token_url, client_id, client_auth, secret = read_client(node, ctx, "body")
        return cls(
            provider=ctx.provider,
            authorize_url=authorize_url,
            token_url=token_url,
            client_id_value=client_id,
            client_auth=client_auth,
            client_secret=secret,
            scope=node.string("scope"),
            redirect_uri=node.url("redirect_uri"),
            pkce=node.boolean("pkce", False),
            token_headers=read_header_map(node, "token_headers"),
            authorize_params={str(k): params.string(str(k)) or "" for k in params.raw},
            client_key=client_auth.key,
        )

    def login_hint(self, tenant: str | None) -> str:
        flag = f" --tenant {tenant}" if tenant else ""
        query = f"?tenant={tenant}" if tenant else ""
        return (
            f"{self.provider} is not connected yet: run `keyhop login {self.provider}{flag}` "
            f"or open /-/oauth/{self.provider}/login{query} on this proxy in a browser"
        )

    def authorization_url(
        self, state: str, tenant: str | None, redirect_uri: str | None, challenge: str | None
    ) -> str:
        url = self.authorize_url.replace("{tenant}", tenant or "")
        query = {"response_type": "code", "client_id": self.client_id_value, "state": state}
        if redirect_uri:
            query["redirect_uri"] = redirect_uri
        if self.scope:
            query["scope"] = self.scope
        if challenge:
            query["code_challenge"] = challenge
            query["code_challenge_method"] = "S256"
        query.update(self.authorize_params)
        return url + ("&" if "?" in url else "?") + urlencode(query)

    def exchange_flow(
        self, code: str, redirect_uri: str | None, verifier: str | None, now: float
    ) -> CredentialFlow:
        form = {"grant_type": "authorization_code", "code": code}
        if redirect_uri:
            form["redirect_uri"] = redirect_uri
        if verifier:
            form["code_verifier"] = verifier
        response = yield self.token_request(form, now)
        return parse_token_response(self.provider, response, now)

    def credential_flow(
        self, previous: Credential | None, tenant: str | None, now: float
    ) -> CredentialFlow:
        if previous is None or not previous.refresh_token:
            raise NotConnected(self.login_hint(tenant), provider=self.provider)
        return self._refresh(previous.refresh_token, now)

    def _refresh(self, refresh_token: str, now: float) -> CredentialFlow:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        response = yield self.token_request(form, now)
        return parse_token_response(self.provider, response, now, previous_refresh=refresh_token)
