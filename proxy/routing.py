"""Route matching on raw request targets (SPEC 4.1). Pure.

The raw target is what the client sent, undecoded. It is matched on whole path segments,
longest prefix first; the rest goes upstream byte for byte. Anything that could climb
out of the route (a dot-segment, raw or encoded, in any decoding) is refused here, before
any URL object gets a chance to normalise it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from urllib.parse import unquote, unquote_to_bytes

from proxy.errors import BadRequest

_SEPARATORS: Final = re.compile(r"[/\\]")
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    explicit_port: bool
    base_path: str  # "" or "/api/v2", never a trailing slash

    @property
    def _bracketed_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> str:
        host = self._bracketed_host
        return (
            f"{self.scheme}://{host}:{self.port}"
            if self.explicit_port
            else f"{self.scheme}://{host}"
        )

    @property
    def authority(self) -> str:
        """`host[:port]` as a Host header carries it: the port only when it is not the
        scheme's default (as aiohttp and yarl send it)."""
        host = self._bracketed_host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class Route:
    prefix: str  # "/kibo" or "/"
    upstream: Upstream
    provider: str
    tenant: str = "header"  # header | path
    websocket: bool = False


class RouteMatch(NamedTuple):
    """The route a target picked, and what is left of the target (a NamedTuple: immutable,
    and built on every request at a third of a frozen dataclass's cost)."""

    route: Route
    path: str  # the rest of the raw path, "" or starting with "/"
    query: str | None  # raw query without "?", None when the target had no "?"
    tenant: str | None = None  # from the path, when the route says `tenant: path`

    @property
    def upstream_target(self) -> str:
        """Path and query to send upstream: base path + rest, query byte for byte."""
        path = self.route.upstream.base_path + self.path or "/"
        return path if self.query is None else f"{path}?{self.query}"


# What servers behind a route strip from a segment before they resolve dot-segments:
# `;params` (RFC 3986 3.3 allows them; Tomcat, Jetty and Spring drop them, so `..;x` is `..`)
# and everything after a NUL (C string handling). Trailing blanks are trimmed by Windows/IIS.
_PARAMS: Final = re.compile(r"[;\x00]")
# IIS's non-standard `%u002e` (a '%' not followed by two hex digits is not RFC 3986 anyway)
_PERCENT_U: Final = re.compile(r"%[uU]([0-9a-fA-F]{4})")
# overlong UTF-8, invalid by RFC 3629 3 but '.' or '/' to decoders that do not check
# (`%c0%ae`: Tomcat CVE-2008-2938); other bytes pass untouched, byte for byte
_OVERLONG: Final = re.compile(
    rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}"
)
_DECODE_ROUNDS: Final = 4


def _is_dot(piece: str) -> bool:
    name = _PARAMS.split(piece, 1)[0].rstrip(" \t")
    # NFKC folds look-alikes servers may normalise: U+FF0E fullwidth '.', U+2025 '..'
    return name in (".", "..") or unicodedata.normalize("NFKC", name) in (".", "..")


def _overlong(match: re.Match[bytes]) -> bytes:
    first, *rest = match.group()
    value = first & (0x1F, 0x0F, 0x07)[len(rest) - 1]
    for byte in rest:
        value = value << 6 | byte & 0x3F
    return chr(value).encode()


def _has_dot_segment_overlong(text: str) -> bool:
    raw = unquote_to_bytes(text)
    if not _OVERLONG.search(raw):
        return False
    lenient = _OVERLONG.sub(_overlong, raw).decode("utf-8", "replace")
    return any(_is_dot(piece) for piece in _SEPARATORS.split(lenient))


def _has_dot_segment(segment: str) -> bool:
    text = segment
    for _ in range(_DECODE_ROUNDS):  # `%252e%252e` is `..` to a server that decodes twice
        if any(_is_dot(piece) for piece in _SEPARATORS.split(unicodedata.normalize("NFKC", text))):
            return True
        if "%" not in text:
            return False
        if _has_dot_segment_overlong(text):
            return True
        decoded = unquote(_PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), text))
        if decoded == text:
            return False
        text = decoded
    return True  # still encoded after four rounds: nobody legitimate does that


def check_path(path: str) -> None:
    """Refuse dot-segments, raw or percent-encoded, with `;params` or without, and encoded
    separators that hide them."""
    if path.startswith("//"):
        raise BadRequest("the request path starts with '//', which names another host")
    if "." not in path and "%" not in path and "\\" not in path and path.isascii():
        return  # nothing here could form a dot-segment, however decoded
    for segment in path.split("/"):
        if ("." in segment or "%" in segment or "\\" in segment or not segment.isascii()) and (
            _has_dot_segment(segment)
        ):
            raise BadRequest("the request path holds a dot-segment ('..' or '.', raw or encoded)")


def check_prefix(prefix: str) -> str | None:
    """Why a configured prefix is unusable, or None."""
    if not prefix.startswith("/"):
        return f"must start with '/', found {prefix!r}"
    if "?" in prefix or "#" in prefix or "%" in prefix:
        return f"must be a plain path, found {prefix!r}"
    if "//" in prefix or any(s in (".", "..") for s in prefix.split("/")):
        return f"must not hold empty or dot segments, found {prefix!r}"
    return None


@dataclass
class RouteTable:
    routes: tuple[Route, ...]
    _by_prefix: dict[str, Route] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_prefix = {r.prefix.rstrip("/"): r for r in self.routes}

    def match(self, target: str) -> RouteMatch | None:
        """The route for a raw origin-form target, longest prefix on whole segments. A
        `#fragment` is not part of a request target (RFC 9112 3.2): it is dropped."""
        path, sep, query = target.partition("#")[0].partition("?")
        check_path(path)
        candidate = path
        while True:
            route = self._by_prefix.get(candidate)
            if route is not None:
                rest = path[len(candidate) :]
                match = RouteMatch(route, rest, query if sep else None)
                if route.tenant == "path":
                    match = _take_tenant(match)
                if not route.upstream.base_path and match.path.startswith("//"):
                    # sent as is, `//host/x` is a network-path reference (RFC 3986 4.2)
                    raise BadRequest(
                        "the path after the route's prefix starts with '//', which names "
                        "another host"
                    )
                return match
            if not candidate:
                return None
            candidate = candidate[: candidate.rfind("/")]


def _take_tenant(match: RouteMatch) -> RouteMatch:
    rest = match.path
    if not rest or rest == "/":
        return RouteMatch(match.route, rest, match.query, None)
    tenant, slash, remainder = rest[1:].partition("/")
    return RouteMatch(match.route, slash + remainder, match.query, tenant or None)
