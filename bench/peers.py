"""keyhop beside its peers, in one run: CPU per request and req/s at c=64 (issue 16, issue 13).

    .venv/bin/python bench/peers.py            # the full run (about 6 minutes on 2 cores)
    .venv/bin/python bench/peers.py --quick    # a smoke run (about a minute)

For each layout (pinned: each proxy alone on core 0, wrk and the upstream on core 1;
unpinned: both cores shared) it starts the upstream (bench/upstream.py), the naive aiohttp
baseline, Envoy+Lua at --concurrency 1 and 2, and keyhop with `workers: 1` and `workers: 2`
on its PayNet-like route (bearer + per-request HMAC), checks that each one's requests reach
the upstream authenticated and signed, then measures them round-robin over fixed request
counts. Then, pinned, keyhop's signing variants beside its unsigned route (issue 13). A
target the keyhop under test rejects (`keyhop check` exits 2) is skipped with the reason.
See bench/README.md ("Peers") for what each number means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

from counted import run_counted, settle
from peers_report import render
from procs import CpuWatch, wait_quiet
from rig import Rig, sanity
from run import machine_info
from scenario import (
    SIGN_AWS_SIGV4,
    SIGN_HMAC_BODY,
    SIGN_HMAC_TIMESTAMP,
    SIGN_X_SIGNATURE,
    KeyhopSpec,
    Layout,
    Route,
    keyhop_argv,
    keyhop_check,
    keyhop_config,
    layouts,
)
from wrk import ensure_wrk

BENCH_DIR: Final = Path(__file__).resolve().parent
DEFAULT_JSON: Final = BENCH_DIR / "results" / "peers.json"
QUIET_CORES: Final = 0.25
BODY_4K: Final = (b"0123456789abcdef" * 256)[:4096]
SIGNS: Final = {"x_signature": SIGN_X_SIGNATURE, "hmac": SIGN_HMAC_TIMESTAMP}

# The signing variants of issue 13: (name, route, sign block, method, upstream path, check).
VARIANTS: Final[list[tuple[str, str, dict[str, Any] | None, str, str, str]]] = [
    ("bearer GET", "bearer", None, "GET", "/small", "bearer"),
    ("bearer POST 4 KiB", "bearer", None, "POST", "/sink", "bearer"),
    ("x_signature GET", "xsig", SIGN_X_SIGNATURE, "GET", "/small", "signed"),
    ("hmac {timestamp} GET", "hmac", SIGN_HMAC_TIMESTAMP, "GET", "/small", "signed"),
    ("aws_sigv4 GET", "sigv4", SIGN_AWS_SIGV4, "GET", "/small", "sigv4"),
    ("hmac body POST 4 KiB", "hmacbody", SIGN_HMAC_BODY, "POST", "/sink", "signed"),
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(
    rig: Rig,
    wrk: str,
    args: argparse.Namespace,
    cells: list[tuple[str, str, str, bytes | None]],
    out: dict[str, Any],
    problems: list[str],
) -> None:
    """Each cell (name, target, path, body) `args.rounds` times, round-robin so a burst of
    outside load hits them alike; per cell the median req/s and the median CPU µs."""
    by_name = {t.name: t for t in rig.targets}
    pids = [s.pid for s in rig.services if s.alive()]
    for n in range(args.rounds):
        for cell, target_name, path, body in cells:
            target = by_name[target_name]
            if not target.service.alive():
                problems.append(f"{rig.layout.name} {cell}: skipped, the process exited")
                continue
            say(f"  {rig.layout.name:16} {cell:22} round {n + 1}/{args.rounds}")
            waited = wait_quiet(pids, args.quiet_wait, QUIET_CORES)
            common = {
                "method": "POST" if body else "GET",
                "body": body,
                "prefix": rig.layout.rest,
            }
            url = target.url(path)
            try:
                run_counted(wrk, url, target.service.pid, per_thread=args.warmup, **common)
                settle()
                with CpuWatch(pids) as outside:
                    got = run_counted(
                        wrk,
                        url,
                        target.service.pid,
                        per_thread=args.requests,
                        also={"upstream": rig.upstream.pid} if target.check != "direct" else {},
                        **common,
                    )
            except (RuntimeError, ValueError) as exc:
                problems.append(f"{rig.layout.name} {cell}: {exc}")
                continue
            if got.errors:
                problems.append(f"{rig.layout.name} {cell}: {got.errors} errors in wrk's run")
            runs = out.setdefault(cell, {"runs": []})["runs"]
            runs.append(
                {
                    "requests": got.requests,
                    "seconds": round(got.seconds, 3),
                    "rps": round(got.rps, 1),
                    "cpu_us": round(got.cpu_us, 1),
                    "upstream_cpu_us": round(got.other_us("upstream"), 1),
                    "wrk_cpu_us": round(got.other_us("wrk"), 1),
                    "p50_ms": got.p50_ms,
                    "p99_ms": got.p99_ms,
                    "errors": got.errors,
                    "waited_for_quiet_s": round(waited, 1),
                    "other_cpu_cores": round(outside.other_cores, 2),
                }
            )
            out[cell]["rps"] = statistics.median(r["rps"] for r in runs)
            out[cell]["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
            for key in ("upstream_cpu_us", "wrk_cpu_us"):
                out[cell][key] = statistics.median(r[key] for r in runs)
            out[cell]["cpu_us_range"] = [
                min(r["cpu_us"] for r in runs),
                max(r["cpu_us"] for r in runs),
            ]
            settle()


def peer_layout(
    layout: Layout, workdir: Path, wrk: str, args: argparse.Namespace, report: dict[str, Any]
) -> None:
    section: dict[str, Any] = {"cells": {}, "skipped": {}}
    report["layouts"][layout.name] = section
    rig = Rig(layout, workdir)
    try:
        rig.add_direct()
        rig.add_baseline()
        for c in (1, 2):
            rig.add_envoy(f"envoy-lua-c{c}", c, args.envoy_cache)
        for w in (1, 2):
            # `memory:` is per process: more than one worker needs a shared store (SPEC 7),
            # so both keyhop targets use SQLite, each its own file, for a like-for-like pair.
            store = f"sqlite://{workdir / f'{layout.name}-w{w}.db'}"
            route = Route("paynet", sign=SIGNS[args.sign])
            rig.add_keyhop(f"keyhop-w{w}", KeyhopSpec((route,), w, store), "paynet", "signed")
            if w == 1:  # the same, every request through the pipeline (no express lane)
                spec = KeyhopSpec((route,), 1, f"sqlite://{workdir / f'{layout.name}-w1p.db'}")
                rig.add_keyhop("keyhop-w1-pipeline", spec, "paynet", "signed", express=False)
        for target in list(rig.targets):
            why = sanity(target)
            if why is not None:
                rig.skipped[target.name] = f"sanity check failed: {why}"
                rig.targets.remove(target)
        section["skipped"] = dict(rig.skipped)
        for name, why in rig.skipped.items():
            say(f"  {layout.name}: {name} skipped: {why}")
        cells = [(t.name, t.name, "/small", None) for t in rig.targets]
        measure(rig, wrk, args, cells, section["cells"], report["problems"])
    finally:
        section["exit_status"] = rig.stop_all()


def signing_variants(
    layout: Layout, workdir: Path, wrk: str, args: argparse.Namespace, report: dict[str, Any]
) -> None:
    """One keyhop (`workers: 1`, memory store) with a route per variant the keyhop under test
    accepts, each checked alone first so one rejected recipe does not hide the others."""
    section: dict[str, Any] = {"layout": layout.name, "cells": {}, "skipped": {}}
    report["signing"] = section
    rig = Rig(layout, workdir)
    try:
        accepted: dict[str, Route] = {}
        for name, route_name, sign, _method, _path, _check in VARIANTS:
            route = Route(route_name, sign=sign)
            probe = workdir / f"probe-{route_name}.yaml"
            probe.write_text(keyhop_config(KeyhopSpec((route,)), rig.upstream.base_url))
            why = keyhop_check(probe)
            if why is None:
                accepted[route_name] = route
            else:
                section["skipped"][name] = why
        spec = KeyhopSpec(tuple(accepted.values()))
        config = workdir / "signing.yaml"
        config.write_text(keyhop_config(spec, rig.upstream.base_url))
        rig.add("keyhop", keyhop_argv(config), "", "bearer", http="/-/health")
        if not rig.targets:
            section["skipped"]["all"] = rig.skipped.get("keyhop", "keyhop did not start")
            return
        keyhop = rig.targets[0]
        cells: list[tuple[str, str, str, bytes | None]] = []
        for name, route_name, _sign, method, path, check in VARIANTS:
            if route_name not in accepted:
                continue
            body = BODY_4K if method == "POST" else None
            keyhop.prefix, keyhop.check = f"/{route_name}", check
            why = sanity(keyhop, body)
            if why is not None:
                section["skipped"][name] = f"sanity check failed: {why}"
                continue
            cells.append((name, "keyhop", f"/{route_name}{path}", body))
        keyhop.prefix = ""
        for name, why in section["skipped"].items():
            say(f"  signing: {name} skipped: {why}")
        measure(rig, wrk, args, cells, section["cells"], report["problems"])
    finally:
        section["exit_status"] = rig.stop_all()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, 1 round")
    parser.add_argument("--requests", type=int, help="measured requests per wrk thread (7500)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per wrk thread (1000)")
    parser.add_argument("--rounds", type=int, help="rounds per cell, median reported (3)")
    parser.add_argument("--quiet-wait", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument(
        "--sign", choices=sorted(SIGNS), default="x_signature", help="keyhop's peer route"
    )
    parser.add_argument(
        "--envoy-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Envoy reuses the signature within a second, as keyhop memoizes it (default on)",
    )
    parser.add_argument("--only", choices=["peers", "signing"], help="one half of the run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    args.requests = args.requests or (1000 if args.quick else 7500)
    args.warmup = args.warmup or (300 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.quick:
        args.quiet_wait = min(args.quiet_wait, 1.0)
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="keyhop-peers-"))
    started = time.monotonic()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(wrk),
        "params": {
            "requests_per_thread": args.requests,
            "warmup_per_thread": args.warmup,
            "rounds": args.rounds,
            "wrk": "-t2 -c64",
            "keyhop_sign": args.sign,
            "envoy_cache": args.envoy_cache,
        },
        "layouts": {},
        "signing": None,
        "problems": [],
    }
    interrupted = False
    try:
        all_layouts = layouts()
        if args.only != "signing":
            for layout in all_layouts:
                say(f"peers, {layout.name} (logs in {workdir})")
                peer_layout(layout, workdir, wrk, args, report)
        if args.only != "peers":
            say("signing variants, " + all_layouts[0].name)
            signing_variants(all_layouts[0], workdir, wrk, args, report)
    except KeyboardInterrupt:
        interrupted = True
        report["problems"].append("interrupted")
    except Exception as exc:
        report["problems"].append(f"aborted: {type(exc).__name__}: {exc}")
    report["seconds"] = round(time.monotonic() - started, 1)
    print(render(report), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.keep_logs or report["problems"]:
        say(f"\nJSON: {args.json}; logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"\nJSON: {args.json}")
    return 130 if interrupted else (1 if report["problems"] else 0)


if __name__ == "__main__":
    sys.exit(main())
