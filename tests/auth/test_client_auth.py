"""client_auth: what each method adds to a token request, checked with joserfc, and its config
errors (located, the key never quoted)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.auth import SchemeContext, build_scheme
from proxy.auth.client_auth import ClientAuth
from proxy.config import ProviderConfig
from proxy.errors import ConfigError
from proxy.messages import HttpRequest
from proxy.schema import Node, Problems
from tests.conftest import make_config
from tests.e2e.jwt_fakes import ASSERTION_TYPE, key_pair, verify

TOKEN_URL = "https://idp.test/oauth2/token"


def provider(auth: dict[str, Any]) -> ProviderConfig:
    config = make_config(
        {
            "providers": {"p": {"auth": auth}},
            "routes": [{"prefix": "/x", "upstream": "https://api.test", "provider": "p"}],
        }
    )
    return config.providers["p"]


def problems(auth: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as failed:
        provider(auth)
    return "\n".join(failed.value.problems)


def cc(client_auth: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": TOKEN_URL,
        "client_id": "client-42",
        "client_auth": client_auth,
        **extra,
    }


def first_request(p: ProviderConfig, now: float = 1_700_000_000.0) -> HttpRequest:
    flow = p.scheme.credential_flow(None, None, now)
    assert flow is not None
    return next(flow)


def form(request: HttpRequest) -> dict[str, str]:
    assert request.body is not None
    return {k: v[0] for k, v in parse_qs(request.body.decode()).items()}


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_private_key_jwt_sends_an_rfc_7523_assertion_that_the_public_key_verifies(
    alg: str,
) -> None:
    pem, public = key_pair(alg)
    p = provider(cc({"type": "private_key_jwt", "key": pem, "alg": alg, "kid": "k-1"}))
    request = first_request(p, now=1_700_000_000.0)
    sent = form(request)
    assert "Authorization" not in request.headers
    assert sent["grant_type"] == "client_credentials"
    assert sent["client_assertion_type"] == ASSERTION_TYPE
    assert "client_secret" not in sent
    header, claims = verify(sent["client_assertion"], alg, public)
    assert header == {"alg": alg, "typ": "JWT", "kid": "k-1"}
    assert claims["iss"] == claims["sub"] == "client-42"
    assert claims["aud"] == TOKEN_URL  # RFC 7523 3: the token endpoint by default
    assert claims["iat"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_060  # the default lifetime: 60 s
    assert len(claims["jti"]) >= 16


def test_every_assertion_has_a_fresh_jti() -> None:
    pem, public = key_pair("ES256")
    p = provider(cc({"type": "private_key_jwt", "key": pem, "alg": "ES256"}))
    jtis = {verify(form(first_request(p))["client_assertion"], "ES256", public)[1]["jti"]}
    for _ in range(9):
        jtis.add(verify(form(first_request(p))["client_assertion"], "ES256", public)[1]["jti"])
    assert len(jtis) == 10


def test_aud_and_lifetime_can_be_set() -> None:
    pem, public = key_pair("RS256")
    entry = {"type": "private_key_jwt", "key": pem, "aud": "https://idp.test/", "lifetime": 30}
    claims = verify(
        form(first_request(provider(cc(entry)), 100.0))["client_assertion"], "RS256", public
    )[1]
    assert claims["aud"] == "https://idp.test/"
    assert claims["exp"] - claims["iat"] == 30


def test_client_secret_jwt_signs_hs256_with_the_client_secret() -> None:
    secret = "s" * 40
    p = provider(cc({"type": "client_secret_jwt"}, client_secret=secret))
    sent = form(first_request(p))
    header, claims = verify(sent["client_assertion"], "HS256", secret)
    assert header["alg"] == "HS256"
    assert claims["iss"] == claims["sub"] == "client-42"
    assert "client_secret" not in sent  # the secret itself never travels


def test_client_secret_jwt_refuses_a_secret_shorter_than_rfc_7518_allows() -> None:
    text = problems(cc("client_secret_jwt", client_secret="short-secret-17ch"))
    assert "providers.p.auth.client_secret: HS256 needs a key of >= 32 bytes" in text
    assert "short-secret-17ch" not in text


def test_tls_client_auth_sends_only_the_client_id_when_the_provider_has_a_certificate() -> None:
    problems_ = Problems("t.yaml")
    node = Node(
        {
            "type": "oauth2_client_credentials",
            "token_url": TOKEN_URL,
            "client_id": "c-9",
            "client_auth": "tls_client_auth",
        },
        "providers.p.auth",
        problems_,
    )
    scheme = build_scheme(node, SchemeContext("p", None, client_certificate=True))
    assert problems_.items == []
    assert scheme is not None
    flow = scheme.credential_flow(None, None, 0.0)
    assert flow is not None
    request = next(flow)
    assert form(request) == {"grant_type": "client_credentials", "client_id": "c-9"}
    assert "Authorization" not in request.headers


def test_tls_client_auth_without_a_client_certificate_is_a_config_error() -> None:
    text = problems(cc("tls_client_auth"))
    assert "providers.p.auth.client_auth: tls_client_auth needs a client certificate" in text


def test_an_unknown_method_is_located_and_the_known_ones_listed() -> None:
    text = problems(cc("private_key"))
    assert (
        "providers.p.auth.client_auth: unknown 'private_key'; expected one of: basic, body, "
        "client_secret_jwt, private_key_jwt, tls_client_auth"
    ) in text


def test_the_secret_is_required_only_by_the_methods_that_use_it() -> None:
    pem, _ = key_pair("RS256")
    provider(cc({"type": "private_key_jwt", "key": pem}))  # no client_secret: fine
    assert "providers.p.auth.client_secret: required, missing" in problems(cc("basic"))


def _pem_of(key: Any, password: bytes | None = None) -> str:
    encryption: Any = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


@pytest.mark.parametrize(
    ("make_key", "alg", "fragment"),
    [
        (lambda: key_pair("ES256")[0], "RS256", "RS256 needs an RSA key"),
        (lambda: key_pair("RS256")[0], "ES256", "ES256 needs a P-256 EC key"),
        (lambda: key_pair("RS256")[0], "EdDSA", "EdDSA needs an Ed25519 or Ed448 key"),
        (
            lambda: _pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "RS256",
            "RS256 needs an RSA key of >= 2048 bits",
        ),
        (
            lambda: _pem_of(
                rsa.generate_private_key(public_exponent=65537, key_size=2048), b"pass-phrase"
            ),
            "RS256",
            "the PEM key is encrypted",
        ),
        (
            lambda: "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
            "RS256",
            "not a readable PEM private key",
        ),
        (lambda: "just-some-text", "RS256", "not a PEM private key"),
    ],
    ids=[
        "ec-for-rs256",
        "rsa-for-es256",
        "rsa-for-eddsa",
        "rsa-1024",
        "encrypted",
        "garbage",
        "not-pem",
    ],
)
def test_a_key_that_cannot_sign_is_a_located_error_that_never_shows_the_key(
    make_key: Any, alg: str, fragment: str
) -> None:
    pem = make_key()
    text = problems(cc({"type": "private_key_jwt", "key": pem, "alg": alg}))
    assert f"providers.p.auth.client_auth.key: {fragment}" in text
    body = [line for line in pem.splitlines() if "-----" not in line]
    assert all(line not in text for line in body if len(line) > 8)


def test_an_encrypted_key_loads_with_its_passphrase() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem_of(key, b"pass-phrase")
    entry = {"type": "private_key_jwt", "key": pem, "key_passphrase": "pass-phrase"}
    request = first_request(provider(cc(entry)))
    public = _public(key)
    assert verify(form(request)["client_assertion"], "RS256", public)[1]["sub"] == "client-42"


def _public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


VECTOR = {
    "given": {"now": 1_700_000_000, "jti": "abc"},
    "expect": {
        "header": {"alg": "ES256", "typ": "JWT", "kid": "k-7"},
        "claims": {
            "iss": "client-42",
            "sub": "client-42",
            "aud": TOKEN_URL,
            "jti": "abc",
            "iat": 1_700_000_000,
            "exp": 1_700_000_060,
        },
    },
}


def test_a_vector_that_matches_loads() -> None:
    pem, _ = key_pair("ES256")
    entry = {"type": "private_key_jwt", "key": pem, "alg": "ES256", "kid": "k-7"}
    provider(cc({**entry, "vectors": [VECTOR]}))


def test_a_vector_that_differs_is_a_located_error_showing_both_sides_never_the_key() -> None:
    pem, _ = key_pair("ES256")
    wrong = {
        "given": VECTOR["given"],
        "expect": {**VECTOR["expect"], "claims": {**VECTOR["expect"]["claims"], "exp": 1}},  # type: ignore[dict-item]
    }
    entry = {"type": "private_key_jwt", "key": pem, "alg": "ES256", "kid": "k-7"}
    text = problems(cc({**entry, "vectors": [VECTOR, wrong]}))
    assert "providers.p.auth.client_auth.vectors[1].expect.claims: computed" in text
    assert '"exp": 1700000060' in text and '"exp": 1,' in text
    assert "vectors[0]" not in text
    assert "PRIVATE KEY" not in text and pem.splitlines()[1] not in text


def test_vectors_on_a_method_that_signs_nothing_are_an_error() -> None:
    text = problems(cc({"type": "body", "vectors": [VECTOR]}, client_secret="x" * 8))
    assert "providers.p.auth.client_auth.vectors: only the JWT methods sign" in text


def test_the_refresh_grant_authenticates_with_the_client_assertion_too() -> None:
    pem, public = key_pair("RS256")
    p = provider(
        {
            "type": "oauth2_authorization_code",
            "authorize_url": "https://idp.test/authorize",
            "token_url": TOKEN_URL,
            "client_id": "client-42",
            "client_auth": {"type": "private_key_jwt", "key": pem},
        }
    )
    from proxy.tokens import Credential

    flow = p.scheme.credential_flow(Credential("old", 0.0, refresh_token="rt-1"), None, 50.0)
    assert flow is not None
    sent = form(next(flow))
    assert sent["grant_type"] == "refresh_token" and sent["refresh_token"] == "rt-1"
    assert verify(sent["client_assertion"], "RS256", public)[1]["iss"] == "client-42"


def test_reprs_show_no_key_or_secret() -> None:
    pem, _ = key_pair("RS256")
    p = provider(cc({"type": "private_key_jwt", "key": pem}))
    text = repr(p.scheme) + repr(p)
    assert "PRIVATE KEY" not in text and pem.splitlines()[1] not in text
    auth = ClientAuth("body", "c", None)
    assert "secret=" not in repr(auth)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"X-Ok": "a\r\nX-Injected: 1"}, "token_headers.X-Ok: the value holds a line break"),
        ({"X-Ok": "a\nb"}, "token_headers.X-Ok: the value holds a line break"),
        ({"X-Ok": "nul\x00"}, "token_headers.X-Ok: the value holds a line break"),
        ({"Bad Name": "value-1"}, "token_headers.Bad Name: not a valid header name"),
        ({"X:Colon": "value-2"}, "token_headers.X:Colon: not a valid header name"),
    ],
    ids=["crlf", "lf", "nul", "space-in-name", "colon-in-name"],
)
def test_token_headers_follow_the_header_rules_and_the_value_is_never_quoted(
    headers: dict[str, str], fragment: str
) -> None:
    text = problems(cc("basic", client_secret="sec-123456", token_headers=headers))
    assert f"providers.p.auth.{fragment}" in text
    for value in headers.values():
        assert value not in text


def test_the_private_key_is_among_the_secrets_the_redactor_scrubs() -> None:
    pem, _ = key_pair("RS256")
    config = make_config(
        {
            "providers": {"p": {"auth": cc({"type": "private_key_jwt", "key": pem})}},
            "routes": [{"prefix": "/x", "upstream": "https://api.test", "provider": "p"}],
        }
    )
    assert pem in config.secrets


def test_jwt_options_on_a_method_that_signs_nothing_are_unknown_keys() -> None:
    text = problems(cc({"type": "basic", "lifetime": 30}, client_secret="sec-123456"))
    assert "providers.p.auth.client_auth.lifetime: unknown key" in text
