"""The registry of request signers: `sign.type` in YAML names one of SIGNERS (SPEC 5.1)."""

from __future__ import annotations

from typing import Any, Final

from proxy.schema import Node
from proxy.signers.aws_sigv4 import AwsSigV4Signer
from proxy.signers.base import (
    DEFAULT_BODY_MAX_BYTES,
    Signature,
    SignContext,
    Signer,
    SignerSetup,
    SignRequest,
    UnsafeSignature,
    applied,
)
from proxy.signers.hmac_recipe import HmacSigner
from proxy.signers.http_message import HttpMessageSigner
from proxy.signers.oauth1 import OAuth1Signer
from proxy.signers.recipes import PAYNET_RECIPE, SAISON_RECIPE
from proxy.signers.vectors import check_vectors

SIGNERS: Final[dict[str, type[Signer]]] = {
    cls.type: cls for cls in (HmacSigner, AwsSigV4Signer, OAuth1Signer, HttpMessageSigner)
}
#: the names SPEC 3.2 used before the registry, kept working as recipes
ALIASES: Final[dict[str, dict[str, Any]]] = {"x_signature": PAYNET_RECIPE, "mac": SAISON_RECIPE}


def build_signer(node: Node, setup: SignerSetup) -> Signer | None:
    """The signer a `sign:` block describes, with its vectors proved; None on any problem
    (each reported at its key path, secrets never quoted)."""
    if not node.ok:
        return None
    kind = node.string("type", required=True)
    if kind is None:
        return None
    if kind in ALIASES:
        for key in node.raw:
            node.get(key)  # every key is read by the recipe node below
        merged = {**ALIASES[kind], **{k: v for k, v in node.raw.items() if k != "type"}}
        node = Node(merged, node.path, node.problems)
        node.get("type")
        kind = str(merged["type"])
    cls = SIGNERS.get(kind)
    if cls is None:
        known = ", ".join(sorted([*SIGNERS, *ALIASES]))
        node.error("type", f"unknown {kind!r}; expected one of: {known}")
        return None
    before = len(node.problems.items)
    body_max = node.integer("body_max_bytes", DEFAULT_BODY_MAX_BYTES, minimum=1)
    node.seq("vectors")  # read here, checked once the signer is whole
    signer = cls.from_options(node, setup)
    node.finish()
    if len(node.problems.items) != before:
        return None
    signer.body_max_bytes = body_max
    check_vectors(signer, node)
    return None if len(node.problems.items) != before else signer


__all__ = [
    "ALIASES",
    "PAYNET_RECIPE",
    "SAISON_RECIPE",
    "SIGNERS",
    "SignContext",
    "SignRequest",
    "Signature",
    "Signer",
    "SignerSetup",
    "UnsafeSignature",
    "build_signer",
    "applied",
    "check_vectors",
]
