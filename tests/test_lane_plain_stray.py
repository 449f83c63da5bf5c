"""The express lane beside the pipeline where the plain relay (http1.plain_answer) stops:
stray bytes after an answer with a client that pipelines, and `keyhop serve` under aiohttp's
other parser modes (tests/test_lane_plain.py has the plain relay itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lane_peers import Keyhops, keyhops
from tests.support import KeyhopProcess, write_config
from tests.test_lane_plain import OK, read_one
from tests.test_lane_process import PARK, SECRETS, static_config
from tests.test_upstream import Behaviour, RawConn, RawUpstream, StartRaw, Wire, raw_upstream

__all__ = ["keyhops", "raw_upstream"]  # fixtures

# -- stray bytes with the answer, and a client that pipelines ------------------------------------


def by_path(stray: bytes) -> Callable[[Wire], bytes]:
    """Each answer's body is its path; /1's comes with `stray` in the same segment. The
    others have a tab in a value (not plain: aiohttp's parser reads them)."""

    def answer(wire: Wire) -> bytes:
        path = wire.path.encode()
        framed = b"HTTP/1.1 200 OK\r\nX-A: a\tb\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)
        return framed + stray if wire.path == "/1" else framed

    return answer


def keep_answering(answer: Callable[[Wire], bytes]) -> Behaviour:
    async def behave(conn: RawConn) -> None:
        while (wire := await conn.request()) is not None:
            conn.writer.write(answer(wire))
            await conn.writer.drain()

    return behave


async def pipelined(keyhops: Keyhops, up: RawUpstream, express: bool) -> list[bytes]:
    """Three GETs in one segment; the bodies of the answers, in order."""
    served = await keyhops.start(up, express=express)
    await served.warm()
    reader, writer = await served.connect()
    writer.write(b"".join(b"GET /r/%d HTTP/1.1\r\nHost: k\r\n\r\n" % n for n in (1, 2, 3)))
    bodies = []
    for _ in range(3):
        seen = await read_one(reader, b"")
        bodies.append(seen.partition(b"\r\n\r\n")[2])
    if express:
        assert served.taken >= 1  # /1 at least went the lane's way
    return bodies


STRAYS = {
    # a whole second answer nobody asked for (RFC 9112 9.3.2: answers pair with requests in
    # order; the connection must be closed, as the pipeline does, never read on)
    "a-whole-next-answer": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    # the start of one: left in the parser, it is read as the head of the next answer
    "the-start-of-a-next-answer": b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n",
}


@pytest.mark.parametrize("express", [True, False], ids=["lane", "no-lane"])
@pytest.mark.parametrize("stray", list(STRAYS.values()), ids=list(STRAYS))
async def test_stray_bytes_after_an_answer_never_answer_the_pipelined_next_request(
    keyhops: Keyhops, raw_upstream: StartRaw, stray: bytes, express: bool
) -> None:
    """The connection with stray bytes is dropped, lane on as off: the next request goes
    out on another (the lane used to pool it and let the stray bytes answer /2)."""
    up = await raw_upstream(keep_answering(by_path(stray)))
    assert await pipelined(keyhops, up, express=express) == [b"/1", b"/2", b"/3"]
    by_conn = {w.path: w.conn for w in up.requests}
    assert by_conn["/2"] != by_conn["/1"]


# -- in a real `keyhop serve`, under aiohttp's other parser modes --------------------------------

#: aiohttp reads answers with its pure-Python parser under AIOHTTP_NO_EXTENSIONS (which keeps
#: field names as sent: only the C parser respells the names it knows), and strictly in
#: asyncio debug mode (PYTHONASYNCIODEBUG or -X dev: a repeated Content-Type, Server or ETag
#: is a 400, so the pipeline's 502); the lane's plain relay runs only under the C parser,
#: lax (PLAIN_PARSER), and these answers go through the parser as with the lane off
ENVIRONMENTS = {
    "AIOHTTP_NO_EXTENSIONS": (
        {"AIOHTTP_NO_EXTENSIONS": "1"},
        b'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nETag: "a"\r\nContent-Length: 2\r\n\r\nok',
    ),
    "PYTHONASYNCIODEBUG": (
        {"PYTHONASYNCIODEBUG": "1"},
        b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Type: c/d\r\nContent-Length: 2\r\n\r\nok",
    ),
}


async def served_by_a_process(
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
    up: RawUpstream,
    env: dict[str, str],
) -> bytes:
    """The answer to GET /s/c0 through a `keyhop serve` with `env`, on a warm connection."""
    config = write_config(tmp_path / f"k{len(up.requests)}.yaml", static_config(up.base, ca_file))
    proc = processes(config, env={**SECRETS, **env})
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    try:
        for path in ("/s/warm", "/s/warm", "/s/c0"):
            await asyncio.sleep(PARK)  # (the lane is taken only while start() is parked)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: k\r\n\r\n".encode())
            seen = await read_one(reader, b"")
    finally:
        writer.close()
    return seen


@pytest.mark.parametrize("environment", list(ENVIRONMENTS), ids=list(ENVIRONMENTS))
async def test_a_keyhop_process_relays_a_plain_answer_as_with_keyhop_express_0(
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
    raw_upstream: StartRaw,
    environment: str,
) -> None:
    env, answer = ENVIRONMENTS[environment]
    up = await raw_upstream(keep_answering(lambda w: answer if w.path == "/c0" else OK))
    on = await served_by_a_process(processes, tmp_path, ca_file, up, env)
    off = await served_by_a_process(
        processes, tmp_path, ca_file, up, {**env, "KEYHOP_EXPRESS": "0"}
    )
    assert on == off
