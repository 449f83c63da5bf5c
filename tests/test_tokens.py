"""Token answers parsed per RFC 6749 5.1/5.2; renewal margin per SPEC 4.4."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from proxy.errors import CredentialError
from proxy.messages import HttpResponse
from proxy.tokens import Credential, parse_token_response
from tests.conftest import MakeProxy, StartUpstream


def answer(body: object, status: int = 200) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {"Content-Type": "application/json"}, raw)


def test_a_token_answer_becomes_a_credential_with_an_absolute_expiry() -> None:
    cred = parse_token_response(
        "kibo", answer({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}), 1000.0
    )
    assert cred.token == "t"
    assert cred.expires_at == 4600.0
    assert cred.obtained_at == 1000.0


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", "mac"])
def test_token_type_is_compared_case_insensitively(token_type: str) -> None:
    body = {"access_token": "t", "token_type": token_type, "expires_in": 60}
    assert parse_token_response("p", answer(body), 0.0).token == "t"


def test_a_missing_expires_in_gets_an_hour() -> None:
    assert parse_token_response("p", answer({"access_token": "t"}), 0.0).expires_at == 3600.0


def test_expires_in_given_as_a_string_is_read_as_seconds() -> None:
    body = {"access_token": "t", "expires_in": "120"}
    assert parse_token_response("p", answer(body), 0.0).expires_at == 120.0


@pytest.mark.parametrize(
    ("response", "fragment"),
    [
        pytest.param(answer(b""), "not a JSON object", id="empty-body"),
        pytest.param(answer(b"<html>oops</html>"), "not a JSON object", id="html"),
        pytest.param(answer([1, 2]), "not a JSON object", id="json-list"),
        pytest.param(answer({"token_type": "bearer"}), "without access_token", id="no-token"),
        pytest.param(answer({"access_token": ""}), "without access_token", id="empty-token"),
        pytest.param(answer({"access_token": "t", "token_type": "weird"}), "token_type", id="type"),
        pytest.param(answer({"access_token": "t", "expires_in": -5}), "expires_in", id="neg"),
        pytest.param(answer({"access_token": "t", "expires_in": "x"}), "expires_in", id="nan"),
        pytest.param(answer({"error": "invalid_client"}, 401), "invalid_client", id="5.2-error"),
        pytest.param(answer({"error": "invalid_scope"}, 200), "invalid_scope", id="error-in-200"),
        pytest.param(answer(b"down", 503), "HTTP 503", id="server-error"),
    ],
)
def test_a_bad_token_answer_is_a_credential_error_not_a_token(
    response: HttpResponse, fragment: str
) -> None:
    with pytest.raises(CredentialError) as info:
        parse_token_response("kibo", response, 0.0)
    assert fragment in info.value.message
    assert "kibo" in info.value.message
    assert info.value.status == 502


def test_an_rfc6749_error_keeps_the_vendor_code() -> None:
    with pytest.raises(CredentialError) as info:
        parse_token_response("p", answer({"error": "invalid_grant"}, 400), 0.0)
    assert info.value.vendor_code == "invalid_grant"


def test_the_error_message_never_quotes_the_body_back() -> None:
    body = {"error": "invalid_client", "error_description": "secret s3cr3t-value was wrong"}
    with pytest.raises(CredentialError) as info:
        parse_token_response("p", answer(body, 401), 0.0)
    assert "s3cr3t" not in str(info.value)


def test_a_refresh_token_not_reissued_is_kept() -> None:
    cred = parse_token_response("p", answer({"access_token": "t"}), 0.0, previous_refresh="r1")
    assert cred.refresh_token == "r1"
    rotated = parse_token_response(
        "p", answer({"access_token": "t", "refresh_token": "r2"}), 0.0, previous_refresh="r1"
    )
    assert rotated.refresh_token == "r2"


@pytest.mark.parametrize(
    ("life", "renew_before"),
    [(3600, 60), (600, 60), (300, 30), (20, 2)],
    ids=["hour:60s", "10min:60s", "5min:10%", "20s:10%"],
)
def test_renewal_starts_60s_or_10_percent_before_expiry_whichever_is_smaller(
    life: float, renew_before: float
) -> None:
    cred = Credential(token="t", expires_at=1000.0 + life, obtained_at=1000.0)
    assert cred.renew_at() == pytest.approx(1000.0 + life - renew_before)


def test_a_credential_round_trips_through_json_and_hides_secrets_in_repr() -> None:
    cred = Credential("tok", 10.0, 1.0, "refresh", {"X-Key": "k"}, "session")
    assert Credential.from_json(cred.to_json()) == cred
    assert "tok" not in repr(cred)
    assert "refresh" not in repr(cred)


# --- hostile token endpoints (issue 12 item 5) -------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"[" * 50_000 + b"]" * 50_000, b'{"access_token":' * 50_000, b'{"a":"' + b"x" * 2_000_000],
    ids=["50000-deep-list", "50000-deep-object", "over-a-mebibyte"],
)
def test_a_deeply_nested_or_huge_token_answer_is_a_credential_error(raw: bytes) -> None:
    with pytest.raises(CredentialError, match="not a JSON object"):
        parse_token_response("p", answer(raw), 0.0)


async def test_a_token_endpoint_answering_50000_deep_json_gets_credential_error_with_backoff(
    upstream: StartUpstream, proxy: MakeProxy, echo_app: web.Application
) -> None:
    calls = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        deep = b'{"access_token":' * 50_000 + b'"t"' + b"}" * 50_000
        return web.Response(body=deep, content_type="application/json")

    token_app = web.Application()
    token_app.router.add_post("/token", token)
    token_base = await upstream(token_app, tls=False)
    base = await upstream(echo_app, tls=False)
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": token_base + "/token",
        "client_id": "id",
        "client_secret": "secret-5a6b",
    }
    client = await proxy(
        {
            "providers": {"p": {"auth": auth}},
            "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
        }
    )
    first = await client.get("/r/x")
    assert first.status == 502, await first.text()
    assert (await first.json())["error"] == "credential_error"
    for _ in range(10):  # inside the first backoff step: no further token request
        resp = await client.get("/r/x")
        assert resp.status == 502
        assert (await resp.json())["error"] == "credential_error"
    assert calls == 1
