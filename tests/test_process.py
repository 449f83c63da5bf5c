"""A real `keyhop serve` process: reload, drain, access log, the command itself (SPEC 2, 4.7)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import StartUpstream
from tests.support import ROOT, KeyhopProcess, assert_no_secrets, free_port, write_config

Start = Callable[..., KeyhopProcess]


def echo_header_app() -> web.Application:
    """Answers with the X-Config-Version header it received."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"version": request.headers.get("X-Config-Version"), "raw": request.raw_path}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def versioned(base: str, ca_file: str, version: str) -> dict[str, Any]:
    return {
        "store": "memory:",
        "providers": {
            "p": {
                "auth": {"type": "static", "token": "tok-R3load-123456"},
                "headers": {"Authorization": "Bearer {token}", "X-Config-Version": version},
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/s", "upstream": base, "provider": "p"}],
    }


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(URL(url, encoded=True)) as resp:
            return resp.status, await resp.json(content_type=None)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def version_is(proc: KeyhopProcess, version: str) -> bool:
    status, body = await get_json(proc.url + "/s/x")
    assert status == 200, body
    return bool(body["version"] == version)


async def test_sighup_with_a_valid_config_changes_what_the_next_request_gets(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(echo_header_app())
    path = write_config(tmp_path / "keyhop.yaml", versioned(base, ca_file, "one"))
    proc = processes(path)
    assert await version_is(proc, "one")

    write_config(path, versioned(base, ca_file, "two"))
    proc.send(signal.SIGHUP)
    await wait_for(lambda: version_is(proc, "two"))
    assert proc.proc is not None and proc.proc.poll() is None


@pytest.mark.parametrize(
    ("broken", "mentions"),
    [
        (lambda data: {**data, "rouets": data.pop("routes")}, "rouets"),
        ("providers: [unclosed\n", "YAML"),
    ],
    ids=["typoed-key", "broken-yaml"],
)
async def test_sighup_with_a_broken_config_keeps_serving_the_old_one_and_logs_it(
    upstream: StartUpstream,
    processes: Start,
    tmp_path: Path,
    ca_file: str,
    broken: Any,
    mentions: str,
) -> None:
    base = await upstream(echo_header_app())
    path = write_config(tmp_path / "keyhop.yaml", versioned(base, ca_file, "one"))
    proc = processes(path)
    assert await version_is(proc, "one")

    if isinstance(broken, str):
        path.write_text(broken)
    else:
        write_config(path, broken(versioned(base, ca_file, "two")))
    proc.send(signal.SIGHUP)

    def failure_lines() -> list[str]:
        return [
            line
            for line in proc.logs().splitlines()
            if re.search(r"reload", line, re.I) and re.search(r"fail|error|invalid", line, re.I)
        ]

    async def reported() -> bool:
        return bool(failure_lines())

    await wait_for(reported)
    assert any(mentions.lower() in line.lower() for line in failure_lines()), proc.logs()
    assert await version_is(proc, "one")
    assert proc.proc is not None and proc.proc.poll() is None


async def test_sigterm_drains_an_in_flight_request_refuses_new_ones_and_exits_0(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    started = asyncio.Event()
    body = b"z" * 200_000

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(2.0)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/slow", slow)
    base = await upstream(app)
    proc = processes(write_config(tmp_path / "keyhop.yaml", versioned(base, ca_file, "one")))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def in_flight() -> tuple[int, bytes]:
            async with session.get(proc.url + "/s/slow") as resp:
                return resp.status, await resp.read()

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(started.wait(), 10)
        proc.send(signal.SIGTERM)

        refused = False
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not refused:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            except ConnectionRefusedError:
                refused = True
            else:
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0.05)
        assert refused, "keyhop still accepted connections after SIGTERM"
        assert not task.done(), "the in-flight request ended before the drain was observed"

        status, got = await asyncio.wait_for(task, 15)
    assert status == 200
    assert got == body
    assert proc.proc is not None
    returncode = await asyncio.to_thread(proc.proc.wait, 15)
    assert proc.stop() == returncode  # closes the captured log
    assert returncode == 0, proc.logs()


# --- the access log ---------------------------------------------------------------------------

SECRETS = {
    "KH_TEST_TOKEN": "tok-Acc3ss-Secret77",
    "KH_TEST_CLIENT_KEY": "ckey-Acc3ss-Secret88",
    "KH_TEST_CLIENT_SECRET": "csec-Acc3ss-Secret99",
}
FILE_SECRET = "file-Acc3ss-Secret66"
QUERY_SECRET = "SECRETCODE123"


async def test_the_access_log_is_one_json_line_a_request_without_query_values_or_secrets(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    base = await upstream(echo_header_app())

    async def echoing_token_endpoint(request: web.Request) -> web.Response:
        # a token endpoint that quotes the credential back in its error: keyhop must not
        form = await request.post()
        return web.json_response(
            {"error": f"invalid_client {form.get('client_secret')}"}, status=401
        )

    token_app = web.Application()
    token_app.router.add_post("/token", echoing_token_endpoint)
    token_base = await upstream(token_app)
    secret_file = tmp_path / "api-secret"
    secret_file.write_text(FILE_SECRET + "\n")
    dead = f"https://127.0.0.1:{free_port()}"
    config = {
        "store": "memory:",
        "clients": {"keys": ["${KH_TEST_CLIENT_KEY}"]},
        "providers": {
            "s": {
                "auth": {"type": "static", "token": "${KH_TEST_TOKEN}"},
                "headers": {
                    "Authorization": "Bearer {token}",
                    "X-Api-Secret": f"${{file:{secret_file}}}",
                },
                "ca_file": ca_file,
            },
            "cc": {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": token_base + "/token",
                    "client_id": "cc-client-id",
                    "client_secret": "${KH_TEST_CLIENT_SECRET}",
                    "client_auth": "body",
                },
                "ca_file": ca_file,
                "timeouts": {"connect": 2, "read": 2},
            },
        },
        "routes": [
            {"prefix": "/s", "upstream": base, "provider": "s"},
            {"prefix": "/dead", "upstream": dead, "provider": "s"},
            {"prefix": "/cc", "upstream": base, "provider": "cc"},
        ],
    }
    proc = processes(write_config(tmp_path / "keyhop.yaml", config), env=SECRETS)
    key = {"X-Keyhop-Key": SECRETS["KH_TEST_CLIENT_KEY"]}
    requests = [
        ("/s/items?code=SECRETCODE123&state=abc", key, 200),
        ("/s/items?code=SECRETCODE123", {}, 401),
        ("/nope?code=SECRETCODE123", key, 404),
        ("/dead/x?code=SECRETCODE123", key, 502),
        ("/cc/x?code=SECRETCODE123", key, 502),
        ("/s/%2e%2e/x?code=SECRETCODE123", key, 400),
        ("/-/providers", key, 200),
    ]
    exposed: list[str] = []  # what a client gets to see when keyhop answers itself
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for target, headers, status in requests:
            async with session.get(URL(proc.url + target, encoded=True), headers=headers) as r:
                text = await r.text()
                assert r.status == status, (target, text)
                if status != 200 or target.startswith("/-/"):
                    exposed += [text, repr(list(r.headers.items()))]
    assert proc.stop() == 0
    log = proc.logs()

    assert QUERY_SECRET not in log
    assert_no_secrets([log], [*SECRETS.values(), FILE_SECRET])
    assert_no_secrets(exposed, [*SECRETS.values(), FILE_SECRET])

    records = []
    for line in log.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"a log line is not one JSON object: {line!r}")
    access = [r for r in records if isinstance(r, dict) and "method" in r and "status" in r]
    for target, _, status in requests:
        path = target.partition("?")[0]
        lines = [r for r in access if r.get("path") == path and r.get("status") == status]
        assert len(lines) == 1, (target, access)
        (record,) = lines
        assert record["method"] == "GET"
        assert "route" in record and "provider" in record
        assert any(
            k.startswith("duration") and isinstance(v, int | float) for k, v in record.items()
        )
    by_status = {(r["path"], r["status"]): r for r in access}
    for path, status, route, provider in [
        ("/s/items", 200, "/s", "s"),
        ("/dead/x", 502, "/dead", "s"),
        ("/cc/x", 502, "/cc", "cc"),
    ]:
        record = by_status[(path, status)]
        assert (record["route"], record["provider"]) == (route, provider), record


# --- the command ------------------------------------------------------------------------------


def test_python_dash_m_proxy_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check", "login", "tokens", "sandbox"):
        assert command in result.stdout


def test_the_keyhop_console_script_is_installed_and_runs() -> None:
    script = Path(sys.executable).parent / "keyhop"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is not installed"
    result = subprocess.run(
        [str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def test_serve_refuses_a_broken_config_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    path = write_config(tmp_path / "keyhop.yaml", {"store": "memory:", "rouets": []})
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--listen",
         f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "rouets" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


async def test_serve_asks_for_the_body_only_once_the_request_is_accepted(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:
    base = await upstream(echo_header_app())
    data = versioned(base, ca_file, "v1")
    data["clients"] = {"keys": ["client-key-123456"]}
    proc = KeyhopProcess(write_config(tmp_path / "k.yaml", data), tmp_path)
    proc.start(wait=False)
    try:
        await wait_for(lambda: _accepting(proc.port))

        async def post(extra: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(
                b"POST /s/up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n" + extra + b"\r\n"
            )
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if first.startswith(b"HTTP/1.1 100"):
                writer.write(b"hello")
                await writer.drain()
                first += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.close()
            return first

        accepted = await post(b"X-Keyhop-Key: client-key-123456\r\n")
        assert accepted.count(b"100 Continue") == 1
        assert b"HTTP/1.1 200" in accepted
        refused = await post(b"")  # no client key: refused before any body is asked for
        assert b"100 Continue" not in refused
        assert refused.startswith(b"HTTP/1.1 401")
        assert b"Connection: close" in refused  # nothing left to linger on
        started = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - started < 5  # no 10 s wait for a body that never comes
    finally:
        proc.stop()


async def _accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"GET /s/caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "not valid HTTP/1.1"),
        (b"GET /s/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", "16 KiB"),
        (b"\x16\x03\x01\x02\x00 not http\r\n\r\n", "not valid HTTP/1.1"),
    ],
    ids=["non-ascii-target", "header-over-16k", "not-http"],
)
async def test_serve_answers_a_request_its_parser_refuses_with_json_bad_request(
    upstream: StartUpstream, ca_file: str, tmp_path: Path, raw: bytes, says: str
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    base = await upstream(app)
    proc = KeyhopProcess(
        write_config(tmp_path / "k.yaml", versioned(base, ca_file, "v1")), tmp_path
    )
    proc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # the connection is closed after it
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400"
        assert b"application/json" in head
        error = json.loads(body)
        assert error["error"] == "bad_request"
        assert says in error["message"]
        assert seen == []  # nothing reached the upstream
        status, _ = await get_json(f"{proc.url}/s/after")  # and keyhop serves on
        assert status == 200
    finally:
        proc.stop()
    logs = proc.logs()
    assert "Traceback" not in logs
    assert "refused a malformed request" in logs


async def test_serve_takes_a_request_line_of_12_kib(
    upstream: StartUpstream, ca_file: str, tmp_path: Path
) -> None:

    async def raw(request: web.Request) -> web.Response:
        return web.json_response({"raw": request.raw_path})

    app = web.Application(handler_args={"max_line_size": 32768})  # the upstream takes it too
    app.router.add_route("GET", "/{tail:.*}", raw)
    base = await upstream(app)
    config = write_config(tmp_path / "k.yaml", versioned(base, ca_file, "v1"))
    proc = KeyhopProcess(config, tmp_path)
    proc.start()
    try:
        query = "q=" + "a" * 12 * 1024
        async with aiohttp.ClientSession() as session:
            async with session.get(URL(f"{proc.url}/s/long?{query}", encoded=True)) as resp:
                text = await resp.text()
                assert resp.status == 200, text
                body = json.loads(text)
        assert body["raw"] == f"/long?{query}"
    finally:
        proc.stop()


async def test_a_drain_that_runs_out_of_time_cuts_the_request_at_drain_timeout(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(10)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    base = await upstream(app)
    data = versioned(base, ca_file, "one")
    data["drain_timeout"] = 1
    proc = processes(write_config(tmp_path / "keyhop.yaml", data))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def in_flight() -> int:
            async with session.get(proc.url + "/s/slow") as resp:
                await resp.read()
                return resp.status

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(started.wait(), 10)
        signalled = time.monotonic()
        proc.send(signal.SIGTERM)
        assert proc.proc is not None
        returncode = await asyncio.to_thread(proc.proc.wait, 15)
        took = time.monotonic() - signalled
        outcome = await asyncio.gather(task, return_exceptions=True)
    assert returncode == 0
    assert 0.9 < took < 2.5, f"exited {took:.1f} s after SIGTERM with drain_timeout 1"
    assert outcome != [200]  # cut, never answered as if whole
    proc.stop()
    logs = proc.logs()
    assert "cutting 1 request(s) still in flight" in logs
    assert '"status":499' in logs


async def test_sighup_to_a_ca_file_tls_refuses_keeps_serving_the_old_config(
    upstream: StartUpstream, processes: Start, tmp_path: Path, ca_file: str
) -> None:
    """The file parses, but building its TLS contexts fails (a ca_file with no certificate):
    the reload is refused whole, logged, and nothing of the running config is dropped."""
    base = await upstream(echo_header_app())
    path = write_config(tmp_path / "keyhop.yaml", versioned(base, ca_file, "one"))
    proc = processes(path)
    assert await version_is(proc, "one")

    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("this is no certificate\n")
    write_config(path, versioned(base, str(not_pem), "two"))
    proc.send(signal.SIGHUP)

    async def reported() -> bool:
        return "reload failed" in proc.logs()

    await wait_for(reported)
    assert await version_is(proc, "one")
    assert "Traceback" not in proc.logs()
    assert proc.proc is not None and proc.proc.poll() is None
