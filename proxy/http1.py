"""Rules for an upstream's response head, checked on the raw bytes (RFC 9112). Pure.

aiohttp's client parser is lenient where a proxy must not be: it takes a reason phrase
with control bytes, a header name with whitespace before the colon (`Content-Length : 5`
arrives as a field named "Content-Length "), a line folded onto the one before (obs-fold)
and a whitespace-led line after the status line as a header. A proxy that relays such an
answer lets its client and the upstream disagree on the message (RFC 9112 11.2). So the
raw head is held to the grammar here, before aiohttp parses it, and what breaks it is a
502 (RFC 9112 5.2 allows a proxy to answer an obs-fold with 502; 5.1 and 2.2 require the
rest to be rejected).

Rules:
- status-line = HTTP-version SP 3DIGIT SP reason-phrase (RFC 9112 4); the version is
  HTTP/1.0 or HTTP/1.1; the code in 100-599 (RFC 9110 15); the reason phrase holds only
  HTAB, SP, VCHAR and obs-text. A missing reason (`HTTP/1.1 200`) is tolerated.
- field-line = field-name ":" OWS field-value OWS (RFC 9112 5): the name a token, no
  whitespace before the colon, the value without control characters but HTAB.
- no line begins with whitespace (obs-fold, RFC 9112 5.2; or whitespace before the first
  field, RFC 9112 2.2); a bare CR anywhere is refused; a bare LF ends a line (2.2 allows).
- framing (RFC 9112 6): at most one Content-Length, 1 to 18 digits; Transfer-Encoding
  only on HTTP/1.1, only `chunked` (keyhop decodes no other transfer coding), and never
  beside Content-Length.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import hdrs
from multidict import istr

from proxy.headers import RESPONSE_OWN

#: the largest response head accepted; aiohttp's own limits are per line (8190 bytes)
MAX_RESPONSE_HEAD: Final = 128 * 1024

_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# possessive: a line of blanks ending in a control byte must not cost quadratic backtracking
_FIELD_LINE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):([\t\x20-\x7e\x80-\xff]*+)")
_NAME: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):")
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
#: a whole well-formed CRLF head in one C-level match (the common case); every line starts
#: with a token, so there is no obs-fold, and CR appears only in CRLF
_WELL_FORMED: Final = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*+)?\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[\t\x20-\x7e\x80-\xff]*+\r\n)*+\r\n"
)
_FRAMING: Final = re.compile(
    rb"^(content-length|transfer-encoding):([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)


class BadUpstreamAnswer(Exception):
    """The upstream's answer cannot be relayed; the text says what it was, in keyhop's words
    (never the upstream's bytes)."""


def _bad(rule: str) -> BadUpstreamAnswer:
    return BadUpstreamAnswer(f"something that is not HTTP: {rule}")


def head_end(buffer: bytes | bytearray | memoryview) -> int | None:
    """Where the head in `buffer` ends (the index after its blank line), or None."""
    found = _HEAD_END.search(buffer)
    return None if found is None else found.end()


def check_response_head(head: bytes) -> int:
    """The status code of a whole response head (blank line included); raises
    BadUpstreamAnswer naming the rule it breaks."""
    whole = _WELL_FORMED.fullmatch(head)
    if whole is not None:  # the grammar holds: only the numbers and the framing are left
        code = int(whole.group(2))
        if not 100 <= code <= 599:
            raise _bad(f"status {code}, outside 100-599")
        found = _FRAMING.findall(head)
        if found:
            if len(found) == 1 and (length := found[0][1].strip(b" \t")).isdigit():
                if found[0][0].lower() == b"content-length" and len(length) <= 18:
                    return code  # the usual answer: one plain Content-Length
            _check_framing(whole.group(1), found)
        return code
    if b"\r" in head.replace(b"\r\n", b""):
        raise _bad("a bare CR in its head")
    status_line, *lines = head.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    status = _STATUS_LINE.fullmatch(status_line)
    if status is None:
        raise _bad("a status line that is not HTTP/1.x (or a control byte in it)")
    code = int(status.group(2))
    if not 100 <= code <= 599:
        raise _bad(f"status {code}, outside 100-599")
    framing: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise _bad("a header line folded onto the one before (obs-fold)")
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            named = _NAME.match(line)
            if named is not None and len(named.group(1)) <= 64:
                # a token is safe to name (no control byte, no quote, no space)
                raise _bad(f"a control character in header {named.group(1).decode('ascii')}")
            raise _bad(
                "a header line that is not `name: value` (a name that is not a token, or "
                "whitespace before the colon)"
            )
        name = field.group(1).lower()
        if name in (b"content-length", b"transfer-encoding"):
            framing.append((name, field.group(2)))
    _check_framing(status.group(1), framing)
    return code


def declared_length(head: bytes) -> int | None:
    """The Content-Length of a checked final head (check_response_head), None without one
    or with Transfer-Encoding."""
    length = None
    for name, value in _FRAMING.findall(head):
        if name.lower() != b"content-length":
            return None
        length = int(value.strip(b" \t"))
    return length


def _check_framing(minor: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    """RFC 9112 6: the body's length is said once, plainly (`minor`: the HTTP/1.x minor)."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, raw in fields:
        value = raw.strip(b" \t")
        if name.lower() == b"content-length":
            lengths.append(value)
        else:
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
    if len(lengths) > 1:
        raise _bad("more than one Content-Length")
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        raise _bad("a Content-Length that is not a plain number")
    if codings:
        if minor == b"0":
            raise _bad("Transfer-Encoding on an HTTP/1.0 answer")
        if codings != [b"chunked"]:
            raise _bad("a Transfer-Encoding other than chunked")
        if lengths:
            raise _bad("both Transfer-Encoding and Content-Length")


#: A plain answer (the express lane relays it as it came, bar the lines keyhop drops):
#: HTTP/1.1, a reason phrase, and every field line in the form aiohttp writes back
#: (`Name: value`, one space, no whitespace around the value, printable ASCII). Anything
#: else goes through aiohttp's parser and the checks above, so this is a subset of them.
_PLAIN: Final = re.compile(
    rb"HTTP/1\.1 ([0-9]{3}) [\x21-\x7e](?:[\x20-\x7e]*+(?<! ))?\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++: (?:[\x21-\x7e](?:[\x20-\x7e]*+(?<! ))?)?\r\n)*+\r\n"
)
#: the fields of a plain head that keyhop does not relay as they are: hop-by-hop ones and
#: Content-Length, which the relayed head states itself
_OWN: Final = frozenset(name.encode() for name in RESPONSE_OWN)
_OWN_LINE: Final = re.compile(
    rb"\r\n(?:" + b"|".join(sorted(_OWN)) + rb"): [^\r]*",
    re.IGNORECASE,
)
#: aiohttp's parser spells the field names it knows (aiohttp.hdrs) its own way, whatever
#: case they came in, and the pipeline relays them so: a plain head is respelled alike
_KNOWN: Final = {
    str(name).lower().encode(): str(name).encode()
    for name in vars(hdrs).values()
    if isinstance(name, istr)
}
#: aiohttp's parser refuses an answer with this field (a pre-RFC 6455 WebSocket draft)
_REFUSED: Final = b"sec-websocket-key1"
#: names that need no second look: known, spelled aiohttp's way, relayed as they are
_AS_THEY_ARE: Final = frozenset(v for k, v in _KNOWN.items() if k not in _OWN and k != _REFUSED)
#: aiohttp's parser refuses a head with more fields than this (set_response_params)
_MAX_FIELDS: Final = 128
#: a plain head ends within this many bytes (under aiohttp's 8190-byte line limit, so no
#: line of it can be too long for the parser)
_PLAIN_HEAD: Final = 8192


def plain_answer(data: bytes, largest: int) -> tuple[int, bytes, int] | None:
    """A whole plain answer in `data` and nothing after it: its status code, its head as
    the pipeline relays it (blank line, Content-Length and Date not yet added) and where
    its body starts; None when the answer is not that (aiohttp's parser takes it then).

    Plain means: the head above (_PLAIN), within aiohttp's limits, a final status that has
    a body, one Content-Length of at most `largest` and equal to the bytes that follow the
    head, and of the hop-by-hop fields only `Connection: keep-alive` and Keep-Alive (so no
    field is named by Connection)."""
    end = data.find(b"\r\n\r\n", 0, _PLAIN_HEAD)
    if end == -1:
        return None
    head = _PLAIN.fullmatch(data, 0, end + 4)
    if head is None:
        return None
    code = int(head.group(1))
    if code < 200 or code > 599 or code == 204 or code == 304:
        return None  # no body (RFC 9112 6.3), an interim answer, or no status (a 502)
    lines = data[:end].split(b"\r\n")  # the status line, then `Name: value` (_PLAIN)
    if len(lines) > _MAX_FIELDS + 1:
        return None
    length = -1
    dropped = 0  # fields not relayed as they are, Content-Length among them
    respell: list[bytes] = []  # known names not spelled aiohttp's way
    for i in range(1, len(lines)):
        name, _, value = lines[i].partition(b": ")
        if name in _AS_THEY_ARE:
            continue
        lower = name.lower()
        if lower == b"content-length":
            if length != -1 or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
            dropped += 1
            stated = name
        elif lower in _OWN:
            if not (
                lower == b"keep-alive"
                or (lower == b"connection" and value.lower() == b"keep-alive")
            ):
                return None
            dropped += 1
        elif lower in _KNOWN:
            if lower == _REFUSED:
                return None
            respell.append(name)
    end += 4
    if length == -1 or length > largest or len(data) - end != length:
        return None
    if dropped == 1:  # the usual head: only Content-Length to cut
        cut = data.find(b"\r\n" + stated + b": ", 0, end)
        relayed = data[:cut] + data[data.find(b"\r\n", cut + 2) : end - 4]
    else:
        relayed = _OWN_LINE.sub(b"", data[: end - 4])
    for name in respell:  # (a name is only ever at a line's start: values hold no CR or LF)
        relayed = relayed.replace(b"\r\n" + name + b":", b"\r\n" + _KNOWN[name.lower()] + b":")
    return code, relayed, end
