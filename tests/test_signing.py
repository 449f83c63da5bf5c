"""Signatures against the vectors in SPEC 1, 4.2, 4.3 and 4.5, with golden intermediates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.schema import Node, Problems, Secret
from proxy.signers import SAISON_RECIPE, SignContext, SignerSetup, SignRequest, build_signer
from proxy.signing import (
    mac_authorization,
    mac_normalized_string,
    mac_signature,
    parse_mac_authorization,
    sesami_candidates,
    sesami_message,
    verify_sesami,
    x_signature,
)

GOLDEN = Path(__file__).parent / "golden"


def test_paynet_x_signature_matches_the_corrected_vector_not_the_vendor_document() -> None:
    assert (
        x_signature(b"my_secret_key", "1700000000")
        == "70ba7735fc01fec6d9d374332ea71c0c6183f4ac57273c8d8f7ca36fbf4dc359"
    )


@pytest.mark.parametrize(
    ("method", "path", "golden", "mac"),
    [
        pytest.param(
            "POST",
            "/auth/account/profile",
            "saison_post_profile.sts",
            "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU=",
            id="post-without-query",
        ),
        pytest.param(
            "GET",
            "/auth/account/profile?a=1&b=2",
            "saison_get_profile_query.sts",
            "+aIDodBL11maFQF2cIl4uO84nnZHEsDEyMzrfkFPR1Q=",
            id="get-with-query",
        ),
    ],
)
def test_saison_mac_matches_the_vectors_at_every_step(
    method: str, path: str, golden: str, mac: str
) -> None:
    normalized = mac_normalized_string(
        "1700000000", "abcde12345", method, path, "apit.saisoncard.co.jp", 443
    )
    assert normalized == (GOLDEN / golden).read_text()
    assert mac_signature(b"my_client_secret", normalized) == mac


def test_saison_mac_upper_cases_the_method_and_lower_cases_the_host() -> None:
    a = mac_normalized_string("1", "n", "post", "/x", "API.Example.COM", 443)
    b = mac_normalized_string("1", "n", "POST", "/x", "api.example.com", 443)
    assert a == b


def test_saison_authorization_header_has_the_documented_form() -> None:
    header = mac_authorization(
        "at-123", "1700000000", "abcde12345", "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU="
    )
    assert header == (GOLDEN / "saison_post_profile.authz").read_text()
    assert parse_mac_authorization(header) == {
        "id": "at-123",
        "ts": "1700000000",
        "nonce": "abcde12345",
        "mac": "hgvd4v5OGFtpeagtndM2Un0IdGRFZj6O/QaxqVi3DUU=",
    }


def test_saison_preset_nonces_are_ten_alphanumerics_and_fresh() -> None:
    problems = Problems("t.yaml")
    setup = SignerSetup("saison", Secret("k" * 16), {})
    signer = build_signer(Node(SAISON_RECIPE, "sign", problems), setup)
    assert signer is not None, problems.items
    request = SignRequest("GET", "https", "h.example", 443, "/p", "", (), None)
    nonces = set()
    for _ in range(200):
        signature = signer.sign(request, SignContext(1700000000.0, token="t"))
        fields = parse_mac_authorization(dict(signature.headers)["Authorization"])
        assert fields is not None
        nonces.add(fields["nonce"])
    assert len(nonces) == 200
    assert all(re.fullmatch(r"[0-9A-Za-z]{10}", n) for n in nonces)


PARAMS = {"code": "abc123", "shopId": "64b7f0c2e1a2b3c4d5e6f708", "timestamp": "1700000000"}
NUMBER_FORM = "ec16e96f0a72d7a6769478ecdba2e9bfbe797a41820248b6afcd26b973cef2fd"
STRING_FORM = "d9fe94fe3e08e6bc88103509adfc4084a1d976242b585a74068fa49725dc96ae"


def test_sesami_message_is_compact_sorted_json_in_both_timestamp_forms() -> None:
    number, string = sesami_candidates(PARAMS)
    assert number == (GOLDEN / "sesami_callback_number.json").read_text()
    assert string == (GOLDEN / "sesami_callback_string.json").read_text()
    assert sesami_message({"b": 1, "a": "x y"}) == '{"a":"x y","b":1}'


@pytest.mark.parametrize("given", [NUMBER_FORM, STRING_FORM], ids=["number", "string"])
def test_sesami_hmac_is_accepted_whether_timestamp_was_hashed_as_number_or_string(
    given: str,
) -> None:
    assert verify_sesami(b"my_client_secret", PARAMS, given)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({**PARAMS, "code": "abc124"}, id="tampered-code"),
        pytest.param({**PARAMS, "shopId": "64b7f0c2e1a2b3c4d5e6f709"}, id="tampered-shop"),
        pytest.param({**PARAMS, "timestamp": "1700000001"}, id="tampered-timestamp"),
        pytest.param({**PARAMS, "extra": "1"}, id="added-parameter"),
    ],
)
def test_sesami_hmac_refuses_any_tampered_parameter(params: dict[str, str]) -> None:
    assert not verify_sesami(b"my_client_secret", params, NUMBER_FORM)
    assert not verify_sesami(b"my_client_secret", params, STRING_FORM)


def test_sesami_hmac_refuses_another_key() -> None:
    assert not verify_sesami(b"other_secret", PARAMS, NUMBER_FORM)
