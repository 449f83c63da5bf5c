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
from pathlib import Path
from typing import Final

from counted import tree_cpu_seconds
from rig import Rig, sanity
from scenario import SIGN_X_SIGNATURE, KeyhopSpec, Route, keyhop_argv, keyhop_config, layouts
from stacks import perf_shares, read_raw, top
from wrk import ensure_wrk, parse_wrk

BENCH_DIR: Final = Path(__file__).resolve().parent
OUT_DIR: Final = BENCH_DIR / "results" / "profile"
ROUTES: Final = {"signing": ("paynet", "signed"), "bearer": ("bearer", "bearer")}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: make bench installs it into .venv")
    return found


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
    parser.add_argument(
        "--perf", action=argparse.BooleanOptionalAction, default=True, help="perf too (5 s)"
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
            perf_s = 5.0 if shutil.which("perf") and args.perf else 0.0
            load_s = warm + args.duration * (2 if args.speedscope else 1) + perf_s + 3
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
                cpu = tree_cpu_seconds(pid)
                wall = time.monotonic()
                record(spy_argv, pid, raw, args.duration, "raw", args.rate, args.native)
                busy = (tree_cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
                if args.speedscope:
                    scope = args.out / f"{name}.speedscope.json"
                    record(
                        spy_argv, pid, scope, args.duration, "speedscope", args.rate, args.native
                    )
                perf_data = args.out / f"{name}.perf.data" if perf_s else None
                if perf_data is not None:
                    # 499 Hz, an odd rate so it does not beat with a periodic timer
                    perf = [*layout.rest, "perf", "record", "-q", "-F", "499", "-p", str(pid)]
                    perf += ["-o", str(perf_data), "--", "sleep", str(perf_s)]
                    if subprocess.run(perf, capture_output=True, timeout=60).returncode != 0:
                        perf_data = None
            finally:
                wrk_out, _ = load.communicate(timeout=load_s + 30)
            rps = parse_wrk(wrk_out).rps
            st = read_raw(raw)
            report += [
                f"### {name} route, {layout.name}, c=64: keyhop used {busy:.2f} cores while "
                f"sampled; wrk saw {rps:,.0f} req/s over the whole load",
                "",
                f"py-spy: {st.busy:,} busy samples ({st.idle:,} idle in epoll left out), "
                f"{st.in_syscall:,} of them stopped in libc (a syscall: over-sampled, see "
                f"bench/stacks.py); raw stacks in {raw}.",
                "",
                f"By own time, over the {st.python:,} samples in Python or C extensions "
                "(innermost Python frame, the C code it called folded in):",
                "",
                *top(st.own, st.python, args.top),
                "",
                "By cumulative time (Python frames, same samples):",
                "",
                *top(st.cumulative, st.python, args.top),
                "",
                "C leaves of all busy samples (`--native`):",
                "",
                *top(st.leaf, st.busy, 10),
                "",
            ]
            if perf_data is not None:
                report += ["perf (no stops; CPU time by library, then by C symbol):", ""]
                for sort, n in (("dso", 8), ("sym", 15)):
                    shares = perf_shares(perf_data, sort, n)
                    report += [f"    {pct:5.1f} %  {what}" for pct, what in shares] + [""]
    finally:
        rig.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
