"""One process to the outside (SPEC 7): `/-/metrics`, `/-/providers` and the console answered
by any worker describe all of them.

Rules:
- Every worker writes a snapshot of its own metric families and credential states (the
  KeyState counters, errors already redacted: never a credential) to `<dir>/<pid>.json`
  every SNAPSHOT_INTERVAL seconds, atomically (write, then rename).
- The worker answering merges its live families with every other snapshot in the dir:
  counters and histograms summed, gauges by MERGE_GAUGES (sum unless named there).
- The supervisor folds a dead worker's counters into RETIRED (kept, so a restart never makes
  a counter go backwards) and removes its snapshot; gauges die with the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import Metric

if TYPE_CHECKING:
    from proxy.runtime import Keyhop

log = logging.getLogger("keyhop")

SNAPSHOT_INTERVAL: Final = 1.0
RETIRED: Final = "retired.json"
#: how a gauge of several workers is one number; every gauge not named here is summed
MERGE_GAUGES: Final[dict[str, Callable[[Iterable[float]], float]]] = {
    "keyhop_credential_expires_in_seconds": max,  # the freshest credential any worker holds
    "keyhop_credential_backoff_seconds": max,
    "keyhop_credential_failures": max,
    "keyhop_store_up": min,  # down for one worker is down
}
_SUMMED: Final = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

# [name, type, documentation, [[sample name, labels, value], ...]]
Family = list[Any]


def families(metrics: Iterable[Metric]) -> list[Family]:
    return [
        [m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
        for m in metrics
    ]


def merge(sources: Iterable[list[Family]]) -> list[Family]:
    """Families of several workers as one process's: first-seen order, rules above."""
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for source in sources:
        for name, kind, doc, samples in source:
            kinds.setdefault(name, (kind, doc))
            bucket = values.setdefault(name, {})
            for sample, labels, value in samples:
                bucket.setdefault((sample, tuple(sorted(labels.items()))), []).append(value)
    out: list[Family] = []
    for name, (kind, doc) in kinds.items():
        combine: Callable[[Iterable[float]], float] = sum
        if kind not in _SUMMED:
            combine = MERGE_GAUGES.get(name, sum)
        samples = [
            [sample, dict(labels), float(combine(vals))]
            for (sample, labels), vals in values[name].items()
        ]
        out.append([name, kind, doc, samples])
    return out


def counters_only(source: list[Family]) -> list[Family]:
    return [f for f in source if f[1] in _SUMMED]


def _metrics(source: list[Family]) -> Iterator[Metric]:
    for name, kind, doc, samples in source:
        metric = Metric(name, doc, kind)
        for sample, labels, value in samples:
            metric.add_sample(sample, labels, value)
        yield metric


def write_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def read_snapshot(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone (a worker just died) or being replaced: skip it this once
    return data if isinstance(data, dict) else None


def retire(directory: Path, pid: int) -> None:
    """The supervisor's part: a dead worker's counters join RETIRED, its snapshot goes."""
    path = directory / f"{pid}.json"
    snapshot = read_snapshot(path)
    if snapshot is not None:
        retired = read_snapshot(directory / RETIRED) or {}
        merged = merge(
            [counters_only(retired.get("families", [])), counters_only(snapshot["families"])]
        )
        write_atomically(directory / RETIRED, {"families": merged})
    path.unlink(missing_ok=True)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Peers:
    """This worker's view of its siblings, through the snapshot directory."""

    def __init__(self, kh: Keyhop, directory: Path) -> None:
        self._kh = kh
        self.directory = directory
        self.path = directory / f"{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    # -- writing ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        kh = self._kh
        states = []
        if kh.credentials is not None:
            for (provider, tenant), s in list(kh.credentials.states.items()):
                states.append(
                    [
                        provider,
                        tenant,
                        {
                            "fetches": s.fetches,
                            "last_fetch_at": s.last_fetch_at,
                            "last_error": kh.runtime.redact(s.last_error) if s.last_error else None,
                            "last_error_at": s.last_error_at,
                            "next_attempt": s.next_attempt,
                        },
                    ]
                )
        return {
            "pid": os.getpid(),
            "families": families(kh.metrics.registry.collect()),
            "states": states,
        }

    def write(self) -> None:
        write_atomically(self.path, self.snapshot())

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    self.write()
                except OSError as exc:  # a full disk must not stop the worker serving
                    log.warning("cannot write the worker snapshot %s: %s", self.path, exc)
                await asyncio.sleep(SNAPSHOT_INTERVAL)

        self._task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.path.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------------

    def others(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.directory.glob("*.json")):
            if path != self.path:
                snapshot = read_snapshot(path)
                if snapshot is not None:
                    out.append(snapshot)
        return out

    def collect(self) -> Iterator[Metric]:
        """What /-/metrics renders: this worker's live families merged with the others'."""
        own = families(self._kh.metrics.registry.collect())
        yield from _metrics(merge([own, *(s.get("families", []) for s in self.others())]))

    def merge_providers(self, view: dict[str, Any], now: float) -> None:
        """Add the other workers' credential states to this worker's /-/providers view:
        fetch counts summed, the latest fetch and error win, the latest next attempt."""
        providers = view["providers"]
        for snapshot in self.others():
            for provider, tenant, s in snapshot.get("states", []):
                entry = providers.get(provider)
                if entry is None:
                    continue  # a provider this worker's config no longer has
                row = next((t for t in entry["tenants"] if t["tenant"] == (tenant or None)), None)
                if row is None:
                    row = {
                        "tenant": tenant or None,
                        "state": "missing",
                        "kind": None,
                        "expires_at": None,
                        "renewable": False,
                        "fetches": 0,
                        "last_fetch_at": None,
                        "last_error": None,
                        "last_error_at": None,
                        "next_attempt_at": None,
                    }
                    entry["tenants"].append(row)
                    entry["tenants"].sort(key=lambda t: t["tenant"] or "")
                row["fetches"] += s["fetches"]
                fetched = _iso(s["last_fetch_at"])
                if fetched is not None and (row["last_fetch_at"] or "") < fetched:
                    row["last_fetch_at"] = fetched
                failed = _iso(s["last_error_at"])
                if s["last_error"] and failed and (row["last_error_at"] or "") < failed:
                    row["last_error"], row["last_error_at"] = s["last_error"], failed
                if s["next_attempt"] > now:
                    later = _iso(s["next_attempt"])
                    if later and (row["next_attempt_at"] or "") < later:
                        row["next_attempt_at"] = later
