"""oauth1 against RFC 5849's own examples (3.4.1 base string, 1.2 signed request) and
oauthlib as an oracle over randomized requests."""

from __future__ import annotations

import random
from urllib.parse import quote, unquote

import pytest
from oauthlib.oauth1 import Client

from proxy.signers import SignContext
from proxy.signers.oauth1 import OAuth1Signer
from tests.signers.helpers import GOLDEN, build, built, make_request

OAUTH1 = GOLDEN / "oauth1"
FORM = "application/x-www-form-urlencoded"


def block(**options: object) -> dict[str, object]:
    return {"type": "oauth1", **options}


def test_rfc5849_3_4_1_base_string_covers_query_and_form_body() -> None:
    # RFC 5849 3.4.1.1: the example request, body "c2&a3=2+q" form-encoded
    signer = built(
        block(
            consumer_key="9djdj82h48djs9d2",
            consumer_secret="unused",
            token="kkk9d7dh3k39sjv7",
            version=False,
            body="form",
        )
    )
    assert signer.needs_body is True
    request = make_request(
        "POST",
        "/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
        host="example.com",
        scheme="http",
        headers=(("Content-Type", FORM),),
        body=b"c2&a3=2+q",
    )
    sig = signer.sign(request, SignContext(now=0.0, timestamp="137131201", nonce="7d8f3e4a"))
    assert sig.message == (OAUTH1 / "rfc5849-3.4.1.base").read_text()


def test_rfc5849_1_2_signed_resource_request_matches_at_every_step() -> None:
    signer = built(
        block(
            consumer_key="dpf43f3p2l4k3l03",
            consumer_secret="kd94hf93k423kf44",
            token="nnch734d00sl2jdk",
            token_secret="pfkkdhi9sl3r4s00",
            realm="Photos",
            version=False,
        )
    )
    request = make_request(
        "GET", "/photos?file=vacation.jpg&size=original", host="photos.example.net", scheme="http"
    )
    sig = signer.sign(request, SignContext(now=0.0, timestamp="137131202", nonce="chapoH"))
    assert sig.message == (OAUTH1 / "rfc5849-1.2.base").read_text()
    assert sig.signature == "MdpQcU8iPSUjWoN/UDMsK2sui9I="
    assert dict(sig.headers) == {"Authorization": (OAUTH1 / "rfc5849-1.2.authz").read_text()}


def test_rfc5849_example_as_a_vector_with_the_examples_key() -> None:
    # given.key for oauth1 is RFC 5849 3.4.2's key: consumer_secret&token_secret
    _, problems = build(
        block(
            consumer_key="dpf43f3p2l4k3l03",
            consumer_secret="configured-secret",
            token="nnch734d00sl2jdk",
            realm="Photos",
            version=False,
            vectors=[
                {
                    "given": {
                        "key": "kd94hf93k423kf44&pfkkdhi9sl3r4s00",
                        "scheme": "http",
                        "host": "photos.example.net",
                        "target": "/photos?file=vacation.jpg&size=original",
                        "timestamp": "137131202",
                        "nonce": "chapoH",
                    },
                    "expect": {"signature": "MdpQcU8iPSUjWoN/UDMsK2sui9I="},
                }
            ],
        )
    )
    assert problems == []


def test_the_token_defaults_to_the_providers_credential() -> None:
    signer = built(block(consumer_key="ck", consumer_secret="cs", version=False))
    sig = signer.sign(make_request(), SignContext(now=5.0, token="cred-token", nonce="n"))
    assert 'oauth_token="cred-token"' in dict(sig.headers)["Authorization"]
    assert "oauth_token%3Dcred-token" in sig.message


def test_without_body_form_a_form_body_is_not_needed_nor_signed() -> None:
    signer = built(block(consumer_key="ck", consumer_secret="cs"))
    assert signer.needs_body is False
    request = make_request("POST", "/x", headers=(("Content-Type", FORM),), body=None)
    assert "a%3D1" not in signer.sign(request, SignContext(now=1.0)).message


def test_plaintext_signature_is_the_encoded_secrets() -> None:
    # RFC 5849 3.4.4: the signature is the key itself
    signer = built(
        block(
            consumer_key="ck",
            consumer_secret="cs&x",
            token="t",
            token_secret="ts",
            signature_method="PLAINTEXT",
        )
    )
    assert signer.sign(make_request(), SignContext(now=1.0)).signature == "cs%26x&ts"


@pytest.mark.parametrize("method", ["HMAC-SHA1", "HMAC-SHA256", "PLAINTEXT"])
@pytest.mark.parametrize("seed", range(15))
def test_oauthlib_signs_randomized_requests_identically(method: str, seed: int) -> None:
    rng = random.Random(seed)
    chars = "abcXYZ09-._~ +=&%!*'é"

    def text() -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(1, 6)))

    query = "&".join(
        f"{quote(text(), safe='')}={quote(text(), safe='')}" for _ in range(rng.randint(0, 3))
    )
    form = rng.random() < 0.5
    body = "&".join(f"f{i}={quote(text(), safe='')}" for i in range(rng.randint(1, 3)))
    path = "/" + quote(text(), safe="")
    token = rng.choice([None, "tok" + str(seed)])
    options: dict[str, object] = {
        "consumer_key": "ck" + str(seed),
        "consumer_secret": "c s&" + str(seed),
        "token_secret": "t/s",
        "signature_method": method,
        "body": "form" if form else "none",
    }
    if token:
        options["token"] = token
    signer = built(block(**options))
    headers = (("Content-Type", FORM),) if form else ()
    request = make_request(
        "POST",
        path + ("?" + query if query else ""),
        host="api.example.com",
        port=rng.choice([443, 8443]),
        headers=headers,
        body=body.encode() if form else None,
    )
    ours = signer.sign(request, SignContext(now=1_700_000_000.0, nonce="nonce" + str(seed)))

    client = Client(
        "ck" + str(seed),
        client_secret="c s&" + str(seed),
        resource_owner_key=token,
        resource_owner_secret="t/s",
        signature_method=method,
        timestamp="1700000000",
        nonce="nonce" + str(seed),
    )
    url = f"https://{request.authority}{request.target}"
    _, theirs, _ = client.sign(
        url,
        http_method="POST",
        body=body if form else None,
        headers={"Content-Type": FORM} if form else None,
    )
    assert _params(dict(ours.headers)["Authorization"]) == _params(theirs["Authorization"])


def _params(header: str) -> dict[str, str]:
    assert header.startswith("OAuth ")
    out = {}
    for item in header[6:].split(", "):
        name, _, value = item.partition("=")
        out[unquote(name)] = unquote(value.strip('"'))
    return out


def test_query_placement_is_a_config_error() -> None:
    _, problems = build(block(consumer_key="ck", query={"oauth_signature": "{signature}"}))
    assert problems == [
        "keyhop.yaml: providers.partner.sign.query: not supported by oauth1: "
        "it places its signature in headers only"
    ]


def test_the_signer_type_is_registered() -> None:
    assert OAuth1Signer.type == "oauth1"
