"""`type: http_message_signature`: HTTP Message Signatures (RFC 9421), request side.

Steps, pinned by RFC 9421 Appendix B.2 (tests/golden/signers/rfc9421/): covered
components -> signature parameters (2.3) -> signature base (2.5) -> signature (3.3) ->
`Signature-Input` / `Signature` fields (4.1, 4.2). Covering `content-digest` makes keyhop
send an RFC 9530 `Content-Digest: sha-256=:...:` of the body it buffered.
Crypto is the `cryptography` package; nothing here is a hand-rolled primitive.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import ClassVar, Final

from proxy.headers import FIELD_NAME
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
    reject_query_placement,
    safe_value,
)
from proxy.signers.hmac_config import KEY_ENCODINGS
from proxy.signers.message_keys import ALGORITHMS, PrivateKey, load_key, sign_bytes

DERIVED: Final = frozenset(
    {"@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"}
)
DEFAULT_COMPONENTS: Final = ("@method", "@authority", "@path")
#: RFC 8941 3.3.3: an sf-string is printable ASCII
_SF_STRING: Final = re.compile(r"[\x20-\x7e]*")
_LABEL: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")  # RFC 8941 3.1.2 key


def sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def content_digest(body: bytes) -> str:
    """RFC 9530 2: `sha-256=:<base64 of the SHA-256 of the content>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def component_value(request: SignRequest, name: str) -> str:
    """RFC 9421 2.1 (fields: values trimmed, repeated ones joined with ", ") and 2.2."""
    if name == "@method":
        return request.method
    if name == "@authority":
        return request.authority.lower()
    if name == "@scheme":
        return request.scheme.lower()
    if name == "@target-uri":
        return f"{request.scheme.lower()}://{request.authority.lower()}{request.target}"
    if name == "@request-target":
        return request.target
    if name == "@path":
        return request.path or "/"
    if name == "@query":
        return "?" + request.query
    found = [v.strip() for n, v in request.headers if n.lower() == name]
    if not found and name == "host":
        return request.authority.lower()
    if not found:
        raise UnsafeSignature(f"the request has no {name} field to cover")
    return ", ".join(found)


def signature_params(
    components: Iterable[str],
    *,
    created: int | None,
    expires: int | None,
    key_id: str,
    alg: str | None,
    nonce: str | None,
    tag: str | None,
) -> str:
    """RFC 9421 2.3: the inner list of components with its parameters."""
    text = "(" + " ".join(sf_string(c) for c in components) + ")"
    if created is not None:
        text += f";created={created}"
    if expires is not None:
        text += f";expires={expires}"
    text += f";keyid={sf_string(key_id)}"
    if alg is not None:
        text += f";alg={sf_string(alg)}"
    if nonce is not None:
        text += f";nonce={sf_string(nonce)}"
    if tag is not None:
        text += f";tag={sf_string(tag)}"
    return text


def signature_base(request: SignRequest, components: Iterable[str], params: str) -> str:
    """RFC 9421 2.5: one `"name": value` line per component, then @signature-params."""
    lines = [f"{sf_string(c)}: {component_value(request, c)}" for c in components]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines)


class HttpMessageSigner:
    """RFC 9421: `key_id`, `algorithm`, `key`, `components`, `label`, `created`,
    `expires_in`, `nonce`, `tag`, `include_alg`."""

    type: ClassVar[str] = "http_message_signature"
    body_max_bytes: int = DEFAULT_BODY_MAX_BYTES
    vector_options: ClassVar[tuple[str, ...]] = ("key_id", "label")

    def __init__(
        self,
        *,
        key_id: str,
        algorithm: str,
        key: bytes | PrivateKey,
        key_text: str,
        key_encoding: str,
        components: tuple[str, ...],
        label: str,
        created: bool,
        expires_in: int | None,
        nonce: bool,
        tag: str | None,
        include_alg: bool,
    ) -> None:
        self.key_id = key_id
        self.algorithm = algorithm
        self._key = key
        self._key_text = key_text
        self._key_encoding = key_encoding
        self.components = components
        self.label = label
        self.created = created
        self.expires_in = expires_in
        self.nonce = nonce
        self.tag = tag
        self.include_alg = include_alg
        self.needs_body = "content-digest" in components

    def __repr__(self) -> str:
        return f"HttpMessageSigner(key_id={self.key_id!r}, algorithm={self.algorithm!r})"

    @classmethod
    def from_options(cls, node: Node, setup: SignerSetup) -> HttpMessageSigner:
        reject_query_placement(node, cls.type)
        key_id = node.string("key_id", required=True) or ""
        if not _SF_STRING.fullmatch(key_id):
            node.error("key_id", "expected printable ASCII (RFC 8941 sf-string)")
        algorithm = node.choice("algorithm", ALGORITHMS, "hmac-sha256")
        if not node.has("algorithm"):
            node.error("algorithm", f"required; one of: {', '.join(ALGORITHMS)}")
        key_encoding = node.choice("key_encoding", KEY_ENCODINGS, "base64")
        secret = node.secret("key")
        if secret is None and algorithm == "hmac-sha256":
            secret = setup.default_key
        key: bytes | PrivateKey = b""
        if secret is None:
            node.error("key", "required, missing")
        else:
            try:
                key = load_key(algorithm, secret.reveal(), key_encoding)
            except ValueError as exc:
                detail = f" (key_encoding: {key_encoding})" if algorithm == "hmac-sha256" else ""
                node.error("key", f"{exc}{detail}")
        components = (
            tuple(node.str_list("components")) if node.has("components") else DEFAULT_COMPONENTS
        )
        for i, name in enumerate(components):
            if name != name.lower() or not (name in DERIVED or FIELD_NAME.fullmatch(name)):
                node.problems.add(
                    f"{node.at('components')}[{i}]",
                    f"unknown component {name!r}; expected a lowercase field name or one of: "
                    + ", ".join(sorted(DERIVED)),
                )
        label = node.string("label", "sig1") or "sig1"
        if not _LABEL.fullmatch(label):
            node.error("label", "expected a lowercase key (RFC 8941 3.1.2), e.g. sig1")
        expires = node.integer("expires_in", 0, minimum=1) if node.has("expires_in") else None
        tag = node.string("tag")
        if tag is not None and not _SF_STRING.fullmatch(tag):
            node.error("tag", "expected printable ASCII (RFC 8941 sf-string)")
        return cls(
            key_id=key_id,
            algorithm=algorithm,
            key=key,
            key_text=secret.reveal() if secret else "",
            key_encoding=key_encoding,
            components=components,
            label=label,
            created=node.boolean("created", True),
            expires_in=expires,
            nonce=node.boolean("nonce", False),
            tag=tag,
            include_alg=node.boolean("include_alg", False),
        )

    def with_key(self, key: str) -> HttpMessageSigner:
        other = copy.copy(self)
        other._key = load_key(self.algorithm, key, self._key_encoding)
        other._key_text = key
        return other

    def with_options(self, options: Mapping[str, str]) -> HttpMessageSigner:
        other = copy.copy(self)
        other.key_id = options.get("key_id", self.key_id)
        other.label = options.get("label", self.label)
        return other

    def secrets(self) -> Iterable[str]:
        return (self._key_text,)

    def sign(self, request: SignRequest, ctx: SignContext) -> Signature:
        added: list[tuple[str, str]] = []
        if "content-digest" in self.components:
            digest = content_digest(request.body or b"")
            added.append(("Content-Digest", digest))
            request = _with_header(request, "Content-Digest", digest)
        now = int(ctx.timestamp) if ctx.timestamp else int(ctx.now)
        nonce = None
        if self.nonce:
            nonce = ctx.nonce if ctx.nonce is not None else draw_nonce(32, ALNUM)
        params = signature_params(
            self.components,
            created=now if self.created else None,
            expires=now + self.expires_in if self.expires_in else None,
            key_id=self.key_id,
            alg=self.algorithm if self.include_alg else None,
            nonce=nonce,
            tag=self.tag,
        )
        base = signature_base(request, self.components, params)
        sig = base64.b64encode(sign_bytes(self.algorithm, self._key, base.encode())).decode()
        added.append(("Signature-Input", safe_value("Signature-Input", f"{self.label}={params}")))
        added.append(("Signature", f"{self.label}=:{sig}:"))
        return Signature(headers=tuple(added), message=base, signature=sig)


def _with_header(request: SignRequest, name: str, value: str) -> SignRequest:
    lower = name.lower()
    headers = tuple((n, v) for n, v in request.headers if n.lower() != lower)
    return SignRequest(
        method=request.method,
        scheme=request.scheme,
        host=request.host,
        port=request.port,
        path=request.path,
        query=request.query,
        headers=(*headers, (name, value)),
        body=request.body,
    )
