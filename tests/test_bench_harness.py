"""The peer bench's own parts: what it counts must be right for its figures to mean anything
(bench/counted.py, bench/stacks.py, bench/scenario.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))  # appended: bench/profile.py must not shadow the stdlib module

from counted import run_counted, tree_cpu_seconds  # noqa: E402
from procs import Service, free_port  # noqa: E402
from scenario import (  # noqa: E402
    SIGN_X_SIGNATURE,
    KeyhopSpec,
    Route,
    keyhop_check,
    keyhop_config,
)
from stacks import read_raw  # noqa: E402


@pytest.fixture
def bench_upstream(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
    service = Service("upstream", argv, port, tmp_path / "upstream.log")
    service.start()
    try:
        service.wait_tcp()
        yield service
    finally:
        service.stop()


def test_generated_config_passes_keyhop_check(tmp_path: Path) -> None:
    spec = KeyhopSpec((Route("paynet", sign=SIGN_X_SIGNATURE), Route("bearer")))
    config = tmp_path / "keyhop.yaml"
    config.write_text(keyhop_config(spec, "http://127.0.0.1:9"))
    assert keyhop_check(config) is None


def test_workers_written_only_when_not_one() -> None:
    def parsed(workers: int) -> dict[str, object]:
        text = keyhop_config(KeyhopSpec((Route("r"),), workers), "http://127.0.0.1:9")
        body = text.split("\n", 1)[1]  # after the comment line: JSON
        loaded: dict[str, object] = json.loads(body)
        return loaded

    assert "workers" not in parsed(1)
    assert parsed(2)["workers"] == 2


def test_keyhop_check_reason_names_the_rejected_key(tmp_path: Path) -> None:
    config = tmp_path / "keyhop.yaml"
    spec = KeyhopSpec((Route("r", sign={"type": "no_such_signer"}),))
    config.write_text(keyhop_config(spec, "http://127.0.0.1:9"))
    why = keyhop_check(config)
    assert why is not None and why.startswith("keyhop check exit 2")
    assert "providers.r.sign.type" in why


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_counted_run_stops_at_the_request_count(bench_upstream: Service) -> None:
    wrk = shutil.which("wrk")
    assert wrk is not None
    got = run_counted(
        wrk, bench_upstream.base_url + "/small", bench_upstream.pid, connections=4, per_thread=300
    )
    assert got.requests == 600
    assert got.errors == 0
    assert 0 < got.seconds < 30
    assert got.cpu_s > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_counted_post_sends_the_body(bench_upstream: Service) -> None:
    wrk = shutil.which("wrk")
    assert wrk is not None
    body = b"x" * 4096
    got = run_counted(
        wrk,
        bench_upstream.base_url + "/sink",
        bench_upstream.pid,
        connections=2,
        per_thread=50,
        method="POST",
        body=body,
    )
    with urllib.request.urlopen(bench_upstream.base_url + "/stats", timeout=10) as answer:
        stats = json.loads(answer.read())
    assert got.requests == 100
    # every counted answer was to a 4 KiB upload; a few more may have been in flight
    assert stats["sink_bytes"] >= 100 * 4096
    assert stats["sink_bytes"] % 4096 == 0


def test_tree_cpu_counts_a_child_process(tmp_path: Path) -> None:
    """A supervisor's workers are children: their CPU is the tree's."""
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass\n"
    parent = textwrap.dedent(
        f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", {burn!r}])
        child.wait()
        import time; time.sleep(5)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        time.sleep(0.3)  # the child is burning
        before = tree_cpu_seconds(proc.pid)
        time.sleep(1.0)  # it burned its 0.5 s and was reaped into the parent's cutime
        after = tree_cpu_seconds(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert after - before >= 0.15


def test_read_raw_leaves_out_idle_and_syscall_samples(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    main = "main (app.py:1);run (loop.c:10)"
    raw.write_text(
        f"{main};epoll_pwait (libc.so.6) 40\n"
        f"{main};handle (app.py:5);write (libc.so.6) 30\n"
        f"{main};handle (app.py:5);parse (app.py:9);helper (ext.c:3) 20\n"
        f"{main};handle (app.py:5) 10\n"
    )
    got = read_raw(raw)
    assert (got.busy, got.idle, got.in_syscall, got.python) == (60, 40, 30, 30)
    assert got.own == {"parse (app.py:9)": 20, "handle (app.py:5)": 10}
    assert got.cumulative["handle (app.py:5)"] == 30
    assert got.cumulative["main (app.py:1)"] == 30
    assert got.leaf == {"write (libc.so.6)": 30, "helper (ext.c:3)": 20}
