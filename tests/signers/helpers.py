"""Factories for signer tests: a `sign:` block built as config loading builds it, and a
frozen outbound request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.schema import Node, Problems, Secret
from proxy.signers import Signer, SignerSetup, SignRequest, build_signer

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "signers"
PATH = "providers.partner.sign"


def build(
    raw: dict[str, Any],
    *,
    default_key: str | None = "client-secret-1",
    static_vars: dict[str, str | Secret] | None = None,
) -> tuple[Signer | None, list[str]]:
    """(the signer or None, every problem reported) for a `sign:` block."""
    problems = Problems("keyhop.yaml")
    setup = SignerSetup(
        provider="partner",
        default_key=Secret(default_key) if default_key is not None else None,
        static_vars=static_vars or {},
    )
    signer = build_signer(Node(raw, PATH, problems), setup)
    return signer, problems.items


def built(raw: dict[str, Any], **kwargs: Any) -> Signer:
    signer, problems = build(raw, **kwargs)
    assert problems == []
    assert signer is not None
    return signer


def make_request(
    method: str = "GET",
    target: str = "/",
    *,
    host: str = "api.example.com",
    scheme: str = "https",
    port: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> SignRequest:
    path, _, query = target.partition("?")
    return SignRequest(
        method=method,
        scheme=scheme,
        host=host,
        port=port if port is not None else {"https": 443, "http": 80}[scheme],
        path=path,
        query=query,
        headers=headers,
        body=body,
    )
