"""The signer registry: every config error located and named, vectors proved at load with
the computed message shown and the key never, the old names kept as recipes."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from proxy.schema import Secret
from proxy.signers import (
    ALIASES,
    PAYNET_RECIPE,
    SAISON_RECIPE,
    SIGNERS,
    SignContext,
    UnsafeSignature,
)
from tests.signers.helpers import build, built, make_request

P = "keyhop.yaml: providers.partner.sign"
HMAC = {"type": "hmac", "message": "{timestamp}", "headers": {"X-Sig": "{signature}"}}
PEM_RSA = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----"""


def test_the_registry_holds_the_four_signers_and_the_two_old_names() -> None:
    assert sorted(SIGNERS) == ["aws_sigv4", "hmac", "http_message_signature", "oauth1"]
    assert ALIASES == {"x_signature": PAYNET_RECIPE, "mac": SAISON_RECIPE}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"type": "foo"},
            [
                f"{P}.type: unknown 'foo'; expected one of: aws_sigv4, hmac, "
                "http_message_signature, mac, oauth1, x_signature"
            ],
            id="unknown-type-lists-the-known-ones",
        ),
        pytest.param({}, [f"{P}.type: required, missing"], id="no-type"),
        pytest.param(
            {**HMAC, "message": "{timestamp}{nonse}"},
            [f"{P}.message: unknown placeholder {{nonse}}; known: "],
            id="unknown-placeholder",
        ),
        pytest.param(
            {**HMAC, "message": "{timestamp"},
            [f"{P}.message: unbalanced '{{' at position 0: '{{timestamp' is not closed"],
            id="unclosed-brace",
        ),
        pytest.param(
            {**HMAC, "message": "a}b"},
            [f"{P}.message: unbalanced '}}' at position 1 (write '}}}}' for a brace)"],
            id="stray-closing-brace",
        ),
        pytest.param(
            {**HMAC, "message": "{header}"},
            [f"{P}.message: {{header}} needs a field name: {{header:Name}}"],
            id="header-without-a-name",
        ),
        pytest.param(
            {**HMAC, "message": "{sha257_raw:{body}}"},
            [f"{P}.message: unknown function {{sha257_raw:...}}; known: header, form, "],
            id="unknown-function",
        ),
        pytest.param(
            {**HMAC, "headers": {"X-Sig": "{signature}\r\nX-Evil: 1"}},
            [
                f"{P}.headers.X-Sig: a header template may not hold a line break "
                "or control character"
            ],
            id="line-break-in-a-header-template",
        ),
        pytest.param(
            {**HMAC, "headers": {"Bad Name": "{signature}"}},
            [f"{P}.headers.Bad Name: not a valid header name (RFC 9110 5.1)"],
            id="bad-header-name",
        ),
        pytest.param(
            {**HMAC, "message": "{signature}"},
            [f"{P}.message: unknown placeholder {{signature}}; known: "],
            id="the-message-cannot-use-its-own-signature",
        ),
        pytest.param(
            {"type": "hmac", "message": "m"},
            [f"{P}.headers: required: where the signature goes (`headers` and/or `query`)"],
            id="no-placement",
        ),
        pytest.param(
            {**HMAC, "key": "zz-not-hex", "key_encoding": "hex"},
            [f"{P}.key: not valid hex (key_encoding: hex)"],
            id="key-not-hex",
        ),
        pytest.param(
            {**HMAC, "key": "not base64!", "key_encoding": "base64"},
            [f"{P}.key: not valid base64 (key_encoding: base64)"],
            id="key-not-base64",
        ),
        pytest.param(
            {**HMAC, "algorithm": "md5"},
            [f"{P}.algorithm: unknown 'md5'; expected one of: sha256, sha1, sha384, sha512"],
            id="unknown-algorithm",
        ),
        pytest.param(
            {**HMAC, "mesage": "x"},
            [f"{P}.mesage: unknown key; did you mean 'message'?"],
            id="typo-in-a-key",
        ),
        pytest.param(
            {**HMAC, "body_max_bytes": 0},
            [f"{P}.body_max_bytes: expected a whole number >= 1, found 0"],
            id="body-max-bytes-zero",
        ),
        pytest.param(
            {
                "type": "http_message_signature",
                "algorithm": "ed25519",
                "key_id": "k",
                "key": PEM_RSA,
            },
            [f"{P}.key: not a PEM private key (unencrypted) for ed25519"],
            id="a-public-pem-for-a-private-key",
        ),
        pytest.param(
            {
                "type": "http_message_signature",
                "algorithm": "hmac-sha256",
                "key_id": "k",
                "key": "a2V5",
                "components": ["@method", "Content-Type", "@bogus"],
            },
            [
                f"{P}.components[1]: unknown component 'Content-Type'; expected a lowercase",
                f"{P}.components[2]: unknown component '@bogus'; expected a lowercase",
            ],
            id="bad-components",
        ),
        pytest.param(
            {"type": "oauth1", "consumer_key": "ck", "query": {"s": "{signature}"}},
            [f"{P}.query: not supported by oauth1: it places its signature in headers only"],
            id="query-placement-on-a-headers-only-signer",
        ),
        pytest.param(
            {"type": "aws_sigv4", "access_key_id": "A"},
            [f"{P}.region: required, missing", f"{P}.service: required, missing"],
            id="aws-without-region-and-service",
        ),
    ],
)
def test_config_errors_name_the_key_path(raw: dict[str, Any], expected: list[str]) -> None:
    signer, problems = build(raw)
    assert signer is None
    assert len(problems) == len(expected), problems
    for got, want in zip(problems, expected, strict=True):
        assert got.startswith(want), got


def test_no_key_and_no_client_secret_is_a_config_error() -> None:
    _, problems = build(HMAC, default_key=None)
    assert problems == [f"{P}.key: required: this auth type has no client secret to sign with"]


def test_a_key_that_does_not_decode_is_never_quoted() -> None:
    secret = "SECRET-not-base64-%%%"
    _, problems = build({**HMAC, "key": secret, "key_encoding": "base64"})
    assert problems and all(secret not in p for p in problems)


def test_body_max_bytes_defaults_to_one_mebibyte_and_can_be_set() -> None:
    assert built(HMAC).body_max_bytes == 1024 * 1024
    assert built({**HMAC, "body_max_bytes": 4096}).body_max_bytes == 4096


def test_old_names_build_their_recipes_and_keys_beside_them_override() -> None:
    paynet = built({"type": "x_signature", "key": "my_secret_key"})
    sig = paynet.sign(make_request(), SignContext(now=1700000000.0))
    assert dict(sig.headers)["X-Signature"] == (
        "70ba7735fc01fec6d9d374332ea71c0c6183f4ac57273c8d8f7ca36fbf4dc359"
    )
    saison = built({"type": "mac"}, default_key="my_client_secret")
    request = make_request("POST", "/auth/account/profile", host="apit.saisoncard.co.jp")
    sig = saison.sign(request, SignContext(now=1700000000.0, token="at-123", nonce="abcde12345"))
    assert sig.signature == "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU="


def test_an_unknown_key_beside_an_old_name_is_still_reported() -> None:
    _, problems = build({"type": "x_signature", "kee": "x"})
    assert problems == [f"{P}.kee: unknown key; did you mean 'key'?"]


# --- vectors ---------------------------------------------------------------------------------


def _vector(**expect: str) -> dict[str, Any]:
    return {"given": {"timestamp": "1700000000", "key": "example-key-XYZ"}, "expect": expect}


def test_a_matching_vector_passes() -> None:
    want = hmac.new(b"example-key-XYZ", b"1700000000", hashlib.sha256).hexdigest()
    _, problems = build({**HMAC, "vectors": [_vector(signature=want, message="1700000000")]})
    assert problems == []


def test_a_mismatching_vector_shows_computed_next_to_expected_never_the_key() -> None:
    secret = "configured-KEY-123"
    raw = {
        "type": "hmac",
        "key": secret,
        "message": "{timestamp}\n{method} {target}",
        "headers": {"X-Sig": "{signature}"},
        "vectors": [
            {
                "given": {
                    "timestamp": "1700000000",
                    "method": "POST",
                    "target": "/orders",
                    "key": "example-key-XYZ",
                },
                "expect": {"message": "1700000000\nPOST /order", "signature": "deadbeef"},
            }
        ],
    }
    _, problems = build(raw)
    assert problems[0] == (
        f'{P}.vectors[0]: computed message "1700000000\\nPOST /orders" does not match '
        'the expected "1700000000\\nPOST /order"'
    )
    assert problems[1].startswith(f'{P}.vectors[0]: computed signature "')
    assert problems[1].endswith('does not match the expected "deadbeef"')
    assert all(secret not in p and "example-key-XYZ" not in p for p in problems)


def test_a_secret_var_in_the_message_is_redacted_when_shown() -> None:
    raw = {**HMAC, "message": "{app_secret}:{timestamp}", "vectors": [_vector(message="x")]}
    _, problems = build(raw, static_vars={"app_secret": Secret("VERY-SECRET-VAR")})
    assert problems == [
        f'{P}.vectors[0]: computed message "***:1700000000" does not match the expected "x"'
    ]


def test_the_configured_key_is_used_when_the_vector_has_none() -> None:
    want = hmac.new(b"client-secret-1", b"5", hashlib.sha256).hexdigest()
    vector = {"given": {"timestamp": "5"}, "expect": {"signature": want}}
    _, problems = build({**HMAC, "vectors": [vector]})
    assert problems == []


def test_vector_typos_and_empty_expectations_are_reported() -> None:
    vectors = [{"given": {"timestmp": "1"}, "expect": {}}]
    _, problems = build({**HMAC, "vectors": vectors})
    assert problems[0].startswith(f"{P}.vectors[0].given.timestmp: unknown key; did you mean")
    assert (
        problems[1]
        == f"{P}.vectors[0].expect: needs `message`, `signature` and/or `headers` to compare"
    )


def test_a_vector_whose_key_does_not_decode_is_reported_without_it() -> None:
    raw = {**HMAC, "key": "a2V5", "key_encoding": "base64"}
    vector = {"given": {"key": "%%not-base64%%", "timestamp": "1"}, "expect": {"signature": "x"}}
    _, problems = build({**raw, "vectors": [vector]})
    assert problems == [f"{P}.vectors[0]: could not sign the example: not valid base64"]


def test_a_default_key_that_does_not_decode_says_it_is_the_client_secret() -> None:
    _, problems = build({**HMAC, "key_encoding": "hex"}, default_key="not-hex")
    assert problems == [
        f"{P}.key: the client secret (the default key) is not valid hex (key_encoding: hex)"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        {**HMAC, "key": "SECRET-hmac-key"},
        {
            "type": "aws_sigv4",
            "region": "r",
            "service": "s",
            "access_key_id": "AKID",
            "secret_access_key": "SECRET-aws-key",
            "session_token": "SECRET-session",
        },
        {
            "type": "oauth1",
            "consumer_key": "ck",
            "consumer_secret": "SECRET-consumer",
            "token_secret": "SECRET-token",
        },
        {
            "type": "http_message_signature",
            "algorithm": "hmac-sha256",
            "key_id": "k",
            "key": "SECRET",
            "key_encoding": "raw",
        },
    ],
    ids=["hmac", "aws_sigv4", "oauth1", "http_message_signature"],
)
def test_no_signer_shows_a_secret_in_its_repr_and_each_lists_them_for_redaction(
    raw: dict[str, Any],
) -> None:
    signer = built(raw)
    assert "SECRET" not in repr(signer)
    listed = {s for s in signer.secrets() if s}
    assert listed and all(s.startswith("SECRET") for s in listed)


def test_the_authority_brackets_ipv6_and_omits_the_default_port() -> None:
    assert make_request(host="::1", port=8443).authority == "[::1]:8443"
    assert make_request(host="example.com", port=443).authority == "example.com"
    assert make_request(host="example.com", scheme="http", port=443).authority == (
        "example.com:443"
    )


@pytest.mark.parametrize("seed", range(200))
def test_any_recipe_text_is_a_config_error_or_a_signer_that_signs(seed: int) -> None:
    import random

    rng = random.Random(seed)
    pieces = [
        "{method}", "{path}", "{query}", "{query&}", "{target}", "{host}", "{port}",
        "{scheme}", "{authority}", "{timestamp}", "{nonce}", "{token}", "{client_id}",
        "{tenant}", "{body}", "{body_sha256}", "{body_sha256_b64}", "{header:Date}",
        "{form:a}", "{header}", "{sha512_raw:", "{base64:", "}", "{", "{{", "}}", "x", "\n",
        "{signature}", "{v}",
    ]  # fmt: skip
    message = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
    header = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
    raw = {**HMAC, "message": message, "headers": {"X-Sig": header}, "vars": {"v": "V"}}
    signer, problems = build(raw)
    if signer is None:
        assert problems and all(p.startswith(P) for p in problems)
        return
    request = make_request(
        "POST", "/a?b=1", headers=(("Date", "d"),), body=b"a=1" if signer.needs_body else None
    )
    try:
        signer.sign(request, SignContext(now=1.0, token="t"))
    except UnsafeSignature:
        pass  # a raw digest in a header: refused (502), never sent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"type": "aws_sigv4", "region": "eu west", "service": "s3", "access_key_id": "A"},
            f"{P}.region: expected lowercase letters, digits and '-'",
        ),
        (
            {"type": "oauth1", "consumer_key": "ck", "realm": 'a"b'},
            f"{P}.realm: expected printable text without",
        ),
    ],
    ids=["aws-region-with-a-space", "oauth1-realm-with-a-quote"],
)
def test_values_that_would_break_the_header_are_config_errors(
    raw: dict[str, Any], expected: str
) -> None:
    _, problems = build(raw)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_applied_replaces_same_named_headers_and_appends_query_parameters() -> None:
    from proxy.signers.base import Signature, applied

    request = make_request("GET", "/x?a=1", headers=(("x-signature", "old"), ("Accept", "*/*")))
    sig = Signature(headers=(("X-Signature", "new"),), query=(("timestamp", "5"), ("s", "ab")))
    assert applied(request, sig) == (
        (("Accept", "*/*"), ("X-Signature", "new")),
        "a=1&timestamp=5&s=ab",
    )
    assert applied(make_request("GET", "/x"), sig)[1] == "timestamp=5&s=ab"
    assert applied(request, Signature()) == (request.headers, "a=1")
