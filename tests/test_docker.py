"""The Docker image built and run (SPEC 4.7, issue 15 item 5), marker `docker`.

The image is built with podman against the local Debian base (docker/base.sh) and run as a
sidecar would: non-root, config mounted read-only, a named state volume, the host's network
with keyhop on a free 127.0.0.1 port, and `keyhop sandbox` on the host as the providers.
`make docker-test` installs podman and runs these; `make test` deselects them.
tests/test_dockerfile.py reads the Dockerfile as text.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.container import IMAGE, Sidecar, build_image, http_get, image_config
from tests.support import ROOT, free_port, write_config

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def image() -> str:
    """The repo's Dockerfile built on the local Debian base (layers cached by podman)."""
    return build_image(IMAGE)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    """`keyhop sandbox` on the host, from the repo's venv, on a free loopback port."""
    port = free_port()
    log = open(tmp_path / "sandbox.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sandbox", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if http_get(url + "/-/sandbox/stats", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "sandbox.log").read_text())
            time.sleep(0.05)
        else:
            raise AssertionError("the sandbox did not come up")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


StartSidecar = Callable[..., Sidecar]


@pytest.fixture
def sidecar(image: str, sandbox: str, tmp_path: Path) -> Iterator[StartSidecar]:
    """Start the image as a sidecar on the shipped sandbox config, moved to the sandbox's
    port, with no `store:` (the image's default: SQLite in its state volume)."""
    started: list[Sidecar] = []

    def start(routes: list[dict[str, Any]] | None = None) -> Sidecar:
        port = free_port()
        text = (ROOT / "config" / "sandbox.yaml").read_text()
        text = text.replace("http://127.0.0.1:9090", sandbox)
        data = yaml.safe_load(text)
        data.pop("store", None)
        data["listen"] = f"127.0.0.1:{port}"
        data["routes"] += routes or []
        config = write_config(tmp_path / f"keyhop-{port}.yaml", data)
        config.chmod(0o644)  # the container's user (uid 10001) reads it through the mount
        side = Sidecar(config, port, image=image)
        started.append(side)
        side.run().wait_healthy()
        return side

    yield start
    for side in started:
        side.remove()


@pytest.fixture
def isolated(image: str, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Sidecar]]:
    """Start the image's own default command on a config, in a network namespace of its own
    (only loopback inside), so its 0.0.0.0:8080 listens nowhere on the host."""
    started: list[Sidecar] = []

    def start(data: dict[str, Any]) -> Sidecar:
        config = write_config(tmp_path / f"keyhop-{len(started)}.yaml", data)
        config.chmod(0o644)
        side = Sidecar(config, image=image)
        started.append(side)
        return side.run()

    yield start
    for side in started:
        side.remove()


#: a client key only the isolated container's config holds (not a credential of anything)
CLIENT_KEY = "docker-test-client-key"
STATIC_ONLY = {
    "providers": {"static": {"auth": {"type": "static"}, "headers": {"X-Test": "1"}}},
    "routes": [{"prefix": "/s", "upstream": "http://127.0.0.1:9", "provider": "static"}],
}


def stats(sandbox: str) -> dict[str, dict[str, int]]:
    status, body = http_get(sandbox + "/-/sandbox/stats")
    assert status == 200
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


def test_the_built_image_is_configured_as_a_sidecar(image: str) -> None:
    config = image_config(image)
    assert config["User"] == "keyhop"
    assert config["Entrypoint"] == ["keyhop"]
    assert config["Cmd"][:3] == ["serve", "--config", "/config/keyhop.yaml"]
    assert "/var/lib/keyhop" in config["Volumes"]
    assert "8080/tcp" in config["ExposedPorts"]
    # a HEALTHCHECK survives only in Docker's image format: podman's default (OCI) drops it
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "/-/health" in " ".join(test)


def test_the_container_runs_as_non_root_with_the_config_read_only_and_its_store_in_the_volume(
    sidecar: StartSidecar,
) -> None:
    side = sidecar()
    # keyhop is the container's PID 1; its real, effective, saved and filesystem uids
    status = side.exec("cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status
    assert side.exec("cat", "/proc/1/cmdline").stdout.split("\0")[1] == "/opt/keyhop/bin/keyhop"
    # /config/keyhop.yaml is a read-only mount (proc_pid_mountinfo(5): field 5 is the mount
    # point, field 6 its per-mount options)
    mounts = side.exec("cat", "/proc/self/mountinfo").stdout.splitlines()
    config = [line.split() for line in mounts if line.split()[4] == "/config/keyhop.yaml"]
    assert config and "ro" in config[0][5].split(","), mounts
    assert http_get(side.url + "/spaaza-admin/admin/users")[0] == 200
    # the session went to the SQLite store in the named volume, private to keyhop
    found = side.exec("stat", "-c", "%U %a", "/var/lib/keyhop/keyhop/tokens.db")
    assert found.stdout.strip() == "keyhop 600", found.stderr
    volumes = [m for m in side.mounts() if m.get("Type") == "volume"]
    assert [(m["Name"], m["Destination"]) for m in volumes] == [(side.volume, "/var/lib/keyhop")]


def test_the_images_own_healthcheck_passes_and_fails_when_keyhop_does_not_answer(
    sidecar: StartSidecar,
) -> None:
    side = sidecar()
    ran = side.healthcheck()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # the same command, taken from the image's config, against a port nothing listens on
    test = image_config(side.image)["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    assert side.exec(*test[1:]).returncode == 0
    dead = side.exec(*test[1:], env={"KEYHOP_PORT": str(free_port())})
    assert dead.returncode != 0


def test_health_answers_and_sandbox_routes_work_through_the_container(
    sidecar: StartSidecar, sandbox: str
) -> None:
    side = sidecar()
    status, body = http_get(side.url + "/-/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # Kibo: the sandbox checks the Basic-authenticated token fetch, the bearer and API-Key
    status, body = http_get(side.url + "/kibo/api/v2/location/7?x=1")
    assert status == 200, body
    echoed = json.loads(body)
    assert (echoed["path"], echoed["query"]) == ("/kibo/api/v2/location/7", "x=1")
    assert stats(sandbox)["kibo"]["token_requests"] == 1
    assert stats(sandbox)["kibo"]["resource_requests"] == 1


def test_the_token_store_survives_a_container_restart(sidecar: StartSidecar, sandbox: str) -> None:
    side = sidecar()
    for path in ("/spaaza-admin/admin/users", "/kibo/api/v2/location/7"):
        status, body = http_get(side.url + path)
        assert status == 200, body
    before = stats(sandbox)
    assert before["spaaza"]["logins"] == 1 and before["kibo"]["token_requests"] == 1

    assert side.stop() == 0, side.logs()  # podman stop: SIGTERM, a drain, exit 0
    side.start()
    side.wait_healthy()
    for path in ("/spaaza-admin/admin/users", "/kibo/api/v2/location/7"):
        status, body = http_get(side.url + path)
        assert status == 200, body
    after = stats(sandbox)
    # no second login, no second token fetch: both came back from the volume's store
    assert after["spaaza"]["logins"] == 1, after
    assert after["kibo"]["token_requests"] == 1, after
    assert after["spaaza"]["resource_requests"] == before["spaaza"]["resource_requests"] + 1


async def test_sigterm_drains_an_in_flight_request_then_the_container_exits_0(
    sidecar: StartSidecar, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    body = b"z" * 200_000

    async def slow(request: web.Request) -> web.Response:
        # held until the test has seen keyhop draining: no race with a slow `podman kill`
        started.set()
        await asyncio.wait_for(release.wait(), 60)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    server = await aiohttp_server(app, host="127.0.0.1")
    route = {"prefix": "/slow", "upstream": f"http://127.0.0.1:{server.port}", "provider": "kibo"}
    side = await asyncio.to_thread(sidecar, [route])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def in_flight() -> tuple[int, bytes]:
            async with session.get(side.url + "/slow/report") as resp:
                return resp.status, await resp.read()

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(started.wait(), 15)
        await asyncio.to_thread(side.signal, "TERM")
        for _ in range(300):
            if "draining" in await asyncio.to_thread(side.logs):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("keyhop never said it was draining:\n" + side.logs())
        assert await asyncio.to_thread(side.running), "the container did not wait for the request"
        assert not task.done()
        release.set()
        status, got = await asyncio.wait_for(task, 30)
    assert status == 200
    assert got == body
    assert await asyncio.to_thread(side.wait_exit) == 0, side.logs()


def test_the_default_command_serves_8080_behind_client_keys_and_its_healthcheck_passes(
    isolated: Callable[[dict[str, Any]], Sidecar], image: str
) -> None:
    side = isolated({"clients": {"keys": [CLIENT_KEY]}, **STATIC_ONLY})
    side.wait_healthy()
    # no KEYHOP_PORT: the check asks the image's own 8080, where its default command listens
    ran = side.healthcheck()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "0.0.0.0:8080" in side.logs()
    # clients.keys holds on every address (SPEC 4.1): the health check needs no key
    assert side.get_inside("/-/providers") == 401
    assert side.get_inside("/-/providers", {"X-Keyhop-Key": CLIENT_KEY}) == 200


def test_the_default_command_refuses_a_config_without_client_keys(
    isolated: Callable[[dict[str, Any]], Sidecar],
) -> None:
    side = isolated(STATIC_ONLY)
    assert side.wait_exit() == 2  # a config error, as `keyhop check` exits (SPEC 2)
    assert "clients.keys" in side.logs()
