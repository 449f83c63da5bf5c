"""The Docker image (SPEC 4.7, issue 15 item 5).

The first tests read the Dockerfile as text and run everywhere. The `docker` ones build the
image with podman against the local Debian base (docker/base.sh) and run it as a sidecar
would: non-root, config mounted read-only, a named state volume, the host's network with
keyhop on a free 127.0.0.1 port, and `keyhop sandbox` on the host as the providers.
`make docker-test` installs podman and runs them; `make test` deselects them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.container import IMAGE, Sidecar, build_image, http_get, image_config
from tests.support import ROOT, free_port, write_config

DOCKERFILE = ROOT / "Dockerfile"


# --- the Dockerfile as text ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def argv(self) -> list[str]:
        """Exec form (`["a", "b"]`) or shell form, as a list of words."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(v) for v in value]
        return shlex.split(text)


def instructions() -> list[Instruction]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    steps = instructions()
    starts = [i for i, step in enumerate(steps) if step.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return steps[starts[-1] :]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [step for step in stage if step.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def test_the_base_is_a_build_argument_defaulting_to_a_slim_python_image() -> None:
    steps = instructions()
    # a global ARG (before the first FROM) is the only kind a FROM line may use
    first_from = next(i for i, step in enumerate(steps) if step.keyword == "FROM")
    args = dict(step.args.split("=", 1) for step in steps[:first_from] if step.keyword == "ARG")
    assert re.fullmatch(
        r"(docker\.io/)?(library/)?python:3\.1[1-9][\w.\-]*slim[\w.\-]*(@sha256:\w+)?",
        args.get("BASE", ""),
    ), args
    stage_names = {s.argv()[2] for s in steps if s.keyword == "FROM" and len(s.argv()) == 3}
    for step in steps:
        if step.keyword == "FROM":
            assert step.argv()[0] in ("${BASE}", "$BASE"), step.args
        if step.keyword == "COPY" and step.args.startswith("--from="):
            assert step.args.split()[0].removeprefix("--from=") in stage_names, step.args


def test_the_image_runs_as_a_non_root_user(final_stage: list[Instruction]) -> None:
    # the last USER of the final stage is the one the container runs as
    user = only(final_stage, "USER").argv()[0].partition(":")[0]
    assert user not in ("root", "0", "")


def test_the_healthcheck_hits_health(final_stage: list[Instruction]) -> None:
    check = only(final_stage, "HEALTHCHECK")
    assert "CMD" in check.args.split()
    assert "/-/health" in check.args
    assert "8080" in check.args


def test_the_image_exposes_8080(final_stage: list[Instruction]) -> None:
    ports = [p.partition("/")[0] for s in final_stage if s.keyword == "EXPOSE" for p in s.argv()]
    assert "8080" in ports


def test_the_entrypoint_is_keyhop_serving_config_keyhop_yaml_on_8080(
    final_stage: list[Instruction],
) -> None:
    entrypoint = only(final_stage, "ENTRYPOINT").argv()
    assert entrypoint[0] in ("keyhop", "/opt/keyhop/bin/keyhop")
    command = entrypoint[1:] + only(final_stage, "CMD").argv()
    assert command[0] == "serve"
    config_env = [s for s in final_stage if s.keyword == "ENV" and "/config/keyhop.yaml" in s.args]
    config_arg = "--config" in command and command[command.index("--config") + 1]
    assert config_arg == "/config/keyhop.yaml" or (not config_arg and config_env)
    assert "--listen" in command
    assert command[command.index("--listen") + 1].endswith(":8080")


def test_the_image_installs_the_package_that_provides_the_keyhop_command() -> None:
    text = DOCKERFILE.read_text()
    # keyhop's own wheel, built from the copied source (`.`), installed into the shipped venv
    assert re.search(r"pip (install|wheel)[^\n]*\s\.(\s|;|$|\[)", text), "keyhop is never built"
    assert re.search(r"/opt/keyhop/bin/pip install", text), "nothing installs into /opt/keyhop"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^keyhop\s*=\s*"proxy\.cli:main"', pyproject, re.M)


# --- the image, built and run -----------------------------------------------------------------

docker = pytest.mark.docker


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
        del data["store"]
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


def stats(sandbox: str) -> dict[str, dict[str, int]]:
    status, body = http_get(sandbox + "/-/sandbox/stats")
    assert status == 200
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


@docker
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


@docker
def test_the_container_runs_as_non_root_with_the_config_read_only_and_its_store_in_the_volume(
    sidecar: StartSidecar,
) -> None:
    side = sidecar()
    assert side.exec("id", "-u").stdout.strip() == "10001"
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


@docker
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


@docker
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


@docker
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


@docker
async def test_sigterm_drains_an_in_flight_request_then_the_container_exits_0(
    sidecar: StartSidecar, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    started = asyncio.Event()
    body = b"z" * 200_000

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(2.0)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    server = await aiohttp_server(app, host="127.0.0.1")
    route = {"prefix": "/slow", "upstream": f"http://127.0.0.1:{server.port}", "provider": "kibo"}
    side = await asyncio.to_thread(sidecar, [route])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def in_flight() -> tuple[int, bytes]:
            async with session.get(side.url + "/slow/report") as resp:
                return resp.status, await resp.read()

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(started.wait(), 15)
        await asyncio.to_thread(side.signal, "TERM")
        await asyncio.sleep(0.5)
        assert not task.done(), "the in-flight request ended before the drain could be seen"
        status, got = await asyncio.wait_for(task, 20)
    assert status == 200
    assert got == body
    assert await asyncio.to_thread(side.wait_exit) == 0, side.logs()
    assert "draining" in side.logs()
