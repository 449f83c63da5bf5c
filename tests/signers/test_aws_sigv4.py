"""aws_sigv4 against the AWS SigV4 test suite (golden canonical request, string to sign and
Authorization per case) and against botocore as an oracle over randomized requests."""

from __future__ import annotations

import random
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.signers import SignContext, SignRequest
from proxy.signers.aws_sigv4 import AwsSigV4Signer
from tests.signers.helpers import GOLDEN, build, built, make_request

SUITE = GOLDEN / "aws4"
# the suite's own credentials and clock (its NOTICE: AWS Signature Version 4 Test Suite)
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_DATE = "20150830T123600Z"
CASES = sorted(p.stem for p in SUITE.glob("*.req"))


def session_token(case: str) -> str | None:
    """The suite's session token, where its canonical request signs one."""
    for line in read(f"{case}.creq").split("\n"):
        if line.startswith("x-amz-security-token:"):
            return line.partition(":")[2]
    return None


def parse_req(text: str) -> tuple[SignRequest, str | None]:
    """A suite .req file as the frozen request keyhop would send, and its session token."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    token = next((v for n, v in headers if n.lower() == "x-amz-security-token"), None)
    host = next(v for n, v in headers if n.lower() == "host")
    path, _, query = target.partition("?")
    request = SignRequest(
        method=method,
        scheme="https",
        host=host,
        port=443,
        path=path,
        query=query,
        headers=tuple(headers),
        body=body.encode(),
    )
    return request, token


def suite_signer(token: str | None) -> AwsSigV4Signer:
    raw = {
        "type": "aws_sigv4",
        "region": "us-east-1",
        "service": "service",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    if token:
        raw["session_token"] = token
    signer = built(raw)
    assert isinstance(signer, AwsSigV4Signer)
    return signer


def read(name: str) -> str:
    return (SUITE / name).read_text()


def test_the_suite_is_stored_with_its_license() -> None:
    assert (SUITE / "LICENSE").exists() and (SUITE / "NOTICE").exists()
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_each_suite_case_matches_at_every_step(case: str) -> None:
    request, _ = parse_req(read(f"{case}.req"))
    steps = suite_signer(session_token(case)).steps(
        request, SignContext(now=0.0, timestamp="20150830T123600Z")
    )
    assert steps.canonical_request == read(f"{case}.creq")
    assert steps.string_to_sign == read(f"{case}.sts")
    assert steps.authorization == read(f"{case}.authz")


def test_sign_returns_the_date_token_and_authorization_headers() -> None:
    request, _ = parse_req(read("get-vanilla-with-session-token.req"))
    sig = suite_signer(session_token("get-vanilla-with-session-token")).sign(
        request, SignContext(now=0.0, timestamp="20150830T123600Z")
    )
    names = [n for n, _ in sig.headers]
    assert names == ["X-Amz-Date", "X-Amz-Security-Token", "Authorization"]
    assert dict(sig.headers)["Authorization"] == read("get-vanilla-with-session-token.authz")
    assert sig.message == read("get-vanilla-with-session-token.sts")


def test_the_date_comes_from_the_clock_when_no_timestamp_is_given() -> None:
    request, _ = parse_req(read("get-vanilla.req"))
    # 2015-08-30T12:36:00Z, the suite's own instant
    sig = suite_signer(None).sign(request, SignContext(now=1440938160.0))
    assert dict(sig.headers)["Authorization"] == read("get-vanilla.authz")


def test_unsigned_payload_does_not_need_the_body_and_signs_the_literal() -> None:
    signer = built(
        {
            "type": "aws_sigv4",
            "region": "eu-west-1",
            "service": "s3",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "unsigned_payload": True,
        }
    )
    assert signer.needs_body is False
    assert isinstance(signer, AwsSigV4Signer)
    steps = signer.steps(make_request("PUT", "/bucket/key"), SignContext(now=1440938160.0))
    assert steps.canonical_request.endswith("\nUNSIGNED-PAYLOAD")
    assert ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD") in steps.added


def test_a_signed_payload_needs_the_body() -> None:
    signer = suite_signer(None)
    assert signer.needs_body is True


def test_s3_keeps_the_path_as_sent_and_other_services_normalize_and_encode_it_again() -> None:
    raw = {
        "type": "aws_sigv4",
        "region": "us-east-1",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    request = make_request("GET", "/a//b/%E1%88%B4")
    ctx = SignContext(now=1440938160.0)
    s3 = built({**raw, "service": "s3"})
    other = built({**raw, "service": "execute-api"})
    assert isinstance(s3, AwsSigV4Signer) and isinstance(other, AwsSigV4Signer)
    assert s3.steps(request, ctx).canonical_request.split("\n")[1] == "/a//b/%E1%88%B4"
    # SigV4 docs: every service but S3 encodes each path segment twice
    assert other.steps(request, ctx).canonical_request.split("\n")[1] == "/a/b/%25E1%2588%25B4"


# --- botocore as an oracle -------------------------------------------------------------------

_CHARS = "abcXYZ019-_.~ $é/+=&%"


def _token(rng: random.Random, alphabet: str = _CHARS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))


def _random_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """A request as botocore's serializers would send it: path and query already encoded."""
    segments = [quote(_token(rng), safe="-_.~") for _ in range(rng.randint(0, 4))]
    path = "/" + "/".join(segments)
    params = [
        (quote(_token(rng), safe="-_.~"), quote(_token(rng), safe="-_.~"))
        for _ in range(rng.randint(0, 4))
    ]
    query = "&".join(f"{k}={v}" for k, v in params)
    headers = {
        "Content-Type": rng.choice(["application/json", "text/plain;  charset=utf-8"]),
        f"X-Custom-{rng.randint(0, 99)}": "  a   b " + _token(rng, "abc "),
        "User-Agent": "not-signed/1.0",
    }
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    method = rng.choice(["GET", "POST", "PUT", "DELETE"])
    return method, path + ("?" + query if query else ""), headers, body


@pytest.mark.parametrize("service", ["s3", "execute-api"])
@pytest.mark.parametrize("seed", range(40))
def test_botocore_signs_randomized_requests_identically(service: str, seed: int) -> None:
    rng = random.Random(seed)
    method, target, headers, body = _random_request(rng)
    token = rng.choice([None, "session-token/+=abc"])
    amz_date = "20240229T235959Z"
    raw = {
        "type": "aws_sigv4",
        "region": "eu-central-1",
        "service": service,
        "access_key_id": "AKIDORACLE",
        "secret_access_key": "oracle/secret+key",
    }
    if token:
        raw["session_token"] = token
    signer = built(raw)
    request = make_request(
        method, target, host="svc.example.com", headers=tuple(headers.items()), body=body
    )
    ours = dict(signer.sign(request, SignContext(now=0.0, timestamp=amz_date)).headers)

    auth_cls = S3SigV4Auth if service == "s3" else SigV4Auth
    auth = auth_cls(Credentials("AKIDORACLE", "oracle/secret+key", token), service, "eu-central-1")
    theirs = AWSRequest(
        method=method, url=f"https://svc.example.com{target}", headers=headers, data=body
    )
    theirs.context["timestamp"] = amz_date
    auth._modify_request_before_signing(theirs)
    canonical = auth.canonical_request(theirs)
    sts = auth.string_to_sign(theirs, canonical)
    auth._inject_signature_to_request(theirs, auth.signature(sts, theirs))
    assert ours["Authorization"] == theirs.headers["Authorization"]


def test_query_placement_is_a_config_error() -> None:
    _, problems = build(
        {
            "type": "aws_sigv4",
            "region": "us-east-1",
            "service": "s3",
            "access_key_id": ACCESS_KEY,
            "query": {"X-Amz-Signature": "{signature}"},
        }
    )
    assert problems == [
        "keyhop.yaml: providers.partner.sign.query: not supported by aws_sigv4: "
        "it places its signature in headers only"
    ]


def test_a_vector_may_carry_the_examples_own_region_service_and_key_id() -> None:
    # the suite's get-vanilla, proved against a signer configured for another region
    _, problems = build(
        {
            "type": "aws_sigv4",
            "region": "eu-west-1",
            "service": "execute-api",
            "access_key_id": "AKIAREALKEY",
            "secret_access_key": "real-secret",
            "vectors": [
                {
                    "given": {
                        "key": SECRET_KEY,
                        "region": "us-east-1",
                        "service": "service",
                        "access_key_id": ACCESS_KEY,
                        "host": "example.amazonaws.com",
                        "timestamp": SUITE_DATE,
                    },
                    "expect": {
                        "message": read("get-vanilla.sts"),
                        "headers": {"Authorization": read("get-vanilla.authz")},
                    },
                }
            ],
        }
    )
    assert problems == []
