"""The image tests' container engine: Debian's podman with runc, driven as a sidecar's
operator would drive it (issue 15 item 5).

No registry image can be pulled on these machines, so the image is built against the local
Debian base of `docker/base.sh`. Every container and volume started here is removed by its
id or name; everything listens on loopback only (`--network host`, keyhop on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.support import ROOT

#: the image the tests build and run; a tag of its own so it never shadows a user's `keyhop`
IMAGE = os.environ.get("KEYHOP_TEST_IMAGE", "localhost/keyhop:test")

#: crun refuses this kernel's hybrid cgroup layout and there is no systemd to manage
#: cgroups, so runc with podman's own cgroupfs manager (podman(1): --runtime, --cgroup-manager)
ENGINE = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")

#: where the host's CA bundle is mounted during a build, for pip behind this machine's TLS
BUILD_CA = "/run/keyhop-build-ca.pem"


def podman_path() -> str:
    """The podman binary: a test that needs it fails (never skips) when it is missing, since
    `make docker-test` installs it."""
    found = shutil.which("podman")
    assert found, "podman is not installed: run `make docker-test` (it installs podman and runc)"
    return found


def ulimits() -> list[str]:
    """Explicit limits: runc may not raise a hard limit here, and podman's defaults ask for
    more than this machine grants. nofile is the host's own soft limit (never more than it may
    have); nproc is fixed, as runc is refused above some thousands."""
    nofile, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


def podman(
    *args: str, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """One podman command; its output in the assertion message when it fails."""
    done = subprocess.run(
        [podman_path(), *ENGINE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:2])} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def base_image() -> str:
    """The local Debian base (built once per machine by docker/base.sh, then cached)."""
    done = subprocess.run(
        ["bash", str(ROOT / "docker" / "base.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"docker/base.sh failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def build_image(tag: str = IMAGE, base: str | None = None) -> str:
    """`podman build` of the repo's Dockerfile against `base`, in Docker's image format (the
    OCI format has no HEALTHCHECK and podman would drop it); returns the tag."""
    args = ["build", "--format", "docker", "--network", "host", *ulimits(), "--tag", tag]
    args += ["--build-arg", f"BASE={base or base_image()}"]
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(ca).is_file():
        args += ["--volume", f"{ca}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"]
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    podman(*args, str(ROOT), timeout=900)
    return tag


def image_config(tag: str = IMAGE) -> dict[str, Any]:
    """The image's own configuration (User, Entrypoint, Healthcheck ...), as podman reads it."""
    inspected = json.loads(podman("image", "inspect", tag).stdout)[0]
    config = inspected["Config"]
    assert isinstance(config, dict)
    # podman reports the HEALTHCHECK beside Config (docker inspect, inside it); absent from both
    # when the image has none
    config.setdefault("Healthcheck", inspected.get("Healthcheck"))
    return config


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A plain GET from the host; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


#: a GET from inside the container, with the image's own Python: prints the status
INSIDE_GET = """
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
try:
    print(urllib.request.urlopen(request, timeout=3).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


class Sidecar:
    """keyhop in a container as a sidecar runs: non-root (the image's user), the config
    mounted read-only at /config/keyhop.yaml and a named volume for its state.

    With a `port`: the host's network, keyhop on 127.0.0.1:`port` (the healthcheck told so
    by KEYHOP_PORT), reachable from the test. Without: the image's own default command
    (0.0.0.0:8080) in a network namespace of its own with only a loopback interface
    (`--network none`), so nothing on the host is exposed; reached with `get_inside`."""

    def __init__(self, config: Path, port: int | None = None, *, image: str = IMAGE) -> None:
        self.config = config
        self.port = port
        self.image = image
        self.volume = f"keyhop-test-{uuid.uuid4().hex[:12]}"
        self.id = ""

    @property
    def url(self) -> str:
        assert self.port, "this container has no port on the host's network"
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> Sidecar:
        podman("volume", "create", self.volume)
        mounts = ["--volume", f"{self.config}:/config/keyhop.yaml:ro"]
        mounts += ["--volume", f"{self.volume}:/var/lib/keyhop"]
        if self.port is None:
            options, command = ["--network", "none"], []
        else:
            options = ["--network", "host", "--env", f"KEYHOP_PORT={self.port}"]
            # the image's own ENTRYPOINT (keyhop) and --config; only the address differs
            command = ["serve", "--config", "/config/keyhop.yaml"]
            command += ["--listen", f"127.0.0.1:{self.port}"]
        run = ["run", "--detach", *options, *ulimits(), *mounts, self.image, *command]
        self.id = podman(*run).stdout.strip()
        assert self.id, "podman run printed no container id"
        return self

    def get_inside(self, path: str, headers: dict[str, str] | None = None) -> int:
        """The status of a GET to keyhop on the container's own 127.0.0.1:8080 (or `port`)."""
        url = f"http://127.0.0.1:{self.port or 8080}{path}"
        lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
        done = self.exec("/opt/keyhop/bin/python", "-c", INSIDE_GET, url, *lines)
        assert done.returncode == 0, done.stdout + done.stderr
        return int(done.stdout.strip())

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until /-/health answers 200; fails with the container's log if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"the container exited:\n{self.logs()}")
            try:
                if self.port is not None:
                    if http_get(self.url + "/-/health", timeout=1.0)[0] == 200:
                        return
                elif self.get_inside("/-/health") == 200:
                    return
            except (OSError, AssertionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"keyhop in the container did not come up:\n{self.logs()}")

    def state(self) -> dict[str, Any]:
        inspected = json.loads(podman("container", "inspect", self.id).stdout)
        state = inspected[0]["State"]
        assert isinstance(state, dict)
        return state

    def mounts(self) -> list[dict[str, Any]]:
        inspected = json.loads(podman("container", "inspect", self.id).stdout)
        mounts = inspected[0]["Mounts"]
        assert isinstance(mounts, list)
        return mounts

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def exec(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        flags = [f"--env={name}={value}" for name, value in (env or {}).items()]
        return podman("exec", *flags, self.id, *argv, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK, run by the engine itself (podman-healthcheck-run(1))."""
        return podman("healthcheck", "run", self.id, check=False)

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.id)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """The container's exit code once it has stopped by itself."""
        done = podman("wait", self.id, timeout=timeout)
        return int(done.stdout.strip().splitlines()[-1])

    def stop(self, grace: int = 40) -> int:
        """`podman stop`: SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
        podman("stop", "--time", str(grace), self.id, timeout=grace + 30)
        return int(self.state()["ExitCode"])

    def start(self) -> None:
        podman("start", self.id)

    def logs(self) -> str:
        done = podman("logs", self.id, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        """Remove the container (by id) and its state volume (by name)."""
        if self.id:
            podman("rm", "--force", "--volumes", "--time", "0", self.id, check=False)
        podman("volume", "rm", "--force", self.volume, check=False)
