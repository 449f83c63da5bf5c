"""Where keyhop's CPU goes per request: py-spy samples a `keyhop serve` under steady load.

    .venv/bin/python bench/profile.py                 # signing and bearer routes, 15 s each
    .venv/bin/python bench/profile.py --duration 5    # shorter

keyhop is started unmodified (no profiler inside it: py-spy reads its memory from outside,
`py-spy record -p PID`, which needs root or CAP_SYS_PTRACE) with the peer bench's config:
`/paynet` (bearer + per-request X-Signature) and `/bearer` (bearer only), memory store,
access log on. wrk keeps c=64 on one route while py-spy records it (`--nonblocking`: keyhop
is never paused, so the load is what it would be without the profiler); then the other
route. Prints the top entries by own time (the function on top of the stack) and by
cumulative time (anywhere on the stack), as shares of the samples taken while keyhop was
busy (idle waits in epoll are not sampled), and keeps py-spy's raw files (and a speedscope
file with --speedscope) for reading.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Final

from counted import tree_cpu_seconds
from rig import Rig, sanity
from scenario import SIGN_X_SIGNATURE, KeyhopSpec, Route, keyhop_argv, keyhop_config, layouts
from wrk import ensure_wrk, parse_wrk

BENCH_DIR: Final = Path(__file__).resolve().parent
OUT_DIR: Final = BENCH_DIR / "results" / "profile"
ROUTES: Final = {"signing": ("paynet", "signed"), "bearer": ("bearer", "bearer")}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: make bench installs it into .venv")
    return found


IDLE: Final = ("epoll_wait ", "epoll_pwait ", "epoll_pwait2 ")  # native leaves of a waiting loop


def _is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen " in frame


def read_raw(path: Path) -> tuple[int, int, Counter[str], Counter[str], Counter[str]]:
    """(busy samples, idle samples, own, own C leaf, cumulative) from py-spy's raw
    (collapsed-stack) file: one `frame;...;frame count` line per stack, outermost first.

    Own time goes to the innermost Python frame, the C code it called folded into it (the
    C leaf is counted apart). A stack whose C leaf is the loop's epoll wait is idle: with
    uvloop the wait is below Python's Runner.run, so only --native tells it from work, and
    idle samples are left out of every share."""
    own: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE):
            idle += count
            continue
        busy += count
        python = [f for f in frames if _is_python(f)]
        own[python[-1] if python else frames[-1]] += count
        if not _is_python(frames[-1]):
            leaf[frames[-1]] += count
        for frame in set(python):  # a recursive frame counts once per stack
            cumulative[frame] += count
    return busy, idle, own, leaf, cumulative


def top(counter: Counter[str], total: int, n: int) -> list[str]:
    if not total:
        return []
    return [
        f"| {i} | {100.0 * count / total:5.1f} % | `{frame}` |"
        for i, (frame, count) in enumerate(counter.most_common(n), 1)
    ]


def record(
    spy: list[str], pid: int, out: Path, seconds: float, fmt: str, rate: int, native: bool
) -> None:
    """py-spy (`spy`: its argv prefix, off keyhop's core) records `seconds` of keyhop."""
    argv = [*spy, "record", "-p", str(pid), "-o", str(out), "--format", fmt]
    argv += ["--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    # Blocking sampling (py-spy stops keyhop for each sample): with --nonblocking, Python
    # 3.11 under uvloop gave torn stacks (90 % of samples in one trivial frame).
    argv += ["--function"] + (["--native"] if native else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per route")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--routes", nargs="+", choices=sorted(ROUTES), default=list(ROUTES))
    parser.add_argument(
        "--native",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample C frames too (default): tells idle epoll waits from work",
    )
    parser.add_argument("--speedscope", action="store_true", help="also record speedscope")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    wrk, spy = ensure_wrk(), py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="keyhop-profile-"))
    layout = layouts()[0]  # pinned when there are two cores: wrk off keyhop's core
    rig = Rig(layout, workdir)
    spy_argv = [*layout.rest, spy]
    report: list[str] = []
    try:
        spec = KeyhopSpec((Route("paynet", sign=SIGN_X_SIGNATURE), Route("bearer")))
        config = workdir / "keyhop.yaml"
        config.write_text(keyhop_config(spec, rig.upstream.base_url))
        rig.add("keyhop", keyhop_argv(config), "", "signed", http="/-/health")
        if not rig.targets:
            raise SystemExit(f"keyhop did not start: {rig.skipped}")
        keyhop = rig.targets[0]
        for name in args.routes:
            route, check = ROUTES[name]
            keyhop.prefix, keyhop.check = f"/{route}", check
            why = sanity(keyhop)
            if why is not None:
                raise SystemExit(f"{name} route: {why}")
            url = keyhop.url("/small")
            warm = 2.0
            load_s = warm + args.duration * (2 if args.speedscope else 1) + 3
            print(f"profiling the {name} route ({url}) for {args.duration:g} s", file=sys.stderr)
            load = subprocess.Popen(
                [*layout.rest, wrk, "-t2", "-c64", f"-d{round(load_s)}s", "--latency", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            pid = keyhop.service.pid
            try:
                time.sleep(warm)
                raw = args.out / f"{name}.raw.txt"
                cpu = tree_cpu_seconds(keyhop.service.pid)
                wall = time.monotonic()
                record(spy_argv, pid, raw, args.duration, "raw", args.rate, args.native)
                busy = (tree_cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
                if args.speedscope:
                    scope = args.out / f"{name}.speedscope.json"
                    record(
                        spy_argv, pid, scope, args.duration, "speedscope", args.rate, args.native
                    )
            finally:
                wrk_out, _ = load.communicate(timeout=load_s + 30)
            rps = parse_wrk(wrk_out).rps
            total, idle, own, leaf, cumulative = read_raw(raw)
            report += [
                f"### {name} route: {total:,} busy samples (and {idle:,} idle in epoll) over "
                f"{args.duration:g} s at c=64 ({layout.name}); keyhop used {busy:.2f} cores "
                f"while sampled, wrk saw {rps:,.0f} req/s over the whole load; raw stacks in "
                f"{raw}",
                "",
                "By own time (the innermost Python frame, with the C code it called):",
                "",
                "| # | share | function (file) |",
                "| ---: | ---: | --- |",
                *top(own, total, args.top),
                "",
                "C code on top of the stack (syscalls, uvloop, OpenSSL; `--native` only):",
                "",
                "| # | share | function (file) |",
                "| ---: | ---: | --- |",
                *top(leaf, total, min(args.top, 10)),
                "",
                "By cumulative time (Python frames):",
                "",
                "| # | share | function (file) |",
                "| ---: | ---: | --- |",
                *top(cumulative, total, args.top),
                "",
            ]
    finally:
        rig.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
