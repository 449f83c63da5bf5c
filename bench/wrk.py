"""Running wrk and reading its report (req/s, latency percentiles, errors)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Final

_UNIT_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION: Final = r"([\d.]+)(us|ms|s|m)\b"


@dataclass(frozen=True)
class WrkResult:
    url: str
    threads: int
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    non_2xx_3xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"errors": self.errors}


def ensure_wrk() -> str:
    """The path of wrk, installing the Debian package when it is missing (the bench runs as
    root in its container; elsewhere install it yourself)."""
    found = shutil.which("wrk")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True, timeout=300).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        subprocess.run(install, capture_output=True, timeout=300, check=False)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and `apt-get install -y wrk` failed")
    return found


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0].strip() if text else ""


def run_wrk(wrk: str, url: str, threads: int, connections: int, duration: float) -> WrkResult:
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return parse_wrk(out.stdout, url, threads, connections, duration)


def _ms(text: str) -> float:
    match = re.fullmatch(_DURATION, text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(
    report: str, url: str = "", threads: int = 0, connections: int = 0, duration: float = 0.0
) -> WrkResult:
    percentiles: dict[str, float] = {}
    for pct, value in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", report, re.MULTILINE):
        percentiles[pct] = _ms(value)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", report, re.MULTILINE)
    if not rps or not total or len(percentiles) != 4:
        raise ValueError(f"unexpected wrk output:\n{report}")
    socket_errors: dict[str, int] = {}
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    if errs:
        for name, count in zip(("connect", "read", "write", "timeout"), errs.groups(), strict=True):
            socket_errors[name] = int(count)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return WrkResult(
        url=url,
        threads=threads,
        connections=connections,
        duration_s=_ms(total.group(2)) / 1000.0,
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )
