"""Reading the profilers' output: py-spy's collapsed stacks and `perf report`'s shares.

Why two profilers: py-spy names Python functions but, stopping keyhop with ptrace for each
sample, lands in system calls far more often than their cost (on this VM 33 % of samples in
getpid(2), whose six calls a request cost ~1.5 µs of ~110, and 75 % in syscalls where perf
measures the kernel at ~20 %). perf samples without stopping the process, so its split
between the interpreter, C extensions and the kernel is the honest one, but Python 3.11 has
no perf map, so it cannot name a Python function. The report shows py-spy's Python shares
over the samples that did not stop in a syscall, and perf's split beside them.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

IDLE: Final = ("epoll_wait ", "epoll_pwait ", "epoll_pwait2 ")  # the loop waiting
LIBC: Final = "(libc.so.6)"  # a leaf in libc: stopped in (or at) a system call


def _is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen " in frame


@dataclass
class Stacks:
    busy: int = 0  # samples not waiting in epoll
    idle: int = 0
    in_syscall: int = 0  # busy samples whose leaf is libc
    own: Counter[str] = field(default_factory=Counter)  # innermost Python frame, not in libc
    leaf: Counter[str] = field(default_factory=Counter)  # C leaf of every busy sample
    cumulative: Counter[str] = field(default_factory=Counter)  # Python frames, not in libc

    @property
    def python(self) -> int:
        return self.busy - self.in_syscall


def read_raw(path: Path) -> Stacks:
    """py-spy's raw (collapsed-stack) file: `frame;...;frame count`, outermost frame first.

    Own time goes to the innermost Python frame with the C code it called folded in. With
    uvloop the epoll wait is below Python's Runner.run: only --native tells idle from work."""
    out = Stacks()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE):
            out.idle += count
            continue
        out.busy += count
        if not _is_python(frames[-1]):
            out.leaf[frames[-1]] += count
        if frames[-1].endswith(LIBC):
            out.in_syscall += count
            continue
        python = [f for f in frames if _is_python(f)]
        out.own[python[-1] if python else frames[-1]] += count
        for frame in set(python):  # a recursive frame counts once per stack
            out.cumulative[frame] += count
    return out


def top(counter: Counter[str], total: int, n: int) -> list[str]:
    if not total:
        return []
    rows = ["| # | share | function (file) |", "| ---: | ---: | --- |"]
    for i, (frame, count) in enumerate(counter.most_common(n), 1):
        rows.append(f"| {i} | {100.0 * count / total:5.1f} % | `{frame}` |")
    return rows


def perf_shares(data: Path, sort: str, n: int) -> list[tuple[float, str]]:
    """`perf report --sort dso|sym` of a recording: (percent of samples, name), largest first."""
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio"]
        + ["-g", "none", "--percent-limit", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rows: list[tuple[float, str]] = []
    for line in done.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
            try:
                rows.append((float(parts[0].rstrip("%")), parts[1].strip()))
            except ValueError:
                continue
    return rows[:n]
