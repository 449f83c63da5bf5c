"""Every signer through a real keyhop, against TLS fakes that verify like the vendors do
(tests/e2e/signing_fakes.py: botocore, oauthlib, http-message-signatures, Python's hmac,
and the sandbox's Binance-like exchange), and refuse the same request once tampered with.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from http_message_signatures.algorithms import ED25519, HMAC_SHA256

from proxy.sandbox.exchange import FakeExchange
from tests.conftest import MakeProxy, StartUpstream, raw_url
from tests.e2e.signing_fakes import (
    UNSIGNED,
    HmacUpstream,
    MessageSignatureUpstream,
    OAuth1Upstream,
    Received,
    SigV4Upstream,
    sha_message,
)
from tests.e2e.signing_helpers import RFC9421, SHARED_SECRET, config, replay
from tests.support import ROOT

AKID, AWS_SECRET = "AKIDE2EEXAMPLE", "e2e/aws+secret/KEY"
ODD_QUERY = "b=2&a=x%20y&a=%2F&flag&c=%E2%9C%93&a=-._~&empty="


def sigv4(service: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "aws_sigv4",
        "region": "eu-west-1",
        "service": service,
        "access_key_id": AKID,
        "secret_access_key": AWS_SECRET,
        **extra,
    }


# --- aws_sigv4 -------------------------------------------------------------------------------


async def test_aws_sigv4_get_with_an_odd_query_is_verified_by_botocore_and_a_tamper_refused(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = SigV4Upstream(AKID, AWS_SECRET, "eu-west-1", "execute-api")
    base = await upstream(fake.app)
    client = await proxy(config(base + "/stage", ca_file, sigv4("execute-api")))
    resp = await client.session.get(raw_url(client, f"/p/items/a%20b/c?{ODD_QUERY}"))
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    assert rec.raw_path == f"/stage/items/a%20b/c?{ODD_QUERY}"  # sent as the client wrote it
    # the same bytes again are accepted; one query value changed is not
    assert await replay(base, ca_file, rec) == 200
    tampered = rec.raw_path.replace("b=2", "b=3")
    assert await replay(base, ca_file, rec, raw_path=tampered) == 403
    assert await replay(base, ca_file, rec, headers={"X-Amz-Date": "20200101T000000Z"}) == 403
    assert fake.refusals == ["SignatureDoesNotMatch", "RequestTimeTooSkewed"]


async def test_aws_sigv4_post_with_a_json_body_and_session_token_is_verified_by_botocore(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = SigV4Upstream(AKID, AWS_SECRET, "eu-west-1", "execute-api")
    base = await upstream(fake.app)
    sign = sigv4("execute-api", session_token="FwoGZXIvYXdzE+session/token=")
    client = await proxy(config(base, ca_file, sign))
    body = json.dumps({"order": 7, "note": "caf\u00e9 & co"}).encode()
    resp = await client.post(
        "/p/v1/orders?dry=1", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    assert rec.body == body
    assert rec.headers["X-Amz-Security-Token"] == "FwoGZXIvYXdzE+session/token="
    assert "x-amz-security-token" in rec.headers["Authorization"]
    assert await replay(base, ca_file, rec, body=body.replace(b"7", b"8")) == 403
    assert fake.refusals == ["SignatureDoesNotMatch"]


@pytest.mark.parametrize("unsigned", [True, False], ids=["unsigned-payload", "signed-payload"])
async def test_aws_sigv4_s3_put_is_verified_by_botocore_s3_rules(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, unsigned: bool
) -> None:
    fake = SigV4Upstream(AKID, AWS_SECRET, "eu-west-1", "s3")
    base = await upstream(fake.app)
    client = await proxy(config(base, ca_file, sigv4("s3", unsigned_payload=unsigned)))
    body = bytes(range(256)) * 64
    # S3 keys keep an encoded slash as one segment, and are not normalized
    resp = await client.session.put(raw_url(client, "/p/bucket/dir%2Fkey%20one.bin"), data=body)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    assert rec.raw_path == "/bucket/dir%2Fkey%20one.bin"
    assert rec.body_bytes == len(body)
    payload = rec.headers["X-Amz-Content-SHA256"]
    assert payload == (UNSIGNED if unsigned else hashlib.sha256(body).hexdigest())
    other_key = rec.raw_path.replace("one", "two")
    assert await replay(base, ca_file, rec, raw_path=other_key) == 403
    if not unsigned:  # the body no longer matches the signed digest
        assert await replay(base, ca_file, rec, body=body[:-1] + b"!") == 400
        assert fake.refusals == ["SignatureDoesNotMatch", "XAmzContentSHA256Mismatch"]


# --- oauth1 ----------------------------------------------------------------------------------

CONSUMER, CONSUMER_SECRET = "e2e-consumer-key", "e2e consumer&secret"
TOKEN, TOKEN_SECRET = "e2e-token", "e2e/token+secret"


def oauth1(method: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth1",
        "signature_method": method,
        "consumer_key": CONSUMER,
        "consumer_secret": CONSUMER_SECRET,
        "token": TOKEN,
        "token_secret": TOKEN_SECRET,
        **extra,
    }


@pytest.mark.parametrize("method", ["HMAC-SHA1", "HMAC-SHA256"])
async def test_oauth1_query_and_form_body_are_verified_by_oauthlib(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, method: str
) -> None:
    fake = OAuth1Upstream({CONSUMER: CONSUMER_SECRET}, {TOKEN: TOKEN_SECRET}, method)
    base = await upstream(fake.app)
    client = await proxy(config(base, ca_file, oauth1(method, body="form", realm="Photos")))
    resp = await client.session.get(
        raw_url(client, "/p/photos?size=original&file=vacation%20one.jpg&a=1&a=0")
    )
    assert resp.status == 200, (await resp.text(), fake.refusals)
    form = "title=Caf%C3%A9+%26+co&tag=b&tag=a&empty="
    resp = await client.session.post(
        raw_url(client, "/p/photos/upload?album=7"),
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, (await resp.text(), fake.refusals)
    assert 'realm="Photos"' in fake.received[1].headers["Authorization"]
    # a form field changed after signing is refused (and so is the same nonce twice)
    post = fake.received[1]
    assert await replay(base, ca_file, post, body=form.replace("tag=b", "tag=c").encode()) == 401
    assert await replay(base, ca_file, post) == 401
    assert fake.refusals == ["signature_invalid", "nonce_used_or_timestamp_refused"]


# --- http_message_signature ------------------------------------------------------------------

COMPONENTS = ["@method", "@authority", "@path", "content-digest"]


def _public(name: str) -> Any:
    return serialization.load_pem_public_key((RFC9421 / name).read_bytes())


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "ed25519"])
async def test_http_message_signature_and_content_digest_are_verified_by_the_package(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, algorithm: str
) -> None:
    if algorithm == "hmac-sha256":  # RFC 9421 B.1.5: the shared secret is the key both ways
        alg, key_id, key = HMAC_SHA256, "test-shared-secret", SHARED_SECRET
        public: Any = base64.b64decode(SHARED_SECRET)
    else:  # RFC 9421 B.1.4
        alg, key_id = ED25519, "test-key-ed25519"
        key = (RFC9421 / "test-key-ed25519.key").read_text()
        public = _public("test-key-ed25519.pem")
    fake = MessageSignatureUpstream(alg, {key_id: public}, tuple(COMPONENTS))
    base = await upstream(fake.app)
    sign = {
        "type": "http_message_signature",
        "algorithm": algorithm,
        "key_id": key_id,
        "key": key,
        "components": COMPONENTS,
    }
    client = await proxy(config(base, ca_file, sign))
    body = b'{"hello": "world"}'
    resp = await client.post(
        "/p/foo?param=Value&Pet=dog", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    # RFC 9530 Appendix B.1's digest of this very body
    assert rec.headers["Content-Digest"] == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    (result,) = fake.results
    assert result.parameters["keyid"] == key_id
    # another body under the signed digest, another path: both refused
    assert await replay(base, ca_file, rec, body=b'{"hello": "w0rld"}') == 401
    assert await replay(base, ca_file, rec, raw_path="/bar?param=Value&Pet=dog") == 401
    assert len(fake.refusals) == 2


# --- hmac recipes ----------------------------------------------------------------------------


def shipped_exchange_provider() -> dict[str, Any]:
    """The `exchange` provider exactly as config/sandbox.yaml ships it."""
    data = yaml.safe_load((ROOT / "config" / "sandbox.yaml").read_text())
    return dict(data["providers"]["exchange"])


async def test_the_shipped_binance_recipe_is_accepted_by_the_exchange_fake(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = FakeExchange()
    base = await upstream(fake.app)
    provider = {**shipped_exchange_provider(), "ca_file": ca_file}
    client = await proxy(
        {
            "providers": {"exchange": provider},
            "routes": [{"prefix": "/x", "upstream": base, "provider": "exchange"}],
        }
    )
    query = "symbol=LTC%2FBTC&side=BUY&x=2&x=1&recvWindow=5000"
    resp = await client.session.post(raw_url(client, f"/x/api/v3/order?{query}"))
    assert resp.status == 200, await resp.text()
    echoed = (await resp.json())["query"]
    assert echoed.startswith(query + "&timestamp=")
    assert echoed.rpartition("&")[2].startswith("signature=")
    resp = await client.get("/x/api/v3/account")  # no query of its own
    assert resp.status == 200, await resp.text()
    assert fake.stats()["refused"] == 0
    assert fake.last_resource_headers["X-MBX-APIKEY"] == "sandbox-exchange-api-key"


def _body_message(rec: Received, ts: str) -> bytes:
    return f"{ts}\n{rec.method}\n{rec.raw_path}\n".encode() + (rec.body or b"")


@pytest.mark.parametrize(
    ("message", "check"),
    [
        ("{timestamp}{method}{target}{body_sha256}", sha_message),
        ("{timestamp}\n{method}\n{target}\n{body}", _body_message),
    ],
    ids=["body_sha256", "body"],
)
async def test_a_body_covering_hmac_recipe_is_verified_with_pythons_hmac(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, message: str, check: Any
) -> None:
    fake = HmacUpstream("partner-secret-e2e", check)
    base = await upstream(fake.app)
    sign = {
        "type": "hmac",
        "key": "partner-secret-e2e",
        "message": message,
        "timestamp": "unix_ms",
        "headers": {"X-Timestamp": "{timestamp}", "X-Signature": "{signature}"},
    }
    client = await proxy(config(base + "/v2", ca_file, sign))
    body = bytes(range(256)) * 16  # 4 KiB, every byte value
    resp = await client.session.post(raw_url(client, "/p/orders?a=%20b"), data=body)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    (rec,) = fake.received
    assert rec.body == body and rec.raw_path == "/v2/orders?a=%20b"
    assert await replay(base, ca_file, rec, body=body[::-1]) == 401
    assert fake.refusals == ["signature"]


async def test_a_binance_recipe_over_query_and_form_body_is_accepted_by_the_exchange_fake(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    """README "Example: Binance": parameters in a form body are signed after the query
    (Binance's totalParams = query string + request body)."""
    fake = FakeExchange()
    provider = shipped_exchange_provider()
    provider["sign"] = {
        **provider["sign"],
        "message": "{query&}timestamp={timestamp}{body}",
        "vectors": [],
    }
    client = await proxy(
        {
            "providers": {"exchange": {**provider, "ca_file": ca_file}},
            "routes": [
                {"prefix": "/x", "upstream": await upstream(fake.app), "provider": "exchange"}
            ],
        }
    )
    form = "quantity=1&price=0.1&recvWindow=5000"
    resp = await client.post(
        "/x/api/v3/order?symbol=LTCBTC&side=BUY",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["body_bytes"] == len(form)
    assert fake.stats()["refused"] == 0
