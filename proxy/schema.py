"""Reading untyped YAML into typed values, collecting every problem instead of stopping at one.

Rules: pure (no I/O), and a value declared secret is never quoted back in a message.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

_json_str = json.encoder.encode_basestring_ascii  # (a str in, a quoted JSON string out)


class Secret:
    """A string that never shows itself in a repr, str() or f-string; `.reveal()` is explicit."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Redactor:
    """Replaces every given secret in a text: the last guard before a log line or a body.

    Short texts seen again (a method, a path asked for again) are answered from a memo: the
    access log redacts them on every request."""

    MEMO_TEXT: Final = 256  # longer texts are not kept
    MEMO_SIZE: Final = 4096  # entries; the memo starts over when full

    def __init__(self, secrets: Iterable[str]) -> None:
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._memo: dict[str, str] = {}
        self._json: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        done = self._memo.get(text)
        if done is None:
            done = self._remember(self._memo, text, self._pattern.sub("***", text))
        return done

    def json(self, text: str) -> str:
        """The text redacted, as a JSON string (the access log's method, path and tenant),
        memoized as __call__ is."""
        done = self._json.get(text)
        if done is None:
            done = self._remember(self._json, text, _json_str(self(text)))
        return done

    def _remember(self, memo: dict[str, str], text: str, done: str) -> str:
        if len(text) <= self.MEMO_TEXT:
            if len(memo) >= self.MEMO_SIZE:
                memo.clear()
            memo[text] = done
        return done


class Problems:
    """Every problem found in one file, formatted `file: key.path: what is wrong`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []
        #: key paths already reported (a missing ${VAR}): not reported again as empty
        self.reported: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.items.append(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )


_MISSING: Final = object()


def describe(value: Any) -> str:
    """How a found value is named in a message (type and a short form, never long text)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_url(text: str, schemes: Iterable[str] = ("http", "https")) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


class Node:
    """One mapping of the config, read key by key; keys never read are reported as unknown."""

    def __init__(self, raw: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.ok = isinstance(raw, Mapping)
        if raw is not None and not self.ok:
            problems.add(path, f"expected a mapping, found {describe(raw)}")
        self.raw: Mapping[str, Any] = raw if self.ok else {}
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.problems.add(self.at(key), message)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.raw.get(key, default)

    def _need(self, key: str, required: bool) -> Any:
        self._seen.add(key)
        if self.at(key) in self.problems.reported:
            return _MISSING
        if key not in self.raw or self.raw[key] is None:
            if required:
                self.error(key, "required, missing")
            return _MISSING
        return self.raw[key]

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._need(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(key, f"expected a string, found {describe(value)}")
            return default
        return str(value)

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        value = self._need(key, required)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.error(key, f"expected a string, found {type(value).__name__}")
            return None
        if value == "":
            self.error(key, "is empty")
            return None
        return Secret(str(value))

    def choice(self, key: str, options: Iterable[str], default: str) -> str:
        options = tuple(options)
        value = self.string(key, default)
        assert value is not None
        if value not in options:
            self.error(key, f"unknown {value!r}; expected one of: {', '.join(options)}")
            return default
        return value

    def url(self, key: str, *, required: bool = False, base: str | None = None) -> str | None:
        """An absolute http(s) URL, or a path resolved against `base` when one is given."""
        value = self.string(key, required=required)
        if value is None:
            return None
        if value.startswith("/") and base is not None:
            return base.rstrip("/") + value
        if value.startswith("/"):
            self.error(
                key, f"a path ({value!r}) needs a route for this provider to resolve against"
            )
            return None
        if not is_url(value):
            self.error(key, f"not a URL (expected http(s)://host/path, found {describe(value)})")
            return None
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, exclusive: bool = False
    ) -> float:
        value = self._need(key, False)
        if value is _MISSING:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
            or (exclusive and value == minimum)
        ):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            self.error(key, f"expected a number {bound}, found {describe(value)}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._need(key, False)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(key, f"expected a whole number >= {minimum}, found {describe(value)}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._need(key, False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, found {describe(value)}")
            return default
        return value

    def child(self, key: str) -> Node:
        self._seen.add(key)
        return Node(self.raw.get(key), self.at(key), self.problems)

    def seq(self, key: str) -> list[Any]:
        value = self._need(key, False)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected a list, found {describe(value)}")
            return []
        return value

    def str_list(self, key: str) -> list[str]:
        out = []
        for i, item in enumerate(self.seq(key)):
            if isinstance(item, bool) or not isinstance(item, str | int):
                self.problems.add(
                    f"{self.at(key)}[{i}]", f"expected a string, found {describe(item)}"
                )
            else:
                out.append(str(item))
        return out

    def finish(self, allowed_hint: Iterable[str] = ()) -> None:
        """Report every key never read: a typo must not silently drop authentication."""
        known = sorted(self._seen | set(allowed_hint))
        for key in self.raw:
            if key in self._seen:
                continue
            name = str(key)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            self.problems.add(self.at(name), f"unknown key{hint}")
