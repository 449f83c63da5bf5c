"""`type: aws_sigv4`: AWS Signature Version 4, header form.

Named pure steps as botocore's SigV4Auth has them, each pinned by the AWS test suite's
golden files (tests/golden/signers/aws4/): canonical_request -> string_to_sign ->
signature -> authorization. The canonical URI comes from the raw path as sent: for every
service but S3 it is normalized (dot segments and empty segments removed) and URI-encoded
once more, the "double encoding" of the SigV4 docs; for S3 it is neither normalized nor
double-encoded (docs: "Create a canonical request", S3 exception) and
x-amz-content-sha256 is always sent.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import ClassVar, Final, NamedTuple
from urllib.parse import quote, unquote

from proxy.schema import Node
from proxy.signers.base import (
    DEFAULT_BODY_MAX_BYTES,
    Signature,
    SignContext,
    SignerSetup,
    SignRequest,
    reject_query_placement,
    safe_value,
    secret_text,
)

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED: Final = "UNSIGNED-PAYLOAD"
#: never signed: set or changed on the way by clients and proxies (botocore's
#: SIGNED_HEADERS_BLACKLIST, plus the RFC 9110 7.6.1 hop-by-hop fields)
UNSIGNED_HEADERS: Final = frozenset(
    {
        "expect",
        "user-agent",
        "x-amzn-trace-id",
        "authorization",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_SCOPE_PART: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
#: RFC 3986 unreserved: what SigV4's UriEncode leaves as is
_SAFE: Final = "-_.~"


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """SigV4 UriEncode: every byte but A-Z a-z 0-9 - _ . ~ as %XX (uppercase)."""
    return quote(text, safe=_SAFE + ("/" if keep_slash else ""))


def normalize_path(path: str) -> str:
    """RFC 3986 5.2.4 dot-segment removal plus collapsed slashes (AWS services, not S3)."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    text = "/" + "/".join(out)
    if path.endswith("/") and out:
        text += "/"
    return text


def canonical_uri(path: str, *, s3: bool) -> str:
    if s3:
        # each segment decoded and encoded once: an encoded slash stays one (SPEC 4.1)
        return "/".join(uri_encode(unquote(seg)) for seg in (path or "/").split("/"))
    return uri_encode(normalize_path(path or "/"), keep_slash=True)


def canonical_query(query: str) -> str:
    """Parameters decoded, UriEncoded, sorted by name then value, joined with `&`."""
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((uri_encode(unquote(name)), uri_encode(unquote(value))))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(canonical headers block, signed header names): lowercase names, sorted; values
    trimmed with inner runs of spaces collapsed; repeated names joined with ","."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in UNSIGNED_HEADERS:
            continue
        merged.setdefault(lower, []).append(" ".join(value.split()))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def canonical_request(
    request: SignRequest, headers: Iterable[tuple[str, str]], payload_hash: str, *, s3: bool
) -> tuple[str, str]:
    """(canonical request, signed headers) for the request with `headers` as signed."""
    block, signed = canonical_headers(headers)
    text = "\n".join(
        (
            request.method.upper(),
            canonical_uri(request.path, s3=s3),
            canonical_query(request.query),
            block,
            signed,
            payload_hash,
        )
    )
    return text, signed


def scope(amz_date: str, region: str, service: str) -> str:
    return f"{amz_date[:8]}/{region}/{service}/aws4_request"


def string_to_sign(amz_date: str, credential_scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{credential_scope}\n{digest}"


@lru_cache(maxsize=32)
def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date, region, service, "aws4_request" (valid a day)."""
    k = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        k = hmac.digest(k, part.encode(), "sha256")
    return k


def signature(key: bytes, sts: str) -> str:
    return hmac.digest(key, sts.encode(), "sha256").hex()


def authorization(access_key_id: str, credential_scope: str, signed: str, sig: str) -> str:
    return (
        f"{ALGORITHM} Credential={access_key_id}/{credential_scope}, "
        f"SignedHeaders={signed}, Signature={sig}"
    )


class SigV4Steps(NamedTuple):
    canonical_request: str
    string_to_sign: str
    signature: str
    authorization: str
    added: tuple[tuple[str, str], ...]  # X-Amz-Date, X-Amz-Content-SHA256, security token


class AwsSigV4Signer:
    """SigV4 in the Authorization header (`region`, `service`, keys, `session_token`)."""

    type: ClassVar[str] = "aws_sigv4"
    body_max_bytes: int = DEFAULT_BODY_MAX_BYTES
    vector_options: ClassVar[tuple[str, ...]] = (
        "region",
        "service",
        "access_key_id",
        "session_token",
    )

    def __init__(
        self,
        *,
        region: str,
        service: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None,
        unsigned_payload: bool,
    ) -> None:
        self.region = region
        self.service = service
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._session_token = session_token
        self.unsigned_payload = unsigned_payload
        self.s3 = service == "s3"
        self.needs_body = not unsigned_payload

    def __repr__(self) -> str:
        return f"AwsSigV4Signer(region={self.region!r}, service={self.service!r})"

    @classmethod
    def from_options(cls, node: Node, setup: SignerSetup) -> AwsSigV4Signer:
        reject_query_placement(node, cls.type)
        region = node.string("region", required=True) or ""
        service = node.string("service", required=True) or ""
        for key, value in (("region", region), ("service", service)):
            if value and not _SCOPE_PART.fullmatch(value):
                node.error(key, "expected lowercase letters, digits and '-' (e.g. eu-west-1, s3)")
        access = node.secret("access_key_id", required=True)
        secret = secret_text(node, "secret_access_key", setup.default_key)
        if secret is None:
            node.error("secret_access_key", "required, missing")
        token = node.secret("session_token")
        return cls(
            region=region,
            service=service,
            access_key_id=access.reveal() if access else "",
            secret_access_key=secret.reveal() if secret else "",
            session_token=token.reveal() if token else None,
            unsigned_payload=node.boolean("unsigned_payload", False),
        )

    def with_key(self, key: str) -> AwsSigV4Signer:
        other = copy.copy(self)
        other._secret = key
        return other

    def with_options(self, options: Mapping[str, str]) -> AwsSigV4Signer:
        other = copy.copy(self)
        other.region = options.get("region", self.region)
        other.service = options.get("service", self.service)
        other.s3 = other.service == "s3"
        other._access_key_id = options.get("access_key_id", self._access_key_id)
        other._session_token = options.get("session_token", self._session_token)
        return other

    def secrets(self) -> Iterable[str]:
        return (self._secret, self._session_token or "")

    def steps(self, request: SignRequest, ctx: SignContext) -> SigV4Steps:
        """Every intermediate of one signature (the golden files pin each)."""
        amz_date = ctx.timestamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ctx.now))
        if self.unsigned_payload:
            payload = UNSIGNED
        else:
            payload = hashlib.sha256(request.body or b"").hexdigest()
        added = [("X-Amz-Date", amz_date)]
        if self.s3:
            added.append(("X-Amz-Content-SHA256", payload))
        if self._session_token:
            added.append(("X-Amz-Security-Token", self._session_token))
        replaced = {name.lower() for name, _ in added}
        headers = [(n, v) for n, v in request.headers if n.lower() not in replaced]
        if request.header("host") is None:
            headers.append(("host", request.authority))
        headers.extend(added)
        canonical, signed = canonical_request(request, headers, payload, s3=self.s3)
        credential_scope = scope(amz_date, self.region, self.service)
        sts = string_to_sign(amz_date, credential_scope, canonical)
        key = signing_key(self._secret, amz_date[:8], self.region, self.service)
        sig = signature(key, sts)
        authz = authorization(self._access_key_id, credential_scope, signed, sig)
        return SigV4Steps(canonical, sts, sig, authz, tuple(added))

    def sign(self, request: SignRequest, ctx: SignContext) -> Signature:
        s = self.steps(request, ctx)
        return Signature(
            headers=(*s.added, ("Authorization", safe_value("Authorization", s.authorization))),
            message=s.string_to_sign,
            signature=s.signature,
        )
