"""The peer run's markdown report and the ratios the targets of issues 16 and 13 name."""

from __future__ import annotations

from typing import Any, Final

# Issue 16's targets and issue 13's "no more CPU than today's hard-wired signature (±5 %)".
TARGET_W2_OVER_W1: Final = 1.8  # keyhop workers: 2 / workers: 1 req/s, unpinned
TARGET_OVER_ENVOY: Final = 1.0  # keyhop CPU µs per request / Envoy+Lua's
TARGET_OVER_BASELINE: Final = 0.6  # keyhop CPU µs per request / the naive baseline's
TARGET_RECIPE: Final = 1.05  # hmac recipe CPU / x_signature CPU


def _mark(ratio: float, limit: float, at_least: bool) -> str:
    met = ratio >= limit if at_least else ratio <= limit
    return f"target {'>=' if at_least else '<='} {limit:g}x: {'met' if met else 'MISSED'}"


def _ratio(cells: dict[str, Any], a: str, b: str, key: str) -> float | None:
    if a in cells and b in cells and cells[b][key]:
        return float(cells[a][key]) / float(cells[b][key])
    return None


def ratios(report: dict[str, Any]) -> list[str]:
    """Each ratio the issues name, in the layout they name it for; the other layout's value
    beside it for reading, not judged."""
    out: list[str] = []
    layouts: dict[str, Any] = report["layouts"]
    pinned = next((n for n in layouts if n.startswith("pinned")), None)
    unpinned = next((n for n in layouts if n.startswith("unpinned")), None)

    def line(layout: str | None, a: str, b: str, key: str, limit: float, at_least: bool) -> None:
        if layout is None:
            return
        what = "req/s" if key == "rps" else "CPU µs/request"
        value = _ratio(layouts[layout]["cells"], a, b, key)
        if value is None:
            skipped = layouts[layout]["skipped"]
            why = "; ".join(f"{t}: {skipped[t]}" for t in (a, b) if t in skipped) or "no figure"
            out.append(f"{a} / {b} {what} ({layout}): not measured ({why})")
            return
        out.append(f"{a} / {b} {what} ({layout}): {value:.2f}x ({_mark(value, limit, at_least)})")

    line(unpinned, "keyhop-w2", "keyhop-w1", "rps", TARGET_W2_OVER_W1, True)
    line(pinned, "keyhop-w1", "envoy-lua-c1", "cpu_us", TARGET_OVER_ENVOY, False)
    line(pinned, "keyhop-w1", "baseline", "cpu_us", TARGET_OVER_BASELINE, False)
    for name in (unpinned, pinned):
        if name is None:
            continue
        cells = layouts[name]["cells"]
        for a, b, key in (
            ("keyhop-w2", "keyhop-w1", "rps"),
            ("keyhop-w2", "keyhop-w1", "cpu_us"),
            ("envoy-lua-c2", "keyhop-w2", "rps"),
            ("envoy-lua-c2", "keyhop-w1", "rps"),
            ("keyhop-w1", "envoy-lua-c1", "cpu_us"),
            ("keyhop-w1", "baseline", "cpu_us"),
            ("keyhop-w1", "keyhop-w1-pipeline", "cpu_us"),
            ("keyhop-w1-pipeline", "baseline", "cpu_us"),
        ):
            value = _ratio(cells, a, b, key)
            if value is not None:
                what = "req/s" if key == "rps" else "CPU µs/request"
                out.append(f"({name}, for reading) {a} / {b} {what}: {value:.2f}x")
    signing = report.get("signing") or {}
    cells = signing.get("cells", {})
    value = _ratio(cells, "hmac {timestamp} GET", "x_signature GET", "cpu_us")
    if value is not None:
        out.append(
            f"hmac recipe / x_signature CPU µs/request: {value:.2f}x "
            f"({_mark(value, TARGET_RECIPE, False)})"
        )
    elif cells:
        why = signing.get("skipped", {}).get("hmac {timestamp} GET", "no figure")
        out.append(f"hmac recipe / x_signature CPU µs/request: not measured ({why})")
    return out


def ceiling(report: dict[str, Any]) -> list[str]:
    """What the rig itself allows: wrk and the upstream share the machine with the proxy.

    With keyhop at k µs of CPU a request and the rig (upstream + wrk) at o, one worker serves
    at most 1/k req/s and the machine at most cores/(k + o) whatever the workers, so
    w2 / w1 <= cores·k / (k + o) once k >= o: on 2 cores, 1.8x needs k >= 9·o. The cheaper a
    request through keyhop, the lower the ratio this rig can show."""
    out: list[str] = []
    cores = int(report["machine"].get("cpus") or 1)
    for name, section in report["layouts"].items():
        if not name.startswith("unpinned"):
            continue
        w1 = section["cells"].get("keyhop-w1")
        if not w1 or "wrk_cpu_us" not in w1:
            continue
        rig_us = w1["upstream_cpu_us"] + w1["wrk_cpu_us"]
        k = w1["cpu_us"]
        top = cores / ((k + rig_us) * 1e-6)
        bound = min(float(cores), cores * k / (k + rig_us)) if k >= rig_us else 1.0
        need = rig_us * TARGET_W2_OVER_W1 / (cores - TARGET_W2_OVER_W1)
        out.append(
            f"rig ceiling ({name}): per keyhop request the upstream spends "
            f"{w1['upstream_cpu_us']:.0f} µs and wrk {w1['wrk_cpu_us']:.0f} µs, so {cores} "
            f"cores serve at most {top:,.0f} req/s of keyhop at {k:.0f} µs: w2 / w1 <= "
            f"{bound:.2f}x on this rig; {TARGET_W2_OVER_W1:g}x needs keyhop to cost >= "
            f"{need:.0f} µs/request, so it cannot be shown together with the CPU targets "
            "(it needs the load generator and upstream on another machine)"
        )
    return out


def _table(cells: dict[str, Any]) -> list[str]:
    lines = [
        "| target | req/s | CPU µs/request (median, range) | upstream µs | wrk µs | p50 ms "
        "| p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, cell in cells.items():
        runs = cell["runs"]
        median_run = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
        low, high = cell["cpu_us_range"]
        lines.append(
            f"| {name} | {cell['rps']:,.0f} | {cell['cpu_us']:.0f} ({low:.0f}-{high:.0f}) "
            f"| {cell.get('upstream_cpu_us', 0):.0f} | {cell.get('wrk_cpu_us', 0):.0f} "
            f"| {median_run['p50_ms']:.2f} | {median_run['p99_ms']:.2f} |"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    machine, params = report["machine"], report["params"]
    lines = [
        f"## keyhop peers, {report['started']}",
        "",
        f"{machine['cpus']} cores ({machine['cpu_model']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}, {machine['wrk']}; keyhop {machine['keyhop_commit']}. "
        f"wrk {params['wrk']}, {2 * params['requests_per_thread']:,} requests per run after "
        f"{2 * params['warmup_per_thread']:,} of warm-up; each cell the median of "
        f"{params['rounds']} round(s). CPU = utime+stime of the target's process tree "
        f"(/proc) over the measured requests. keyhop route: sign `{params['keyhop_sign']}`, "
        f"SQLite store, access log on; Envoy signature cache: {params['envoy_cache']}.",
    ]
    for name, section in report["layouts"].items():
        lines += ["", f"### {name}", ""] + _table(section["cells"])
        for target, why in section["skipped"].items():
            lines.append(f"- {target} skipped: {why}")
    signing = report.get("signing")
    if signing:
        lines += ["", f"### signing variants (keyhop workers: 1, {signing['layout']})", ""]
        lines += _table(signing["cells"])
        bearer = signing["cells"].get("bearer GET")
        if bearer:
            for name, cell in signing["cells"].items():
                if name != "bearer GET":
                    extra = cell["cpu_us"] - bearer["cpu_us"]
                    lines.append(f"- {name}: {extra:+.0f} µs/request over bearer GET")
        for target, why in signing["skipped"].items():
            lines.append(f"- {target} skipped: {why}")
    lines += ["", "### ratios", ""] + [f"- {r}" for r in ratios(report) + ceiling(report)]
    others = [
        run.get("other_cpu_cores", 0.0)
        for section in [*report["layouts"].values(), signing or {"cells": {}}]
        for cell in section["cells"].values()
        for run in cell["runs"]
    ]
    if others:
        worst = max(others)
        lines.append(
            f"- outside load: other processes used up to {worst:.2f} cores during a measured run"
            f" (median {sorted(others)[len(others) // 2]:.2f})"
            + (" NOISY: CPU µs per request holds up better than req/s" if worst >= 0.25 else "")
        )
    if report["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in report["problems"]]
    lines.append(f"\n(peer run took {report.get('seconds', 0):.0f} s)")
    return "\n".join(lines)
