"""keyhop soak (issue 12): millions of requests through a signing route, with token expiry,
revocations and a misbehaving upstream mixed in; RSS and open fds must stay flat.

    .venv/bin/python bench/soak.py                    # 3,000,000 requests (~20 min on 2 cores)
    .venv/bin/python bench/soak.py --requests 300000  # a shorter run

Starts bench/soak_upstream.py and `keyhop serve` on free loopback ports, each stopped by its
PID at the end. A bounded-concurrency aiohttp client sends GETs: most to `/paynet/v1/...`
(bearer token from a client_credentials endpoint, `X-Timestamp` and `X-Signature`, tokens
living `--ttl` seconds and all revoked every `--revoke-every` seconds), and `--flaky` of
them to `/flaky/<mode>/...`, whose upstream answers `ok`, cuts its answer, answers garbage
or stalls. Every `--sample-every` seconds keyhop's VmRSS and open fds are read from
/proc/<pid> and printed. Exit status 1 when keyhop answered 500 (`internal_error`) or logged
an error, when a signing-route request did not get 200, when a flaky request got another
answer than its mode calls for, or when RSS or fds grew past the bounds (from the largest
sample of the warm-up to the median of the last fifth of the run); 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from procs import HOST, Service, free_port, rss_kib, tail
from soak_upstream import CLIENT_ID, CLIENT_SECRET, FIID

BENCH_DIR: Final = Path(__file__).resolve().parent
MODES: Final = ("ok", "cut", "garbage", "stall")
#: what keyhop must answer for each mode of the misbehaving upstream (SPEC 4.1, 4.6)
EXPECTED: Final = {"ok": "200", "cut": "cut", "garbage": "502 upstream_unreachable"}
EXPECTED["stall"] = "504 upstream_timeout"
CONFIG: Final = """\
store: "memory:"
providers:
  paynetish:
    auth:
      type: oauth2_client_credentials
      token_url: "http://{host}:{port}/token"
      client_id: {client_id}
      client_secret: {client_secret}
      client_auth: body
    headers: {{ X-Fiid: "{fiid}" }}
    sign: {{ type: x_signature }}
    refresh_on: [401]
    timeouts: {{ connect: 2, read: 10 }}
  flaky:
    auth: {{ type: none }}
    timeouts: {{ connect: 2, read: 1 }}
routes:
  - {{ prefix: /paynet, upstream: "http://{host}:{port}", provider: paynetish }}
  - {{ prefix: /flaky, upstream: "http://{host}:{flaky_port}", provider: flaky }}
"""


@dataclass
class Tally:
    sent: int = 0
    done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "route: status error"
    problems: Counter[str] = field(default_factory=Counter)


async def one(session: aiohttp.ClientSession, base: str, n: int, flaky_every: int) -> str:
    """One request; its outcome as 'route: status [error]' or 'route: cut'."""
    if flaky_every and n % flaky_every == 0:
        mode = MODES[(n // flaky_every) % len(MODES)]
        route, url = f"flaky {mode}", f"{base}/flaky/{mode}/{n}"
    else:
        route, url = "paynet", f"{base}/paynet/v1/payments/{n % 1000}"
    try:
        async with session.get(url) as resp:
            body = await resp.read()
            if resp.status < 400:
                return f"{route}: {resp.status}"
            try:
                error = json.loads(body).get("error", "?")
            except (ValueError, AttributeError):
                error = "not-json"
            return f"{route}: {resp.status} {error}"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        return f"{route}: cut"
    except TimeoutError:
        return f"{route}: client timeout"
    except aiohttp.ClientError as exc:
        return f"{route}: {type(exc).__name__}"


def judge(outcome: str) -> str | None:
    route, _, got = outcome.partition(": ")
    if route == "paynet":
        return None if got == "200" else outcome
    mode = route.removeprefix("flaky ")
    return None if got == EXPECTED[mode] else f"{outcome} (expected {EXPECTED[mode]})"


async def load(base: str, total: int, concurrency: int, flaky_every: int, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while tally.sent < total:
                n = tally.sent
                tally.sent += 1
                outcome = await one(session, base, n, flaky_every)
                tally.done += 1
                tally.outcomes[outcome] += 1
                if (problem := judge(outcome)) is not None:
                    tally.problems[problem] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


Curve = list[tuple[float, int, int, int]]  # (seconds, requests done, RSS KiB, open fds)


async def sample(pid: int, every: float, tally: Tally, curve: Curve) -> None:
    started = time.monotonic()
    last_done, last_t = 0, started
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        rss, nfd = rss_kib(pid), fds(pid)
        if rss is None or nfd is None:
            print("keyhop is gone", flush=True)
            return
        rate = (tally.done - last_done) / (now - last_t)
        last_done, last_t = tally.done, now
        curve.append((now - started, tally.done, rss, nfd))
        print(
            f"t={now - started:7.0f}s  done={tally.done:>10,}  req/s={rate:7,.0f}  "
            f"rss={rss / 1024:7.1f} MiB  fds={nfd:4d}",
            flush=True,
        )


def growth(curve: Curve, warmup: float) -> tuple[float, float, float]:
    """RSS (MiB) and fd growth: the median of the last fifth of the samples minus the
    largest sample of the warm-up (the first `warmup` seconds); and the RSS slope after the
    warm-up, in MiB per million requests (least squares)."""
    warm = [s for s in curve if s[0] <= warmup] or curve[:1]
    after = [s for s in curve if s[0] > warmup] or curve[-1:]
    last = after[-max(1, len(after) // 5) :]
    rss = (statistics.median(s[2] for s in last) - max(s[2] for s in warm)) / 1024
    fd = statistics.median(s[3] for s in last) - max(s[3] for s in warm)
    slope = 0.0
    if len(after) >= 2 and after[-1][1] > after[0][1]:
        fit = statistics.linear_regression([s[1] for s in after], [s[2] / 1024 for s in after])
        slope = fit.slope * 1e6
    return rss, fd, slope


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3_000_000)
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--flaky", type=float, default=0.02, help="share of requests to /flaky")
    p.add_argument("--ttl", type=int, default=70, help="token lifetime, seconds")
    p.add_argument("--revoke-every", type=float, default=45.0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of warm-up")
    p.add_argument("--max-rss-growth-mib", type=float, default=16.0)
    p.add_argument("--max-fd-growth", type=int, default=16)
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


def scan_log(path: Path) -> Counter[str]:
    """keyhop's own log: internal_error access lines and error records, counted."""
    found: Counter[str] = Counter()
    with path.open(errors="replace") as log:
        for line in log:
            if '"internal_error"' in line:
                found["internal_error access lines"] += 1
            if '"level":"error"' in line or '"level":"critical"' in line:
                found["error records"] += 1
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="keyhop-soak-"))
    port, flaky_port = free_port(), free_port()
    upstream = Service(
        "upstream",
        [sys.executable, str(BENCH_DIR / "soak_upstream.py"), "--port", str(port)]
        + ["--flaky-port", str(flaky_port), "--ttl", str(args.ttl)]
        + ["--revoke-every", str(args.revoke_every)],
        port,
        workdir / "upstream.log",
    )
    config = workdir / "keyhop.yaml"
    config.write_text(
        CONFIG.format(
            host=HOST,
            port=port,
            flaky_port=flaky_port,
            fiid=FIID,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
    )
    kport = free_port()
    keyhop = Service(
        "keyhop",
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        + ["--listen", f"{HOST}:{kport}"],
        kport,
        workdir / "keyhop.log",
    )
    tally, curve = Tally(), Curve()
    flaky_every = round(1 / args.flaky) if args.flaky > 0 else 0
    started = time.monotonic()
    try:
        upstream.start()
        upstream.wait_tcp()
        keyhop.start(cwd=BENCH_DIR.parent)
        keyhop.wait_http("/-/health")
        print(
            f"soak: {args.requests:,} requests, c={args.concurrency}, flaky 1/{flaky_every}, "
            f"token ttl {args.ttl} s, revoked every {args.revoke_every:g} s; logs in {workdir}"
        )

        async def run() -> None:
            sampler = asyncio.create_task(sample(keyhop.pid, args.sample_every, tally, curve))
            try:
                await load(keyhop.base_url, args.requests, args.concurrency, flaky_every, tally)
            finally:
                sampler.cancel()

        asyncio.run(run())
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(upstream.base_url + "/stats", timeout=10) as answer:
            stats = json.loads(answer.read())
    finally:
        codes = {s.name: s.stop() for s in (keyhop, upstream)}
    logged = scan_log(keyhop.log_path)
    return report(args, tally, curve, elapsed, stats, logged, codes, workdir)


def report(
    args: argparse.Namespace,
    tally: Tally,
    curve: Curve,
    elapsed: float,
    stats: dict[str, int],
    logged: Counter[str],
    codes: dict[str, int | None],
    workdir: Path,
) -> int:
    print(
        f"\n## keyhop soak: {tally.done:,} requests in {elapsed:,.0f} s "
        f"({tally.done / elapsed:,.0f} req/s)\n"
    )
    print("| t (s) | requests | RSS (MiB) | open fds |\n| ---: | ---: | ---: | ---: |")
    step = max(1, len(curve) // 24)
    rows = curve[::step]
    if rows and rows[-1] is not curve[-1]:
        rows.append(curve[-1])
    for t, done, rss, nfd in rows:
        print(f"| {t:,.0f} | {done:,} | {rss / 1024:.1f} | {nfd} |")
    print("\n| outcome | count |\n| --- | ---: |")
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"| {outcome} | {count:,} |")
    print("\nupstream:", ", ".join(f"{k} {v:,}" for k, v in sorted(stats.items())))
    internal = sum(n for o, n in tally.outcomes.items() if "internal_error" in o)
    problems = [f"{n:,} x {p}" for p, n in tally.problems.most_common(10)]
    if internal or logged:
        problems.append(f"keyhop's own failures: {internal} internal_error answers, {dict(logged)}")
    if len(curve) >= 5:
        rss, fd, slope = growth(curve, args.warmup)
        print(
            f"\nAfter the {args.warmup:g} s warm-up: RSS {rss:+.1f} MiB "
            f"(bound {args.max_rss_growth_mib:g}; slope {slope:+.2f} MiB per million "
            f"requests), open fds {fd:+.0f} (bound {args.max_fd_growth})"
        )
        if rss > args.max_rss_growth_mib:
            problems.append(f"RSS grew {rss:.1f} MiB after warm-up")
        if fd > args.max_fd_growth:
            problems.append(f"open fds grew by {fd:.0f} after warm-up")
    else:
        problems.append("too short a run to judge RSS and fds (fewer than 5 samples)")
    if codes.get("keyhop") not in (0, None):
        problems.append(f"keyhop exited {codes['keyhop']}: {tail(workdir / 'keyhop.log', 5)}")
    print("\nProblems:" if problems else "\nNo problems.")
    for problem in problems:
        print(f"- {problem}")
    if args.keep_logs or problems:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
