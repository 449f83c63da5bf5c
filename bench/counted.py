"""wrk over a fixed number of requests, and the CPU a process tree spent serving them.

wrk has no request count (`-n`), only a duration. A Lua script stops each wrk thread after
`per_thread` answers and prints when it did (CLOCK_MONOTONIC through LuaJIT's FFI, the clock
`time.monotonic()` reads); once every thread has reported, the bench stops wrk by its PID
(SIGINT: wrk then prints its latency summary). The proxy's CPU is read from /proc before wrk
starts and when the last thread reports, so CPU per request is over a known request count,
not over a time window whose request count is an estimate.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wrk import parse_wrk

CLK_TCK: Final = float(os.sysconf("SC_CLK_TCK"))

_SCRIPT: Final = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} kh_timespec;
int clock_gettime(int clk, kh_timespec *tp);
]]
local tsp = ffi.new("kh_timespec")
local function now()  -- CLOCK_MONOTONIC (1), as Python's time.monotonic()
  ffi.C.clock_gettime(1, tsp)
  return tonumber(tsp.tv_sec) + tonumber(tsp.tv_nsec) * 1e-9
end
local limit, first, n = {limit}, nil, 0
wrk.method = "{method}"
{body}
function init(args) first = now() end
function response(status, headers, body)
  n = n + 1
  if n == limit then
    io.write(string.format("KH-DONE %.6f %.6f %d\\n", first, now(), n))
    io.flush()
    wrk.thread:stop()
  end
end
"""


def _proc_children() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat (ppid is the 2nd field after the name)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process (all its threads; reaped children too,
    so a worker that exits inside a window still counts)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant (a supervisor's workers)."""
    children = _proc_children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _ticks(pid)
        todo.extend(children.get(pid, ()))
    return total / CLK_TCK


@dataclass(frozen=True)
class Counted:
    requests: int  # answers counted by the threads' scripts (threads x per_thread)
    seconds: float  # first connection to last thread's last counted answer
    cpu_s: float  # the proxy tree's CPU over the same window
    others_s: dict[str, float]  # the same for the other PIDs asked for (the upstream), and wrk
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and non-2xx/3xx answers over the whole wrk run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0

    def other_us(self, name: str) -> float:
        return self.others_s.get(name, 0.0) / self.requests * 1e6 if self.requests else 0.0


def _script(per_thread: int, method: str, body: bytes | None) -> str:
    lines = ""
    if body is not None:
        # The body is ASCII (the bench makes it): a Lua long string holds it as is.
        lines = (
            f"wrk.body = [==[{body.decode('ascii')}]==]\n"
            'wrk.headers["Content-Type"] = "application/octet-stream"'
        )
    return _SCRIPT.format(limit=per_thread, method=method, body=lines)


def run_counted(
    wrk: str,
    url: str,
    root_pid: int,
    *,
    threads: int = 2,
    connections: int = 64,
    per_thread: int = 10_000,
    method: str = "GET",
    body: bytes | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 120.0,
    also: dict[str, int] | None = None,
) -> Counted:
    """`threads * per_thread` requests through wrk (run under `prefix`, e.g. taskset), and
    the CPU of `root_pid`'s process tree meanwhile (and of each of `also`, and wrk's own: what
    the rig's other processes spend per request bounds what the machine can serve)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(_script(per_thread, method, body))
        script = Path(handle.name)
    argv = [*prefix, wrk, f"-t{threads}", f"-c{connections}", f"-d{int(timeout)}s"]
    argv += ["--timeout", "10s", "--latency", "-s", str(script), url]
    also = also or {}
    cpu_before = tree_cpu_seconds(root_pid)
    others_before = {name: tree_cpu_seconds(pid) for name, pid in also.items()}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done: list[tuple[float, float, int]] = []
    lines: list[str] = []
    cpu_after = cpu_before
    others: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.match(r"KH-DONE ([\d.]+) ([\d.]+) (\d+)", line)
            if match is None:
                lines.append(line)
                continue
            done.append((float(match[1]), float(match[2]), int(match[3])))
            if len(done) == threads:
                cpu_after = tree_cpu_seconds(root_pid)
                others = {n: tree_cpu_seconds(p) - others_before[n] for n, p in also.items()}
                others["wrk"] = tree_cpu_seconds(proc.pid)  # started inside the window
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)  # wrk prints its summary on SIGINT
                break
        rest, err = proc.communicate(timeout=30)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        script.unlink(missing_ok=True)
    if len(done) < threads:
        raise RuntimeError(f"wrk {url}: {len(done)} of {threads} threads finished: {err.strip()}")
    summary = parse_wrk("".join(lines), url, threads, connections)
    started = min(first for first, _, _ in done)
    finished = max(last for _, last, _ in done)
    return Counted(
        requests=sum(n for _, _, n in done),
        seconds=finished - started,
        cpu_s=cpu_after - cpu_before,
        others_s=others,
        p50_ms=summary.p50_ms,
        p99_ms=summary.p99_ms,
        errors=summary.errors,
    )


def settle(seconds: float = 0.3) -> None:
    """A short pause between runs, so one run's closing connections are not the next's CPU."""
    time.sleep(seconds)
