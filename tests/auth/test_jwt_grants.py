"""oauth2_jwt_bearer (RFC 7523 2.1, Google service accounts) and jwt_exchange (GitHub Apps)
driven by hand; every JWT is verified with joserfc and the public key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from proxy.config import ProviderConfig
from proxy.errors import ConfigError, CredentialError
from proxy.messages import HttpRequest, HttpResponse
from tests.conftest import make_config
from tests.e2e.jwt_fakes import JWT_BEARER_GRANT, key_pair, verify

NOW = 1_700_000_000.0


def provider(entry: dict[str, Any]) -> ProviderConfig:
    config = make_config(
        {
            "providers": {"p": entry},
            "routes": [{"prefix": "/x", "upstream": "https://api.test", "provider": "p"}],
        }
    )
    return config.providers["p"]


def problems(entry: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as failed:
        provider(entry)
    return "\n".join(failed.value.problems)


def first(p: ProviderConfig, tenant: str | None = None, now: float = NOW) -> HttpRequest:
    flow = p.scheme.credential_flow(None, tenant, now)
    assert flow is not None
    return next(flow)


def form(request: HttpRequest) -> dict[str, str]:
    assert request.body is not None
    return {k: v[0] for k, v in parse_qs(request.body.decode()).items()}


def answer(p: ProviderConfig, response: HttpResponse, tenant: str | None = None) -> Any:
    flow = p.scheme.credential_flow(None, tenant, NOW)
    assert flow is not None
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(response)
    return done.value.value


def service_account(tmp_path: Path, **override: Any) -> Path:
    pem, _ = key_pair("RS256", "google")
    data = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "0123abcd",
        "private_key": pem,
        "client_email": "robot@demo.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
        **override,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return path


# --- oauth2_jwt_bearer -------------------------------------------------------------------------


def test_the_jwt_bearer_grant_posts_an_assertion_with_the_configured_claims() -> None:
    pem, public = key_pair("ES256")
    p = provider(
        {
            "auth": {
                "type": "oauth2_jwt_bearer",
                "token_url": "https://login.example.com/services/oauth2/token",
                "key": pem,
                "alg": "ES256",
                "iss": "3MVG9-consumer-key",
                "sub": "user@example.com",
                "aud": "https://login.example.com",
                "lifetime": 180,
            }
        }
    )
    request = first(p)
    assert request.url == "https://login.example.com/services/oauth2/token"
    sent = form(request)
    assert sent["grant_type"] == JWT_BEARER_GRANT
    assert set(sent) == {"grant_type", "assertion"}  # RFC 7523 3.1: no client auth needed
    header, claims = verify(sent["assertion"], "ES256", public)
    assert header["alg"] == "ES256"
    assert claims["iss"] == "3MVG9-consumer-key"
    assert claims["sub"] == "user@example.com"
    assert claims["aud"] == "https://login.example.com"
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW) + 180)
    credential = answer(
        p, HttpResponse(200, {}, b'{"access_token":"t-1","token_type":"Bearer","expires_in":900}')
    )
    assert credential.token == "t-1" and credential.expires_at == NOW + 900


def test_a_google_service_account_file_gives_issuer_key_kid_and_token_url(
    tmp_path: Path,
) -> None:
    _, public = key_pair("RS256", "google")
    scope = "https://www.googleapis.com/auth/cloud-platform"
    p = provider(
        {
            "auth": {
                "type": "oauth2_jwt_bearer",
                "service_account_file": str(service_account(tmp_path)),
                "scope": scope,
            }
        }
    )
    request = first(p)
    assert request.url == "https://oauth2.googleapis.com/token"
    header, claims = verify(form(request)["assertion"], "RS256", public)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "0123abcd"}
    # developers.google.com, "Using OAuth 2.0 for Server to Server Applications"
    assert claims["iss"] == "robot@demo.iam.gserviceaccount.com"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["scope"] == scope
    assert "sub" not in claims
    assert claims["exp"] - claims["iat"] <= 3600


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"type": "authorized_user"}, "is not a service-account key"),
        ({"private_key": None}, "lacks private_key"),
        ({"client_email": None, "token_uri": None}, "lacks client_email, token_uri"),
        ({"token_uri": "http://plain.test/token"}, "token_uri is not an https URL"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"},
            "auth.key: not a readable PEM private key",
        ),
    ],
    ids=["wrong-type", "no-key", "no-email-no-uri", "http-uri", "bad-key"],
)
def test_a_bad_service_account_file_is_a_config_error_that_never_quotes_it(
    tmp_path: Path, override: dict[str, Any], fragment: str
) -> None:
    path = service_account(tmp_path, **override)
    text = problems({"auth": {"type": "oauth2_jwt_bearer", "service_account_file": str(path)}})
    assert fragment in text
    assert "required, missing" not in text  # the file's problem is reported once
    assert "PRIVATE KEY" not in text and "robot@" not in text.replace(str(path), "")


def test_a_missing_or_non_json_service_account_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    text = problems({"auth": {"type": "oauth2_jwt_bearer", "service_account_file": str(missing)}})
    assert f"providers.p.auth.service_account_file: cannot read {missing}" in text
    garbage = tmp_path / "g.json"
    garbage.write_text("-----BEGIN PRIVATE KEY-----")
    text = problems({"auth": {"type": "oauth2_jwt_bearer", "service_account_file": str(garbage)}})
    assert "service_account_file: " in text and "is not JSON" in text
    assert "BEGIN" not in text


def test_without_a_service_account_the_issuer_key_and_token_url_are_required() -> None:
    text = problems({"auth": {"type": "oauth2_jwt_bearer"}})
    for key in ("token_url", "iss", "key"):
        assert f"providers.p.auth.{key}: required, missing" in text


def test_a_jwt_bearer_grant_may_add_client_authentication() -> None:
    pem, _ = key_pair("RS256")
    p = provider(
        {
            "auth": {
                "type": "oauth2_jwt_bearer",
                "token_url": "https://idp.test/token",
                "key": pem,
                "iss": "me",
                "client_id": "cid",
                "client_secret": "sec-123456",
            }
        }
    )
    sent = form(first(p))
    assert sent["client_id"] == "cid" and sent["client_secret"] == "sec-123456"


# --- jwt_exchange and preset github_app ------------------------------------------------------


def github(**auth: Any) -> dict[str, Any]:
    pem, _ = key_pair("RS256", "github")
    return {"preset": "github_app", "auth": {"iss": "123456", "key": pem, **auth}}


def test_github_app_posts_an_rs256_app_jwt_to_the_installations_access_tokens_url() -> None:
    _, public = key_pair("RS256", "github")
    request = first(provider(github()), tenant="98765")
    assert request.method == "POST"
    assert request.url == "https://api.github.com/app/installations/98765/access_tokens"
    # docs.github.com "Generating an installation access token for a GitHub App"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    scheme, token = request.headers["Authorization"].split(" ")
    assert scheme == "Bearer"
    header, claims = verify(token, "RS256", public)
    assert header["alg"] == "RS256"
    # "Generating a JSON Web Token (JWT) for a GitHub App": iat 60 s in the past against
    # clock drift, exp no more than 10 minutes into the future, iss the app id
    assert claims == {"iat": int(NOW) - 60, "exp": int(NOW) + 540, "iss": "123456"}


def test_the_installation_token_and_its_iso_8601_expiry_are_read_from_the_answer() -> None:
    p = provider(github())
    body = b'{"token":"ghs_abc","expires_at":"2023-11-14T23:13:20Z","permissions":{}}'
    credential = answer(p, HttpResponse(201, {}, body), tenant="1")
    assert credential.token == "ghs_abc"
    assert credential.expires_at == 1_700_003_600.0  # 2023-11-14T23:13:20Z


def test_an_expires_in_path_is_seconds_from_now() -> None:
    p = provider(github(expires_at_path=None, expires_in_path="data.ttl", token_path="data.t"))
    credential = answer(p, HttpResponse(200, {}, b'{"data":{"t":"x1","ttl":120}}'), tenant="1")
    assert (credential.token, credential.expires_at) == ("x1", NOW + 120)


@pytest.mark.parametrize(
    ("status", "body", "fragment", "code"),
    [
        (
            401,
            b'{"message":"A JSON web token could not be decoded"}',
            "refused: A JSON web token could not be decoded (HTTP 401)",
            "A JSON web token could not be decoded",
        ),
        (201, b'{"token":"ghs_x","expires_at":"2000-01-01T00:00:00Z"}', "past expiry", None),
        (201, b'{"token":"ghs_x"}', "missing or past expiry", None),
        (201, b'{"expires_at":"2030-01-01T00:00:00Z"}', "answered without token", None),
        (502, b"<html>bad gateway</html>", "answered HTTP 502", None),
    ],
    ids=["refused", "past", "no-expiry", "no-token", "html"],
)
def test_a_bad_answer_is_a_credential_error_with_the_endpoints_code(
    status: int, body: bytes, fragment: str, code: str | None
) -> None:
    with pytest.raises(CredentialError) as failed:
        answer(provider(github()), HttpResponse(status, {}, body), tenant="1")
    assert fragment in failed.value.message
    assert failed.value.vendor_code == code


def test_a_token_url_with_tenant_needs_a_tenant() -> None:
    with pytest.raises(CredentialError, match="needs a tenant"):
        first(provider(github()), tenant=None)


def test_github_app_vectors_pin_the_header_and_claims() -> None:
    vector = {
        "given": {"now": 1_700_000_000},
        "expect": {
            "header": {"alg": "RS256", "typ": "JWT"},
            "claims": {"iat": 1_699_999_940, "exp": 1_700_000_540, "iss": "123456"},
        },
    }
    provider(github(vectors=[vector]))
    vector["expect"]["claims"]["exp"] = 1_700_000_600  # type: ignore[index]
    text = problems(github(vectors=[vector]))
    assert "providers.p.auth.vectors[0].expect.claims: computed" in text


def test_jwt_exchange_config_errors_are_located() -> None:
    text = problems(
        {
            "auth": {
                "type": "jwt_exchange",
                "token_url": "https://x.test/t",
                "key": key_pair("ES256")[0],
                "alg": "HS256",
                "claims": {"iss": "x"},
                "expires_at_path": "a",
                "expires_in_path": "b",
            }
        }
    )
    assert "providers.p.auth.iss: required, missing" in text
    assert "providers.p.auth.alg: unknown 'HS256'; expected one of: RS256, PS256, ES256" in text
    assert "providers.p.auth.claims.iss: set by keyhop" in text
    assert "providers.p.auth.expires_in_path: give expires_at_path or" in text


def test_jwt_exchange_takes_other_algorithms_and_extra_claims() -> None:
    pem, public = key_pair("EdDSA")
    p = provider(
        {
            "auth": {
                "type": "jwt_exchange",
                "token_url": "https://x.test/t/{tenant}",
                "key": pem,
                "alg": "EdDSA",
                "iss": "svc",
                "aud": "https://x.test",
                "claims": {"org": "acme"},
                "lifetime": 120,
            },
            "tenants": True,
        }
    )
    request = first(p, tenant="a.b~c")
    assert request.url == "https://x.test/t/a.b~c"
    claims = verify(request.headers["Authorization"][7:], "EdDSA", public)[1]
    assert claims == {
        "org": "acme",
        "iss": "svc",
        "aud": "https://x.test",
        "iat": int(NOW),
        "exp": int(NOW) + 120,
    }
