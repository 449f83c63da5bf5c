"""Upstream fakes that verify request signatures the way the vendors do: each recomputes the
signature from the bytes it received (method, raw target, the headers it was told are
signed, body) with an independent implementation (botocore, oauthlib,
http-message-signatures, Python's hmac) and refuses a wrong one, sending nothing on.

Every fake counts what reached it (`requests`), keeps what it received (`received`) so a
test can replay it with one thing changed, and lists why it refused (`refusals`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from multidict import CIMultiDict, CIMultiDictProxy
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature as oauth_signature

UNSIGNED = "UNSIGNED-PAYLOAD"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Received:
    """One request as it reached the fake."""

    method: str
    raw_path: str  # path?query, byte for byte
    headers: CIMultiDictProxy[str]
    body: bytes | None  # None when the fake streamed it (body_bytes/crc say what came)
    body_bytes: int = 0
    crc: int = 0

    @property
    def url(self) -> str:
        return f"https://{self.headers['Host']}{self.raw_path}"


class Refused(Exception):
    """The vendor's refusal: status and error code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


class VerifyingUpstream:
    """Base: a catch-all app that verifies, then answers what it received (sizes only)."""

    def __init__(self) -> None:
        self.requests = 0
        self.received: list[Received] = []
        self.refusals: list[str] = []
        self.throttle_next = 0  # answer this many verified requests 429 Retry-After: 1
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def verify(self, rec: Received) -> None:
        raise NotImplementedError

    def streams(self, headers: CIMultiDictProxy[str]) -> bool:
        """Stream the body instead of reading it first: the signature does not cover it."""
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        body = None if self.streams(headers) else await request.read()
        rec = Received(request.method, request.raw_path, headers, body)
        try:
            self.verify(rec)
        except Refused as exc:
            self.received.append(rec)
            self.refusals.append(exc.code)
            return web.json_response({"error": exc.code}, status=exc.status)
        if self.throttle_next > 0:
            self.throttle_next -= 1
            self.received.append(rec)
            return web.json_response(
                {"error": "slow_down"}, status=429, headers={"Retry-After": "1"}
            )
        size, crc = (len(body), zlib.crc32(body)) if body is not None else (0, 0)
        if body is None:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        self.received.append(
            Received(rec.method, rec.raw_path, headers, body, body_bytes=size, crc=crc)
        )
        return web.json_response({"ok": True, "body_bytes": size, "crc": crc})


# --- AWS SigV4, verified by botocore ---------------------------------------------------------

_AWS_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<sig>[0-9a-f]{64})"
)


class SigV4Upstream(VerifyingUpstream):
    """An AWS endpoint: 403 SignatureDoesNotMatch (as AWS answers) unless botocore, given
    the received method, raw path and query, the headers named in SignedHeaders and the
    body, computes the same signature. S3 checks X-Amz-Content-SHA256 against the body."""

    def __init__(
        self, access_key_id: str, secret: str, region: str, service: str, *, skew: int = 900
    ) -> None:
        super().__init__()
        self.access_key_id, self.secret = access_key_id, secret
        self.region, self.service, self.skew = region, service, skew

    def streams(self, headers: CIMultiDictProxy[str]) -> bool:
        return headers.get("X-Amz-Content-SHA256") == UNSIGNED

    def verify(self, rec: Received) -> None:
        found = _AWS_AUTH.fullmatch(rec.headers.get("Authorization", ""))
        if found is None:
            raise Refused(403, "IncompleteSignature")
        if found["akid"] != self.access_key_id:
            raise Refused(403, "InvalidAccessKeyId")
        amz_date = rec.headers.get("X-Amz-Date", "")
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
        except ValueError:
            raise Refused(403, "IncompleteSignature") from None
        if abs(time.time() - when.replace(tzinfo=datetime.UTC).timestamp()) > self.skew:
            raise Refused(403, "RequestTimeTooSkewed")
        if found["day"] != amz_date[:8]:  # the credential scope's date is the request's
            raise Refused(403, "SignatureDoesNotMatch")
        names = found["signed"].split(";")
        if "host" not in names or "x-amz-date" not in names:
            raise Refused(403, "SignatureDoesNotMatch")
        s3 = self.service == "s3"
        payload = rec.headers.get("X-Amz-Content-SHA256")
        if s3 and payload != UNSIGNED and payload != hashlib.sha256(rec.body or b"").hexdigest():
            raise Refused(400, "XAmzContentSHA256Mismatch")
        request = AWSRequest(method=rec.method, url=rec.url, data=rec.body or b"")
        for name in names:  # only what the client said it signed, repeated fields kept
            for value in rec.headers.getall(name, []):
                request.headers[name] = value
        token = rec.headers.get("X-Amz-Security-Token") if "x-amz-security-token" in names else None
        credentials = Credentials(self.access_key_id, self.secret, token)
        request.context["timestamp"] = amz_date
        if s3:
            signing = payload != UNSIGNED
            request.context["client_config"] = SimpleNamespace(
                s3={"payload_signing_enabled": signing}
            )
        auth = (S3SigV4Auth if s3 else SigV4Auth)(credentials, self.service, self.region)
        auth._modify_request_before_signing(request)
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if (found["region"], found["service"]) != (self.region, self.service) or (
            not hmac.compare_digest(expected, found["sig"])
        ):
            raise Refused(403, "SignatureDoesNotMatch")


# --- OAuth 1.0a, verified by oauthlib ---------------------------------------------------------


class OAuth1Upstream(VerifyingUpstream):
    """An RFC 5849 resource server: 401 unless oauthlib's signature functions, over the
    received URI, query, form body (3.4.1.3.1) and Authorization parameters, agree."""

    def __init__(self, consumers: Mapping[str, str], tokens: Mapping[str, str], method: str):
        super().__init__()
        self.consumers, self.tokens, self.method = dict(consumers), dict(tokens), method
        self.nonces: set[tuple[str, str]] = set()

    def verify(self, rec: Received) -> None:
        header = rec.headers.get("Authorization", "")
        if not header.startswith("OAuth "):
            raise Refused(401, "parameter_absent")
        # the header's parameters, percent-decoded (3.5.1)
        oauth = dict(
            oauth_signature.collect_parameters(
                headers={"Authorization": header}, exclude_oauth_signature=False
            )
        )
        if oauth.get("oauth_signature_method") != self.method:
            raise Refused(400, "signature_method_rejected")
        consumer_secret = self.consumers.get(oauth.get("oauth_consumer_key", ""))
        token = oauth.get("oauth_token")
        token_secret = self.tokens.get(token, None) if token else ""
        if consumer_secret is None or token_secret is None:
            raise Refused(401, "consumer_key_unknown" if consumer_secret is None else "token")
        ctype = rec.headers.get("Content-Type", "").split(";")[0].strip().lower()
        body = (rec.body or b"").decode() if ctype == FORM else None
        request = OAuthRequest(rec.url, http_method=rec.method, body=body, headers={})
        request.params = oauth_signature.collect_parameters(
            uri_query=urlsplit(rec.url).query,
            body=body,
            headers={"Authorization": header},
            exclude_oauth_signature=True,
        )
        request.signature = oauth.get("oauth_signature", "")
        check: Callable[..., bool] = {
            "HMAC-SHA1": oauth_signature.verify_hmac_sha1,
            "HMAC-SHA256": oauth_signature.verify_hmac_sha256,
        }[self.method]
        if not check(request, consumer_secret, token_secret):
            raise Refused(401, "signature_invalid")
        # 3.3: a timestamp and nonce pair is used once, the timestamp recent
        nonce = (oauth.get("oauth_timestamp", ""), oauth.get("oauth_nonce", ""))
        if nonce in self.nonces or abs(time.time() - int(nonce[0] or 0)) > 600:
            raise Refused(401, "nonce_used_or_timestamp_refused")
        self.nonces.add(nonce)


# --- RFC 9421, verified by http-message-signatures --------------------------------------------


class _Message:
    """The request shape the package reads."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


class _Key(HTTPSignatureKeyResolver):
    def __init__(self, keys: Mapping[str, Any]) -> None:
        self.keys = keys

    def resolve_public_key(self, key_id: str) -> Any:
        return self.keys.get(key_id)

    def resolve_private_key(self, key_id: str) -> Any:
        raise AssertionError("the fake only verifies")


class MessageSignatureUpstream(VerifyingUpstream):
    """RFC 9421 with RFC 9530: 401 unless the package verifies the signature (at most 5
    minutes old) covering `required`, and the Content-Digest it covers matches the body."""

    def __init__(self, algorithm: Any, keys: Mapping[str, Any], required: tuple[str, ...]):
        super().__init__()
        self.verifier = HTTPMessageVerifier(signature_algorithm=algorithm, key_resolver=_Key(keys))
        self.required = required
        self.results: list[Any] = []

    def verify(self, rec: Received) -> None:
        message = _Message(rec.method, rec.url, {k: v for k, v in rec.headers.items()})
        try:
            results = self.verifier.verify(
                message,
                max_age=datetime.timedelta(minutes=5),
                require_components=self.required,
                body=rec.body if "content-digest" in self.required else None,
            )
        except HTTPMessageSignaturesException as exc:
            raise Refused(401, f"invalid_signature: {exc}") from None
        # RFC 9530 once more by hand: sha-256 of the bytes received
        if "content-digest" in self.required:
            digest = base64.b64encode(hashlib.sha256(rec.body or b"").digest()).decode()
            if rec.headers.get("Content-Digest") != f"sha-256=:{digest}:":
                raise Refused(400, "content_digest_mismatch")
        self.results.extend(results)


# --- HMAC recipes, verified with Python's hmac -------------------------------------------------


def sha_message(rec: Received, ts: str) -> bytes:
    """timestamp ‖ method ‖ raw target ‖ hex SHA-256 of the body, as received."""
    return (ts + rec.method + rec.raw_path + hashlib.sha256(rec.body or b"").hexdigest()).encode()


class HmacUpstream(VerifyingUpstream):
    """A partner that signs `message(rec, timestamp)` with HMAC-SHA256 (hex) in
    `X-Signature`, with the timestamp in `X-Timestamp`: 401 on a mismatch."""

    def __init__(
        self,
        secret: str,
        message: Callable[[Received, str], bytes],
        tokens: set[str] | None = None,
        *,
        covers_body: bool = True,
    ) -> None:
        super().__init__()
        self.secret, self.message, self.covers_body = secret, message, covers_body
        #: when set, `X-Token` must be one of these (401 invalid_token otherwise)
        self.tokens = tokens

    def streams(self, headers: CIMultiDictProxy[str]) -> bool:
        return not self.covers_body

    def verify(self, rec: Received) -> None:
        if self.tokens is not None and rec.headers.get("X-Token") not in self.tokens:
            raise Refused(401, "invalid_token")
        ts = rec.headers.get("X-Timestamp", "")
        if not ts.isdigit() or abs(time.time() * 1000 - int(ts)) > 30_000:
            raise Refused(401, "timestamp")
        expected = hmac.new(self.secret.encode(), self.message(rec, ts), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, rec.headers.get("X-Signature", "")):
            raise Refused(401, "signature")
