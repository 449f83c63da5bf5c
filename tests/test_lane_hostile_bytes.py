"""Odd but legal upstream answers (RFC 9112 4 and 5; RFC 9110 5.5): the bytes a client
gets from the express lane must be the bytes it gets with the lane off (issue 16: status,
reason, header names, values and order, body), but for the Date that keyhop adds when the
upstream sent none. Compared byte for byte on the wire.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.lane_peers import Keyhops, keyhops
from tests.test_upstream import Behaviour, RawConn, StartRaw, raw_upstream, until

THEIR_DATE = b"Tue, 01 Jan 2030 00:00:00 GMT"

__all__ = ["keyhops", "raw_upstream"]  # fixtures


def answering(odd: bytes) -> Behaviour:
    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            if wire.path == "/x":
                conn.writer.write(odd)
            else:
                conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await conn.writer.drain()

    return behave


async def raw_answer(reader: asyncio.StreamReader) -> bytes:
    """One answer's bytes, head and Content-Length body, with keyhop's own Date blanked."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE)
        body = await reader.readexactly(int(found.group(1))) if found else b""
    if THEIR_DATE not in head:
        head = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: <keyhop's>", head)
    return head + body


ODD = {
    "obs-text-in-reason": b"HTTP/1.1 200 Tr\xe8s bien\r\nContent-Length: 2\r\n\r\nok",
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    "empty-reason": b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    "odd-reason": b"HTTP/1.1 299 Whatever  it\tsays \r\nContent-Length: 2\r\n\r\nok",
    "obs-text-in-value": b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    "utf-8-in-value": b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok",
    "lower-case-names": b"HTTP/1.1 200 OK\r\ncontent-type: a/b\r\ncontent-length: 2\r\n\r\nok",
    "leading-zeros": b"HTTP/1.1 200 OK\r\nContent-Length: 0002\r\n\r\nok",
    "blanks-around-values": b"HTTP/1.1 200 OK\r\nX-A:   spaced \t\r\nContent-Length:  2 \r\n\r\nok",
    "empty-value": b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nok",
    "repeated-fields-in-order": (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 1\r\nSet-Cookie: b=2\r\nX-B: 2\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ),
    "their-date-and-server": (
        b"HTTP/1.1 200 OK\r\nServer: up/1\r\nDate: "
        + THEIR_DATE
        + b"\r\nContent-Length: 2\r\n\r\nok"
    ),
    "hop-by-hop-to-drop": (
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nContent-Length: 2\r\n\r\nok"
    ),
    "connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf-lines": b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 2\n\nok",
    "zero-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "exactly-64-kib": b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + b"z" * 65536,
    "a-byte-over-64-kib": b"HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n" + b"z" * 65537,
    "error-status-with-body": b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n"
    b"Content-Length: 4\r\n\r\nbusy",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/\r\n"
    b"Content-Length: 0\r\n\r\n",
    "rate-limit-headers": b"HTTP/1.1 200 OK\r\nX-Plan-QPS-Allotted: 20\r\nX-RateLimit-Remaining: 4"
    b"\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("odd", list(ODD.values()), ids=list(ODD))
async def test_an_odd_but_legal_answer_reaches_the_client_byte_for_byte_as_with_the_lane_off(
    keyhops: Keyhops, raw_upstream: StartRaw, odd: bytes
) -> None:
    seen: list[tuple[bytes, bytes]] = []
    for express in (True, False):
        served = await keyhops.start(await raw_upstream(answering(odd)), express=express)
        await served.warm()
        reader, writer = await served.connect()
        writer.write(b"GET /r/x HTTP/1.1\r\nHost: k\r\n\r\nGET /r/next HTTP/1.1\r\nHost: k\r\n\r\n")
        first = await raw_answer(reader)
        second = await raw_answer(reader)
        writer.close()
        seen.append((first, second))
        await until(lambda s=served: len(s.lines) == 3)  # type: ignore[misc]
        if express:
            assert served.taken >= 1
    print(seen[0][0][:300])
    assert seen[0] == seen[1]
    assert seen[0][1].endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    "odd",
    [ODD["obs-text-in-reason"], ODD["obs-text-in-value"]],
    ids=["obs-text-in-reason", "obs-text-in-value"],
)
@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
async def test_obs_text_in_an_answer_head_reaches_the_client_as_sent(
    keyhops: Keyhops, raw_upstream: StartRaw, odd: bytes, express: bool
) -> None:
    """RFC 9110 5.5: obs-text is opaque field content; SPEC 4.1: responses keep the
    upstream's headers. keyhop's head check (proxy/http1.py) lets it through; it must not
    then be lost."""
    served = await keyhops.start(await raw_upstream(answering(odd)), express=express)
    await served.warm()
    reader, writer = await served.connect()
    writer.write(b"GET /r/x HTTP/1.1\r\nHost: k\r\n\r\n")
    got = await raw_answer(reader)
    writer.close()
    sent_line = odd.split(b"\r\n")[0 if b"Tr" in odd else 1]
    assert sent_line in got
