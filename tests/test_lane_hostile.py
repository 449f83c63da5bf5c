"""Hostile upstreams against the express lane (issue 16): every answer below comes from a
raw socket that writes exactly these bytes, to a request the lane took (warm credential,
idle pooled connection). Each case runs twice, lane on and lane off, and what the client,
the upstream and the access log saw must be the same (SPEC 4.1, issue 16's promise), and
what RFC 9112 asks of a proxy: a broken head is a 502 (5.2, 6.3), an answer cut short is
cut short to the client (SPEC 4.1), bytes past an answer are never the next one's (6.3),
no answer within `timeouts.read` is a 504 (SPEC 4.6).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.lane_peers import Keyhops, keyhops
from tests.lane_runs import (
    Hostile,
    both,
    byte_by_byte,
    error,
    silent,
    then_close,
    writes,
)
from tests.test_upstream import OK, RawConn, raw_upstream

HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Id: 7\r\nContent-Length: 5\r\n\r\nhello"
STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"

__all__ = ["keyhops", "raw_upstream"]  # fixtures


# --- the cases ----------------------------------------------------------------------------------


async def test_a_head_split_byte_by_byte_is_relayed_whole_by_the_lane(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    on = await both(keyhops, raw_upstream, byte_by_byte(HELLO), caplog)
    assert on.hostile is not None and on.hostile.whole
    assert on.hostile.status == "HTTP/1.1 200 OK"
    assert on.hostile.body == b"hello"
    assert ("X-Id", "7") in on.hostile.headers
    # the same upstream connection served all three: the answer ended where it should
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (0, "/next")]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # past keyhop's 128 KiB for a head, in lines under aiohttp's per-line limit
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(17))
        + b"Content-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"l" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=[
        "obs-fold",
        "bare-cr",
        "control-byte-in-reason",
        "two-content-lengths",
        "cl-and-te",
        "head-over-128-kib",
        "line-over-8-kib",
    ],
)
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
async def test_a_head_against_rfc_9112_is_a_502_and_its_connection_is_not_reused(
    keyhops: Keyhops,
    raw_upstream: Any,
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
    split: bool,
) -> None:
    # RFC 9112 5.2 (a proxy may answer an obs-fold with 502), 2.2 (bare CR), 4 (reason),
    # 6.3 (two lengths, or a length beside chunked: the message cannot be framed)
    if not split:
        act = writes(answer)
    elif len(answer) < 1000:
        act = byte_by_byte(answer)
    else:  # in 4 KiB pieces: byte by byte would outlast the read timeout
        act = writes(*(answer[i : i + 4096] for i in range(0, len(answer), 4096)), pause=0.003)
    on = await both(keyhops, raw_upstream, act, caplog)
    assert "not HTTP" in error(on.hostile, 502, "upstream_unreachable")
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


@pytest.mark.parametrize(
    "stray",
    [
        writes(OK + STALE),
        writes(OK, STALE, pause=0.05),
        writes(OK[:-1], OK[-1:] + STALE),
    ],
    ids=["stale-answer-same-write", "stale-answer-while-idle", "with-the-body-s-end"],
)
async def test_bytes_past_a_whole_answer_are_never_read_as_the_next_answer(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture, stray: Hostile
) -> None:
    on = await both(keyhops, raw_upstream, stray, caplog)
    assert on.hostile is not None and (on.hostile.status, on.hostile.body) == (
        "HTTP/1.1 200 OK",
        b"ok",
    )
    assert on.after is not None and on.after.body == b"ok"  # not "stale"
    # the connection that carried the stray bytes is not used again (RFC 9112 9.3)
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


async def test_junk_glued_to_a_whole_answer_never_reaches_a_client(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's parser reads the junk as the start of a next answer in the same segment and
    fails: keyhop answers 502 (lane on and off alike) rather than the answer it had; either
    is safe, as long as the junk is relayed to nobody and the connection is dropped."""
    on = await both(
        keyhops, raw_upstream, writes(OK + b"junk-Zq9 that is not HTTP\r\n\r\n"), caplog
    )
    assert on.hostile is not None and on.hostile.status in (
        "HTTP/1.1 200 OK",
        "HTTP/1.1 502 Bad Gateway",
    )
    assert b"Zq9" not in on.hostile.body
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"],
    ids=["100", "103"],
)
@pytest.mark.parametrize("together", [True, False], ids=["one-write", "two-writes"])
async def test_an_interim_answer_before_the_final_one_is_skipped(
    keyhops: Keyhops,
    raw_upstream: Any,
    caplog: pytest.LogCaptureFixture,
    interim: bytes,
    together: bool,
) -> None:
    act = writes(interim + HELLO) if together else writes(interim, HELLO, pause=0.02)
    on = await both(keyhops, raw_upstream, act, caplog)
    assert on.hostile is not None and on.hostile.status == "HTTP/1.1 200 OK"
    assert on.hostile.body == b"hello"
    assert not any(name == "Link" for name, _ in on.hostile.headers)
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (0, "/next")]


async def test_an_unasked_101_is_a_502_and_its_connection_is_not_reused(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    act = writes(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + STALE)
    on = await both(keyhops, raw_upstream, act, caplog)
    assert "101" in error(on.hostile, 502, "upstream_unreachable")
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


@pytest.mark.parametrize(
    "act",
    [
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")),
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"half", pause=0.02)),
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"), reset=True),
    ],
    ids=["one-write-then-fin", "head-then-some-then-fin", "one-write-then-reset"],
)
async def test_a_body_shorter_than_its_content_length_is_cut_to_the_client_too(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture, act: Hostile
) -> None:
    on = await both(keyhops, raw_upstream, act, caplog)
    # SPEC 4.1: cut short to the client (the connection ends inside the body), never a
    # clean end; RFC 9112 6.3: the client then knows the message is incomplete
    assert on.hostile is not None and on.hostile.status == "HTTP/1.1 200 OK"
    assert ("Content-Length", "10") in on.hostile.headers
    assert not on.hostile.whole
    assert on.hostile.body in (b"", b"half")
    assert on.access[1]["aborted"] is True


def before_silence(first: bytes) -> Hostile:
    async def act(conn: RawConn) -> None:
        await writes(first)(conn)
        await silent(conn)

    return act


@pytest.mark.parametrize(
    "act",
    [
        silent,
        before_silence(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
        before_silence(b"HTTP/1.1 200 OK\r\nContent-Len"),
    ],
    ids=["nothing", "an-interim-answer-only", "half-a-head"],
)
async def test_an_upstream_that_never_answers_is_a_504_after_the_read_timeout(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture, act: Hostile
) -> None:
    on = await both(keyhops, raw_upstream, act, caplog)
    assert "within 1 s" in error(on.hostile, 504, "upstream_timeout")
    assert 0.9 <= on.seconds < 2.5  # timeouts.read is 1 s (slack for a loaded machine)
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


async def test_a_small_body_that_stalls_is_a_504_after_the_read_timeout(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def stall(conn: RawConn) -> None:
        await writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")(conn)
        await silent(conn)

    on = await both(keyhops, raw_upstream, stall, caplog)
    error(on.hostile, 504, "upstream_timeout")
    assert 0.9 <= on.seconds < 2.5


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "fin"])
async def test_an_upstream_that_drops_the_connection_mid_head_is_a_502(
    keyhops: Keyhops, raw_upstream: Any, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    on = await both(
        keyhops,
        raw_upstream,
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Le"), reset=reset),
        caplog,
    )
    error(on.hostile, 502, "upstream_unreachable")
