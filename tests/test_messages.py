"""parse_json (proxy/messages.py): JSON from peers, bounded in size and depth (issue 12 item 5).
Expected values come from the standard library's json.loads on the same text."""

from __future__ import annotations

import json

import pytest

from proxy.messages import MAX_JSON_DEPTH, HttpResponse, parse_json


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        b'{"access_token": "t", "expires_in": 3600}',
        b'{"a": "[[[[{{{{"}',  # brackets inside a string are not nesting
        b'["\\"[", "\\\\", "]\\"["]',  # escaped quotes and backslashes
        b'{"k": "' + b"[" * 500 + b'"}',
        '{"name": "Ωμέγα ☃"}'.encode(),
        b"\xef\xbb\xbf[1]",  # a UTF-8 byte order mark (RFC 8259 8.1: may be ignored)
        nested(MAX_JSON_DEPTH),
        b'{"a":' * 63 + b"1" + b"}" * 63,
    ],
    ids=[
        "token-answer",
        "brackets-in-a-string",
        "escapes",
        "many-brackets-in-a-string",
        "non-ascii",
        "bom",
        "exactly-max-depth",
        "objects-63-deep",
    ],
)
def test_ordinary_json_parses_as_the_standard_library_parses_it(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw.decode("utf-8-sig"))


@pytest.mark.parametrize(
    "raw",
    [
        nested(MAX_JSON_DEPTH + 1),
        nested(50_000),
        b"[" * 1_000_000,
        b'{"a":' * 50_000,
        b'{"a": "x"}' + b"[" * 100,
        b"",
        b"<html>",
        b'"unterminated' + b'\\"[' * 1000,
        b'{"a": "\xff"}',  # not UTF-8
        b"9" * 5000,  # more digits than int() converts by default
    ],
    ids=[
        "one-over-max-depth",
        "50000-deep",
        "a-million-brackets",
        "50000-deep-objects",
        "trailing-garbage",
        "empty",
        "html",
        "unterminated-string",
        "not-utf8",
        "huge-integer",
    ],
)
def test_what_is_not_json_or_nests_too_deep_is_none_never_an_exception(raw: bytes) -> None:
    assert parse_json(raw) is None


def test_a_body_over_max_bytes_is_none_however_valid() -> None:
    raw = json.dumps({"a": "x" * 100}).encode()
    assert parse_json(raw) is not None
    assert parse_json(raw, max_bytes=len(raw) - 1) is None
    assert parse_json(raw, max_bytes=len(raw)) is not None


def test_max_depth_is_a_parameter() -> None:
    assert parse_json(nested(3), max_depth=3) == json.loads(nested(3))
    assert parse_json(nested(4), max_depth=3) is None


def test_a_response_json_is_bounded_the_same_way() -> None:
    assert HttpResponse(200, body=nested(50_000)).json() is None
    assert HttpResponse(200, body=b'{"a": 1}').json() == {"a": 1}
