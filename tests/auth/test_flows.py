"""Each auth scheme's flow driven by hand: what it sends, what it makes of the answer."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.auth.app_install import AppInstall
from proxy.auth.oauth2 import AuthorizationCode
from proxy.auth.session_login import SessionLogin
from proxy.errors import CredentialError, NotConnected
from proxy.messages import HttpRequest, HttpResponse
from proxy.providers import ProviderConfig
from proxy.signing import hmac_hex, sesami_message
from proxy.tokens import Credential
from tests.conftest import make_config


def provider(
    name: str, entry: dict[str, Any], upstream: str = "https://api.test"
) -> ProviderConfig:
    config = make_config(
        {
            "providers": {name: entry},
            "routes": [{"prefix": "/x", "upstream": upstream, "provider": name}],
        }
    )
    return config.providers[name]


def ok(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps(body).encode())


def form(request: HttpRequest) -> dict[str, str]:
    assert request.body is not None
    return {k: v[0] for k, v in parse_qs(request.body.decode()).items()}


KIBO = {
    "preset": "kibo",
    "auth": {"client_id": "id:with:colons", "client_secret": "se+cret/=="},
}


def test_kibo_sends_basic_auth_with_the_issued_strings_as_they_are() -> None:
    scheme = provider("kibo", KIBO).scheme
    flow = scheme.credential_flow(None, None, now=100.0)
    assert flow is not None
    request = next(flow)
    assert request.method == "POST"
    assert request.url == "https://auth.shopatron.com/oauthserver/oauth2/token"
    basic = base64.b64decode(request.headers["Authorization"].removeprefix("Basic "))
    assert basic == b"id:with:colons:se+cret/=="
    assert form(request) == {"grant_type": "client_credentials"}
    assert "API-Key" not in request.headers  # never on the token call
    with pytest.raises(StopIteration) as done:
        flow.send(ok({"access_token": "a1", "token_type": "bearer", "expires_in": 3600}))
    assert done.value.value.token == "a1"
    assert done.value.value.expires_at == 3700.0


def test_paynet_sends_client_id_and_secret_in_the_body_to_slash_token() -> None:
    entry = {"preset": "paynet", "auth": {"client_id": "cid", "client_secret": "sec"}}
    entry["vars"] = {"fiid": "FI1"}
    scheme = provider("paynet", entry, "https://osp.test").scheme
    flow = scheme.credential_flow(None, None, now=0.0)
    assert flow is not None
    request = next(flow)
    assert request.url == "https://osp.test/token"
    assert "Authorization" not in request.headers
    assert form(request) == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": "sec",
    }


def test_client_credentials_sends_scope_token_params_and_token_headers() -> None:
    scheme = provider(
        "p",
        {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://auth.test/t",
                "client_id": "c",
                "client_secret": "s",
                "scope": "read write",
                "token_params": {"audience": "api"},
                "token_headers": {"X-Tenant": "t1"},
            }
        },
    ).scheme
    flow = scheme.credential_flow(None, None, 0.0)
    assert flow is not None
    request = next(flow)
    assert form(request)["scope"] == "read write"
    assert form(request)["audience"] == "api"
    assert request.headers["X-Tenant"] == "t1"


SAISON = {
    "preset": "saison",
    "auth": {"client_id": "sc", "client_secret": "ss"},
}


def test_saison_without_a_stored_login_is_not_connected_and_says_how_to_connect() -> None:
    scheme = provider("saison", SAISON).scheme
    with pytest.raises(NotConnected) as info:
        scheme.credential_flow(None, "member1", 0.0)
    assert "keyhop login saison --tenant member1" in info.value.message
    assert "/-/oauth/saison/login?tenant=member1" in info.value.message


def test_saison_refresh_carries_api_version_and_form_credentials_and_keeps_rotation() -> None:
    scheme = provider("saison", SAISON, "https://apit.saisoncard.co.jp").scheme
    previous = Credential("old", 10.0, 0.0, refresh_token="r1")
    flow = scheme.credential_flow(previous, "m1", 5.0)
    assert flow is not None
    request = next(flow)
    assert request.url == "https://apit.saisoncard.co.jp/auth/token"
    assert request.headers["X-API-VERSION"] == "1"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(request) == {
        "grant_type": "refresh_token",
        "refresh_token": "r1",
        "client_id": "sc",
        "client_secret": "ss",
    }
    with pytest.raises(StopIteration) as done:
        flow.send(ok({"access_token": "a2", "refresh_token": "r2", "expires_in": 60}))
    assert done.value.value.refresh_token == "r2"


def test_saison_authorize_url_names_the_member_and_the_client() -> None:
    scheme = provider("saison", SAISON, "https://apit.saisoncard.co.jp").scheme
    assert isinstance(scheme, AuthorizationCode)
    url = scheme.authorization_url("st", "M9", None, None)
    parts = urlsplit(url)
    assert parts.path == "/auth/screen/M9/authorize"
    query = parse_qs(parts.query)
    assert query["client_id"] == ["sc"]
    assert query["response_type"] == ["code"]
    assert query["state"] == ["st"]


def test_pkce_adds_an_s256_challenge() -> None:
    entry = {**SAISON, "auth": {**SAISON["auth"], "pkce": True}}  # type: ignore[dict-item]
    scheme = provider("saison", entry).scheme
    assert isinstance(scheme, AuthorizationCode)
    query = parse_qs(urlsplit(scheme.authorization_url("s", "m", None, "chal")).query)
    assert query["code_challenge"] == ["chal"]
    assert query["code_challenge_method"] == ["S256"]


SPAAZA = {
    "preset": "spaaza_admin",
    "auth": {"credentials": {"username": "admin@example.com", "password": "pw-123456"}},
}


def test_spaaza_login_posts_the_form_and_reads_the_session_headers_and_expiry() -> None:
    scheme = provider("spaaza", SPAAZA, "https://api0.spaaza.com").scheme
    flow = scheme.credential_flow(None, None, 0.0)
    assert flow is not None
    request = next(flow)
    assert request.url == "https://api0.spaaza.com/auth/login"
    assert form(request) == {"username": "admin@example.com", "password": "pw-123456"}
    assert "X-Spaaza-MyPrice-App-Hostname" not in request.headers
    info = {
        "session_user_id": 42,
        "session_key": "k" * 32,
        "session_key_validity": 24,
        "session_expires_date": "2023-11-15 22:13:20",
    }
    with pytest.raises(StopIteration) as done:
        flow.send(ok({"results": {"session_info": info}}))
    cred = done.value.value
    assert scheme.credential_headers(cred) == {
        "X-Spaaza-Session-User-Id": "42",
        "X-Spaaza-Session-Key": "k" * 32,
    }
    assert cred.expires_at == 1700086400.0


def test_spaaza_login_falls_back_to_the_validity_in_hours() -> None:
    scheme = provider("spaaza", SPAAZA).scheme
    assert isinstance(scheme, SessionLogin)
    info = {"session_user_id": 1, "session_key": "k", "session_key_validity": 2}
    cred = scheme.parse_login(ok({"results": {"session_info": info}}), 100.0)
    assert cred.expires_at == 100.0 + 7200


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"error": {"code": 31, "name": "login_failed"}}, "login_failed"),
        ({"error": {"code": 77, "name": "otp_required"}}, "otp_required"),
    ],
    ids=["bad-password", "one-time-passcode"],
)
def test_a_refused_login_is_a_credential_error_naming_the_vendor_error(
    body: dict[str, Any], name: str
) -> None:
    scheme = provider("spaaza", SPAAZA).scheme
    assert isinstance(scheme, SessionLogin)
    with pytest.raises(CredentialError) as info:
        scheme.parse_login(ok(body, 401), 0.0)
    assert name in info.value.message
    assert "pw-123456" not in info.value.message


SESAMI = {
    "preset": "sesami",
    "auth": {
        "client_id": "sid",
        "client_secret": "my_client_secret",
        "redirect_uri": "https://app.example.com/-/oauth/sesami/callback",
        "scopes": ["read", "write"],
    },
}


def sesami() -> AppInstall:
    scheme = provider("sesami", SESAMI).scheme
    assert isinstance(scheme, AppInstall)
    return scheme


def signed(params: dict[str, Any], key: str = "my_client_secret") -> dict[str, str]:
    out = {k: str(v) for k, v in params.items()}
    out["hmac"] = hmac_hex(key.encode(), sesami_message(params))
    return out


def test_sesami_install_redirect_lists_every_scope_and_the_callback() -> None:
    query = parse_qs(urlsplit(sesami().install_url("shop1", "https://cb.test/x")).query)
    assert query == {
        "clientId": ["sid"],
        "scopes[]": ["read", "write"],
        "redirectUri": ["https://cb.test/x"],
        "shopId": ["shop1"],
    }


def test_sesami_callback_verification_accepts_fresh_and_refuses_stale_or_tampered() -> None:
    scheme = sesami()
    now = 1_700_000_100.0
    good = signed({"code": "abc", "shopId": "s1", "timestamp": 1_700_000_000})
    assert scheme.verify(good, now) is None
    assert scheme.verify({**good, "hmac": good["hmac"].upper()}, now) is None
    assert scheme.verify(good, now + 360) == "the request is too old"
    assert scheme.verify({**good, "code": "abd"}, now) == "the hmac does not match"
    assert scheme.verify({k: v for k, v in good.items() if k != "hmac"}, now) is not None
    future = signed({"code": "abc", "shopId": "s1", "timestamp": int(now) + 3600})
    assert scheme.verify(future, now) is not None


def test_sesami_exchange_posts_the_json_body_and_keeps_an_offline_token() -> None:
    flow = sesami().exchange_flow("abc", "s1", 0.0)
    request = next(flow)
    assert request.url == "https://api.sesami.co/api/v1/oauth/access-token"
    assert request.body is not None
    assert json.loads(request.body) == {
        "code": "abc",
        "shopId": "s1",
        "clientId": "sid",
        "clientSecret": "my_client_secret",
    }
    with pytest.raises(StopIteration) as done:
        flow.send(ok({"token": "offline-1", "expireAt": "NEVER"}))
    assert done.value.value.token == "offline-1"
    assert done.value.value.expires_at is None


def test_sesami_webhook_hmac_covers_the_sorted_data() -> None:
    data = {"shopId": "s1", "appId": "a"}
    payload = {
        "event": "uninstall_app",
        "data": data,
        "hmac": hmac_hex(b"my_client_secret", sesami_message(data)),
    }
    assert sesami().verify_webhook(payload)
    assert not sesami().verify_webhook({**payload, "data": {"shopId": "s2", "appId": "a"}})
