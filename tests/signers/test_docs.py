"""Every `sign:` block in the README's "Signing" section builds and its vectors (the vendors'
published examples) pass, so the README cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.signers.helpers import GOLDEN, build

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("\n## Signing\n")
    return text[start : text.index("\n## ", start + 1)]


ED25519_PEM = (GOLDEN / "rfc9421" / "test-key-ed25519.key").read_text()


def _blocks() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i, text in enumerate(re.findall(r"```yaml\n(.*?)```", _section(), re.S)):
        # ${file:...} is a PEM on disk, ${NAME} a secret from the environment
        text = re.sub(
            r"\$\{file:[^}]*\}", lambda _: '"' + ED25519_PEM.replace("\n", "\\n") + '"', text
        )
        text = re.sub(r"\$\{[A-Z_]+\}", "a2V5", text)
        data = yaml.safe_load(text)
        if "sign" in data:
            out.append((f"block{i}", data["sign"]))
        for name, provider in (data.get("providers") or {}).items():
            out.append((f"block{i}-{name}", provider["sign"]))
    return out


BLOCKS = _blocks()


def test_the_doc_shows_every_signer_with_a_vector() -> None:
    types = {raw["type"] for _, raw in BLOCKS}
    assert types == {"hmac", "aws_sigv4", "oauth1", "http_message_signature"}
    assert all(raw.get("vectors") for _, raw in BLOCKS)


@pytest.mark.parametrize(("raw"), [raw for _, raw in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_each_example_builds_and_proves_its_vector(raw: dict[str, Any]) -> None:
    signer, problems = build(raw, default_key="a2V5")
    assert problems == []
    assert signer is not None
