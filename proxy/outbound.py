"""The request that goes upstream, and everything keyhop adds to it (STYLE: "The outbound
request"; Envoy's credential_injector).

Rules (after h11's _state.py):
- `Outbound` is frozen: built once per attempt, after the client's headers were cleaned.
  The sender, the WebSocket handshake, signers and tests take it whole.
- What keyhop adds, in this order, each replacing a same-named client header: the
  provider's `headers` templates, the credential's own headers (session ids), then the
  `sign:` block's signature, last, so that it covers what goes on the wire.
- Templates are compiled once at load; what depends only on the credential and tenant is
  rendered once per pair (the render cache); only the signature is computed per request.
- Pure: the clock and nonces are passed in; nothing is logged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.auth import AuthScheme
from proxy.errors import CredentialError
from proxy.routing import Upstream
from proxy.schema import Node, Secret
from proxy.signers import SignContext, Signer, SignRequest, UnsafeSignature
from proxy.tokens import Credential

#: a header template's pieces: `{{`, `}}`, `{name}`, and the literal text between them
_TEMPLATE_PIECES: Final = re.compile(r"(\{\{|\}\}|\{[A-Za-z_][A-Za-z0-9_]*\})")
#: placeholders filled per request; everything else is filled once, at load time
DYNAMIC_VARS: Final = frozenset({"token", "tenant"})
#: credential/tenant pairs whose rendered headers are kept; beyond it the cache starts over
RENDER_CACHE_SIZE: Final = 1024


# --- the record ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outbound:
    """One upstream request, exactly as it will be sent (the body may be a stream)."""

    method: str
    upstream: Upstream
    path: str  # raw, as sent: the route's base path + the rest of the client's path
    query: str | None  # raw, without "?"; None when the target has none
    headers: CIMultiDictProxy[str]
    body: Any = field(default=None, repr=False)  # bytes, a stream, or None

    @property
    def target(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


# --- templates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderTemplate:
    """A header value with `{token}` / `{tenant}` left to fill per request."""

    name: str
    parts: tuple[str, ...] = field(repr=False)  # even: literal, odd: placeholder name

    def render(self, values: Mapping[str, str]) -> str:
        if len(self.parts) == 1:
            return self.parts[0]
        return "".join(p if i % 2 == 0 else values.get(p, "") for i, p in enumerate(self.parts))


def compile_template(
    node: Node, key: str, text: str, static: Mapping[str, str | Secret]
) -> HeaderTemplate | None:
    """Fill what is known at load; leave `{token}`/`{tenant}`; report anything else."""
    parts: list[str] = []
    literal: list[str] = []
    for piece in _TEMPLATE_PIECES.split(text):
        if piece in ("{{", "}}"):
            literal.append(piece[0])
        elif piece.startswith("{") and piece.endswith("}") and len(piece) > 2:
            name = piece[1:-1]
            if name in static:
                value = static[name]
                literal.append(value.reveal() if isinstance(value, Secret) else value)
            elif name in DYNAMIC_VARS:
                parts.append("".join(literal))
                parts.append(name)
                literal = []
            else:
                known = sorted(set(static) | DYNAMIC_VARS)
                where = node.path.rpartition(".")[0] or node.path
                node.error(
                    key,
                    f"uses {{{name}}}, which nothing defines: set {where}.vars.{name} "
                    f"or write the header's value yourself (known: {', '.join(known)})",
                )
                return None
        else:
            literal.append(piece)
    parts.append("".join(literal))
    return HeaderTemplate(key, tuple(parts))


# --- the injector ----------------------------------------------------------------------------

#: methods whose requests carry no body, and so no Content-Length: 0 (RFC 9110 8.6)
NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class Injector:
    """What one provider adds to its requests: built once per config, used per request."""

    __slots__ = ("_headers", "_scheme", "_signer", "_client_id", "_rendered")

    def __init__(
        self, headers: tuple[HeaderTemplate, ...], scheme: AuthScheme, signer: Signer | None
    ) -> None:
        self._headers = headers
        self._scheme = scheme
        self._signer = signer
        self._client_id = scheme.client_id or ""
        self._rendered: dict[tuple[str | None, str | None], list[tuple[str, str]]] = {}

    def _credential_headers(
        self, credential: Credential | None, tenant: str | None
    ) -> list[tuple[str, str]]:
        """Provider and credential headers, rendered once per credential and tenant."""
        key = (credential.token if credential is not None else None, tenant)
        rendered = self._rendered.get(key)
        if rendered is None:
            if len(self._rendered) >= RENDER_CACHE_SIZE:  # old tokens and tenants: start over
                self._rendered.clear()
            values = {"token": credential.token if credential else "", "tenant": tenant or ""}
            rendered = [(h.name, h.render(values)) for h in self._headers]
            if credential is not None:
                rendered.extend(self._scheme.credential_headers(credential).items())
            self._rendered[key] = rendered
        return rendered

    def add(
        self,
        method: str,
        upstream: Upstream,
        path: str,
        query: str | None,
        headers: CIMultiDict[str],
        body: Any,
        credential: Credential | None,
        tenant: str | None,
        now: float,
        traceparent: str | None = None,
    ) -> str | None:
        """What build() adds, added to `headers` in place (the express lane's own copy);
        returns the query to send (a signer may add to it)."""
        if traceparent is not None:
            headers["traceparent"] = traceparent
        for name, value in self._credential_headers(credential, tenant):
            headers[name] = value
        if body is None and method not in NO_BODY_METHODS and "Content-Length" not in headers:
            # the framing of a bodyless POST/PUT/PATCH/DELETE, here and not in the sender, so a
            # signer that covers Content-Length covers what goes on the wire (SPEC 5.1)
            headers["Content-Length"] = "0"
        signer = self._signer
        if signer is not None:
            signed = SignRequest(
                method,
                upstream.scheme,
                upstream.host,
                upstream.port,
                path,
                query or "",
                tuple(headers.items()),
                (body if body is not None else b"") if signer.needs_body else None,
            )
            context = SignContext(
                now, credential.token if credential else "", self._client_id, tenant or ""
            )
            try:
                signature = signer.sign(signed, context)
            except UnsafeSignature as exc:
                raise CredentialError(f"{exc}; the request was not sent") from None
            for name, value in signature.headers:
                headers[name] = value
            if signature.query:
                extra = "&".join(f"{name}={value}" for name, value in signature.query)
                query = f"{query}&{extra}" if query else extra
        return query

    def build(
        self,
        method: str,
        upstream: Upstream,
        path: str,
        query: str | None,
        cleaned: CIMultiDict[str],
        body: Any,
        credential: Credential | None,
        tenant: str | None,
        now: float,
        traceparent: str | None = None,
    ) -> Outbound:
        """The request for one attempt: the client's cleaned headers plus keyhop's (and the
        trace context, when tracing is on, before the signature covers the headers)."""
        headers = cleaned.copy()
        query = self.add(
            method, upstream, path, query, headers, body, credential, tenant, now, traceparent
        )
        return Outbound(method, upstream, path, query, CIMultiDictProxy(headers), body)
