"""proxy/lane/writes.py: the lane's writes, held to the end of the loop turn, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.lane.writes import Writes


@pytest.fixture
async def pairs() -> AsyncIterator[list[tuple[asyncio.Transport, asyncio.StreamReader]]]:
    """Two real loopback connections: the writing side's transport, the reading side."""
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await accepted.put(reader)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = []
    for _ in range(2):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        out.append((transport, await accepted.get()))
    yield out
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    server.close()
    await server.wait_closed()


def writes(unread: list[Any] | None = None) -> Writes:
    return Writes(asyncio.get_running_loop, (unread if unread is not None else []).append)


async def test_writes_wait_for_the_end_of_the_loop_turn_and_keep_their_order(
    pairs: list[tuple[asyncio.Transport, asyncio.StreamReader]],
) -> None:
    (a, read_a), (b, read_b) = pairs
    w = writes()
    sent_by_then: list[bool] = []
    w.write(a, b"one ")
    w.write(b, b"other")
    w.write(a, b"two")
    # a callback scheduled after the writes (start() woken for the next request) runs once
    # they are out
    asyncio.get_running_loop().call_soon(lambda: sent_by_then.append(not w._held))
    assert len(w._held) == 3  # nothing sent yet
    assert await asyncio.wait_for(read_a.readexactly(7), 5) == b"one two"
    assert await asyncio.wait_for(read_b.readexactly(5), 5) == b"other"
    assert sent_by_then == [True]


async def test_flush_sends_at_once_and_the_scheduled_flush_finds_nothing(
    pairs: list[tuple[asyncio.Transport, asyncio.StreamReader]],
) -> None:
    (a, read_a), _ = pairs
    w = writes()
    w.write(a, b"now")
    w.flush()
    assert w._held == []
    assert await asyncio.wait_for(read_a.readexactly(3), 5) == b"now"
    await asyncio.sleep(0)  # the flush scheduled by the write runs: nothing is sent twice
    w.write(a, b"!")
    assert await asyncio.wait_for(read_a.readexactly(1), 5) == b"!"


async def test_a_closed_transport_s_part_is_dropped_and_the_rest_sent(
    pairs: list[tuple[asyncio.Transport, asyncio.StreamReader]],
) -> None:
    (a, read_a), (b, read_b) = pairs
    w = writes()
    w.write(a, b"lost")
    w.write(b, b"kept")
    a.abort()
    await asyncio.sleep(0)
    assert await asyncio.wait_for(read_b.readexactly(4), 5) == b"kept"
    assert await asyncio.wait_for(read_a.read(), 5) == b""
