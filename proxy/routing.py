"""Route matching on raw request targets (SPEC 4.1). Pure.

The raw target is what the client sent, undecoded. It is matched on whole path segments,
longest prefix first; the rest goes upstream byte for byte. Anything that could climb
out of the route (a dot-segment, raw or encoded, in any decoding) is refused here, before
any URL object gets a chance to normalise it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

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


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    path: str  # the rest of the raw path, "" or starting with "/"
    query: str | None  # raw query without "?", None when the target had no "?"
    tenant: str | None = None  # from the path, when the route says `tenant: path`

    @property
    def upstream_target(self) -> str:
        """Path and query to send upstream: base path + rest, query byte for byte."""
        path = self.route.upstream.base_path + self.path or "/"
        return path if self.query is None else f"{path}?{self.query}"


def _has_dot_segment(segment: str) -> bool:
    text = segment
    for _ in range(4):  # decode repeatedly: `%252e%252e` is `..` to a server that decodes twice
        if any(piece in (".", "..") for piece in _SEPARATORS.split(text)):
            return True
        if "%" not in text:
            return False
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return True  # still encoded after four rounds: nobody legitimate does that


def check_path(path: str) -> None:
    """Refuse dot-segments, raw or percent-encoded, and encoded separators that hide them."""
    if path.startswith("//"):
        raise BadRequest("the request path starts with '//', which names another host")
    if "." not in path and "%" not in path and "\\" not in path:
        return  # nothing here could form a dot-segment, however decoded
    for segment in path.split("/"):
        if ("." in segment or "%" in segment or "\\" in segment) and _has_dot_segment(segment):
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
                return _take_tenant(match) if route.tenant == "path" else match
            if not candidate:
                return None
            candidate = candidate[: candidate.rfind("/")]


def _take_tenant(match: RouteMatch) -> RouteMatch:
    rest = match.path
    if not rest or rest == "/":
        return RouteMatch(match.route, rest, match.query, None)
    tenant, slash, remainder = rest[1:].partition("/")
    return RouteMatch(match.route, slash + remainder, match.query, tenant or None)
