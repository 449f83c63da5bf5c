"""Upstream answers that are not valid HTTP/1.1 are 502, never relayed (issue 12 item 4).

The rules are RFC 9112's (status line 4, field lines 5, obs-fold 5.2, framing 6); each
case is sent by a raw-socket upstream through a real keyhop app, and the client must get
keyhop's 502 `upstream_unreachable` without any of the upstream's bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from typing import Any

import pytest

from proxy.http1 import MAX_RESPONSE_HEAD, BadUpstreamAnswer, check_response_head
from proxy.runtime import KEYHOP
from tests.conftest import MakeProxy, raw_url
from tests.test_upstream import (
    MARK,
    OK,
    RawConn,
    StartRaw,
    Wire,
    assert_error,
    busy,
    keep_alive,
    raw_upstream,
    route,
)

FUZZ_CASES = int(os.environ.get("KEYHOP_FUZZ_CASES", "300"))  # `make fuzz` runs more
__all__ = ["raw_upstream"]  # the raw-socket upstream fixture, shared with test_upstream.py
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
M = MARK.encode()

BAD = {
    # status line (RFC 9112 4; RFC 9110 15)
    "reason-with-a-control-byte": b"HTTP/1.1 200 O\x01K " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "reason-with-nul": b"HTTP/1.1 200 O\x00K " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "reason-with-del": b"HTTP/1.1 200 O\x7fK " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "reason-with-escape": b"HTTP/1.1 200 \x1b[31m" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "reason-with-bare-cr": b"HTTP/1.1 200 O\rK " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "status-999": b"HTTP/1.1 999 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "status-600": b"HTTP/1.1 600 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "status-099": b"HTTP/1.1 099 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "http-2-0-on-http-1-1": b"HTTP/2.0 200 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "http-1-2": b"HTTP/1.2 200 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "two-spaces-after-version": b"HTTP/1.1  200 " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    # field lines (RFC 9112 5, 5.1, 5.2, 2.2)
    "space-before-the-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\nX: " + M + b"\r\n\r\nok",
    "tab-before-the-colon": b"HTTP/1.1 200 OK\r\nX-A\t: " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "space-inside-a-name": b"HTTP/1.1 200 OK\r\nX A: " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold-with-tab": b"HTTP/1.1 200 OK\r\nX-A: a\r\n\t"
    + M
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "whitespace-before-the-first-field": b"HTTP/1.1 200 OK\r\n X-A: "
    + M
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-a-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-a-name": b"HTTP/1.1 200 OK\r\nX-\x00A: " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "bare-cr-in-a-value": b"HTTP/1.1 200 OK\r\nX-A: a\r" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "escape-in-a-value": b"HTTP/1.1 200 OK\r\nX-A: \x1b" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "del-in-a-value": b"HTTP/1.1 200 OK\r\nX-A: \x7f" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "empty-name": b"HTTP/1.1 200 OK\r\n: " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "no-colon": b"HTTP/1.1 200 OK\r\n" + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "non-ascii-name": b"HTTP/1.1 200 OK\r\nX-\xe9: " + M + b"\r\nContent-Length: 2\r\n\r\nok",
    "quote-in-a-name": b'HTTP/1.1 200 OK\r\nX"A: ' + M + b"\r\nContent-Length: 2\r\n\r\nok",
    # framing (RFC 9112 6.1, 6.3)
    "two-equal-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nX: "
    + M
    + b"\r\n\r\nok",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\nX: "
    + M
    + b"\r\n\r\nok",
    "content-length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\nX: " + M + b"\r\n\r\nok",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\nX: " + M + b"\r\n\r\nok",
    "signed-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\nX: " + M + b"\r\n\r\nok",
    "hex-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\nX: " + M + b"\r\n\r\nok",
    "huge-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\nX: "
    + M
    + b"\r\n\r\nok",
    "transfer-encoding-and-content-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 2\r\nX: " + M + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked-not-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nX: "
    + M
    + b"\r\n\r\nok",
    "unknown-transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\nX: "
    + M
    + b"\r\n\r\nok",
    "chunked-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
    b"\r\nX: " + M + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked-with-a-vertical-tab": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \x0bchunked\r\nX: "
    + M
    + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "transfer-encoding-on-http-1-0": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nX: "
    + M
    + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunk-size-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffff1\r\n" + M + b"\r\n0\r\n\r\n",
    "negative-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n"
    + M
    + b"\r\n0\r\n\r\n",
    "interim-then-a-bad-final-answer": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX A: "
    + M
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "a-bad-interim-answer": b"HTTP/1.1 103 Early\r\nLink : " + M + b"\r\n\r\n" + OK,
}


@pytest.mark.parametrize("answer", list(BAD.values()), ids=list(BAD))
async def test_an_answer_that_breaks_http_1_1_is_a_502_without_its_bytes(
    raw_upstream: StartRaw, proxy: MakeProxy, answer: bytes
) -> None:
    def reply(wire: Wire) -> bytes:
        return answer if wire.path == "/bad" else OK

    up = await raw_upstream(keep_alive(reply))
    client = await proxy(route(up.base))
    lines: list[str] = []
    client.app[KEYHOP].access_log = lines.append
    resp = await client.session.get(raw_url(client, "/r/bad"))
    raw = await resp.read()
    assert resp.status == 502, raw
    body = json.loads(raw)
    assert body["error"] == "upstream_unreachable"
    assert M not in raw and MARK not in str(resp.headers)
    assert body["message"].isascii() and body["message"].isprintable()
    assert json.loads(lines[-1])["status"] == 502
    assert busy(client.app) == 0
    # the upstream stays usable: the broken connection was not put back in the pool
    again = await client.session.get(raw_url(client, "/r/ok"))
    assert (again.status, await again.read()) == (200, b"ok")


GOOD = {
    "no-reason-phrase": (b"HTTP/1.1 204\r\n\r\n", 204, {}),
    "empty-reason-phrase": (b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", 200, {}),
    "obs-text-in-reason-and-value": (
        b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nX-A: caf\xc3\xa9\tb\r\nContent-Length: 2\r\n\r\nok",
        200,
        {},
    ),
    "bare-lf-line-ends": (b"HTTP/1.1 200 OK\nX-A: b\nContent-Length: 2\n\nok", 200, {"X-A": "b"}),
    "blanks-around-a-value": (
        b"HTTP/1.1 200 OK\r\nX-A: \t b \t\r\nContent-Length: 2\r\n\r\nok",
        200,
        {"X-A": "b"},
    ),
    "chunked-in-any-case-with-blanks": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  ChunKed \r\n\r\n2\r\nok\r\n0\r\n\r\n",
        200,
        {},
    ),
    "interim-answers-first": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
        200,
        {},
    ),
    "http-1-0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, {}),
}


@pytest.mark.parametrize(("answer", "status", "headers"), list(GOOD.values()), ids=list(GOOD))
async def test_an_answer_that_http_1_1_allows_is_relayed(
    raw_upstream: StartRaw,
    proxy: MakeProxy,
    answer: bytes,
    status: int,
    headers: dict[str, str],
) -> None:
    up = await raw_upstream(keep_alive(lambda wire: answer))
    client = await proxy(route(up.base))
    resp = await client.session.get(raw_url(client, "/r/x"))
    assert resp.status == status
    assert await resp.read() == (b"" if status == 204 else b"ok")
    for name, value in headers.items():
        assert resp.headers[name] == value


async def test_a_head_dribbled_in_one_byte_segments_is_checked_whole(
    raw_upstream: StartRaw, proxy: MakeProxy
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"

    async def dribble(conn: RawConn) -> None:
        if await conn.request() is not None:
            for i in range(len(answer)):
                conn.writer.write(answer[i : i + 1])
                await conn.writer.drain()
                await asyncio.sleep(0.002)

    up = await raw_upstream(dribble)
    client = await proxy(route(up.base))
    resp = await client.session.get(raw_url(client, "/r/x"))
    await assert_error(resp, 502, "upstream_unreachable")


async def test_a_head_over_the_limit_is_a_502(raw_upstream: StartRaw, proxy: MakeProxy) -> None:
    filler = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(40))
    assert len(filler) > MAX_RESPONSE_HEAD
    answer = b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"
    up = await raw_upstream(keep_alive(lambda wire: answer))
    client = await proxy(route(up.base))
    resp = await client.session.get(raw_url(client, "/r/x"))
    body = await assert_error(resp, 502, "upstream_unreachable")
    assert "KiB" in body["message"]


def test_the_rules_name_what_was_wrong_without_the_upstreams_bytes() -> None:
    with pytest.raises(BadUpstreamAnswer, match="obs-fold"):
        check_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n")
    with pytest.raises(BadUpstreamAnswer, match="header X-Secret-Zq9") as caught:
        check_response_head(b"HTTP/1.1 200 OK\r\nX-Secret-Zq9: a\x01value\r\n\r\n")
    assert "value" not in str(caught.value)
    assert check_response_head(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n") == 404


def _mutate(rng: random.Random, head: bytes) -> bytes:
    pieces = [b"\x00", b"\r", b"\n", b" ", b"\t", b":", b"\x7f", b",", b"\x0b", b"\xff", b"\x01"]
    out = bytearray(head)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out))
        if rng.random() < 0.7:
            out[at:at] = rng.choice(pieces)
        else:
            del out[at]
    return bytes(out)


async def test_fuzzed_heads_are_either_refused_or_relayed_clean() -> None:
    """Seeded fuzz of the status line and one field line: whatever is accepted must reach
    aiohttp's parser as a head whose names are tokens and whose reason and values hold no
    control byte, which is what the relay re-serializes."""
    from proxy.aiohttp_private import CheckedResponseHandler

    loop = asyncio.get_running_loop()
    rng = random.Random(4)
    prefix = b"HTTP/1.1 200 OK\r\nX-Name: value\r\n"
    refused = 0
    for _ in range(FUZZ_CASES):
        head = _mutate(rng, prefix)
        conn = CheckedResponseHandler(loop)
        conn.set_response_params(read_until_eof=True)
        conn.expect_head()
        conn.data_received(head + b"Content-Length: 2\r\n\r\nok")
        conn.feed_eof()
        try:
            async with asyncio.timeout(1):
                message, _payload = await conn.read()
        except (BadUpstreamAnswer, Exception) as exc:
            refused += isinstance(exc, BadUpstreamAnswer)
            continue
        assert message.version in ((1, 0), (1, 1)), head
        assert 100 <= message.code <= 599, head
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", message.reason), head
        for name, value in message.raw_headers:
            assert _TOKEN.fullmatch(name.decode("latin-1")), head
            assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value), head
    assert refused > FUZZ_CASES // 4


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX:" + b" " * 120_000 + b"\x01\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX:" + b" \t" * 60_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 " + b" " * 120_000 + b"\x01\r\n\r\n",
    ],
    ids=["blanks-then-a-control-byte", "only-blanks", "blank-reason-then-a-control-byte"],
)
def test_a_line_of_blanks_near_the_head_limit_is_checked_in_linear_time(head: bytes) -> None:
    started = time.perf_counter()
    try:
        check_response_head(head)
    except BadUpstreamAnswer:
        pass
    assert time.perf_counter() - started < 0.5


# -- plain answers: the express lane's relay without aiohttp's parser -----------------------

_PLAIN_NAMES = (
    b"Content-Type",
    b"content-type",
    b"CONTENT-TYPE",
    b"Date",
    b"date",
    b"Server",
    b"X-RateLimit-Remaining",
    b"x-ratelimit-remaining",
    b"X-Request-Id",
    b"x-custom",
    b"ETag",
    b"etag",
    b"Set-Cookie",
    b"Vary",
    b"Keep-Alive",
    b"Connection",
    b"connection",
    b"Transfer-Encoding",
    b"Upgrade",
    b"TE",
    b"Trailer",
    b"Proxy-Authenticate",
    b"Sec-WebSocket-Key1",
    b"Content-Length",
    b"X-Keyhop-Note",
)
_PLAIN_VALUES = (
    b"text/plain",
    b"a, b",
    b"",
    b" lead",
    b"trail ",
    b"in\tside",
    b"keep-alive",
    b"close",
    b"Keep-Alive",
    b"chunked",
    b"5",
    b"caf\xc3\xa9",
    b"x" * 40,
    b"X-Custom",
)


def _plain_case(rng: random.Random) -> bytes:
    status = rng.choice(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 200",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 201 Created ",
            b"HTTP/1.1 500 Internal Server Error",
            b"HTTP/1.1 299 x",
            b"HTTP/1.1 600 Beyond",
            b"HTTP/1.1 999 Beyond",
            b"HTTP/1.1 000 Zero",
        ]
    )
    body = b"b" * rng.choice([0, 2, 7, 300])
    lines = [status]
    usual = rng.random() < 0.5  # mostly what the lane takes, with the odd part in between
    for _ in range(rng.randrange(0, 7)):
        name = rng.choice(_PLAIN_NAMES[:13] if usual else _PLAIN_NAMES)
        value = rng.choice(_PLAIN_VALUES[:2] if usual else _PLAIN_VALUES)
        if name.lower() == b"content-length":
            value = rng.choice([str(len(body)).encode(), str(len(body) + 1).encode(), b"0"])
        sep = b": " if usual else rng.choice([b": ", b": ", b": ", b":", b":  "])
        lines.append(name + sep + value)
    if rng.random() < 0.8:
        lines.insert(rng.randrange(1, len(lines) + 1), b"Content-Length: %d" % len(body))
    tail = b"" if usual else rng.choice([b"", b"", b"", b"X", b"HTTP/1.1 200 OK\r\n"])
    cut = not usual and rng.random() < 0.1
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body + tail
    return data[:-1] if cut and data else data


def test_a_plain_answer_is_relayed_as_aiohttps_parser_and_the_pipeline_would_relay_it() -> None:
    """The oracle is aiohttp's own parser (which reads every answer plain_answer declines)
    and the pipeline's clean-and-serialize: whatever plain_answer takes, the parser reads as
    one whole kept-alive answer with that code and body, check_response_head accepts, and
    the relayed head is the pipeline's byte for byte (Content-Length and Date aside)."""
    from aiohttp.http_parser import HttpResponseParser

    from proxy.aiohttp_private import serialize_headers
    from proxy.headers import clean_response_headers
    from proxy.http1 import plain_answer

    class Reader:
        _reading_paused = False

        def pause_reading(self) -> None: ...
        def resume_reading(self, resume_parser: bool = True) -> None: ...

    loop = asyncio.new_event_loop()
    rng = random.Random(16)
    taken = 0
    try:
        for _ in range(FUZZ_CASES * 10):
            data = _plain_case(rng)
            plain = plain_answer(data, 256)
            if plain is None:
                continue
            taken += 1
            code, relayed, end = plain
            assert check_response_head(data[:end]) == code, data
            reader: Any = Reader()  # (what the parser calls of its protocol)
            parser = HttpResponseParser(reader, loop, 2**16, read_until_eof=True)
            messages, upgraded, tail = parser.feed_data(data)
            assert len(messages) == 1 and not upgraded and not tail, data
            message, payload = messages[0]
            assert message.code == code and not message.should_close, data
            assert not message.chunked and 200 <= code and len(data) - end <= 256, data
            assert payload.is_eof() and b"".join(payload._buffer) == data[end:], data
            pipeline = serialize_headers(
                f"HTTP/1.1 {code} {message.reason}", clean_response_headers(message.headers)
            )
            assert relayed + b"\r\n\r\n" == pipeline, data
    finally:
        loop.close()
    assert taken > FUZZ_CASES // 2  # the usual answer is taken: the lane's fast path


def test_the_usual_answers_are_plain() -> None:
    from proxy.http1 import plain_answer

    usual = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Date: Fri, 04 Dec 2026 03:15:28 GMT\r\nServer: nginx\r\nConnection: keep-alive\r\n"
        b"X-RateLimit-Remaining: 9\r\n\r\n{}"
    )
    assert plain_answer(usual, 64) == (
        200,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Date: Fri, 04 Dec 2026 03:15:28 GMT\r\nServer: nginx\r\nX-RateLimit-Remaining: 9",
        len(usual) - 2,
    )
    envoy = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
    assert plain_answer(envoy, 64) == (
        200,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain",
        len(envoy) - 2,
    )
    assert plain_answer(usual, 1) is None  # over the size the lane relays whole
    assert plain_answer(usual[:-1], 64) is None  # not all here yet
    assert plain_answer(usual + b"HTTP/1.1", 64) is None  # bytes after its end
