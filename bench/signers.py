"""CPU per signature, in process: each built-in signer beside today's hard-wired PayNet path.

    .venv/bin/python bench/signers.py

What a signer adds to one request is `sign()` plus the two frozen records the request path
builds for it (SignRequest, SignContext); both are measured, apart and together, as the
minimum over repeats (the least disturbed run on a shared VM). The end-to-end figure (CPU
per proxied request, bench/run.py) is the lead's once the registry is in the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import timeit
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.schema import Node, Problems, Secret
from proxy.signers import (
    PAYNET_RECIPE,
    SignContext,
    Signer,
    SignerSetup,
    SignRequest,
    build_signer,
)


@lru_cache(maxsize=64)
def x_signature(key: bytes, timestamp: str) -> str:
    """Today's hard-wired PayNet signature (proxy/signing.py at 78d95db), kept here so the
    comparison survives its removal once the registry is integrated."""
    return hmac.digest(key, timestamp.encode("ascii"), "sha256").hex()


NOW = 1_700_000_000.25
BODY = bytes(range(256)) * 16  # 4 KiB


def build(raw: dict[str, Any]) -> Signer:
    problems = Problems("bench")
    setup = SignerSetup("bench", Secret("my_secret_key"), {})
    signer = build_signer(Node(raw, "sign", problems), setup)
    assert signer is not None, problems.items
    return signer


def request(method: str = "GET", body: bytes | None = None) -> SignRequest:
    return SignRequest(
        method=method,
        scheme="https",
        host="api.example.com",
        port=443,
        path="/v1/orders/42",
        query="expand=items&limit=10",
        headers=(("Accept", "application/json"), ("Content-Type", "application/json")),
        body=body,
    )


def per_call(fn: Callable[[], object], number: int = 50_000) -> float:
    """Minimum µs per call over 7 repeats."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    key = Secret("my_secret_key")

    def today_paynet() -> object:  # proxy/authorize.py signature_headers, x_signature branch
        ts = str(int(NOW))
        return [("X-Timestamp", ts), ("X-Signature", x_signature(key.reveal().encode(), ts))]

    paynet = build(PAYNET_RECIPE)
    aws = build(
        {
            "type": "aws_sigv4",
            "region": "eu-west-1",
            "service": "execute-api",
            "access_key_id": "AKIDEXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        }
    )
    body_hmac = build(
        {
            "type": "hmac",
            "message": "{timestamp}\n{method}\n{target}\n{body_sha256}",
            "headers": {"X-Timestamp": "{timestamp}", "X-Signature": "{signature}"},
        }
    )
    get, post = request(), request("POST", BODY)
    ctx = SignContext(now=NOW, token="tok")
    rows = [
        ("today: PayNet x_signature (authorize.py)", per_call(today_paynet)),
        ("PayNet as an hmac recipe: sign()", per_call(lambda: paynet.sign(get, ctx))),
        ("  + SignContext(...) per request", per_call(lambda: SignContext(now=NOW, token="t"))),
        ("  + SignRequest(...) per request", per_call(lambda: request())),
        (
            "PayNet recipe, all three",
            per_call(lambda: paynet.sign(request(), SignContext(now=NOW, token="t"))),
        ),
        ("aws_sigv4 GET: sign()", per_call(lambda: aws.sign(get, ctx), 10_000)),
        ("hmac over a 4 KiB POST body: sign()", per_call(lambda: body_hmac.sign(post, ctx))),
        (
            "  (of which SHA-256 of 4 KiB)",
            per_call(lambda: hashlib.sha256(BODY).hexdigest()),
        ),
        (
            "  (an unkeyed HMAC-SHA256 set-up + digest)",
            per_call(lambda: hmac.digest(b"k", b"m", "sha256")),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'what':<{width}} | CPU µs per call |")
    print(f"| {'-' * width} | --------------- |")
    for name, us in rows:
        print(f"| {name:<{width}} | {us:15.2f} |")


if __name__ == "__main__":
    main()
