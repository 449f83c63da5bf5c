"""Sans-IO requests and responses: what an auth scheme yields and receives.

Schemes build these and read these; only forward.py turns them into network traffic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
        """The body as JSON, or None when it is not JSON (a garbage answer is not a crash)."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


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
