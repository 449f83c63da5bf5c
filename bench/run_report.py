"""Issue 3's bench (bench/run.py): its targets, and its report (markdown and verdicts).

Split out of run.py, which starts the processes and runs the measurements.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MIB: Final = 1 << 20

CLIENT_ID: Final = "bench-client"
CLIENT_SECRET: Final = "bench-secret"

# (threads, connections) per level; the keys are the c= of the report.
LEVELS: Final = {1: (1, 1), 64: (2, 64)}
TARGETS: Final = ("direct", "baseline", "keyhop-kibo", "keyhop-paynet")

# The targets of issue 3, item 7.
TARGET_RATIO: Final = 1.0  # keyhop req/s at c=64 over baseline's
TARGET_P50_MS: Final = 0.1  # keyhop p50 at c=1 minus baseline's
TARGET_RSS_MIB: Final = 5.0  # "a few MiB" (SPEC 4.1): peak RSS growth while streaming

# Other processes using this many cores make a run on a small machine noisy: each run first
# waits (up to --quiet-wait seconds) for the machine to drop below it.
QUIET_CORES: Final = 0.25


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- keyhop's own log ---------------------------------------------------------------------------


def read_keyhop_log(path: Path) -> dict[str, Any]:
    """What keyhop wrote: access lines by status and credential source, and every line that
    is not an info-level record (warnings, errors, tracebacks), grouped with a count."""
    statuses: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    notable: Counter[str] = Counter()
    lines = 0
    try:
        handle = path.open(errors="replace")
    except OSError:
        return {"missing": str(path)}
    with handle:
        for raw in handle:
            lines += 1
            line = raw.rstrip("\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                levels["not-json"] += 1
                notable[f"(not JSON) {line[:200]}"] += 1
                continue
            if "status" in record and "level" not in record:
                statuses[str(record["status"])] += 1
                sources[str(record.get("credential"))] += 1
                continue
            level = str(record.get("level", "?"))
            levels[level] += 1
            if level not in ("info", "debug"):
                exc = f" ({record['exc']})" if record.get("exc") else ""
                notable[f"{level} {record.get('logger')}: {record.get('msg')}{exc}"[:400]] += 1
    return {
        "lines": lines,
        "access_by_status": dict(statuses),
        "access_by_credential": dict(sources),
        "other_lines_by_level": dict(levels),
        "notable": [f"{count} x {text}" for text, count in notable.most_common(15)],
    }


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    text: str
    met: bool | None  # None: not measured


def _mark(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def verdicts(report: dict[str, Any]) -> list[Verdict]:
    rows = report["throughput"]
    base = rows.get("baseline", {})
    out: list[Verdict] = []
    for target in ("keyhop-kibo", "keyhop-paynet"):
        mine = rows.get(target, {})
        if "64" in mine and "64" in base:
            ratio = mine["64"]["rps"] / base["64"]["rps"]
            out.append(
                Verdict(
                    f"{target} / baseline req/s at c=64: {ratio:.2f}x "
                    f"(target >= {TARGET_RATIO:.1f}x: {_mark(ratio >= TARGET_RATIO)})",
                    ratio >= TARGET_RATIO,
                )
            )
        if "1" in mine and "1" in base:
            diff = mine["1"]["p50_ms"] - base["1"]["p50_ms"]
            out.append(
                Verdict(
                    f"{target} - baseline p50 at c=1: {diff:+.3f} ms "
                    f"(target <= {TARGET_P50_MS} ms: {_mark(diff <= TARGET_P50_MS)})",
                    diff <= TARGET_P50_MS,
                )
            )
    keyhop = report["streaming"].get("keyhop", {})
    for direction in ("download", "upload"):
        leg = keyhop.get(direction)
        if leg:
            met = leg["rss_growth_mib"] <= TARGET_RSS_MIB
            out.append(
                Verdict(
                    f"keyhop RSS while streaming {direction}: {leg['rss_before_mib']} MiB before, "
                    f"{leg['rss_peak_mib']} MiB peak, growth {leg['rss_growth_mib']:+.1f} MiB "
                    f"(target <= {TARGET_RSS_MIB:g} MiB: {_mark(met)})",
                    met,
                )
            )
    burst = report.get("burst")
    if burst:
        met = burst["token_requests"] == 1 and burst["ok"] == burst["requests"]
        out.append(
            Verdict(
                f"cold-cache burst: {burst['ok']} of {burst['requests']} answered 200, "
                f"{burst['token_requests']} token request(s) (target 1: {_mark(met)})",
                met,
            )
        )
    return out


def render(report: dict[str, Any]) -> str:
    params, machine = report["params"], report["machine"]
    lines = [
        f"## keyhop benchmark, {report['started']}",
        "",
        f"{machine['cpus']} cores ({machine['cpu_model']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}, {machine['wrk']}; keyhop {machine['keyhop_commit']}. "
        f"wrk runs of {params['duration_s']:g} s after {params['warmup_s']:g} s of warm-up, "
        "one at a time; c=1 is `-t1 -c1`, c=64 is `-t2 -c64`; latency in ms"
        + (
            f"; each cell the median of {params['rounds']} rounds by req/s."
            if params["rounds"] > 1
            else "."
        ),
        "",
        "| target | req/s c=1 | p50 c=1 | p99 c=1 | req/s c=64 | p50 c=64 | p99 c=64 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in TARGETS:
        row = report["throughput"].get(target, {})
        cells = [target]
        for level in ("1", "64"):
            r = row.get(level)
            if r is None:
                cells += ["-", "-", "-"]
            else:
                cells += [f"{r['rps']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    rows = report["throughput"]
    proxies = [rows[t]["64"]["rps"] for t in TARGETS[1:] if "64" in rows.get(t, {})]
    if proxies and "64" in rows.get("direct", {}):
        headroom = rows["direct"]["64"]["rps"] / max(proxies)
        lines.append(
            f"- upstream headroom: direct is {headroom:.1f}x the fastest proxy at c=64"
            + ("" if headroom >= 2 else " (LOW: the upstream may be limiting the proxies)")
        )
    runs = [
        (t, level, r)
        for t, row in rows.items()
        for level, r in row.items()
        if "other_cpu_cores" in r
    ]
    if runs:
        t, level, worst = max(runs, key=lambda x: x[2]["other_cpu_cores"])
        other = worst["other_cpu_cores"]
        waited = sum(r.get("waited_for_quiet_s", 0.0) for _, _, r in runs)
        lines.append(
            f"- outside load: other processes used up to {other:.2f} of "
            f"{machine['cpus']} cores during a measured run ({t} c={level}); "
            f"{waited:.0f} s spent waiting for quiet before the reported runs"
            + (
                " (NOISY: compare with care"
                + (", or rerun with --rounds 3)" if params["rounds"] == 1 else ")")
                if other >= QUIET_CORES
                else ""
            )
        )
    for verdict in verdicts(report):
        lines.append(f"- {verdict.text}")
    lines += [
        "",
        f"Streaming {params['stream_bytes'] / MIB:,.0f} MiB (MB/s = 10^6 bytes/s; RSS of the "
        "process serving the target, sampled every 50 ms):",
        "",
        "| target | download MB/s | RSS before / peak / growth | upload MB/s "
        "| RSS before / peak / growth |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for target, legs in report["streaming"].items():
        cells = [target]
        for direction in ("download", "upload"):
            leg = legs.get(direction)
            if leg is None:
                cells += ["-", "-"]
            else:
                cells += [
                    f"{leg['mb_per_s']:,.0f}",
                    f"{leg['rss_before_mib']} / {leg['rss_peak_mib']} / "
                    f"{leg['rss_growth_mib']:+.1f} MiB",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    burst = report.get("burst")
    if burst:
        lines += [
            "",
            f"Cold-cache burst: a fresh keyhop, {burst['requests']} connections opened, then one "
            f"GET /kibo/small written on each within {burst['send_ms']} ms; all answered in "
            f"{burst['total_ms']} ms; statuses {burst['statuses']}; token requests seen by the "
            f"upstream: **{burst['token_requests']}** (expected 1).",
        ]
    if report["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in report["problems"]]
    for name, summary in report.get("keyhop_logs", {}).items():
        if "lines" not in summary:
            continue
        lines += [
            "",
            f"{name} log: {summary['lines']} lines; access lines by status "
            f"{summary['access_by_status']}, by credential source "
            f"{summary['access_by_credential']}; other lines by level "
            f"{summary['other_lines_by_level']}",
        ]
        lines += [f"    {n}" for n in summary["notable"]]
    return "\n".join(lines)
