"""Fakes that verify keyhop's JWTs the way the vendors do, with joserfc (not keyhop's PyJWT).

- FakeTokenEndpoint: an OAuth2 token endpoint that authenticates clients by a JWT assertion
  (RFC 7523 2.2 / OIDC Core 9: signature, iss = sub = client_id, aud = this endpoint, exp,
  a jti never seen before) or by a client secret, and grants RFC 7523 2.1 JWT bearer grants.
- FakeGitHub: installation tokens for a GitHub App (docs.github.com "Generating a JSON Web
  Token (JWT) for a GitHub App": RS256, iss = app id, exp at most 10 minutes ahead), and an
  API that takes those tokens.
Keys are made at test time with `cryptography`.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

#: RFC 7523 2.2 and 2.1, written out here as the RFC writes them
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@cache
def key_pair(alg: str, tag: str = "") -> tuple[str, str]:
    """A fresh private key PEM (PKCS#8) and its public PEM for `alg` (one per alg and tag)."""
    private: Any
    if alg in ("RS256", "PS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem, public


def verify(token: str, alg: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWS verified with joserfc; raises JoseError when it is not."""
    if alg == "HS256":
        material: Any = OctKey.import_key(key)
    elif alg in ("RS256", "PS256"):
        material = RSAKey.import_key(key)
    elif alg == "ES256":
        material = ECKey.import_key(key)
    else:
        material = OKPKey.import_key(key)
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated (RFC 9864); vendors still verify it
        warnings.simplefilter("ignore", SecurityWarning)
        decoded = jwt.decode(token, material, algorithms=[alg])
    return dict(decoded.header), dict(decoded.claims)


def _error(status: int, code: str, description: str) -> web.Response:
    # RFC 6749 5.2
    return web.json_response({"error": code, "error_description": description}, status=status)


class FakeTokenEndpoint:
    """POST /token (client_credentials, refresh_token, jwt-bearer) and GET /api/* (a resource
    that takes the issued tokens)."""

    def __init__(self, clock: Callable[[], float] = time.time, ttl: int = 3600) -> None:
        self.clock = clock
        self.ttl = ttl
        #: client_id -> (alg, verification key: public PEM, or the secret for HS256/basic)
        self.clients: dict[str, tuple[str, str]] = {}
        #: JWT bearer grants: iss -> (alg, public PEM)
        self.issuers: dict[str, tuple[str, str]] = {}
        self.seen_jti: set[str] = set()
        self.issued: set[str] = set()
        self.refresh_tokens: set[str] = set()
        self.token_requests = 0
        self.resource_requests = 0
        self.refusals: list[str] = []
        self.jwts: list[str] = []  # every JWT received, for the secret greps
        self.claims: list[dict[str, Any]] = []
        self.forms: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/token", self.token)
        self.app.router.add_route("*", "/api/{tail:.*}", self.resource)

    def refuse(self, code: str, why: str, status: int = 401) -> web.Response:
        self.refusals.append(code)
        return _error(status, code, why)

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.forms.append(form)
        # the endpoint's own URL is the audience it accepts (RFC 7523 3, item 3)
        endpoint = str(request.url.with_query(None))
        client = self.authenticate(request, form, endpoint)
        if isinstance(client, web.Response):
            return client
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self.issue()
        if grant == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return self.refuse("invalid_grant", "unknown refresh token", 400)
            return self.issue()
        if grant == JWT_BEARER_GRANT:
            return self.bearer_grant(form, endpoint)
        return self.refuse("unsupported_grant_type", str(grant), 400)

    def authenticate(
        self, request: web.Request, form: Mapping[str, str], endpoint: str
    ) -> str | None | web.Response:
        """The client id, None for a grant that needs no client, or the refusal."""
        if form.get("grant_type") == JWT_BEARER_GRANT and "client_id" not in form:
            return None
        if "client_assertion" in form:
            return self.check_assertion(form, endpoint)
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        known = self.clients.get(client_id)
        if known is None or known[0] != "secret" or not secrets.compare_digest(known[1], secret):
            return self.refuse("invalid_client", "bad client credentials")
        return client_id

    def check_assertion(self, form: Mapping[str, str], endpoint: str) -> str | web.Response:
        token = form["client_assertion"]
        self.jwts.append(token)
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return self.refuse("invalid_client", "client_assertion_type")
        # OIDC Core 9: iss and sub are the client id; the key is the one registered for it
        try:
            unverified = token.split(".")[1] + "=" * (-len(token.split(".")[1]) % 4)
            claimed = json.loads(base64.urlsafe_b64decode(unverified))
        except (ValueError, IndexError):
            return self.refuse("invalid_client", "not a JWT")
        client_id = claimed.get("iss")
        known = self.clients.get(str(client_id))
        if known is None:
            return self.refuse("invalid_client", "unknown client")
        try:
            header, claims = verify(token, known[0], known[1])
        except (JoseError, ValueError):
            return self.refuse("invalid_client", "bad signature")
        problem = self.check_claims(claims, endpoint)
        if problem is None and claims.get("sub") != client_id:
            problem = "sub is not the client id"
        if problem is None and form.get("client_id", client_id) != client_id:
            problem = "client_id differs from the assertion's"
        if problem is not None:
            return self.refuse("invalid_client", problem)
        self.claims.append({"header": header, **claims})
        return str(client_id)

    def check_claims(self, claims: Mapping[str, Any], endpoint: str) -> str | None:
        now = self.clock()
        aud = claims.get("aud")
        if aud != endpoint and not (isinstance(aud, list) and endpoint in aud):
            return "aud is not this endpoint"
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or exp <= now:
            return "expired"
        if isinstance(iat, int) and (iat > now + 5 or exp - iat > 3600):
            return "iat in the future or a lifetime over an hour"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "no jti"
        if jti in self.seen_jti:
            return "jti replayed"
        self.seen_jti.add(jti)
        return None

    def bearer_grant(self, form: Mapping[str, str], endpoint: str) -> web.Response:
        token = form.get("assertion", "")
        self.jwts.append(token)
        for iss, (alg, public) in self.issuers.items():
            try:
                header, claims = verify(token, alg, public)
            except (JoseError, ValueError):
                continue
            if claims.get("iss") != iss:
                continue
            problem = self.check_claims(claims, endpoint)
            if problem is not None:
                return self.refuse("invalid_grant", problem, 400)
            self.claims.append({"header": header, **claims})
            return self.issue(refresh=False)
        return self.refuse("invalid_grant", "no key verifies the assertion", 400)

    def issue(self, refresh: bool = True) -> web.Response:
        token = "at-" + secrets.token_hex(8)
        self.issued.add(token)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.ttl,
        }
        if refresh:
            body["refresh_token"] = "rt-" + secrets.token_hex(8)
            self.refresh_tokens.add(body["refresh_token"])
        return web.json_response(body)

    async def resource(self, request: web.Request) -> web.Response:
        self.resource_requests += 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.issued:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"ok": True, "path": request.path})


class FakeGitHub:
    """/app/installations/{id}/access_tokens and an API taking installation tokens."""

    def __init__(
        self, app_id: str, public_pem: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.app_id = app_id
        self.public_pem = public_pem
        self.clock = clock
        self.installations: set[str] = set()
        self.tokens: dict[str, str] = {}  # installation token -> installation id
        self.token_requests = 0
        self.jwts: list[str] = []
        self.claims: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post(
            "/app/installations/{installation}/access_tokens", self.access_token
        )
        self.app.router.add_get("/installation/repositories", self.repositories)

    @staticmethod
    def message(status: int, text: str) -> web.Response:
        docs = "https://docs.github.com/rest"
        return web.json_response({"message": text, "documentation_url": docs}, status=status)

    async def access_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        self.headers.append(dict(request.headers))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return self.message(401, "A JSON web token could not be decoded")
        self.jwts.append(token)
        try:
            header, claims = verify(token, "RS256", self.public_pem)
        except (JoseError, ValueError):
            return self.message(401, "A JSON web token could not be decoded")
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if str(claims.get("iss")) != self.app_id:
            return self.message(401, "Integration not found")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return self.message(401, "'Issued at' claim ('iat') must be an Integer")
        if exp <= now or exp > now + 600 or exp - iat > 600:
            # GitHub: "no more than 10 minutes into the future"
            return self.message(401, "'Expiration time' claim ('exp') is too far in the future")
        if iat > now + 60:
            return self.message(401, "'Issued at' claim ('iat') must be in the past")
        installation = request.match_info["installation"]
        if installation not in self.installations:
            return self.message(404, "Not Found")
        self.claims.append({"header": header, **claims})
        value = "ghs_" + secrets.token_hex(16)
        self.tokens[value] = installation
        expires = datetime.fromtimestamp(int(now) + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {"token": value, "expires_at": expires, "repository_selection": "all"}, status=201
        )

    async def repositories(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        installation = self.tokens.get(token) if scheme in ("Bearer", "token") else None
        if installation is None:
            return self.message(401, "Bad credentials")
        return web.json_response({"installation": installation, "total_count": 0})
