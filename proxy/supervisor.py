"""`keyhop serve` with `workers:` > 1: one supervisor and N worker processes (SPEC 7).

Rules:
- The supervisor binds the address itself: first alone (a port that anyone holds, another
  keyhop included, is refused at once), then once per worker with SO_REUSEPORT, so the
  kernel spreads connections evenly over the workers' own accept queues (a shared queue
  skews load onto a few). Each worker inherits its socket and a socket pair: it says
  "ready" on it, and sees it close if the supervisor dies (proxy/worker.py).
- Start: every worker must say ready within START_TIMEOUT; one that exits first (a store it
  cannot open, ...) stops the others and the supervisor exits 1.
- A worker that dies is replaced after a back-off of 1 s doubling to 30 s (reset once a
  worker stayed up RESET_AFTER). Its listening socket is kept meanwhile, so connections
  already queued on it are served by the replacement, not reset; in a crash loop (a back-off
  over 1 s) it is closed, and reopened with the replacement, so no client waits that long.
- SIGHUP: the supervisor reads and checks the file itself; only a valid one is passed on,
  so every worker reloads, or none does. Workers read the copy of the file the supervisor
  last checked (CONFIG_COPY, proxy/config.py READ_FROM): a replacement started after the
  file was edited, or broken, runs what the others run. SIGTERM/SIGINT: it stops
  listening, passes the signal on, waits for every worker to drain, exits 0.
- The console's CSRF key is made here and given to every worker (proxy/console_session.py),
  so a form one worker shows another accepts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from proxy.config import Config, parse_config_text, read_config_text
from proxy.errors import ConfigError
from proxy.peers import retire
from proxy.server import listening_socket

log = logging.getLogger("keyhop.supervisor")

START_TIMEOUT: Final = 60.0
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 30.0
RESET_AFTER: Final = 30.0  # seconds up after which a worker's death starts the back-off anew
CONFIG_COPY: Final = "config.yaml"  # in the workers' directory


@dataclass
class Slot:
    index: int
    sock: socket.socket | None = None
    proc: asyncio.subprocess.Process | None = None
    link: socket.socket | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self,
        config: Config,
        path: str,
        listen: str | None,
        workers_override: str | None,
        log_level: str,
    ) -> None:
        self.config = config
        self.path = path
        self.listen = listen
        self.workers_override = workers_override
        self.log_level = log_level
        self.slots = [Slot(i) for i in range(config.workers)]
        self.directory = Path(tempfile.mkdtemp(prefix="keyhop-workers-"))  # mode 0700
        self.env = {**os.environ, "KEYHOP_CSRF_KEY": secrets.token_hex(32)}
        self.stopping = False
        self.done = asyncio.Event()

    def check(self) -> Config:
        """Read the file once and check it as a worker would build it; only then is that text
        what workers read. ConfigError (or what building it raised) otherwise."""
        from proxy.runtime import Runtime  # aiohttp and the rest: only once workers run

        text = read_config_text(self.path)
        new = parse_config_text(
            text, self.path, listen_override=self.listen, workers_override=self.workers_override
        )
        Runtime(new)  # TLS contexts, CA files: what a worker builds must build
        copy = self.directory / CONFIG_COPY
        tmp = copy.with_name(".config.yaml.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, copy)
        return new

    # -- sockets and processes -------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        host, port = self.config.listen.host, self.config.listen.port
        return listening_socket(host, port, reuse_port=True)

    async def _spawn(self, slot: Slot) -> None:
        if slot.sock is None:
            slot.sock = self._bind()
        ours, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "proxy", "serve", "--config", self.path]
        argv += ["--log-level", self.log_level, "--worker-index", str(slot.index)]
        argv += ["--worker-fds", f"{slot.sock.fileno()},{theirs.fileno()}"]
        argv += ["--worker-dir", str(self.directory)]
        if self.listen:
            argv += ["--listen", self.listen]
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                *argv, env=self.env, pass_fds=(slot.sock.fileno(), theirs.fileno())
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        slot.link = ours
        slot.started_at = time.monotonic()

    async def _ready(self, slot: Slot) -> bool:
        """True once the worker says so; False when it exits (or its link closes) first."""
        assert slot.link is not None and slot.proc is not None
        loop = asyncio.get_running_loop()
        try:
            data = await loop.sock_recv(slot.link, 64)
        except OSError:
            data = b""
        if data.startswith(b"ready"):
            log.info("worker %d (pid %d) ready", slot.index, slot.proc.pid)
            return True
        await slot.proc.wait()
        return False

    @staticmethod
    def _exit_text(code: int | None) -> str:
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    # -- start, restart, stop --------------------------------------------------------------------

    async def _prepare_store(self) -> None:
        """Workers opening a new SQLite file at once race to switch it to WAL, and the loser
        gets "database is locked" at once (no busy wait): make the file and its tables here
        first. OSError or sqlite3.Error when it cannot be opened."""
        from proxy.shared import SqliteLimiter
        from proxy.store import SqliteStore, open_store

        store = open_store(self.config.store)
        if isinstance(store, SqliteStore):
            try:
                await store.open()
            finally:
                await store.close()
            limiter = SqliteLimiter(store.path)
            await limiter.blocked_until("")  # creates its tables
            await limiter.close()

    async def start(self) -> int:
        try:
            self.config = self.check()
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
        try:
            await self._prepare_store()
        except (OSError, sqlite3.Error) as exc:
            store = self.config.store
            print(f"keyhop: cannot open the token store {store}: {exc}", file=sys.stderr)
            return 1
        host, port = self.config.listen.host, self.config.listen.port
        try:
            # alone first: refused if anyone listens there, even with SO_REUSEPORT
            listening_socket(host, port).close()
            for slot in self.slots:
                slot.sock = self._bind()
        except OSError as exc:
            print(f"keyhop: cannot listen on {self.config.listen}: {exc.strerror}", file=sys.stderr)
            return 1
        for slot in self.slots:
            await self._spawn(slot)
        results = await asyncio.wait_for(
            asyncio.gather(*(self._ready(s) for s in self.slots)), START_TIMEOUT
        )
        if not all(results):
            for slot, ok in zip(self.slots, results, strict=True):
                if not ok and slot.proc is not None:
                    log.error(
                        "worker %d could not start (%s); stopping the others",
                        slot.index,
                        self._exit_text(slot.proc.returncode),
                    )
            await self._stop_all(signal.SIGTERM)
            return 1
        log.info(
            "keyhop serving %s on http://%s with %d workers",
            self.path,
            self.config.listen,
            len(self.slots),
        )
        for slot in self.slots:
            slot.watcher = asyncio.create_task(self._watch(slot))
        return 0

    async def _watch(self, slot: Slot) -> None:
        while not self.stopping:
            assert slot.proc is not None
            code = await slot.proc.wait()
            if self.stopping:
                return
            pid = slot.proc.pid
            retire(self.directory, pid)
            if slot.link is not None:
                slot.link.close()
                slot.link = None
            if time.monotonic() - slot.started_at >= RESET_AFTER:
                slot.backoff = BACKOFF_FIRST
            delay = slot.backoff
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
            log.warning(
                "worker %d (pid %d) died (%s); starting a new one in %g s",
                slot.index,
                pid,
                self._exit_text(code),
                delay,
            )
            if delay > BACKOFF_FIRST and slot.sock is not None:
                slot.sock.close()  # a crash loop: its connections go to the others meanwhile
                slot.sock = None
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self._spawn(slot)
            except OSError as exc:
                log.error("worker %d: cannot start a new one: %s", slot.index, exc)
                slot.started_at = time.monotonic()
                continue
            if not await self._ready(slot):
                continue  # its exit is seen at the top of the loop, with a longer back-off

    def reload(self) -> None:
        try:
            new = self.check()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, every worker keeps the running config: %s", problem)
            return
        except Exception as exc:
            log.error(
                "reload failed, every worker keeps the running config: %s: %s",
                type(exc).__name__,
                exc,
            )
            return
        if new.workers != len(self.slots):
            log.warning("workers changed in %s; restart keyhop to apply it", self.path)
        self.config = new
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(signal.SIGHUP)
        log.info("%s is valid: every worker reloads it", self.path)

    def shutdown(self, sig: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("%s: every worker drains, then keyhop exits", signal.Signals(sig).name)
        self.done.set()

    async def _stop_all(self, sig: int) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()  # once the workers close theirs, nothing listens any more
                slot.sock = None
        procs = [s.proc for s in self.slots if s.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(sig)
        waits = [proc.wait() for proc in procs]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.config.drain_timeout + 10)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop in time: killed", proc.pid)
                    proc.kill()
            await asyncio.gather(*(proc.wait() for proc in procs))
        for slot in self.slots:
            if slot.watcher is not None:
                slot.watcher.cancel()
            if slot.link is not None:
                slot.link.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            code = await self.start()
        except TimeoutError:
            log.error("workers did not start within %g s", START_TIMEOUT)
            code = 1
        if code != 0:
            await self._stop_all(signal.SIGKILL)
            return code
        await self.done.wait()
        await self._stop_all(signal.SIGTERM)
        log.info("keyhop stopped")
        return 0


def supervise(
    config: Config, path: str, listen: str | None, workers: str | None, level: str
) -> int:
    try:
        supervisor = Supervisor(config, path, listen, workers, level)
    except OSError as exc:  # the workers' snapshot directory (a read-only /tmp, ...)
        where = tempfile.gettempdir()
        print(f"keyhop: cannot create a directory in {where} (set TMPDIR): {exc}", file=sys.stderr)
        return 1
    return asyncio.run(supervisor.run())
