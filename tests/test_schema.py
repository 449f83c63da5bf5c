"""proxy/schema.py: the Redactor (the last guard before a log line or a body)."""

from __future__ import annotations

import json

from proxy.schema import Redactor


def test_redacting_replaces_every_secret_and_the_longest_first() -> None:
    redact = Redactor(["s3cret", "s3cret-longer", ""])
    assert redact("a s3cret-longer and s3cret") == "a *** and ***"
    assert redact("nothing here") == "nothing here"


def test_json_is_the_redacted_text_as_a_json_string() -> None:
    redact = Redactor(["tok-123"])
    for text in ["/p/tok-123?x=1", 'quote " and \\ back', "caf\u00e9 \udce9", "", "GET"]:
        out = redact.json(text)
        assert out == json.dumps(redact(text))
        assert "tok-123" not in out
        assert redact.json(text) == out  # answered again (from the memo) alike


def test_the_json_memo_is_bounded_and_keeps_no_long_text() -> None:
    redact = Redactor(["tok-123"])
    for n in range(Redactor.MEMO_SIZE + 10):
        redact.json(f"/path/{n}")
    assert len(redact._json) <= Redactor.MEMO_SIZE
    redact._json.clear()
    long = "/x" * Redactor.MEMO_TEXT + "tok-123"
    assert "***" in redact.json(long)
    assert redact._json == {}


def test_without_secrets_json_still_encodes() -> None:
    assert Redactor([]).json('a"b') == '"a\\"b"'
