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
import binascii
import copy
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, quote

from proxy.headers import CONTROL_CHARS, FIELD_NAME
from proxy.schema import Node, Secret
from proxy.signers.base import (
    ALNUM,
    DEFAULT_BODY_MAX_BYTES,
    TIMESTAMP_FORMATS,
    Signature,
    SignContext,
    SignerSetup,
    SignRequest,
    UnsafeSignature,
    draw_nonce,
    render_timestamp,
    safe_value,
)
from proxy.signers.template import Template, TemplateError, compile_template

ALGORITHMS: Final = ("sha256", "sha1", "sha384", "sha512")
KEY_ENCODINGS: Final = ("raw", "hex", "base64")
ENCODINGS: Final = ("hex", "hex_upper", "base64", "base64url")

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
UUID4: Final = (0, "uuid4")  # `nonce: uuid4` (RFC 9562 random UUID)
NonceSpec = tuple[int, str] | None  # (length, alphabet); None: 16 of [0-9A-Za-z]
PLACEHOLDERS: Final = frozenset(_REQUEST) | _PER_MESSAGE | {"header", "form"}


def decode_key(text: str, encoding: str) -> bytes:
    """The key bytes; ValueError (no key text in it) when `text` is not valid `encoding`."""
    if encoding == "hex":
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("not valid hex") from None
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("not valid base64") from None
    return text.encode()


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
        return _from_options(cls, node, setup)

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
        if ts:
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
        return lambda r, c: (r.header(field) or "").encode()
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


# --- config ----------------------------------------------------------------------------------


def _from_options(cls: type[HmacSigner], node: Node, setup: SignerSetup) -> HmacSigner:
    key_encoding = node.choice("key_encoding", KEY_ENCODINGS, "raw")
    key_secret = node.secret("key") or setup.default_key
    algorithm = node.choice("algorithm", ALGORITHMS, "sha256")
    encoding = node.choice("encoding", ENCODINGS, "hex")
    timestamp = node.choice("timestamp", TIMESTAMP_FORMATS, "unix")
    nonce = _nonce_option(node)
    constants, secret_values = _constants(node, setup)
    allowed = PLACEHOLDERS - constants.keys()
    message = _template(node, "message", allowed, constants, required=True)
    placed = allowed | {"signature"}
    headers = _placements(node, "headers", placed, constants, header=True)
    query = _placements(node, "query", placed, constants, header=False)
    if not node.has("headers") and not node.has("query"):
        node.error("headers", "required: where the signature goes (`headers` and/or `query`)")
    key = b""
    if key_secret is None:
        node.error("key", "required: this auth type has no client secret to sign with")
    else:
        try:
            key = decode_key(key_secret.reveal(), key_encoding)
        except ValueError as exc:
            whose = "" if node.has("key") else "the client secret (the default key) is "
            node.error("key", f"{whose}{exc} (key_encoding: {key_encoding})")
    return cls(
        key=key,
        key_text=key_secret.reveal() if key_secret else "",
        key_encoding=key_encoding,
        algorithm=algorithm,
        encoding=encoding,
        timestamp=timestamp,
        nonce=nonce,
        message=message or compile_template("", ()),
        headers=headers,
        query=query,
        secret_values=secret_values,
    )


def _nonce_option(node: Node) -> NonceSpec:
    raw = node.get("nonce")
    if raw is None:
        return None
    if raw == "uuid4":
        return UUID4
    sub = node.child("nonce")
    if not sub.ok:
        return None
    length = sub.integer("length", 16, minimum=1)
    alphabet = sub.string("alphabet", ALNUM) or ALNUM
    if CONTROL_CHARS.search(alphabet) or len(set(alphabet)) < 2:
        sub.error("alphabet", "expected at least two printable characters")
    sub.finish()
    return (length, alphabet)


def _constants(node: Node, setup: SignerSetup) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """Static `vars` (the provider's, then the sign block's own) folded in at load."""
    out: dict[str, bytes] = {}
    secret_values: list[str] = []
    merged: dict[str, Any] = dict(setup.static_vars)
    sub = node.child("vars")
    for name in sub.raw:
        merged[str(name)] = sub.string(str(name))
    sub.finish()
    for name, value in merged.items():
        if value is None:
            continue
        if isinstance(value, Secret):
            secret_values.append(value.reveal())
            value = value.reveal()
        if name in PLACEHOLDERS or name == "signature":
            continue  # a request value always wins over a var of the same name
        out[name] = str(value).encode()
    return out, tuple(secret_values)


def _template(
    node: Node, key: str, allowed: frozenset[str], constants: Mapping[str, bytes], *, required: bool
) -> Template | None:
    source = node.string(key, required=required)
    if source is None:
        return None
    try:
        return compile_template(source, allowed, constants)
    except TemplateError as exc:
        node.error(key, str(exc))
        return None


def _placements(
    node: Node, key: str, allowed: frozenset[str], constants: Mapping[str, bytes], *, header: bool
) -> tuple[tuple[str, Template], ...]:
    sub = node.child(key)
    out: list[tuple[str, Template]] = []
    for raw_name in sub.raw:
        name = str(raw_name)
        if header and not FIELD_NAME.fullmatch(name):
            sub.error(name, "not a valid header name (RFC 9110 5.1)")
        t = _template(sub, name, allowed, constants, required=True)
        if t is None:
            continue
        if header and CONTROL_CHARS.search(t.literal_text()):
            # RFC 9110 5.5: a field value never holds CR, LF or another control character
            sub.error(name, "a header template may not hold a line break or control character")
            continue
        out.append((name, t))
    sub.finish()
    return tuple(out)
