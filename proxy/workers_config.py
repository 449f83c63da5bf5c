"""The `workers` key (SPEC 7): `N` or `auto`, and the store it needs."""

from __future__ import annotations

import os
from typing import Any

from proxy.schema import Problems, describe


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_workers(value: Any) -> int | None:
    """`N` (1 or more) or `auto`; None when it is neither."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def read_workers(raw: Any, override: str | None, store: str, problems: Problems) -> int:
    """The worker count (`--workers` over the config's), each problem reported; 1 if none."""
    where = "--workers" if override is not None else "workers"
    workers = parse_workers(override if override is not None else raw)
    if workers is None:
        shown = override if override is not None else describe(raw)
        problems.add(where, f"expected a whole number >= 1 or 'auto', found {shown}")
        return 1
    if workers > 1 and store == "memory:":
        problems.add(
            where,
            f"{workers} workers with store: memory: would share nothing (each its own tokens, "
            "fetches and rate budget); use store: sqlite://PATH (the default) or redis://",
        )
    return workers
