"""The supervisor of `workers:` (SPEC 7) with real processes and real signals: a worker
killed under load is replaced while the others keep serving, SIGHUP reloads every worker or
none, SIGTERM drains them all, workers that cannot start make it exit non-zero, and the
config rules of `workers`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.logs import PIPE_BUF, chunks
from proxy.peers import RETIRED, merge, retire, write_atomically
from tests.conftest import StartUpstream
from tests.support import ROOT, KeyhopProcess, free_port, wait_healthy, write_config
from tests.test_process import echo_header_app, versioned


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[KeyhopProcess] = []

    async def start(config: dict[str, Any], workers: int = 2) -> KeyhopProcess:
        config = {**config, "store": f"sqlite://{tmp_path / 'tokens.db'}", "workers": workers}
        proc = KeyhopProcess(write_config(tmp_path / "keyhop.yaml", config), tmp_path)
        started.append(proc)
        proc.start(wait=False)
        await wait_healthy(proc.url, timeout=20)
        await wait_for(lambda: len(ready_pids(proc)) >= workers)
        return proc

    yield start
    for proc in started:
        leftover = worker_pids(proc) if proc.proc and proc.proc.poll() is None else []
        proc.stop()
        for pid in leftover:  # never leave a worker behind, even if a test broke the tree
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def worker_pids(proc: KeyhopProcess) -> list[int]:
    assert proc.proc is not None
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proc.proc.pid)], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def ready_pids(proc: KeyhopProcess) -> list[int]:
    return [int(m) for m in re.findall(r"worker \d+ \(pid (\d+)\) ready", proc.logs())]


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def versions(url: str, n: int = 20) -> set[str]:
    """The X-Config-Version the upstream saw, over n requests on fresh connections."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> str:
            async with s.get(url + "/s/x") as r:
                assert r.status == 200
                return str((await r.json())["version"])

        return set(await asyncio.gather(*(one() for _ in range(n))))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


# -- a worker dies -------------------------------------------------------------------------------


async def test_kill_9_of_a_worker_under_load_fails_nothing_sent_to_the_others_and_it_is_replaced(
    upstream: StartUpstream, supervisor: Any, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    victim, survivor = worker_pids(proc)
    killed_at: list[float] = []
    results: list[tuple[float, bool]] = []  # (started, ok) per request
    stop = time.monotonic() + 5.0
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:

        async def client() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    async with s.get(proc.url + "/s/x") as r:
                        await r.read()
                        results.append((started, r.status == 200))
                except aiohttp.ClientError:
                    results.append((started, False))

        async def killer() -> None:
            await asyncio.sleep(1.0)
            killed_at.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)

        await asyncio.gather(*(client() for _ in range(8)), killer())
    failed = [started for started, ok in results if not ok]
    # only requests already in flight on the killed worker may fail (at most one a client)
    assert len(failed) <= 8, f"{len(failed)} of {len(results)} failed"
    assert all(started < killed_at[0] for started in failed), "a request sent after the kill failed"
    assert sum(ok for _, ok in results) > 100
    await wait_for(lambda: len(worker_pids(proc)) == 2 and victim not in worker_pids(proc))
    assert survivor in worker_pids(proc)
    assert f"pid {victim}) died (killed by SIGKILL)" in proc.logs()
    replacement = next(p for p in worker_pids(proc) if p != survivor)
    await wait_for(lambda: replacement in ready_pids(proc))
    await asyncio.sleep(0.3)
    assert await versions(proc.url, 40) == {"one"}
    served = {
        json.loads(line)["pid"] for line in proc.logs().splitlines() if '"path":"/s/x"' in line
    }
    assert replacement in served  # the new worker serves its share


async def test_workers_stop_when_the_supervisor_is_killed(
    upstream: StartUpstream, supervisor: Any, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    pids = worker_pids(proc)
    proc.send(signal.SIGKILL)
    await wait_for(lambda: not any(pid_alive(p) for p in pids))


# -- signals -------------------------------------------------------------------------------------


async def test_sighup_with_a_valid_file_reloads_every_worker(
    upstream: StartUpstream, supervisor: Any, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    assert await versions(proc.url) == {"one"}
    config = {**versioned(base, ca_file, "two"), "store": f"sqlite://{tmp_path / 'tokens.db'}"}
    write_config(proc.config, {**config, "workers": 2})
    proc.send(signal.SIGHUP)
    await wait_for(lambda: proc.logs().count('"msg":"reloaded ') == 2)
    assert await versions(proc.url, 40) == {"two"}


async def test_sighup_with_a_bad_file_keeps_every_worker_on_the_old_config(
    upstream: StartUpstream, supervisor: Any, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    good = proc.config.read_text()
    # valid YAML, a typo'd key: a worker alone would also refuse it; here none even tries
    proc.config.write_text(good.replace("routes:", "rouets:"))
    proc.send(signal.SIGHUP)
    await wait_for(lambda: "reload failed" in proc.logs())
    assert "rouets" in proc.logs()
    assert '"msg":"reloaded ' not in proc.logs()
    assert await versions(proc.url, 40) == {"one"}
    assert len(worker_pids(proc)) == 2


async def test_a_replacement_worker_runs_the_config_the_others_run_whatever_the_file_says(
    upstream: StartUpstream, supervisor: Any, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    good = proc.config.read_text()

    async def replace_a_worker() -> None:
        victim = worker_pids(proc)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(worker_pids(proc)) == 2 and victim not in worker_pids(proc))
        await wait_for(lambda: len(ready_pids(proc)) >= 3 + replaced)

    replaced = 0
    proc.config.write_text(good.replace("routes:", "rouets:"))  # broken, no SIGHUP
    await replace_a_worker()
    replaced += 1
    assert await versions(proc.url, 40) == {"one"}
    proc.config.write_text(good.replace("one", "two"))  # valid, edited, no SIGHUP yet
    await replace_a_worker()
    assert await versions(proc.url, 40) == {"one"}  # every worker: the checked config
    proc.send(signal.SIGHUP)
    await wait_for(lambda: proc.logs().count('"msg":"reloaded ') == 2)
    assert await versions(proc.url, 40) == {"two"}
    assert "rouets" not in proc.logs()  # nobody tried the broken file


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    upstream: StartUpstream, supervisor: Any, ca_file: str
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(2.0)
        return web.Response(body=b"done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    base = await upstream(app)
    proc = await supervisor(versioned(base, ca_file, "one"))
    pids = worker_pids(proc)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:

        async def in_flight() -> tuple[int, bytes]:
            async with s.get(proc.url + "/s/slow") as r:
                return r.status, await r.read()

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(started.wait(), 10)
        proc.send(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
        assert not task.done()
        assert await asyncio.wait_for(task, 15) == (200, b"done")
    assert proc.proc is not None
    assert await asyncio.to_thread(proc.proc.wait, 15) == 0, proc.logs()
    assert not any(pid_alive(p) for p in pids)


# -- cannot start --------------------------------------------------------------------------------


def serve(config: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{port}", *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)


def static_config(tmp_path: Path, store: str, workers: Any = 2) -> Path:
    return write_config(
        tmp_path / "k.yaml",
        {
            "store": store,
            "workers": workers,
            "providers": {"p": {"auth": {"type": "static"}}},
            "routes": [{"prefix": "/s", "upstream": "https://127.0.0.1:9", "provider": "p"}],
        },
    )


async def test_a_port_already_taken_makes_the_supervisor_exit_1_at_once(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = time.monotonic()
        done = await asyncio.to_thread(
            serve, static_config(tmp_path, f"sqlite://{tmp_path / 't.db'}"), port
        )
    assert done.returncode == 1
    assert time.monotonic() - started < 5
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr


async def test_a_second_supervisor_on_the_same_port_is_refused(
    upstream: StartUpstream, supervisor: Any, tmp_path: Path, ca_file: str
) -> None:
    """SO_REUSEPORT would let a second keyhop of the same user share the port silently."""
    base = await upstream(echo_header_app())
    proc = await supervisor(versioned(base, ca_file, "one"))
    other = tmp_path / "other"
    other.mkdir()
    done = await asyncio.to_thread(
        serve, static_config(other, f"sqlite://{other / 't.db'}"), proc.port
    )
    assert done.returncode == 1
    assert "Address already in use" in done.stderr


async def test_a_store_that_cannot_be_opened_makes_the_supervisor_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the store's directory should be
    started = time.monotonic()
    done = await asyncio.to_thread(
        serve, static_config(tmp_path, f"sqlite://{blocker}/sub/t.db"), free_port()
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    assert "cannot open the token store" in done.stderr and "Not a directory" in done.stderr


async def test_a_worker_that_dies_before_it_is_ready_stops_the_others_and_exits_1(
    tmp_path: Path,
) -> None:
    config = static_config(tmp_path, f"sqlite://{tmp_path / 't.db'}")
    log = open(tmp_path / "supervisor.log", "wb")
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{free_port()}"]
    sup = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        children: list[int] = []
        deadline = time.monotonic() + 10
        while not children and time.monotonic() < deadline:
            out = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(sup.pid)], capture_output=True, text=True
            )
            children = [int(p) for p in out.stdout.split()]
            time.sleep(0.005)
        assert children, "no worker was started"
        os.kill(children[0], signal.SIGKILL)  # long before its imports are done
        code = await asyncio.to_thread(sup.wait, 20)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        log.close()
    text = (tmp_path / "supervisor.log").read_text()
    assert code == 1, text
    assert re.search(r"worker \d could not start \(killed by SIGKILL\)", text), text
    await wait_for(lambda: not any(pid_alive(p) for p in children))


# -- config --------------------------------------------------------------------------------------


def parse(workers: Any, store: str = "sqlite:///tmp/k.db", override: str | None = None) -> Any:
    data = {
        "store": store,
        "workers": workers,
        "providers": {"p": {"auth": {"type": "static"}}},
        "routes": [{"prefix": "/s", "upstream": "https://example.com", "provider": "p"}],
    }
    return parse_config(data, "k.yaml", workers_override=override)


def test_workers_auto_is_the_cores_this_process_may_use() -> None:
    assert parse("auto").workers == len(os.sched_getaffinity(0))
    assert parse(3).workers == 3
    assert parse(3, override="1").workers == 1


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True], ids=str)
def test_workers_that_is_not_a_count_or_auto_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse(bad)
    assert any(p.startswith("k.yaml: workers: expected") for p in err.value.problems)


def test_memory_store_with_more_than_one_worker_is_an_error_naming_both_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse(2, store="memory:")
    (problem,) = err.value.problems
    assert problem.startswith("k.yaml: workers:") and "store: memory:" in problem
    assert parse(1, store="memory:").workers == 1


async def test_serve_workers_2_with_a_memory_store_exits_2_naming_both(tmp_path: Path) -> None:
    done = await asyncio.to_thread(
        serve, static_config(tmp_path, "memory:", workers=1), free_port(), "--workers", "2"
    )
    assert done.returncode == 2
    assert "--workers:" in done.stderr and "store: memory:" in done.stderr


# -- the pieces ----------------------------------------------------------------------------------


def test_access_lines_are_written_in_whole_line_blocks_of_at_most_pipe_buf() -> None:
    lines = [f'{{"n":{i},"pad":"{"y" * (i % 700)}"}}' for i in range(500)] + ["z" * 5000]
    blocks = [bytes(block) for block in chunks(("\n".join(lines) + "\n").encode())]
    assert b"".join(blocks) == ("\n".join(lines) + "\n").encode()
    for block in blocks[:-1]:
        assert len(block) <= PIPE_BUF and block.endswith(b"\n")
    assert blocks[-1] == b"z" * 5000 + b"\n"  # a longer line goes alone, still whole


def test_merged_metrics_sum_counters_and_take_the_worst_store_health() -> None:
    a = [
        ["keyhop_requests", "counter", "", [["keyhop_requests_total", {"status": "200"}, 3.0]]],
        ["keyhop_store_up", "gauge", "", [["keyhop_store_up", {}, 1.0]]],
    ]
    b = [
        ["keyhop_requests", "counter", "", [["keyhop_requests_total", {"status": "200"}, 4.0]]],
        ["keyhop_store_up", "gauge", "", [["keyhop_store_up", {}, 0.0]]],
    ]
    merged = {name: samples for name, _, _, samples in merge([a, b])}
    assert merged["keyhop_requests"] == [["keyhop_requests_total", {"status": "200"}, 7.0]]
    assert merged["keyhop_store_up"] == [["keyhop_store_up", {}, 0.0]]


def test_a_dead_workers_counters_are_kept_and_its_gauges_dropped(tmp_path: Path) -> None:
    def snapshot(requests: float) -> dict[str, Any]:
        return {
            "families": [
                ["keyhop_requests", "counter", "", [["keyhop_requests_total", {}, requests]]],
                ["keyhop_in_flight_requests", "gauge", "", [["keyhop_in_flight_requests", {}, 5]]],
            ]
        }

    write_atomically(tmp_path / "101.json", snapshot(3))
    write_atomically(tmp_path / "102.json", snapshot(4))
    retire(tmp_path, 101)
    retire(tmp_path, 102)
    assert not (tmp_path / "101.json").exists() and not (tmp_path / "102.json").exists()
    retired = json.loads((tmp_path / RETIRED).read_text())["families"]
    assert retired == [["keyhop_requests", "counter", "", [["keyhop_requests_total", {}, 7.0]]]]
