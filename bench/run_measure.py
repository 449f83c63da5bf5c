"""Issue 3's measurements (bench/run.py): sanity, throughput and latency, streaming, and the
cold-cache burst, each against the processes of a `Bench`."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import load
from procs import HOST, CpuWatch, RssSampler, wait_quiet
from run_report import CLIENT_ID, CLIENT_SECRET, LEVELS, MIB, QUIET_CORES, TARGETS, say
from wrk import run_wrk

if TYPE_CHECKING:
    from run import Bench


def sanity_checks(bench: Bench) -> list[str]:
    """Every target answers, and keyhop's requests reach the upstream authenticated and signed:
    what is measured below is the real thing, not an error page."""
    problems: list[str] = []
    for target in TARGETS:
        try:
            body = load.get_json(bench.url(target, "/small"))
            if body.get("id") != 7:
                problems.append(f"{target}: GET /small answered {body!r}")
        except OSError as exc:
            problems.append(f"{target}: GET /small failed: {exc}")
    for route in ("kibo", "paynet"):
        try:
            echoed = load.get_json(f"{bench.keyhop.base_url}/{route}/headers")["headers"]
        except OSError as exc:
            problems.append(f"keyhop-{route}: GET /headers failed: {exc}")
            continue
        headers = {k.lower(): v for k, v in echoed.items()}
        if not headers.get("authorization", "").startswith("Bearer bench-token-"):
            problems.append(
                f"keyhop-{route}: upstream saw Authorization {headers.get('authorization')!r}"
            )
        if route == "kibo" and headers.get("api-key") != CLIENT_ID:
            problems.append(f"keyhop-kibo: upstream saw API-Key {headers.get('api-key')!r}")
        if route == "paynet":
            ts = headers.get("x-timestamp", "")
            want = hmac.new(CLIENT_SECRET.encode(), ts.encode(), hashlib.sha256).hexdigest()
            if not ts or headers.get("x-signature") != want:
                problems.append("keyhop-paynet: X-Timestamp/X-Signature missing or wrong")
    return problems


def throughput(
    bench: Bench,
    wrk: str,
    args: argparse.Namespace,
    out: dict[str, dict[str, Any]],
    problems: list[str],
) -> None:
    """wrk against each target at each level, `args.rounds` times over (the targets
    interleaved, so a burst of outside load hits them alike). `out[target][level]` is the
    round with the median req/s, filled in as runs finish: an interrupted run still reports
    what it measured."""
    pids = [bench.upstream.pid, bench.baseline.pid, bench.keyhop.pid]
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n in range(args.rounds):
        for target in TARGETS:
            url = bench.url(target, "/small")
            for level, (threads, connections) in LEVELS.items():
                if target.startswith("keyhop") and not bench.keyhop.alive():
                    problems.append(f"{target} c={level}: skipped, keyhop is not running")
                    continue
                tag = f" round {n + 1}/{args.rounds}" if args.rounds > 1 else ""
                say(
                    f"  {target:14} c={level:<3} warm-up {args.warmup:g} s, "
                    f"then {args.duration:g} s{tag}"
                )
                waited = wait_quiet(pids, args.quiet_wait, QUIET_CORES)
                if args.warmup > 0:
                    run_wrk(wrk, url, threads, connections, args.warmup)
                with CpuWatch(pids) as cpu:
                    result = run_wrk(wrk, url, threads, connections, args.duration)
                run = result.as_dict() | {
                    "other_cpu_cores": round(cpu.other_cores, 2),
                    "steal_cpu_cores": round(cpu.steal_cores, 2),
                    "waited_for_quiet_s": round(waited, 1),
                }
                if result.errors:
                    problems.append(
                        f"{target} c={level}: {result.non_2xx_3xx} non-2xx/3xx answers, "
                        f"socket errors {result.socket_errors}"
                    )
                done = rounds.setdefault((target, str(level)), [])
                done.append(run)
                ranked = sorted(done, key=lambda r: float(r["rps"]))
                median = ranked[(len(ranked) - 1) // 2]
                out.setdefault(target, {})[str(level)] = median | {
                    "rounds_rps": [r["rps"] for r in done]
                }


def streaming(
    bench: Bench, args: argparse.Namespace, out: dict[str, dict[str, Any]], problems: list[str]
) -> None:
    """Each target streams `--stream-bytes` down and up; the RSS of the process serving the
    target (the upstream itself for `direct`) is sampled every 50 ms."""
    size = args.stream_bytes
    servers = {"direct": bench.upstream, "baseline": bench.baseline, "keyhop": bench.keyhop}
    pids = [s.pid for s in servers.values()]
    for target, server in servers.items():
        if not server.alive():
            problems.append(f"streaming {target}: skipped, {server.name} is not running")
            continue
        route = "keyhop-kibo" if target == "keyhop" else target
        legs = out.setdefault(target, {})
        jobs: dict[str, Callable[[], load.Transfer]] = {
            "download": partial(load.download, bench.url(route, f"/bytes/{size}"), size),
            "upload": partial(load.upload, bench.url(route, "/sink"), size),
        }
        for direction, job in jobs.items():
            say(f"  {target:14} {direction} {size / MIB:,.0f} MiB")
            wait_quiet(pids, args.quiet_wait, QUIET_CORES)
            try:
                with CpuWatch(pids) as cpu, RssSampler(server.pid, interval=0.05) as rss:
                    transfer = job()
            except Exception as exc:  # a failed leg is a result, not the end of the run
                problems.append(f"streaming {target} {direction}: {type(exc).__name__}: {exc}")
                continue
            if transfer.status != 200 or transfer.bytes != size:
                problems.append(
                    f"streaming {target} {direction}: status {transfer.status}, "
                    f"{transfer.bytes} of {size} bytes"
                )
            legs[direction] = {
                "client": transfer.client,
                "status": transfer.status,
                "bytes": transfer.bytes,
                "seconds": round(transfer.seconds, 3),
                "mb_per_s": round(transfer.mb_per_s, 1),
                **rss.summary(),
                "other_cpu_cores": round(cpu.other_cores, 2),
            }


def cold_burst(bench: Bench, n: int) -> tuple[dict[str, Any], list[str]]:
    """A fresh keyhop (empty memory store), `n` simultaneous GET /kibo/small, and the number
    of token requests the upstream saw for them."""
    problems: list[str] = []
    bench.keyhop.stop()
    fresh = bench.new_keyhop("keyhop-burst")
    bench.start_keyhop(fresh)
    before = load.get_json(bench.upstream.base_url + "/stats")["token_requests"]
    say(f"  {n} simultaneous GET /kibo/small on a fresh keyhop")
    result = asyncio.run(load.burst(HOST, fresh.port, "/kibo/small", n))
    time.sleep(0.2)  # a straggling token request would still be counted
    after = load.get_json(bench.upstream.base_url + "/stats")["token_requests"]
    tokens = after - before
    if result.ok != n:
        problems.append(f"burst: {result.ok} of {n} answered 200: {result.statuses}")
    if tokens != 1:
        problems.append(f"burst: {tokens} token requests for {n} cold requests (expected 1)")
    return {
        "requests": n,
        "ok": result.ok,
        "statuses": result.statuses,
        "token_requests": tokens,
        "send_ms": round(result.send_ms, 1),
        "total_ms": round(result.total_ms, 1),
        "errors": result.errors,
        "keyhop_alive_after": fresh.alive(),
    }, problems
