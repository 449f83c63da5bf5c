"""Structured logging: one JSON object per line on stderr, secrets redacted.

With `workers:` every worker writes to the same stderr as its supervisor: each write(2)
carries whole lines and at most PIPE_BUF bytes, which POSIX makes atomic on a pipe (and
Linux on a file opened O_APPEND), so lines from different workers never interleave.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

#: POSIX: writes of at most this many bytes to a pipe are never interleaved with others'
PIPE_BUF: Final = 4096


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.redact = redact
        #: fields every line carries (a worker's pid and index under a supervisor)
        self.fields: dict[str, Any] = {}

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "keyhop.access":
            line = record.getMessage()  # already a JSON object, already redacted
        else:
            payload = {
                "ts": round(time.time(), 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
                **self.fields,
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


def chunks(data: bytes, limit: int = PIPE_BUF) -> list[memoryview]:
    """`data` (newline-terminated lines) as blocks of whole lines, each at most `limit`
    bytes (a single longer line is a block of its own)."""
    out: list[memoryview] = []
    view = memoryview(data)
    start, size = 0, len(data)
    while start < size:
        end = start + limit
        if end >= size:
            end = size
        else:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut != -1 else data.find(b"\n", end) + 1 or size
        out.append(view[start:end])
        start = end
    return out


class AccessWriter:
    """Access lines, buffered: written every `interval` seconds or once 64 KiB pile up.

    A write(2) per request costs more than building the line; a tenth of a second of
    delay costs nothing. `flush()` runs at shutdown so no line is lost on a clean exit.
    Lines go out in blocks of whole lines of at most PIPE_BUF bytes, one write(2) each.
    `pid` (under a supervisor) opens every line with the worker's `"pid"`.
    """

    def __init__(
        self,
        stream: TextIO,
        interval: float = 0.1,
        max_bytes: int = 65536,
        pid: int | None = None,
    ) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None  # an in-memory stream (tests): written through
        self._interval = interval
        self._max = max_bytes
        self._buffer = bytearray()  # encoded as they come: a list of str cost more to flush
        self._timer: asyncio.TimerHandle | None = None
        self._prefix = None if pid is None else f'{{"pid":{pid},'

    def __call__(self, line: str) -> None:
        if self._prefix is not None and line.startswith("{"):
            line = self._prefix + line[1:]
        buffer = self._buffer
        buffer += line.encode("utf-8", "surrogateescape")
        buffer += b"\n"
        if len(buffer) >= self._max:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._fd is None:
            for block in chunks(data):
                self._stream.write(str(block, "utf-8", "surrogateescape"))
                self._stream.flush()
            return
        self._stream.flush()  # what logging left in the stream's buffer goes first
        for view in chunks(data):
            while view:  # a blocking fd writes it whole; a short write only on a signal
                view = view[os.write(self._fd, view) :]
