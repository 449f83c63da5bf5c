"""A worker's side of its link to the supervisor (proxy/supervisor.py, SPEC 7).

The supervisor hands each worker, by inherited file descriptors: a listening socket of its
own on the shared address (SO_REUSEPORT), and one end of a socket pair. On that pair the
worker says it is ready; when the supervisor goes away (killed, even by SIGKILL) the pair
reads end-of-file and the worker drains and exits, so no orphan keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.peers import Peers
from proxy.runtime import Keyhop
from proxy.shared import SqliteLimiter
from proxy.store import SqliteStore

log = logging.getLogger("keyhop")


@dataclass
class WorkerLink:
    index: int
    listen_fd: int
    supervisor_fd: int
    directory: Path
    _peers: Peers | None = field(default=None, init=False)
    _limiter: SqliteLimiter | None = field(default=None, init=False)
    _link: socket.socket | None = field(default=None, init=False)

    @classmethod
    def parse(cls, index: int, fds: str, directory: str) -> WorkerLink:
        listen_fd, _, supervisor_fd = fds.partition(",")
        return cls(index, int(listen_fd), int(supervisor_fd), Path(directory))

    def socket(self) -> socket.socket:
        sock = socket.socket(fileno=self.listen_fd)
        sock.setblocking(False)
        return sock

    def attach(self, kh: Keyhop) -> None:
        """Share what SPEC 7 says is one for the whole process: the rate budget (a Redis
        store already shares it) and what the admin endpoints describe."""
        if isinstance(kh.store, SqliteStore):
            self._limiter = SqliteLimiter(kh.store.path, kh.clock)
            kh.limiter = self._limiter
        self._peers = Peers(kh, self.directory)
        kh.peers = self._peers
        kh.metrics.exposed = self._peers

    def started(self, stop: Callable[[], None]) -> None:
        """Listening: tell the supervisor, and stop when it goes away."""
        assert self._peers is not None
        self._peers.write()  # the first snapshot before the first request can ask for it
        self._peers.start()
        link = socket.socket(fileno=self.supervisor_fd)
        link.sendall(f"ready {os.getpid()}\n".encode())
        link.setblocking(False)
        self._link = link
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = link.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(link.fileno())
                log.warning("the supervisor is gone: draining and exiting")
                stop()

        loop.add_reader(link.fileno(), readable)

    async def close(self) -> None:
        if self._link is not None:
            asyncio.get_running_loop().remove_reader(self._link.fileno())
            self._link.close()
        if self._peers is not None:
            await self._peers.close()
        if self._limiter is not None:
            await self._limiter.close()
