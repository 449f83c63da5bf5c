"""The one seam every request signer plugs into (SPEC 5.1).

A signer is a small class with no I/O: `from_options` reads its YAML once (every problem
reported through `Node`, secrets never quoted), `sign` turns one frozen outbound request
plus the credential, the time and a nonce into headers and/or query parameters to add.
The lead's request path calls it last, after every other header is set, so what it covers
is what goes on the wire. Adding a scheme: one class here and one line in `SIGNERS`.

Rules: no clock and no randomness except where the context leaves a nonce or a
timestamp to draw (vectors pass both); nothing logged; no secret in a repr or message.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import ClassVar, Final, NamedTuple, Protocol

from proxy.headers import CONTROL_CHARS
from proxy.schema import Node, Secret

DEFAULT_PORTS: Final = {"https": 443, "http": 80}
ALNUM: Final = string.digits + string.ascii_letters
DEFAULT_BODY_MAX_BYTES: Final = 1024 * 1024  # SPEC 5.1 `sign.body_max_bytes`
TIMESTAMP_FORMATS: Final = ("unix", "unix_ms", "iso8601", "iso8601_ms", "http_date")


class UnsafeSignature(ValueError):
    """A rendered header or query value would hold CR, LF or another control character:
    nothing is sent (the request path answers 502 credential_error)."""


class SignRequest(NamedTuple):
    """The frozen outbound request as a signer sees it (everything exactly as sent). A
    NamedTuple, not a frozen dataclass: built on every signed request, it costs a third."""

    method: str
    scheme: str
    host: str  # lowercase, no brackets for IPv6
    port: int  # effective port (443/80 when not written)
    path: str  # raw, percent-encoding untouched
    query: str  # raw, without "?"; "" when there is none
    headers: tuple[tuple[str, str], ...]  # final headers in send order, names as written
    body: bytes | None  # the whole body when the signer needs_body (b"" when none)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: str) -> str | None:
        """The values of `name` (case-insensitive) joined with ", " (RFC 9110 5.3), or None."""
        lower = name.lower()
        found = [v for n, v in self.headers if n.lower() == lower]
        return ", ".join(found) if found else None


class SignContext(NamedTuple):
    """Per request: the time, the credential and, for vectors, a fixed nonce and timestamp
    (a NamedTuple, as SignRequest)."""

    now: float
    token: str = ""
    client_id: str = ""
    tenant: str = ""
    nonce: str | None = None  # None: the signer draws its own (secrets module)
    timestamp: str | None = None  # vectors: the rendered timestamp as given; else from `now`


@dataclass(frozen=True, slots=True)
class Signature:
    """What a signer adds, and what it signed (vectors compare `message` and `signature`)."""

    headers: tuple[tuple[str, str], ...] = ()  # set, replacing same-named ones
    query: tuple[tuple[str, str], ...] = ()  # appended to the query string, already encoded
    message: str = ""  # hmac message / SigV4 string to sign / RFC 9421 base / OAuth1 base
    signature: str = ""  # the encoded signature value


@dataclass(frozen=True)
class SignerSetup:
    """Config-time context handed to `from_options`."""

    provider: str
    default_key: Secret | None  # the auth's client secret
    static_vars: Mapping[str, str | Secret]  # provider `vars` and {client_id} known at load


class Signer(Protocol):
    """A `sign.type`, e.g. `hmac`.

    - `needs_body` (per instance): the request path buffers the body (up to
      `body_max_bytes`) and passes it in `SignRequest.body`; otherwise body is None and the
      request streams.
    - `sign` is pure apart from drawing a nonce or reading `ctx.now`; it raises
      `UnsafeSignature` rather than return a header value with a control character.
    - `with_key` is the same signer under a vector's own published test key, and
      `with_options` the same signer with the `vector_options` a vector's `given` sets
      (an example's own region, key id, consumer key ...).
    - `secrets` lists every secret it holds, for log redaction.
    """

    type: ClassVar[str]
    #: the options a vector's `given` may override besides `key`
    vector_options: ClassVar[tuple[str, ...]]
    needs_body: bool
    #: set by build_signer from `sign.body_max_bytes`: a larger body is 413, never sent
    body_max_bytes: int

    @classmethod
    def from_options(cls, node: Node, setup: SignerSetup) -> Signer: ...

    def sign(self, request: SignRequest, ctx: SignContext) -> Signature: ...

    def with_key(self, key: str) -> Signer: ...

    def with_options(self, options: Mapping[str, str]) -> Signer: ...

    def secrets(self) -> Iterable[str]: ...


# --- shared helpers ---------------------------------------------------------------------------


def render_timestamp(fmt: str, now: float) -> str:
    """`now` in one of TIMESTAMP_FORMATS (UTC)."""
    if fmt == "unix":
        return str(int(now))
    if fmt == "unix_ms":
        return str(int(now * 1000))
    if fmt == "http_date":
        return formatdate(now, usegmt=True)  # RFC 9110 5.6.7 IMF-fixdate
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    if fmt == "iso8601_ms":
        return f"{base}.{int(now * 1000) % 1000:03d}Z"
    return base + "Z"


def draw_nonce(length: int, alphabet: str = ALNUM) -> str:
    """`length` characters of `alphabet` from the OS CSPRNG."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def safe_value(name: str, value: str) -> str:
    """`value` unchanged, or UnsafeSignature when it holds a control character (RFC 9110
    5.5: no CR/LF/NUL in a field value). The message names the field, never the value."""
    if not value.isprintable() and CONTROL_CHARS.search(value):
        raise UnsafeSignature(f"the signature's {name} value would hold a control character")
    return value


def reject_query_placement(node: Node, kind: str) -> None:
    """A `query:` placement on a signer that signs with headers only is a config error."""
    if node.has("query"):
        node.get("query")
        node.error("query", f"not supported by {kind}: it places its signature in headers only")


def secret_text(node: Node, key: str, default: Secret | None = None) -> Secret | None:
    """A secret option, falling back to `default` (the auth's client secret)."""
    found = node.secret(key)
    return found if found is not None else default


def applied(request: SignRequest, signature: Signature) -> tuple[tuple[tuple[str, str], ...], str]:
    """(headers, raw query) to send: the signature's headers replace same-named ones (any
    case) and go last; its query parameters are appended after the request's own."""
    headers = request.headers
    if signature.headers:
        names = {name.lower() for name, _ in signature.headers}
        headers = (*((n, v) for n, v in headers if n.lower() not in names), *signature.headers)
    query = request.query
    if signature.query:
        extra = "&".join(f"{name}={value}" for name, value in signature.query)
        query = f"{query}&{extra}" if query else extra
    return headers, query
