"""Reading an `hmac` recipe from YAML: options, templates compiled once, the key decoded.

Every problem is reported at its key path through `Node`; a key is never quoted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

from proxy.headers import CONTROL_CHARS, FIELD_NAME
from proxy.schema import Node, Secret
from proxy.signers.base import ALNUM, TIMESTAMP_FORMATS, SignerSetup
from proxy.signers.template import Template, TemplateError, compile_template

ALGORITHMS: Final = ("sha256", "sha1", "sha384", "sha512")
KEY_ENCODINGS: Final = ("raw", "hex", "base64")
ENCODINGS: Final = ("hex", "hex_upper", "base64", "base64url")
#: what a recipe's templates may name (besides vars); the getters live in hmac_recipe.py
PLACEHOLDERS: Final = frozenset(
    {
        "method",
        "path",
        "query",
        "query&",
        "target",
        "host",
        "port",
        "scheme",
        "authority",
        "token",
        "client_id",
        "tenant",
        "body",
        "body_sha256",
        "body_sha256_b64",
        "timestamp",
        "nonce",
        "header",
        "form",
    }
)
UUID4: Final = (0, "uuid4")  # `nonce: uuid4` (RFC 9562 random UUID)
NonceSpec = tuple[int, str] | None  # (length, alphabet); None: 16 of [0-9A-Za-z]


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


def read_options(node: Node, setup: SignerSetup) -> dict[str, Any]:
    """HmacSigner's keyword arguments from a `sign:` block; every problem reported."""
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
    return dict(
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
