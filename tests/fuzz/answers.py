"""Generated upstream answers, each with what RFC 9112 says of it.

An answer is built from parts (interim answers, status line, header fields, framing, body)
and every part is judged as it is drawn: `valid` (a proxy must relay it), `either` (the RFC
lets a recipient accept or refuse it: obs-fold, obs-text, bare LF, a repeated equal
Content-Length, Transfer-Encoding beside Content-Length) or `invalid` (a proxy must not relay
it). Head and body are judged apart: a bad head is refused before anything reaches the
client (502), a bad body may only be cut short.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final

from hypothesis import strategies as st

VALID, EITHER, INVALID = 0, 1, 2
#: faults keyhop is known to mishandle, each kept as a strict xfail case in
#: test_upstream_answers.py; the generator leaves them out so the campaign finds new ones.
#: When a fix lands, its xfail turns to XPASS: remove the name here to fuzz that class again.
KNOWN: Final[frozenset[str]] = frozenset()
_WORDS: Final = ("valid", "either", "invalid")
CTL: Final = b"\x00\x01\x07\x08\x0b\x0c\x0e\x1f\x7f\r"  # controls other than HTAB (RFC 9110 5.5)
TCHAR: Final = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHAR_SP: Final = "".join(chr(c) for c in range(0x20, 0x7F))


@dataclass
class Built:
    """One generated answer: the bytes and how a proxy may treat them."""

    parts: tuple[bytes, ...] = ()
    ending: str = "close"
    pause: float = 0.01  # between parts
    head: int = VALID  # verdict on the interim answers, status line and fields
    body_verdict: int = VALID  # verdict on framing and body
    head_whole: bool = True  # the head arrived whole (no cut inside it)
    complete: bool = True  # the message arrived whole
    status: int = 200
    body: bytes | None = b""  # what a relay must carry; None when not checked
    notes: list[str] = field(default_factory=list)

    def mark(self, verdict: int, where: str, note: str) -> None:
        if where == "head":
            self.head = max(self.head, verdict)
        else:
            self.body_verdict = max(self.body_verdict, verdict)
        self.notes.append(f"{where} {_WORDS[verdict]}: {note}")

    @property
    def wire(self) -> bytes:
        return b"".join(self.parts)

    def __repr__(self) -> str:  # hypothesis prints it: short, whatever the body's size
        wire = self.wire
        shown = repr(wire[:400]) + (f"... ({len(wire)} bytes)" if len(wire) > 400 else "")
        return (
            f"Built(parts of {[len(p) for p in self.parts]} bytes: {shown}, "
            f"ending={self.ending!r}, pause={self.pause}, head={_WORDS[self.head]}, "
            f"body={_WORDS[self.body_verdict]}, head_whole={self.head_whole}, "
            f"complete={self.complete}, status={self.status}, notes={self.notes})"
        )


def _insert(draw: Any, text: bytes, what: bytes) -> bytes:
    at = draw(st.integers(0, len(text)))
    return text[:at] + what + text[at:]


def _token(draw: Any) -> bytes:
    return ("X-" + draw(st.text(TCHAR, min_size=1, max_size=8))).encode()


def _status_line(draw: Any, rnd: random.Random, b: Built) -> bytes:
    version = b"HTTP/1.0" if rnd.random() < 0.15 else b"HTTP/1.1"
    code = b"%03d" % b.status
    if rnd.random() < 0.04:
        code = rnd.choice([b"20", b"2000", b"2x0", b"", b"+200", b"0200"])
        b.mark(INVALID, "head", f"status code {code!r}")
    reason = draw(st.text(VCHAR_SP + "\t", max_size=12)).encode()
    kind = rnd.choice(["plain"] * 10 + ["ctl-reason", "obs-text"])
    if kind in KNOWN:
        kind = "plain"
    if kind == "ctl-reason":
        ctl = rnd.choice(CTL)
        reason = _insert(draw, reason, bytes([ctl]))
        b.mark(EITHER if ctl == 0x0D else INVALID, "head", f"reason {reason!r}")
    elif kind == "obs-text":
        reason = _insert(draw, reason, rnd.choice([b"\xe9", b"\xc3\xa9", b"\xff"]))
        b.mark(EITHER, "head", f"reason {reason!r}")
    return version + b" " + code + b" " + reason


_FIELD_KINDS: Final = (
    ["plain"] * 30
    + ["ows", "space-before-colon", "tab-before-colon", "bad-name-char", "empty-name"]
    + ["no-colon", "ctl-in-value", "obs-text", "utf-8", "obs-fold"]
)


def _field(draw: Any, rnd: random.Random, b: Built) -> bytes:
    name = _token(draw)
    value = draw(st.text(VCHAR_SP, max_size=16)).strip().encode()
    kind = rnd.choice(_FIELD_KINDS)
    if kind in KNOWN:
        kind = "plain"
    if kind == "ows":
        value = rnd.choice([b" ", b"\t", b"  "]) + value + b" \t"
    elif kind in ("space-before-colon", "tab-before-colon"):
        name += b" " if kind == "space-before-colon" else b"\t"
        b.mark(INVALID, "head", f"{kind}: {name!r}")  # RFC 9112 5.1: MUST be rejected
    elif kind == "bad-name-char":
        # not at the start: a line starting with SP or HTAB is obs-fold (RFC 9112 5.2)
        at = draw(st.integers(1, len(name)))
        name = name[:at] + bytes([rnd.choice(b'()<>@,;\\"/[]?={} \x01\x7f\xe9')]) + name[at:]
        b.mark(INVALID, "head", f"field name {name!r}")
    elif kind == "empty-name":
        name = b""
        b.mark(INVALID, "head", "empty field name")
    elif kind == "no-colon":
        b.mark(INVALID, "head", "a field line without a colon")
        return name + value.replace(b":", b"")
    elif kind == "ctl-in-value":
        ctl = rnd.choice(CTL)
        at = draw(st.integers(0, len(value)))
        if ctl == 0x0D and at == 0 and "bare-cr" in KNOWN:
            at = len(value) if value else 1  # not right after the colon
            value = value or b"v"
        value = value[:at] + bytes([ctl]) + value[at:]
        # RFC 9112 2.2: a bare CR is invalid, or replaced by SP before the field is used
        b.mark(EITHER if ctl == 0x0D else INVALID, "head", f"value {value!r}")
    elif kind in ("obs-text", "utf-8"):
        value = _insert(draw, value, b"\xe9" if kind == "obs-text" else "é✓".encode())
        b.mark(EITHER, "head", f"value {value!r}")
    elif kind == "obs-fold":
        value += b"\r\n " + draw(st.text(TCHAR, min_size=1, max_size=5)).encode()
        b.mark(EITHER, "head", "obs-fold")  # RFC 9112 5.2: replace with SP, or refuse
    return name + b":" + value


def _chunked(draw: Any, rnd: random.Random, b: Built, body: bytes) -> bytes:
    cuts = sorted(rnd.randint(0, len(body)) for _ in range(rnd.randint(0, 3)))
    pieces = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for piece in [p for p in pieces if p] + [b""]:
        size = b"%x" % len(piece)
        kind = rnd.choice(["plain"] * 14 + ["upper-zeros", "ext", "bad-ext", "bad-size"])
        if kind in KNOWN:
            kind = "plain"
        ext = b""
        if kind == "upper-zeros":
            size = b"00" + size.upper()
        elif kind == "ext":
            ext = rnd.choice([b";a=b", b';q="x y"', b";n"])
        elif kind == "bad-ext":
            ext = rnd.choice([b";\x01", b';a="open', b";=x", b" ; a = b"])
            b.mark(EITHER, "body", f"chunk extension {ext!r}")
        elif kind == "bad-size":
            size = rnd.choice([b"zz", b"-1", b"", b"0x5", b"f" * 17, size + b" 1"])
            b.mark(INVALID, "body", f"chunk size {size!r}")
        tail = b"\r\n"
        if piece and rnd.random() < 0.03:
            tail = b"X\r\n"
            b.mark(INVALID, "body", "chunk data longer than its size")
        out += size + ext + b"\r\n" + piece + (tail if piece else b"")
    trailer = rnd.choice([b""] * 8 + [b"X-T: 1\r\n", b"X-T : 1\r\n", b"Bad\r\n"])
    if trailer.startswith((b"X-T :", b"Bad")):
        b.mark(EITHER, "body", f"trailer {trailer!r}")
    return out + trailer + b"\r\n"


@st.composite
def answers(draw: Any) -> Built:
    """One upstream answer to a GET. The shape (which fault, how likely) comes from a seeded
    generator, so each fault turns up at a known rate; the texts come from hypothesis."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    b = Built()
    b.status = rnd.choice(
        [200, 200, 200, 201, 204, 206, 301, 304, 401, 404, 429, 500, 502, 503]
        + [rnd.randint(200, 599)] * 3
    )
    head = b""
    for _ in range(rnd.choice([0] * 12 + [1, 1, 2])):
        interim = rnd.choice(["100", "103", "103", "101"])
        if interim == "101":
            b.mark(INVALID, "head", "101 Switching Protocols, unasked")
        head += {
            "100": b"HTTP/1.1 100 Continue\r\n\r\n",
            "103": b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
            "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        }[interim]
    if rnd.random() < 0.03:  # not HTTP at all, or nothing
        b.parts = (draw(st.binary(max_size=40).filter(lambda x: not x.startswith(b"H"))),)
        b.mark(INVALID, "head", f"not HTTP: {b.parts[0]!r}")
        return b
    status_line = _status_line(draw, rnd, b)
    fields = [_field(draw, rnd, b) for _ in range(rnd.randint(0, 3))]
    bodyless = b.status in (204, 304)
    size = rnd.choice([0, 1, 2, 17, 300, 70_000]) if not bodyless else 0
    body = rnd.randbytes(size)
    framing = rnd.choice(
        ["length"] * 8
        + ["chunked"] * 6
        + ["close"] * 2
        + ["zeros", "dup-same", "list-same", "conflict", "bad-length", "te+length"]
    )
    if bodyless:
        framing = rnd.choice(["none", "length"])
    b.body = body
    payload = body
    if framing == "length":
        fields.append(b"Content-Length: %d" % len(body))
    elif framing == "zeros":
        fields.append(b"Content-Length: 00%d" % len(body))  # 1*DIGIT (RFC 9110 8.6)
    elif framing in ("dup-same", "list-same"):
        n = b"%d" % len(body)
        fields += (
            [b"Content-Length: " + n] * 2
            if framing == "dup-same"
            else [b"Content-Length: %s, %s" % (n, n)]
        )
        b.mark(EITHER, "head", framing)  # RFC 9110 8.6: MAY accept when all are equal
    elif framing == "conflict":
        fields += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
        b.mark(INVALID, "head", "two different Content-Length values")
    elif framing == "bad-length":
        bad = rnd.choice([b"abc", b"-1", b"+5", b"0x5", b"5 5", b"", b"1e3", b"9" * 25])
        fields.append(b"Content-Length: " + bad)
        b.mark(INVALID, "head", f"Content-Length {bad!r}")
    elif framing in ("chunked", "te+length"):
        fields.append(b"Transfer-Encoding: chunked")
        if framing == "te+length":
            fields.append(b"Content-Length: %d" % (len(body) + 3))
            b.mark(EITHER, "head", "Transfer-Encoding beside Content-Length")  # RFC 9112 6.1
        payload = _chunked(draw, rnd, b, body)
        if status_line.startswith(b"HTTP/1.0"):
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
            b.mark(EITHER, "head", "Transfer-Encoding in an HTTP/1.0 answer")
            b.body = None
    rnd.shuffle(fields)
    eol = b"\r\n"
    if rnd.random() < 0.04:
        eol = b"\n"
        b.mark(EITHER, "head", "bare LF line ends")  # RFC 9112 2.2: MAY accept
    whole_head = head + eol.join([status_line, *fields]) + eol + eol
    wire = whole_head + payload
    b.notes.append(f"framing {framing}")
    stray = 0
    if framing != "close" and rnd.random() < 0.15:
        b.ending = "keep"
        if "stray-bytes" not in KNOWN and rnd.random() < 0.5:
            stray = len(wire)  # the first stray byte arrives with the answer's last one
            wire += b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
            # nginx relays the first and closes; refusing the lot is defensible too
            b.mark(EITHER, "body", "an unasked second answer follows on a kept connection")
    whole = len(whole_head) + len(payload)
    if framing != "close" and rnd.random() < 0.12:
        at = rnd.randrange(whole)
        wire = wire[:at]
        b.complete = False
        b.head_whole = at >= len(whole_head)
        b.ending = rnd.choice(["close", "close", "stall"])
        b.notes.append(f"cut at byte {at} of {whole}, then {b.ending}")
    elif framing == "close" and rnd.random() < 0.1:
        b.ending = "stall"
        b.complete = False
        b.notes.append("close-delimited body, then silence")
    splits = sorted(
        {rnd.randint(1, max(1, len(wire) - 1)) for _ in range(rnd.randint(0, 3))} - {stray}
    )
    b.parts = tuple(
        wire[i:j] for i, j in zip([0, *splits], [*splits, len(wire)], strict=True) if wire[i:j]
    )
    return b
