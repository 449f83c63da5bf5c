"""Structured logging: one JSON object per line on stderr, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "keyhop.access":
            line = record.getMessage()  # already a JSON object, already redacted
        else:
            payload = {
                "ts": round(time.time(), 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
            if record.exc_info and record.exc_info[0] is not None:
                payload["exc"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            line = json.dumps(payload, separators=(",", ":"))
        return self.redact(line) if self.redact else line


def setup_logging(level: str = "info") -> JsonFormatter:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True
    return formatter
