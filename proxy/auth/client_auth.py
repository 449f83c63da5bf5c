"""How an OAuth2 client proves who it is at the token endpoint: a registry of pure encoders.

Like authlib's DEFAULT_AUTH_METHODS: each entry turns the client (and, for the JWT methods,
the time and a fresh `jti`) into headers and form fields to add to a token request.
`client_auth: NAME`, or a mapping `{type: NAME, key, alg, kid, lifetime, aud, vectors}`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.auth.base import SchemeContext
from proxy.jose import (
    JwtSigner,
    KeyProblem,
    check_vectors,
    hmac_key,
    new_jti,
    read_signer,
)
from proxy.schema import Node, Secret

#: RFC 7523 2.2: the client_assertion_type of a JWT client assertion
JWT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_LIFETIME: Final = 60  # seconds; an assertion is used once, right away
#: the methods that need the client secret, and those that sign a JWT
SECRET_METHODS: Final = frozenset({"basic", "body", "client_secret_jwt"})
JWT_METHODS: Final = frozenset({"private_key_jwt", "client_secret_jwt"})

Encoded = tuple[dict[str, str], dict[str, str]]


@dataclass(frozen=True)
class ClientAuth:
    """One configured client authentication: the method and what it needs, secrets unshown."""

    method: str
    client_id: str
    secret: Secret | None = field(default=None, repr=False)
    signer: JwtSigner | None = None
    audience: str = ""
    lifetime: int = DEFAULT_LIFETIME
    key: Secret | None = field(default=None, repr=False)  # the PEM, kept for the redactor

    def encode(self, now: float, jti: str | None = None) -> Encoded:
        """Headers and form fields for one token request (a fresh `jti` unless given)."""
        return CLIENT_AUTH[self.method](self, now, jti or new_jti())

    def secrets(self) -> tuple[Secret, ...]:
        return tuple(s for s in (self.secret, self.key) if s is not None)


def assertion_claims(
    client_id: str, audience: str, now: float, lifetime: int, jti: str
) -> dict[str, Any]:
    """RFC 7523 3 and OIDC Core 9: iss = sub = client_id, aud the token endpoint, one-time jti."""
    iat = int(now)
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": iat,
        "exp": iat + lifetime,
    }


def _basic(auth: ClientAuth, now: float, jti: str) -> Encoded:
    # RFC 6749 2.3.1 says to form-encode both first; Kibo wants the issued strings as they are.
    assert auth.secret is not None
    raw = f"{auth.client_id}:{auth.secret.reveal()}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}, {}


def _body(auth: ClientAuth, now: float, jti: str) -> Encoded:
    assert auth.secret is not None  # RFC 6749 2.3.1: client_id and client_secret in the body
    return {}, {"client_id": auth.client_id, "client_secret": auth.secret.reveal()}


def _jwt(auth: ClientAuth, now: float, jti: str) -> Encoded:
    # RFC 7523 2.2 / OIDC Core 9 (private_key_jwt and client_secret_jwt alike); RFC 7521 4.2
    # lets client_id be sent too, which servers that look the client up first expect
    assert auth.signer is not None
    claims = assertion_claims(auth.client_id, auth.audience, now, auth.lifetime, jti)
    return {}, {
        "client_id": auth.client_id,
        "client_assertion_type": JWT_ASSERTION_TYPE,
        "client_assertion": auth.signer.sign(claims),
    }


def _tls(auth: ClientAuth, now: float, jti: str) -> Encoded:
    # RFC 8705 2: the certificate of the TLS connection authenticates; the body names the client
    return {}, {"client_id": auth.client_id}


#: `client_auth` names (RFC 7591 2 token_endpoint_auth_method, shortened for the first two)
CLIENT_AUTH: Final[Mapping[str, Callable[[ClientAuth, float, str], Encoded]]] = {
    "basic": _basic,
    "body": _body,
    "private_key_jwt": _jwt,
    "client_secret_jwt": _jwt,
    "tls_client_auth": _tls,
}


def read_method(node: Node, default: str) -> tuple[str, Node | None]:
    """The method named by `client_auth` (a name or a mapping with `type`), and its options."""
    if isinstance(node.raw.get("client_auth"), Mapping):
        options = node.child("client_auth")
        return options.choice("type", sorted(CLIENT_AUTH), default), options
    return node.choice("client_auth", sorted(CLIENT_AUTH), default), None


def read_client_auth(
    node: Node,
    ctx: SchemeContext,
    *,
    default: str,
    client_id: str,
    token_url: str,
    secret_required: bool = True,
) -> tuple[ClientAuth, Secret | None]:
    """`client_auth` and `client_secret` of an OAuth2 auth block, every problem reported.

    The secret is required only by the methods that use it (`secret_required` False lets a
    grant that authenticates otherwise, like RFC 7523 2.1, go without one).
    """
    method, options = read_method(node, default)
    needs_secret = method in SECRET_METHODS and secret_required
    secret = node.secret("client_secret", required=needs_secret)
    where = options if options is not None else node
    signer, key = None, None
    audience, lifetime = token_url, DEFAULT_LIFETIME
    if options is not None and method in JWT_METHODS:
        audience = options.string("aud") or token_url
        lifetime = options.integer("lifetime", DEFAULT_LIFETIME, minimum=1)
    if method == "private_key_jwt":
        if options is None:
            node.error("client_auth", "private_key_jwt needs a mapping: {type, key, alg, kid}")
        else:
            signer, key = read_signer(options)
    elif method == "client_secret_jwt" and secret is not None:
        if options is not None:
            options.choice("alg", ("HS256",), "HS256")
        try:
            signer = JwtSigner("HS256", hmac_key(secret))
        except KeyProblem as problem:
            node.error("client_secret", str(problem))
    elif method == "tls_client_auth" and not ctx.client_certificate:
        where.error(
            "type" if options is not None else "client_auth",
            "tls_client_auth needs a client certificate: add `tls: {cert, key}` to this "
            "provider (RFC 8705 2)",
        )
    auth = ClientAuth(method, client_id, secret, signer, audience, lifetime, key)
    if options is not None:
        if method in JWT_METHODS:
            check_vectors(
                options,
                lambda now, jti: (
                    signer.header() if signer else {"alg": "HS256", "typ": "JWT"},
                    assertion_claims(client_id, audience, now, lifetime, jti),
                ),
            )
        elif options.get("vectors") is not None:
            options.error("vectors", f"only the JWT methods sign anything; {method} does not")
        options.finish()
    return auth, secret
