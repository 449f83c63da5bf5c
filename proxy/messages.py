"""Sans-IO requests and responses: what an auth scheme yields and receives.

Schemes build these and read these; only forward.py turns them into network traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

MAX_JSON_BYTES: Final = 1024 * 1024  # a token answer or a rule's body is far smaller
MAX_JSON_DEPTH: Final = 64  # json's C decoder recurses: deeper input could exhaust the stack
# a JSON string (RFC 8259 7), so brackets inside strings are not counted as nesting
_STRING: Final = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS: Final = re.compile(r"[\[\]{}]")
_DEPTH_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


def parse_json(
    raw: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any | None:
    """JSON from an untrusted peer, or None when it is not JSON, is over `max_bytes`, or
    nests deeper than `max_depth`. The depth is counted by a linear scan before json.loads
    runs, so no input can raise RecursionError."""
    if len(raw) > max_bytes:
        return None
    try:
        # RFC 8259 8.1: JSON exchanged between systems is UTF-8 (a BOM may be ignored)
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    if text.count("[") + text.count("{") > max_depth:  # else it cannot nest that deep
        brackets = _BRACKETS.findall(_STRING.sub("", text))
        if max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0) > max_depth:
            return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON or is too large or too deep (a
        garbage answer is an ordinary bad answer, not a crash)."""
        return parse_json(self.body)


def dotted(document: Any, path: str) -> Any:
    """`results.session_info.session_key` looked up in nested JSON; None when absent."""
    node = document
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
