"""http_message_signature against RFC 9421 Appendix B.2 (deterministic examples byte for
byte, randomized ones verified with the public key) and the http-message-signatures
package as an independent verifier."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
)
from http_message_signatures.algorithms import (
    ECDSA_P256_SHA256,
    ED25519,
    HMAC_SHA256,
    RSA_PSS_SHA512,
    RSA_V1_5_SHA256,
)

from proxy.signers import SignContext
from tests.signers.helpers import GOLDEN, build, built, make_request

KEYS = GOLDEN / "rfc9421"
CREATED = "1618884473"
# RFC 9421 B.1.5
SHARED_SECRET = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
# the RFC's test request (section 2 examples): POST /foo?param=Value&Pet=dog
TEST_REQUEST = make_request(
    "POST",
    "/foo?param=Value&Pet=dog",
    host="example.com",
    headers=(
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Length", "18"),
    ),
    body=b'{"hello": "world"}',
)


def key(name: str) -> str:
    return (KEYS / name).read_text()


def sign_block(algorithm: str, key_id: str, key_text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http_message_signature",
        "algorithm": algorithm,
        "key_id": key_id,
        "key": key_text,
        **extra,
    }


def test_b25_hmac_sha256_matches_the_rfc_byte_for_byte() -> None:
    signer = built(
        sign_block(
            "hmac-sha256",
            "test-shared-secret",
            SHARED_SECRET,
            components=["date", "@authority", "content-type"],
            label="sig-b25",
        )
    )
    sig = signer.sign(TEST_REQUEST, SignContext(now=0.0, timestamp=CREATED))
    assert sig.message == (KEYS / "b25.base").read_text()
    assert dict(sig.headers) == {
        "Signature-Input": 'sig-b25=("date" "@authority" "content-type")'
        ';created=1618884473;keyid="test-shared-secret"',
        "Signature": "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    }


def test_b26_ed25519_matches_the_rfc_byte_for_byte() -> None:
    components = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    signer = built(
        sign_block(
            "ed25519",
            "test-key-ed25519",
            key("test-key-ed25519.key"),
            components=components,
            label="sig-b26",
        )
    )
    sig = signer.sign(TEST_REQUEST, SignContext(now=0.0, timestamp=CREATED))
    assert sig.message == (KEYS / "b26.base").read_text()
    assert dict(sig.headers)["Signature"] == (
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
    )


def test_b21_rsa_pss_base_is_the_rfcs_so_its_published_signature_verifies() -> None:
    signer = built(
        sign_block(
            "rsa-pss-sha512",
            "test-key-rsa-pss",
            key("test-key-rsa-pss.key"),
            components=[],
            label="sig-b21",
            nonce=True,
        )
    )
    ctx = SignContext(now=0.0, timestamp=CREATED, nonce="b3k2pp5k7z-50gnwp.yemd")
    sig = signer.sign(TEST_REQUEST, ctx)
    assert sig.message == (KEYS / "b21.base").read_text()
    public = serialization.load_pem_public_key(key("test-key-rsa-pss.pem").encode())
    assert isinstance(public, rsa.RSAPublicKey)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    published = base64.b64decode(
        "d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGx"
        "btRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72"
        "rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5W"
        "Sb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q=="
    )
    public.verify(published, sig.message.encode(), pss, hashes.SHA512())  # raises if not
    public.verify(base64.b64decode(sig.signature), sig.message.encode(), pss, hashes.SHA512())


def test_ecdsa_p256_signature_is_raw_r_and_s_and_verifies_with_the_public_key() -> None:
    signer = built(
        sign_block("ecdsa-p256-sha256", "test-key-ecc-p256", key("test-key-ecc-p256.key"))
    )
    sig = signer.sign(TEST_REQUEST, SignContext(now=1618884473.0))
    raw = base64.b64decode(sig.signature)
    assert len(raw) == 64  # RFC 9421 3.3.4: r and s, 32 bytes each, not DER
    public = serialization.load_pem_public_key(key("test-key-ecc-p256.pem").encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, sig.message.encode(), ec.ECDSA(hashes.SHA256()))


def test_covering_content_digest_sends_an_rfc9530_sha256_digest_and_needs_the_body() -> None:
    signer = built(
        sign_block(
            "ed25519",
            "k",
            key("test-key-ed25519.key"),
            components=["@method", "content-digest"],
        )
    )
    assert signer.needs_body is True
    sig = signer.sign(TEST_REQUEST, SignContext(now=1.0))
    # RFC 9530 B.1 example body {"hello": "world"}: sha-256 X48E9q...
    assert dict(sig.headers)["Content-Digest"] == (
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    )
    assert '"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:' in (
        sig.message
    )


def test_without_content_digest_the_body_is_not_needed() -> None:
    assert built(sign_block("hmac-sha256", "k", SHARED_SECRET)).needs_body is False


def test_a_missing_covered_header_is_refused_not_signed_empty() -> None:
    from proxy.signers import UnsafeSignature

    signer = built(sign_block("hmac-sha256", "k", SHARED_SECRET, components=["x-missing"]))
    with pytest.raises(UnsafeSignature, match="no x-missing field"):
        signer.sign(TEST_REQUEST, SignContext(now=1.0))


@pytest.mark.parametrize(
    ("algorithm", "pem"),
    [
        ("ed25519", "test-key-rsa-pss.key"),
        ("ecdsa-p256-sha256", "test-key-ed25519.key"),
        ("rsa-pss-sha512", "test-key-ecc-p256.key"),
        ("rsa-v1_5-sha256", "test-key-ed25519.pem"),
    ],
    ids=["rsa-key-for-ed25519", "ed25519-key-for-ecdsa", "ec-key-for-rsa", "public-key"],
)
def test_a_pem_that_is_not_a_key_of_the_algorithm_is_a_config_error(
    algorithm: str, pem: str
) -> None:
    text = key(pem)
    signer, problems = build(sign_block(algorithm, "k", text))
    assert signer is None
    assert len(problems) == 1
    assert problems[0].startswith("keyhop.yaml: providers.partner.sign.key: ")
    assert algorithm in problems[0]
    assert text.splitlines()[1] not in problems[0]


def test_an_ecdsa_key_on_another_curve_is_a_config_error() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    _, problems = build(sign_block("ecdsa-p256-sha256", "k", pem))
    assert problems == [
        "keyhop.yaml: providers.partner.sign.key: "
        "a PEM private key, but not one for ecdsa-p256-sha256"
    ]


# --- http-message-signatures as an independent verifier --------------------------------------


class _Message:
    """The request shape the package reads: method, url, headers."""

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, public: Any) -> None:
        self.public = public

    def resolve_public_key(self, key_id: str) -> Any:
        return self.public

    def resolve_private_key(self, key_id: str) -> Any:
        raise AssertionError("the oracle only verifies")


ORACLE = {
    "hmac-sha256": (HMAC_SHA256, None),
    "ed25519": (ED25519, "test-key-ed25519"),
    "ecdsa-p256-sha256": (ECDSA_P256_SHA256, "test-key-ecc-p256"),
    "rsa-pss-sha512": (RSA_PSS_SHA512, "test-key-rsa-pss"),
    "rsa-v1_5-sha256": (RSA_V1_5_SHA256, "test-key-rsa"),
}


@pytest.mark.parametrize("algorithm", sorted(ORACLE))
@pytest.mark.parametrize("seed", range(6))
def test_the_package_verifies_randomized_signed_requests(algorithm: str, seed: int) -> None:
    rng = random.Random(seed)
    alg, name = ORACLE[algorithm]
    key_text = SHARED_SECRET if name is None else key(f"{name}.key")
    public: Any = (
        base64.b64decode(SHARED_SECRET)
        if name is None
        else serialization.load_pem_public_key(key(f"{name}.pem").encode())
    )
    pool = ["@method", "@authority", "@path", "@query", "@target-uri", "content-type", "x-n"]
    components = rng.sample(pool, rng.randint(1, len(pool)))
    signer = built(sign_block(algorithm, "kid", key_text, components=components, nonce=True))
    path = "/" + "/".join(rng.choice(["a", "b%20c", "d"]) for _ in range(rng.randint(0, 3)))
    query = "&".join(f"q{i}={rng.randint(0, 9)}" for i in range(rng.randint(0, 2)))
    headers = {"Content-Type": "application/json", "X-N": f" v{rng.randint(0, 99)} "}
    request = make_request(
        rng.choice(["GET", "POST"]),
        path + ("?" + query if query else ""),
        host="api.example.com",
        port=rng.choice([443, 8443]),
        headers=tuple(headers.items()),
    )
    now = 1_700_000_000.0
    sig = signer.sign(request, SignContext(now=now))
    url = f"https://{request.authority}{request.target}"
    message = _Message(request.method, url, {**headers, **dict(sig.headers)})
    verifier = HTTPMessageVerifier(signature_algorithm=alg, key_resolver=_Keys(public))
    verifier.require_created = False
    results = verifier.verify(message, max_age=None)
    assert len(results) == 1
    assert results[0].parameters["keyid"] == "kid"
    # and a request changed after signing no longer verifies
    message.method = "DELETE"
    if "@method" in components:
        with pytest.raises((InvalidSignature, CryptoInvalidSignature)):
            verifier.verify(message, max_age=None)


def test_query_placement_is_a_config_error() -> None:
    _, problems = build(sign_block("hmac-sha256", "k", SHARED_SECRET, query={"sig": "{signature}"}))
    assert problems == [
        "keyhop.yaml: providers.partner.sign.query: not supported by http_message_signature: "
        "it places its signature in headers only"
    ]
