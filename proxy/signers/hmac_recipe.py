"""`type: hmac`: a signature written as a recipe in YAML (SPEC 5.1).

message template -> HMAC(key, message) -> encoded `{signature}` -> header and/or query
templates. Templates compile once at load; per request only the placeholders the recipe
uses are computed. When the whole output depends on nothing but the timestamp and the
credential (PayNet: message `{timestamp}`), it is memoized per value, so the recipe costs
no more than the hard-wired signature it replaces; otherwise the HMAC is pre-keyed once and
`.copy()`-ed per message (key set-up is the dominant cost in OpenSSL 3).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, Final
from urllib.parse import parse_qsl, quote

from proxy.schema import Node
from proxy.signers.base import (
    ALNUM,
    DEFAULT_BODY_MAX_BYTES,
    Signature,
    SignContext,
    SignerSetup,
    SignRequest,
    UnsafeSignature,
    draw_nonce,
    render_timestamp,
    safe_value,
)
from proxy.signers.hmac_config import (
    UUID4,
    NonceSpec,
    decode_key,
    read_options,
)
from proxy.signers.template import Template

Getter = Callable[[SignRequest, SignContext], bytes]

#: request placeholders and how each is read off the frozen request
_REQUEST: Final[dict[str, Getter]] = {
    "method": lambda r, c: r.method.encode(),
    "path": lambda r, c: r.path.encode(),
    "query": lambda r, c: r.query.encode(),
    # the query followed by "&" when there is one: `{query&}timestamp={timestamp}` is the
    # query string Binance signs once keyhop has appended `timestamp` to it
    "query&": lambda r, c: (r.query + "&").encode() if r.query else b"",
    "target": lambda r, c: r.target.encode(),
    "host": lambda r, c: r.host.encode(),
    "port": lambda r, c: str(r.port).encode(),
    "scheme": lambda r, c: r.scheme.encode(),
    "authority": lambda r, c: r.authority.encode(),
    "token": lambda r, c: c.token.encode(),
    "client_id": lambda r, c: c.client_id.encode(),
    "tenant": lambda r, c: c.tenant.encode(),
    "body": lambda r, c: r.body or b"",
    "body_sha256": lambda r, c: hashlib.sha256(r.body or b"").hexdigest().encode(),
    "body_sha256_b64": lambda r, c: base64.b64encode(hashlib.sha256(r.body or b"").digest()),
}
_PER_MESSAGE: Final = frozenset({"timestamp", "nonce"})
#: what a memoized recipe may depend on (no request field, no fresh nonce)
_MEMO_OK: Final = frozenset({"timestamp", "token", "client_id", "tenant"})
_BODY: Final = frozenset({"body", "body_sha256", "body_sha256_b64"})
_MEMO_MAX: Final = 64


def _encode(digest: bytes, encoding: str) -> str:
    if encoding == "hex":
        return digest.hex()
    if encoding == "hex_upper":
        return digest.hex().upper()
    if encoding == "base64url":
        return base64.urlsafe_b64encode(digest).decode()
    return base64.b64encode(digest).decode()


class HmacSigner:
    """An HMAC recipe: `message`, `key`, `algorithm`, `encoding`, `headers` / `query`."""

    type: ClassVar[str] = "hmac"
    body_max_bytes: int = DEFAULT_BODY_MAX_BYTES
    vector_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        key: bytes,
        key_text: str,
        key_encoding: str,
        algorithm: str,
        encoding: str,
        timestamp: str,
        nonce: NonceSpec,
        message: Template,
        headers: tuple[tuple[str, Template], ...],
        query: tuple[tuple[str, Template], ...],
        secret_values: tuple[str, ...] = (),
    ) -> None:
        self._key_text = key_text
        self._key_encoding = key_encoding
        self._keyed = hmac.new(key, digestmod=algorithm)
        self._algorithm = algorithm
        self._encoding = encoding
        self._timestamp = timestamp
        self._nonce = nonce
        self._message = message
        self._headers = headers
        self._query = query
        self._secret_values = secret_values
        used = set(message.names)
        for _, t in (*headers, *query):
            used |= t.names
        used.discard("signature")
        self._used = frozenset(used)
        self._getters: tuple[tuple[str, Getter], ...] = tuple(
            (name, _getter(name)) for name in sorted(used - _PER_MESSAGE)
        )
        self.needs_body = bool(used & _BODY) or any(n.startswith("form:") for n in used)
        self._memo: dict[object, Signature] | None = {} if used <= _MEMO_OK else None
        self._uses_ts = "timestamp" in used
        self._second_only = used == {"timestamp"} and timestamp == "unix"

    def __repr__(self) -> str:
        return f"HmacSigner(algorithm={self._algorithm!r}, message={self._message.source!r})"

    @classmethod
    def from_options(cls, node: Node, setup: SignerSetup) -> HmacSigner:
        return cls(**read_options(node, setup))

    def with_key(self, key: str) -> HmacSigner:
        other = copy.copy(self)
        other._keyed = hmac.new(decode_key(key, self._key_encoding), digestmod=self._algorithm)
        other._key_text = key
        other._memo = {} if self._memo is not None else None
        return other

    def with_options(self, options: Mapping[str, str]) -> HmacSigner:
        return self

    def secrets(self) -> Iterable[str]:
        return (self._key_text, *self._secret_values)

    def sign(self, request: SignRequest, ctx: SignContext) -> Signature:
        memo = self._memo
        memo_key: object = None
        if memo is not None and ctx.timestamp is None:
            # PayNet: the output depends on the second only (x_signature's lru_cache did the
            # same); otherwise on the rendered timestamp and the credential
            if self._second_only:
                memo_key = int(ctx.now)
            else:
                ts = render_timestamp(self._timestamp, ctx.now) if self._uses_ts else ""
                memo_key = (ts, ctx.token, ctx.client_id, ctx.tenant)
            hit = memo.get(memo_key)
            if hit is not None:
                return hit
        out = self._sign(request, ctx)
        if memo_key is not None:
            assert memo is not None
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[memo_key] = out
        return out

    def _sign(self, request: SignRequest, ctx: SignContext) -> Signature:
        used = self._used
        ts = ""
        if self._uses_ts:
            if ctx.timestamp is not None:
                ts = ctx.timestamp
            else:
                ts = render_timestamp(self._timestamp, ctx.now)
        values: dict[str, bytes] = {name: get(request, ctx) for name, get in self._getters}
        if self._uses_ts:
            values["timestamp"] = ts.encode()
        if "nonce" in used:
            nonce = ctx.nonce
            if nonce is None:
                spec = self._nonce or (16, ALNUM)
                nonce = str(uuid.uuid4()) if spec == UUID4 else draw_nonce(*spec)
            values["nonce"] = nonce.encode()
        message = self._message.render(values)
        mac = self._keyed.copy()
        mac.update(message)
        signature = _encode(mac.digest(), self._encoding)
        values["signature"] = signature.encode()
        return Signature(
            headers=tuple(
                (name, _header_value(name, t.render(values))) for name, t in self._headers
            ),
            query=tuple(
                (quote(name, safe="-._~"), quote(t.render(values), safe="-._~"))
                for name, t in self._query
            ),
            message=message.decode("utf-8", "backslashreplace"),
            signature=signature,
        )


def _getter(name: str) -> Getter:
    if name.startswith("header:"):
        field = name[7:]
        # a client's obs-text bytes arrive as surrogates (aiohttp decodes with surrogateescape):
        # signed as the bytes that are sent, never a crash
        return lambda r, c: (r.header(field) or "").encode("utf-8", "surrogateescape")
    if name.startswith("form:"):
        field = name[5:]
        return lambda r, c: _form_field(r.body or b"", field)
    return _REQUEST[name]


def _form_field(body: bytes, field: str) -> bytes:
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if name == field:
            return value.encode()
    return b""


def _header_value(name: str, rendered: bytes) -> str:
    try:
        text = rendered.decode()
    except UnicodeDecodeError:
        raise UnsafeSignature(f"the signature's {name} value would not be valid UTF-8") from None
    return safe_value(name, text)
