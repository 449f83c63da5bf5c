"""Starting, watching and stopping the benchmark's server processes.

Every process is started in its own session (so a Ctrl-C at the terminal reaches only the
bench, which then stops them) and is stopped by its PID: SIGTERM, then SIGKILL after a grace
period. Nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

HOST: Final = "127.0.0.1"


def free_port() -> int:
    """A port the kernel just handed out on loopback (free at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    """One server subprocess, its port, and the file its stdout and stderr go to."""

    name: str
    argv: Sequence[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, cwd: Path | None = None) -> None:
        # A file, not a pipe: nobody would drain a pipe, and a full pipe blocks the server.
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_tcp(self, timeout: float = 15.0) -> None:
        """Until a TCP connect to the port succeeds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not accept connections within {timeout:g} s")

    def wait_http(self, path: str, timeout: float = 15.0) -> None:
        """Until `GET path` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            conn = http.client.HTTPConnection(HOST, self.port, timeout=0.5)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: GET {path} did not answer 200 within {timeout:g} s")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode} while starting; "
                f"see {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM by PID, SIGKILL after `grace` seconds; the exit status, None if never run."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def rss_kib(pid: int) -> int | None:
    """The process's resident set (VmRSS) in KiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread, keeping the peak.

    A thread rather than a task: it keeps sampling while the bench's own event loop is busy
    pushing an upload.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.before_kib = rss_kib(pid) or 0
        self.peak_kib = self.before_kib
        self.after_kib = self.before_kib
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is not None:
                self.samples += 1
                self.peak_kib = max(self.peak_kib, value)
                self.after_kib = value
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        value = rss_kib(self.pid)
        if value is not None:
            self.peak_kib = max(self.peak_kib, value)
            self.after_kib = value

    def summary(self) -> dict[str, float | int]:
        mib = 1024.0
        return {
            "rss_before_mib": round(self.before_kib / mib, 1),
            "rss_peak_mib": round(self.peak_kib / mib, 1),
            "rss_after_mib": round(self.after_kib / mib, 1),
            "rss_growth_mib": round((self.peak_kib - self.before_kib) / mib, 1),
            "rss_samples": self.samples,
        }


def _cpu_ticks_busy() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return user + nice + system + irq + softirq, steal


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name is in parentheses and may hold spaces: split after it.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class CpuWatch:
    """How much CPU the machine spent on work that is not the bench's during a measurement:
    another job on a 2-core box skews a run, and this says by how much.

    Ours is the bench itself, its finished children (wrk, curl) and the given server PIDs.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self.other_cores = 0.0
        self.steal_cores = 0.0
        self.ours_cores = 0.0

    def _ours(self) -> float:
        t = os.times()
        mine = t.user + t.system + t.children_user + t.children_system
        return mine + sum(_proc_ticks(p) for p in self.pids) / self.tick

    def __enter__(self) -> CpuWatch:
        self._busy, self._steal = _cpu_ticks_busy()
        self._mine = self._ours()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, steal = _cpu_ticks_busy()
        elapsed = max(time.monotonic() - self._started, 1e-6)
        ours = self._ours() - self._mine
        self.ours_cores = ours / elapsed
        self.other_cores = max(0.0, ((busy - self._busy) / self.tick - ours) / elapsed)
        self.steal_cores = (steal - self._steal) / self.tick / elapsed


def wait_quiet(pids: Sequence[int], max_wait: float, threshold: float = 0.25) -> float:
    """Up to `max_wait` seconds until, over half a second, processes other than ours use less
    than `threshold` cores; the seconds waited (0.5 at least when `max_wait` > 0)."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        with CpuWatch(pids) as cpu:
            time.sleep(0.5)
        if cpu.other_cores < threshold:
            break
    return time.monotonic() - started
