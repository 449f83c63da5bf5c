"""Signature templates: compiled once at load, rendered to BYTES per request.

Grammar (README.md, "The recipe vocabulary"):
    text        literal; `{{` and `}}` stand for `{` and `}`
    {name}      a placeholder the caller allows (request fields, credential, vars)
    {header:N}  the value of header N as sent (several joined with ", "); "" when absent
    {form:N}    field N of an application/x-www-form-urlencoded body, decoded; "" when absent
    {fn:T}      a function of the nested template T: sha1|sha256|sha384|sha512|md5 with
                suffix "" (lowercase hex), "_b64" (base64) or "_raw" (the digest bytes),
                and base64 (T base64-encoded). Kraken: `{path}{sha256_raw:{nonce}{body}}`.

Rendering is bytes end to end so that a raw digest can sit inside a message (Kraken hashes
`path ‖ SHA256(nonce ‖ body)` with the digest as 32 raw bytes).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Final

from proxy.headers import FIELD_NAME

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*&?")
_HASHES: Final = ("sha1", "sha256", "sha384", "sha512", "md5")


def _digest_fn(algorithm: str, form: str) -> Callable[[bytes], bytes]:
    if form == "_raw":
        return lambda data: hashlib.new(algorithm, data).digest()
    if form == "_b64":
        return lambda data: base64.b64encode(hashlib.new(algorithm, data).digest())
    return lambda data: hashlib.new(algorithm, data).hexdigest().encode()


FUNCTIONS: Final[dict[str, Callable[[bytes], bytes]]] = {
    f"{alg}{form}": _digest_fn(alg, form) for alg in _HASHES for form in ("", "_b64", "_raw")
}
FUNCTIONS["base64"] = base64.b64encode


class TemplateError(ValueError):
    """A template that does not parse or names an unknown placeholder (a config error)."""


class _Call:
    """`{fn:T}`: a function applied to a nested template's rendering."""

    __slots__ = ("fn", "inner")

    def __init__(self, fn: Callable[[bytes], bytes], inner: Template) -> None:
        self.fn = fn
        self.inner = inner

    def __call__(self, values: Mapping[str, bytes]) -> bytes:
        return self.fn(self.inner.render(values))


Part = bytes | str | _Call


class Template:
    """A compiled template: literal bytes, placeholder keys and nested calls."""

    __slots__ = ("literal", "names", "parts", "source")

    def __init__(self, source: str, parts: list[Part]) -> None:
        self.source = source
        self.parts: tuple[Part, ...] = tuple(parts)
        names: set[str] = set()
        for p in self.parts:
            if isinstance(p, str):
                names.add(p)
            elif isinstance(p, _Call):
                names |= p.inner.names
        #: every placeholder key it reads (`header:x-y` lowercased, `form:n`)
        self.names: frozenset[str] = frozenset(names)
        #: the whole rendering when it has no placeholder at all
        self.literal: bytes | None = (
            self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], bytes) else None
        )
        if not self.parts:
            self.literal = b""

    def render(self, values: Mapping[str, bytes]) -> bytes:
        if self.literal is not None:
            return self.literal
        out = []
        for p in self.parts:
            kind = p.__class__
            if kind is bytes:
                out.append(p)
            elif kind is str:
                out.append(values[p])  # type: ignore[index]
            else:
                out.append(p(values))  # type: ignore[operator]
        return b"".join(out)  # type: ignore[arg-type]

    def literal_text(self) -> str:
        """Every literal piece, for checks such as "no CR/LF in a header template"."""
        return "".join(
            p.decode("utf-8", "replace") if isinstance(p, bytes) else "" for p in self.parts
        )


def compile_template(
    source: str, allowed: Collection[str], constants: Mapping[str, bytes] | None = None
) -> Template:
    """Parse `source`; `allowed` placeholders stay dynamic, `constants` are folded in now.

    Raises TemplateError naming the problem and its position (never a constant's value)."""
    constants = constants or {}
    parts, end = _parse(source, 0, allowed, constants, nested=False)
    assert end == len(source)
    return Template(source, parts)


def _append(parts: list[Part], piece: Part) -> None:
    if isinstance(piece, bytes) and parts and isinstance(parts[-1], bytes):
        parts[-1] = parts[-1] + piece
    elif piece != b"":
        parts.append(piece)


def _parse(
    source: str,
    i: int,
    allowed: Collection[str],
    constants: Mapping[str, bytes],
    *,
    nested: bool,
) -> tuple[list[Part], int]:
    parts: list[Part] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            _append(parts, "".join(literal).encode())
            literal.clear()

    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "{" and source.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and nested:
            flush()
            return parts, i
        elif ch == "}" and source.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise TemplateError(f"unbalanced '}}' at position {i} (write '}}}}' for a brace)")
        elif ch == "{":
            flush()
            piece, i = _placeholder(source, i + 1, allowed, constants)
            _append(parts, piece)
        else:
            literal.append(ch)
            i += 1
    if nested:
        raise TemplateError("unbalanced '{': a function's template is not closed with '}'")
    flush()
    return parts, i


def _placeholder(
    source: str, i: int, allowed: Collection[str], constants: Mapping[str, bytes]
) -> tuple[Part, int]:
    """What follows an opening `{` at i: returns the part and the index after its `}`."""
    match = _NAME.match(source, i)
    if match is None:
        raise TemplateError(
            f"unbalanced '{{' at position {i - 1}: expected a placeholder name "
            "(write '{{' for a brace)"
        )
    name, j = match.group(), match.end()
    if source.startswith("}", j) and name in ("header", "form"):
        raise TemplateError(f"{{{name}}} needs a field name: {{{name}:Name}}")
    if source.startswith("}", j):
        if name in constants:
            return constants[name], j + 1
        if name not in allowed:
            fields = [f"{f}:Name" for f in ("header", "form") if f in allowed]
            names = sorted({*allowed, *constants} - {"header", "form"})
            known = ", ".join([*names, *fields])
            raise TemplateError(f"unknown placeholder {{{name}}}; known: {known}")
        return name, j + 1
    if not source.startswith(":", j):
        raise TemplateError(f"unbalanced '{{' at position {i - 1}: '{{{name}' is not closed")
    if name in ("header", "form"):
        close = source.find("}", j + 1)
        field = source[j + 1 : close] if close != -1 else ""
        if close == -1 or not FIELD_NAME.fullmatch(field):
            raise TemplateError(f"{{{name}:...}} needs a field name and a closing '}}'")
        key = f"{name}:{field.lower() if name == 'header' else field}"
        if name not in allowed:
            raise TemplateError(f"{{{name}:...}} is not available here")
        return key, close + 1
    fn = FUNCTIONS.get(name)
    if fn is None:
        known = ", ".join(["header", "form", *sorted(FUNCTIONS)])
        raise TemplateError(f"unknown function {{{name}:...}}; known: {known}")
    inner, end = _parse(source, j + 1, allowed, constants, nested=True)
    return _Call(fn, Template(source[j + 1 : end], inner)), end + 1
