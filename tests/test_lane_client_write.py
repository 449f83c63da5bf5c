"""A client that pipelines requests on the express lane and never reads its answers: once
the kernel's buffers and the transport's are full, its connection is cut after
`timeouts.client_write`, as the pipeline cuts it (proxy/lane.py: watch_unread)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from tests.conftest import MakeProxy

BIG = b"x" * 60_000  # under the lane's 64 KiB: relayed by the lane itself


async def test_a_pipelining_client_that_never_reads_is_cut_after_client_write(
    upstream: Any, proxy: MakeProxy
) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    app = web.Application()
    app.router.add_get("/{tail:.*}", big)
    base = await upstream(app, tls=False)
    client = await proxy(
        {
            "providers": {"p": {"auth": {"type": "none"}}},
            "routes": [{"prefix": "/r", "upstream": base, "provider": "p"}],
            "timeouts": {"client_write": 1},
        }
    )
    warm = await client.get("/r/warm")
    assert (warm.status, len(await warm.read())) == (200, len(BIG))

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", client.port))
    count = 120  # about 7 MB of answers: more than loopback's buffers hold
    one = f"GET /r/{{}} HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n\r\n"
    await loop.sock_sendall(sock, "".join(one.format(i) for i in range(count)).encode())
    await asyncio.sleep(3.0)  # client_write (1 s) and the 0.1 s sweep, with room to spare

    got = 0
    try:
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
            if not chunk:
                break  # keyhop closed the connection
            got += len(chunk)
    except ConnectionResetError:
        pass  # cut (an abort resets the connection)
    finally:
        sock.close()
    assert got < count * len(BIG)  # not every answer went out: the connection was cut

    after = await client.get("/r/after")  # others are still served
    assert (after.status, len(await after.read())) == (200, len(BIG))
