"""keyhop `workers: 1` against `workers: 2` on the bench's bearer route (issue 16 item 1).

    .venv/bin/python bench/workers.py [--duration 8] [--rounds 2] [--connections 64]

Starts bench/upstream.py and keyhop with each worker count (SQLite store, access log into
a file as in bench/run.py), warms each, then runs wrk on GET /kibo/small at -t2 -cN,
rounds interleaved, and prints req/s per round and the ratio of the medians. Nothing is
pinned: wrk, the upstream and keyhop share the machine's cores alike for both counts.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from procs import HOST, Service, _proc_ticks, free_port
from run import BENCH_DIR, CLIENT_ID, CLIENT_SECRET, CONFIG_TEMPLATE, REPO
from wrk import ensure_wrk, run_wrk


def tree_ticks(pid: int) -> int:
    """utime + stime of a process and its children (the supervisor and its workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(c) for c in task.read_text().split()]
    return _proc_ticks(pid) + sum(_proc_ticks(c) for c in children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="keyhop-bench-workers-"))
    port = free_port()
    upstream = Service(
        "upstream",
        [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)],
        port,
        workdir / "upstream.log",
    )
    services = [upstream]
    rps: dict[int, list[float]] = {1: [], 2: []}
    try:
        upstream.start()
        upstream.wait_tcp()
        keyhops: dict[int, Service] = {}
        for workers in rps:
            config = workdir / f"keyhop-{workers}.yaml"
            text = CONFIG_TEMPLATE.format(
                upstream=upstream.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
            )
            store = f"sqlite://{workdir / 'tokens.db'}"
            config.write_text(text.replace('store: "memory:"', f'store: "{store}"'))
            kport = free_port()
            argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
            argv += ["--listen", f"{HOST}:{kport}", "--workers", str(workers)]
            keyhop = Service(f"keyhop-{workers}", argv, kport, workdir / f"keyhop-{workers}.log")
            services.append(keyhop)
            keyhop.start(cwd=REPO)
            keyhop.wait_http("/-/health")
            keyhops[workers] = keyhop
        for _ in range(args.rounds):
            for workers, keyhop in keyhops.items():
                url = keyhop.base_url + "/kibo/small"
                run_wrk(wrk, url, 2, args.connections, 2)  # warm-up: token, pools, caches
                ticks, up_ticks = tree_ticks(keyhop.pid), tree_ticks(upstream.pid)
                wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = run_wrk(wrk, url, 2, args.connections, args.duration)
                hz = os.sysconf("SC_CLK_TCK")
                cpu_s = (tree_ticks(keyhop.pid) - ticks) / hz
                up_s = (tree_ticks(upstream.pid) - up_ticks) / hz
                wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                wrk_s = (wrk_after.ru_utime + wrk_after.ru_stime) - (
                    wrk_before.ru_utime + wrk_before.ru_stime
                )
                if result.errors:
                    print(f"workers {workers}: {result.errors} errors", file=sys.stderr)
                rps[workers].append(result.rps)
                print(
                    f"workers {workers}: {result.rps:,.0f} req/s  p50 {result.p50_ms:.2f} ms  "
                    f"keyhop CPU {cpu_s / max(1, result.requests) * 1e6:.0f} us/request, "
                    f"{cpu_s / args.duration:.2f} cores (upstream "
                    f"{up_s / args.duration:.2f}, wrk {wrk_s / args.duration:.2f})"
                )
    finally:
        for service in reversed(services):
            service.stop()
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    print(f"median req/s at c={args.connections}: workers 1 {one:,.0f}, workers 2 {two:,.0f}")
    print(f"workers 2 / workers 1 = {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
