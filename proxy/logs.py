"""Structured logging: one JSON object per line on stderr, secrets redacted."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO


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


class AccessWriter:
    """Access lines, buffered: written every `interval` seconds or once 64 KiB pile up.

    A write(2) per request costs more than building the line; a tenth of a second of
    delay costs nothing. `flush()` runs at shutdown so no line is lost on a clean exit.
    """

    def __init__(self, stream: TextIO, interval: float = 0.1, max_bytes: int = 65536) -> None:
        self._stream = stream
        self._interval = interval
        self._max = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self._stream.write("\n".join(self._lines) + "\n")
            self._stream.flush()
            self._lines.clear()
            self._size = 0
