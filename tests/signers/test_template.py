"""The template language: any text either compiles or is a TemplateError (a config error),
never another exception; what compiles renders what was written."""

from __future__ import annotations

import random

import pytest

from proxy.signers.template import TemplateError, compile_template

ALLOWED = frozenset({"method", "path", "body", "header", "form", "query&"})


@pytest.mark.parametrize("seed", range(300))
def test_random_text_compiles_or_is_a_template_error(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [
        "{",
        "}",
        "{{",
        "}}",
        "{method}",
        "{path",
        "sha256_raw:",
        "{sha256:",
        "header:",
        "{header:X-A}",
        "{header}",
        "{form}",
        "{form:n}",
        "{query&}",
        "a",
        "\n",
        ":",
        "{nope}",
        "é",
    ]
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
    try:
        template = compile_template(text, ALLOWED)
    except TemplateError:
        return
    values = {"method": b"GET", "path": b"/p", "body": b"", "header:x-a": b"h", "form:n": b"f"}
    values["query&"] = b"q&"
    assert isinstance(template.render(values), bytes)


def test_a_nested_raw_digest_renders_as_raw_bytes() -> None:
    import hashlib

    template = compile_template("{path}{sha256_raw:{method}{body}}", ALLOWED)
    out = template.render({"path": b"/p", "method": b"POST", "body": b"x=1"})
    assert out == b"/p" + hashlib.sha256(b"POSTx=1").digest()
    assert template.names == {"path", "method", "body"}


def test_constants_are_folded_in_at_load() -> None:
    template = compile_template("{a}-{method}-{{x}}", ALLOWED, {"a": b"A"})
    assert template.render({"method": b"GET"}) == b"A-GET-{x}"
    assert template.names == {"method"}
    assert compile_template("{a}", ALLOWED, {"a": b"A"}).literal == b"A"
