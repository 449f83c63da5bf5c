"""Which headers cross keyhop, both ways (SPEC 4.1, RFC 9110 7.6.1). Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

#: RFC 9110 7.6.1 hop-by-hop fields, plus the non-standard ones still seen in the wild
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: request fields keyhop sets itself: the upstream's own Host, and Expect handled locally
_REQUEST_OWN: Final = HOP_BY_HOP | {"host", "expect"}
#: response fields keyhop sets itself (Content-Length) or never relays (hop-by-hop)
RESPONSE_OWN: Final = HOP_BY_HOP | {"content-length"}
_NONE: Final[frozenset[str]] = frozenset()
KEYHOP_PREFIX: Final = "x-keyhop-"
#: RFC 9110 5.1: a field name is a token
FIELD_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: what no field value may hold (RFC 9110 5.5: controls other than tab)
CONTROL_CHARS: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


#: fields that frame the message or the connection: keyhop sets them itself, never from config
_FRAMING: Final = HOP_BY_HOP | {"content-length"}


def configured_header_problem(name: str, value: str | None) -> str | None:
    """Why a header written in the config (`headers`, `token_headers`, `login_headers`)
    cannot be sent as written, or None. Never quotes the value (it may be a secret)."""
    if not FIELD_NAME.fullmatch(name):
        return "not a valid header name (RFC 9110 token characters only)"
    if name.lower() in _FRAMING:
        return "keyhop frames the message itself: this header cannot be configured"
    if value is None:
        return None
    if CONTROL_CHARS.search(value):
        return "the value holds a line break or another control character"
    if value != value.strip(" \t"):
        # RFC 9110 5.5: every parser drops them, so the upstream would get another value
        return "the value starts or ends with blanks, which no HTTP parser keeps"
    return None


class UnrelayableHeader(ValueError):
    """An upstream header value holds a control character (aiohttp's lenient parser lets
    some through; no HTTP writer may send them on)."""


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Header names listed in Connection, lower-cased (RFC 9110 7.6.1)."""
    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


def clean_request_headers(
    headers: CIMultiDictProxy[str], *, keep_authorization: bool
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, Connection-named, X-Keyhop-* and Authorization.

    Runs before keyhop adds its own headers, so a client's `Connection: Authorization`
    removes only the client's header, never what keyhop adds afterwards.
    """
    connection = headers.getall("Connection", None)
    named = connection_tokens(connection) if connection else _NONE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if (
            lower in _REQUEST_OWN
            or lower in named
            or lower.startswith(KEYHOP_PREFIX)
            or (lower == "authorization" and not keep_authorization)
        ):
            continue
        out.add(name, value)
    return out


def clean_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop and Connection-named ones.

    Content-Length is dropped here only because the response object sets it itself.
    Raises UnrelayableHeader for a value with a control character.
    """
    connection = headers.getall("Connection", None)
    named = connection_tokens(connection) if connection else _NONE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in RESPONSE_OWN or lower in named:
            continue
        if not value.isprintable() and CONTROL_CHARS.search(value):  # a tab is fine
            raise UnrelayableHeader(f"the upstream's {name} header holds a control character")
        out.add(name, value)
    return out


def all_ascii(first: str, headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bool:
    """True when aiohttp's C head serializer can write this head whole: it silently drops
    the surrogate-escaped obs-text bytes (0x80-0xFF) a parser kept (RFC 9110 5.5)."""
    return first.isascii() and all(map(str.isascii, headers.values()))


def serialize_obs_text(first: str, headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bytes:
    """A head with its non-ASCII bytes as they came (aiohttp decodes them with
    surrogateescape); ValueError for a control character, as aiohttp's own serializer."""
    lines = [first]
    for name, value in headers.items():
        if CONTROL_CHARS.search(name) or CONTROL_CHARS.search(value):
            raise ValueError("a header holds a control character")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
