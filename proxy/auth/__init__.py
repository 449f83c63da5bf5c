"""The registry of auth types: `auth.type` in YAML names one of SCHEMES."""

from __future__ import annotations

from typing import Final

from proxy.auth.app_install import AppInstall
from proxy.auth.base import AuthScheme, CredentialFlow, SchemeContext
from proxy.auth.jwt_bearer import JwtBearer
from proxy.auth.jwt_exchange import JwtExchange
from proxy.auth.oauth2 import AuthorizationCode, ClientCredentials
from proxy.auth.session_login import SessionLogin
from proxy.auth.static_key import NoAuth, StaticKey
from proxy.schema import Node

SCHEMES: Final[dict[str, type[AuthScheme]]] = {
    cls.kind: cls
    for cls in (
        StaticKey,
        NoAuth,
        ClientCredentials,
        AuthorizationCode,
        AppInstall,
        SessionLogin,
        JwtBearer,
        JwtExchange,
    )
}


def build_scheme(node: Node, ctx: SchemeContext) -> AuthScheme | None:
    kind = node.string("type", required=True)
    if kind is None:
        return None
    cls = SCHEMES.get(kind)
    if cls is None:
        node.error("type", f"unknown {kind!r}; expected one of: {', '.join(sorted(SCHEMES))}")
        return None
    scheme = cls.from_options(node, ctx)
    node.finish()
    return scheme


__all__ = ["SCHEMES", "AuthScheme", "CredentialFlow", "SchemeContext", "build_scheme"]
