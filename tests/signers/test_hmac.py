"""The hmac recipe: PayNet and Saison as recipes, Binance's and Kraken's published examples,
every placeholder, encoding, algorithm, timestamp format and nonce form. Expected values come
from the vendors' documents, SPEC 1 and Python's hmac/hashlib, never from keyhop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from pathlib import Path

import pytest

from proxy.signers import PAYNET_RECIPE, SAISON_RECIPE, SignContext, UnsafeSignature
from tests.signers.helpers import built, make_request

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# Binance Spot API docs, "SIGNED endpoint examples" (HMAC): key, query, signature
BINANCE_KEY = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
BINANCE_QUERY = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000"
)
BINANCE_SIG = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
BINANCE = {
    "type": "hmac",
    "message": "{query&}timestamp={timestamp}",
    "timestamp": "unix_ms",
    "query": {"timestamp": "{timestamp}", "signature": "{signature}"},
    "vectors": [
        {
            "given": {
                "key": BINANCE_KEY,
                "method": "POST",
                "target": "/api/v3/order?" + BINANCE_QUERY,
                "timestamp": "1499827319559",
            },
            "expect": {
                "message": BINANCE_QUERY + "&timestamp=1499827319559",
                "signature": BINANCE_SIG,
            },
        }
    ],
}
# Kraken Spot REST docs, "Spot REST Authentication" example: key, nonce, payload, path
KRAKEN_KEY = (
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
)
KRAKEN_BODY = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
KRAKEN_SIG = (
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
)
KRAKEN = {
    "type": "hmac",
    "key": KRAKEN_KEY,
    "key_encoding": "base64",
    "algorithm": "sha512",
    "encoding": "base64",
    "message": "{path}{sha256_raw:{form:nonce}{body}}",
    "headers": {"API-Sign": "{signature}"},
    "vectors": [
        {
            "given": {"method": "POST", "target": "/0/private/AddOrder", "body": KRAKEN_BODY},
            "expect": {"signature": KRAKEN_SIG},
        }
    ],
}


def test_paynet_recipe_matches_spec_1s_corrected_vector() -> None:
    signer = built(PAYNET_RECIPE, default_key="my_secret_key")
    sig = signer.sign(make_request(), SignContext(now=1700000000.9))
    assert sig.headers == (
        ("X-Timestamp", "1700000000"),
        ("X-Signature", "70ba7735fc01fec6d9d374332ea71c0c6183f4ac57273c8d8f7ca36fbf4dc359"),
    )
    assert signer.needs_body is False


@pytest.mark.parametrize("now", [0.0, 1.5, 1700000000.0, 4102444800.0])
def test_paynet_recipe_is_hex_hmac_sha256_of_the_unix_second(now: float) -> None:
    signer = built(PAYNET_RECIPE, default_key="k3y")
    ts = str(int(now))
    want = hmac.new(b"k3y", ts.encode(), hashlib.sha256).hexdigest()
    assert dict(signer.sign(make_request(), SignContext(now=now)).headers) == {
        "X-Timestamp": ts,
        "X-Signature": want,
    }


def test_paynet_recipe_is_memoized_per_second_like_the_hard_wired_signature() -> None:
    signer = built(PAYNET_RECIPE, default_key="k")
    a = signer.sign(make_request("GET", "/a"), SignContext(now=10.1))
    b = signer.sign(make_request("POST", "/b"), SignContext(now=10.9))
    c = signer.sign(make_request("GET", "/a"), SignContext(now=11.0))
    assert a is b  # the same second: no HMAC computed again
    assert c is not a and c.headers[0] == ("X-Timestamp", "11")


@pytest.mark.parametrize(
    ("method", "target", "golden", "mac"),
    [
        (
            "POST",
            "/auth/account/profile",
            "saison_post_profile.sts",
            "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU=",
        ),
        (
            "GET",
            "/auth/account/profile?a=1&b=2",
            "saison_get_profile_query.sts",
            "+aIDodBL11maFQF2cIl4uO84nnZHEsDEyMzrfkFPR1Q=",
        ),
    ],
    ids=["post-without-query", "get-with-query"],
)
def test_saison_recipe_matches_the_golden_strings(
    method: str, target: str, golden: str, mac: str
) -> None:
    signer = built(SAISON_RECIPE, default_key="my_client_secret")
    request = make_request(method, target, host="apit.saisoncard.co.jp")
    ctx = SignContext(now=1700000000.0, token="at-123", nonce="abcde12345")
    sig = signer.sign(request, ctx)
    assert sig.message == (GOLDEN / golden).read_text()
    assert sig.signature == mac
    assert dict(sig.headers)["Authorization"] == (
        f'MAC id="at-123" ts="1700000000" nonce="abcde12345" mac="{mac}"'
    )


def test_saison_nonces_are_ten_alphanumerics_fresh_per_request() -> None:
    signer = built(SAISON_RECIPE)
    nonces = set()
    for _ in range(50):
        header = dict(signer.sign(make_request(), SignContext(now=1.0)).headers)["Authorization"]
        nonce = re.search(r'nonce="([^"]*)"', header)
        assert nonce is not None and re.fullmatch(r"[0-9a-zA-Z]{10}", nonce.group(1))
        nonces.add(nonce.group(1))
    assert len(nonces) == 50


def test_binance_example_signs_the_query_with_the_appended_timestamp() -> None:
    signer = built(BINANCE, default_key=BINANCE_KEY)
    request = make_request("POST", "/api/v3/order?" + BINANCE_QUERY, host="api.binance.com")
    sig = signer.sign(request, SignContext(now=1499827319.559))
    # what goes on the wire: the client's query, then timestamp, then signature
    assert sig.query == (("timestamp", "1499827319559"), ("signature", BINANCE_SIG))
    assert sig.headers == ()


def test_binance_recipe_without_a_client_query_signs_timestamp_alone() -> None:
    signer = built(BINANCE, default_key=BINANCE_KEY)
    sig = signer.sign(make_request("GET", "/api/v3/account"), SignContext(now=1.0))
    assert sig.message == "timestamp=1000"
    assert sig.signature == hmac.new(BINANCE_KEY.encode(), b"timestamp=1000", "sha256").hexdigest()


def test_kraken_example_hashes_a_raw_digest_inside_the_message() -> None:
    signer = built(KRAKEN)
    assert signer.needs_body is True
    request = make_request("POST", "/0/private/AddOrder", body=KRAKEN_BODY.encode())
    sig = signer.sign(request, SignContext(now=1.0))
    assert dict(sig.headers) == {"API-Sign": KRAKEN_SIG}


def test_every_request_placeholder_renders_what_was_sent() -> None:
    message = (
        "{method}|{path}|{query}|{target}|{host}|{port}|{scheme}|{authority}|{timestamp}|"
        "{nonce}|{token}|{client_id}|{tenant}|{body}|{body_sha256}|{body_sha256_b64}|"
        "{header:x-trace}|{header:Absent}|{form:b}|{fiid}"
    )
    signer = built(
        {"type": "hmac", "message": message, "headers": {"X-Sig": "{signature}"}},
        static_vars={"fiid": "FI-9"},
    )
    request = make_request(
        "PUT",
        "/p%2Fq/r?x=1&y=%20",
        host="h.example",
        scheme="http",
        port=8080,
        headers=(("X-Trace", "t1"), ("x-trace", "t2")),
        body=b"a=1&b=two+words",
    )
    ctx = SignContext(now=0.0, token="tok", client_id="cid", tenant="ten", nonce="N", timestamp="T")
    sig = signer.sign(request, ctx)
    body_sha = hashlib.sha256(b"a=1&b=two+words")
    assert sig.message == (
        "PUT|/p%2Fq/r|x=1&y=%20|/p%2Fq/r?x=1&y=%20|h.example|8080|http|h.example:8080|T|N|tok|"
        f"cid|ten|a=1&b=two+words|{body_sha.hexdigest()}|"
        f"{base64.b64encode(body_sha.digest()).decode()}|t1, t2||two words|FI-9"
    )
    assert signer.needs_body is True


@pytest.mark.parametrize(
    ("encoding", "render"),
    [
        ("hex", lambda d: d.hex()),
        ("hex_upper", lambda d: d.hex().upper()),
        ("base64", lambda d: base64.b64encode(d).decode()),
        ("base64url", lambda d: base64.urlsafe_b64encode(d).decode()),
    ],
)
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_algorithms_and_encodings(algorithm: str, encoding: str, render: object) -> None:
    signer = built(
        {
            "type": "hmac",
            "message": "{method} {target}",
            "algorithm": algorithm,
            "encoding": encoding,
            "headers": {"X-Sig": "{signature}"},
        },
        default_key="key",
    )
    digest = hmac.new(b"key", b"GET /x?y=1", algorithm).digest()
    sig = signer.sign(make_request("GET", "/x?y=1"), SignContext(now=0.0))
    assert callable(render)
    assert dict(sig.headers) == {"X-Sig": render(digest)}


@pytest.mark.parametrize(
    ("key", "encoding", "raw"),
    [("6b6579", "hex", b"key"), ("a2V5", "base64", b"key"), ("a2V5", "raw", b"a2V5")],
)
def test_key_encodings(key: str, encoding: str, raw: bytes) -> None:
    block = {"type": "hmac", "message": "m", "key": key, "key_encoding": encoding}
    signer = built({**block, "headers": {"X": "{signature}"}})
    want = hmac.new(raw, b"m", "sha256").hexdigest()
    assert dict(signer.sign(make_request(), SignContext(now=0.0)).headers) == {"X": want}


@pytest.mark.parametrize(
    ("fmt", "rendered"),
    [
        ("unix", "1700000000"),
        ("unix_ms", "1700000000500"),
        ("iso8601", "2023-11-14T22:13:20Z"),
        ("iso8601_ms", "2023-11-14T22:13:20.500Z"),
        ("http_date", "Tue, 14 Nov 2023 22:13:20 GMT"),  # RFC 9110 5.6.7
    ],
)
def test_timestamp_formats(fmt: str, rendered: str) -> None:
    signer = built(
        {
            "type": "hmac",
            "message": "{timestamp}",
            "timestamp": fmt,
            "headers": {"X-T": "{timestamp}"},
        }
    )
    sig = signer.sign(make_request(), SignContext(now=1700000000.5))
    assert sig.message == rendered and dict(sig.headers) == {"X-T": rendered}


def test_nonce_length_and_alphabet() -> None:
    signer = built(
        {
            "type": "hmac",
            "message": "{nonce}",
            "nonce": {"length": 24, "alphabet": "ab"},
            "headers": {"X-N": "{nonce}"},
        }
    )
    first = signer.sign(make_request(), SignContext(now=0.0)).message
    assert re.fullmatch(r"[ab]{24}", first)
    assert signer.sign(make_request(), SignContext(now=0.0)).message != first


def test_nonce_uuid4() -> None:
    signer = built(
        {"type": "hmac", "message": "{nonce}", "nonce": "uuid4", "headers": {"X": "{nonce}"}}
    )
    text = signer.sign(make_request(), SignContext(now=0.0)).message
    assert uuid.UUID(text).version == 4


def test_only_body_placeholders_make_the_signer_need_the_body() -> None:
    base = {"type": "hmac", "headers": {"X": "{signature}"}}
    assert built({**base, "message": "{method}{target}{header:date}"}).needs_body is False
    for message in ("{body}", "{body_sha256}", "{body_sha256_b64}", "{sha256:{body}}", "{form:a}"):
        assert built({**base, "message": message}).needs_body is True, message


def test_a_token_with_a_line_break_is_refused_at_run_time_never_sent() -> None:
    signer = built(
        {"type": "hmac", "message": "{timestamp}", "headers": {"Authorization": "X {token}"}}
    )
    with pytest.raises(UnsafeSignature) as caught:
        signer.sign(make_request(), SignContext(now=0.0, token="ab\r\nInjected: 1"))
    assert isinstance(caught.value, ValueError)
    assert "Injected" not in str(caught.value)


def test_query_values_are_percent_encoded() -> None:
    signer = built(
        {"type": "hmac", "message": "m", "encoding": "base64", "query": {"sig": "{signature}"}},
        default_key="k",
    )
    digest = base64.b64encode(hmac.new(b"k", b"m", "sha256").digest()).decode()
    sig = signer.sign(make_request(), SignContext(now=0.0))
    encoded = digest.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert sig.query == (("sig", encoded),)


def test_literal_braces_and_vars() -> None:
    signer = built(
        {
            "type": "hmac",
            "message": '{{"ts":{timestamp},"app":"{app}"}}',
            "vars": {"app": "shop-1"},
            "headers": {"X": "{signature}"},
        }
    )
    assert signer.sign(make_request(), SignContext(now=7.0)).message == '{"ts":7,"app":"shop-1"}'


def test_every_placeholder_the_config_accepts_has_a_getter() -> None:
    from proxy.signers import hmac_recipe
    from proxy.signers.hmac_config import PLACEHOLDERS

    per_message = {"timestamp", "nonce", "header", "form"}
    assert set(hmac_recipe._REQUEST) | per_message == set(PLACEHOLDERS)


def test_an_empty_given_timestamp_renders_as_empty_not_a_crash() -> None:
    signer = built({"type": "hmac", "message": "[{timestamp}]", "headers": {"X": "{signature}"}})
    assert signer.sign(make_request(), SignContext(now=0.0, timestamp="")).message == "[]"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_the_mac_drafts_own_example_is_illustrative_so_saison_uses_its_golden(
    algorithm: str,
) -> None:
    # draft-ietf-oauth-v2-http-mac-02 1.1: GET /resource/1?b=1&a=2, Host example.com, key
    # 489dks293j39, ts 1336363200, nonce dj83hs9s -> mac "bhCQXTVyfj5cmA9uKkPFx1zeOXM=".
    # The draft's normalized string under its key gives another value with either hash:
    # the example was never computed, so it cannot serve as the Saison preset's vector.
    message = b"1336363200\ndj83hs9s\nGET\n/resource/1?b=1&a=2\nexample.com\n80\n\n"
    recipe = {k: v for k, v in SAISON_RECIPE.items() if k != "vectors"}  # its own is SHA-256
    signer = built({**recipe, "algorithm": algorithm}, default_key="489dks293j39")
    request = make_request("GET", "/resource/1?b=1&a=2", host="example.com", scheme="http")
    sig = signer.sign(request, SignContext(now=0.0, timestamp="1336363200", nonce="dj83hs9s"))
    assert sig.message.encode() == message
    assert (
        sig.signature
        == base64.b64encode(hmac.new(b"489dks293j39", message, algorithm).digest()).decode()
    )
    assert sig.signature != "bhCQXTVyfj5cmA9uKkPFx1zeOXM="
