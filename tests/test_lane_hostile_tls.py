"""Hostile upstreams over TLS (trustme, verified) against the express lane: the lane
writes on and reads from a pooled TLS connection as it does on plain TCP, and a TLS
answer cut short, with or without close_notify (RFC 8446 6.1: a truncation without it is
not a clean end either), must reach the client as a cut, lane on as off.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.lane_peers import Keyhops, keyhops
from tests.lane_runs import Hostile, both, byte_by_byte, then_close, writes
from tests.test_upstream import OK, Behaviour, RawConn, RawUpstream

STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"

__all__ = ["keyhops"]  # fixtures


class TlsRawUpstream(RawUpstream):
    """RawUpstream behind TLS: the behaviour sees the decrypted bytes, keyhop verifies the
    certificate against the test CA (the provider's ca_file)."""

    def __init__(self, behaviour: Behaviour, context: ssl.SSLContext) -> None:
        super().__init__(behaviour)
        self.context = context

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self


@pytest.fixture
async def tls_ups(
    server_ssl: ssl.SSLContext,
) -> AsyncIterator[Callable[[Behaviour], Awaitable[RawUpstream]]]:
    ups: list[RawUpstream] = []

    async def start(behaviour: Behaviour) -> RawUpstream:
        ups.append(await TlsRawUpstream(behaviour, server_ssl).start())
        return ups[-1]

    yield start
    for up in ups:
        await up.stop()


async def test_an_answer_over_tls_split_in_many_records_is_relayed_whole(
    keyhops: Keyhops,
    tls_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    on = await both(
        keyhops, tls_ups, byte_by_byte(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), caplog
    )
    assert on.hostile is not None and (on.hostile.body, on.hostile.whole) == (b"hello", True)
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (0, "/next")]


async def test_a_whole_answer_over_tls_is_served_by_the_lane(
    keyhops: Keyhops,
    tls_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    on = await both(keyhops, tls_ups, writes(OK), caplog)
    assert on.hostile is not None and (on.hostile.body, on.hostile.whole) == (b"ok", True)
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (0, "/next")]


@pytest.mark.parametrize(
    "act",
    [
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")),
        then_close(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"), reset=True),
    ],
    ids=["close-notify", "tcp-reset-without-close-notify"],
)
async def test_a_tls_answer_cut_short_is_cut_to_the_client(
    keyhops: Keyhops,
    tls_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
    act: Hostile,
) -> None:
    on = await both(keyhops, tls_ups, act, caplog)
    assert on.hostile is not None and on.hostile.status == "HTTP/1.1 200 OK"
    assert not on.hostile.whole
    assert on.access[1]["aborted"] is True


async def test_a_stale_answer_behind_a_tls_answer_is_not_the_next_ones(
    keyhops: Keyhops,
    tls_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    on = await both(keyhops, tls_ups, writes(OK + STALE), caplog)
    assert on.after is not None and on.after.body == b"ok"
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/next")]


async def silent_then_close(conn: RawConn) -> None:
    await asyncio.sleep(0.1)
    conn.writer.close()


async def test_a_tls_upstream_closing_unanswered_after_a_lane_request_is_retried_once(
    keyhops: Keyhops,
    tls_ups: Callable[[Behaviour], Awaitable[RawUpstream]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A kept-alive connection closed with no answer: a bodyless GET is sent once more on
    a fresh connection (SPEC 4.1 via upstream.py's rule), which closes unanswered too: 502."""
    on = await both(keyhops, tls_ups, silent_then_close, caplog)
    assert on.hostile is not None and on.hostile.status.startswith("HTTP/1.1 502")
    assert on.upstream_saw == [(0, "/warm"), (0, "/x"), (1, "/x"), (2, "/next")]
