"""`type: oauth1`: OAuth 1.0a request signing (RFC 5849 section 3).

Steps, each pinned by RFC 5849's own example (section 3.4.1): oauth parameters ->
normalized parameters (3.4.1.3.2) -> signature base string (3.4.1.1) -> signature
(3.4.2 HMAC-SHA1, HMAC-SHA256 as widely deployed, 3.4.4 PLAINTEXT) -> Authorization
header (3.5.1).

Choices: `token` is the configured one, else the provider's current credential when it has
one (keyhop's `{token}`); `token_secret` defaults to "". Form-encoded body parameters are
in the base string (3.4.1.3.1) only with `body: form`: that is what makes the signer
buffer the body (needs_body); with the default `body: none` requests stream and a form
body would be signed wrongly, so `body: form` is needed on APIs that take form POSTs.
"""

from __future__ import annotations

import base64
import copy
import hmac
from collections.abc import Iterable, Mapping
from typing import ClassVar, Final
from urllib.parse import quote, unquote, unquote_plus

from proxy.schema import Node
from proxy.signers.base import (
    ALNUM,
    DEFAULT_BODY_MAX_BYTES,
    Signature,
    SignContext,
    SignerSetup,
    SignRequest,
    draw_nonce,
    reject_query_placement,
    safe_value,
    secret_text,
)

METHODS: Final = {"HMAC-SHA1": "sha1", "HMAC-SHA256": "sha256", "PLAINTEXT": ""}
FORM: Final = "application/x-www-form-urlencoded"


def encode(text: str) -> str:
    """RFC 5849 3.6: UTF-8, then every byte but ALPHA DIGIT - . _ ~ as %XX uppercase."""
    return quote(text, safe="-._~")


def request_params(request: SignRequest, *, form: bool) -> list[tuple[str, str]]:
    """3.4.1.3.1: the query's parameters, and a form body's when it is one (decoded as
    form-urlencoded, "+" a space, as RFC 5849 3.4.1.3.1 and oauthlib read them)."""
    out = [
        (unquote_plus(n), unquote_plus(v))
        for n, _, v in (item.partition("=") for item in request.query.split("&") if item)
    ]
    ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
    if form and ctype == FORM and request.body:
        text = request.body.decode("utf-8", "replace")
        # W3C form encoding: "+" is a space (RFC 5849 3.4.1.3.1 refers to it)
        out += [
            (unquote_plus(n), unquote_plus(v))
            for n, _, v in (item.partition("=") for item in text.split("&") if item)
        ]
    return out


def normalized_params(params: Iterable[tuple[str, str]]) -> str:
    """3.4.1.3.2: encoded, sorted by name then value, `name=value` joined with `&`."""
    pairs = sorted((encode(n), encode(v)) for n, v in params)
    return "&".join(f"{n}={v}" for n, v in pairs)


def base_string_uri(request: SignRequest) -> str:
    """3.4.1.2: scheme and host lowercase, the port only when not the default."""
    return f"{request.scheme.lower()}://{request.authority.lower()}{request.path or '/'}"


def base_string(request: SignRequest, params: str) -> str:
    """3.4.1.1: METHOD & encoded URI & encoded normalized parameters."""
    return f"{request.method.upper()}&{encode(base_string_uri(request))}&{encode(params)}"


def sign_base(method: str, base: str, consumer_secret: str, token_secret: str) -> str:
    """3.4.2 / 3.4.4: the key is encoded secrets joined with `&`."""
    key = f"{encode(consumer_secret)}&{encode(token_secret)}"
    if method == "PLAINTEXT":
        return key
    return base64.b64encode(hmac.digest(key.encode(), base.encode(), METHODS[method])).decode()


def authorization(oauth: Iterable[tuple[str, str]], realm: str | None) -> str:
    """3.5.1: `OAuth realm="..", name="value", ...` with encoded names and values."""
    items = [f'realm="{realm}"'] if realm is not None else []
    items += [f'{encode(n)}="{encode(v)}"' for n, v in oauth]
    return "OAuth " + ", ".join(items)


class OAuth1Signer:
    """OAuth 1.0a: `consumer_key`, `consumer_secret`, `token`, `token_secret`, `method`."""

    type: ClassVar[str] = "oauth1"
    body_max_bytes: int = DEFAULT_BODY_MAX_BYTES
    vector_options: ClassVar[tuple[str, ...]] = ("consumer_key", "token", "token_secret", "realm")

    def __init__(
        self,
        *,
        consumer_key: str,
        consumer_secret: str,
        token: str | None,
        token_secret: str,
        method: str,
        realm: str | None,
        version: bool,
        form: bool,
    ) -> None:
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret
        self._token = token
        self._token_secret = token_secret
        self.method = method
        self.realm = realm
        self.version = version
        self.form = form
        self.needs_body = form

    def __repr__(self) -> str:
        return f"OAuth1Signer(method={self.method!r})"

    @classmethod
    def from_options(cls, node: Node, setup: SignerSetup) -> OAuth1Signer:
        reject_query_placement(node, cls.type)
        key = node.secret("consumer_key", required=True)
        secret = secret_text(node, "consumer_secret", setup.default_key)
        if secret is None:
            node.error("consumer_secret", "required, missing")
        token = node.secret("token")
        token_secret = node.secret("token_secret")
        method = node.choice("signature_method", tuple(METHODS), "HMAC-SHA1")
        realm = node.string("realm")
        if realm is not None and (not realm.isprintable() or '"' in realm or "\\" in realm):
            node.error("realm", "expected printable text without '\"' or '\\'")
        return cls(
            consumer_key=key.reveal() if key else "",
            consumer_secret=secret.reveal() if secret else "",
            token=token.reveal() if token else None,
            token_secret=token_secret.reveal() if token_secret else "",
            method=method,
            realm=realm,
            version=node.boolean("version", True),
            form=node.choice("body", ("none", "form"), "none") == "form",
        )

    def with_key(self, key: str) -> OAuth1Signer:
        """A vector's key is `consumer_secret&token_secret` (RFC 5849 3.4.2's key), or the
        consumer secret alone."""
        other = copy.copy(self)
        consumer, sep, token_secret = key.partition("&")
        other._consumer_secret = unquote(consumer)
        other._token_secret = unquote(token_secret) if sep else self._token_secret
        return other

    def with_options(self, options: Mapping[str, str]) -> OAuth1Signer:
        other = copy.copy(self)
        other._consumer_key = options.get("consumer_key", self._consumer_key)
        other._token = options.get("token", self._token)
        other._token_secret = options.get("token_secret", self._token_secret)
        other.realm = options.get("realm", self.realm)
        return other

    def secrets(self) -> Iterable[str]:
        return (self._consumer_secret, self._token_secret, self._token or "")

    def oauth_params(self, ctx: SignContext) -> list[tuple[str, str]]:
        """3.1: the protocol parameters, oauth_signature excepted."""
        token = self._token if self._token is not None else ctx.token
        # the order of RFC 5849 1.2's example header (the order carries no meaning)
        out = [("oauth_consumer_key", self._consumer_key)]
        if token:
            out.append(("oauth_token", token))
        out += [
            ("oauth_signature_method", self.method),
            ("oauth_timestamp", ctx.timestamp or str(int(ctx.now))),
            ("oauth_nonce", ctx.nonce if ctx.nonce is not None else draw_nonce(32, ALNUM)),
        ]
        if self.version:
            out.append(("oauth_version", "1.0"))
        return out

    def sign(self, request: SignRequest, ctx: SignContext) -> Signature:
        oauth = self.oauth_params(ctx)
        params = normalized_params([*request_params(request, form=self.form), *oauth])
        base = base_string(request, params)
        sig = sign_base(self.method, base, self._consumer_secret, self._token_secret)
        header = authorization([*oauth, ("oauth_signature", sig)], self.realm)
        return Signature(
            headers=(("Authorization", safe_value("Authorization", header)),),
            message=base,
            signature=sig,
        )
