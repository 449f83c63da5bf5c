"""The route map: YAML read once into frozen, validated records (SPEC 2, 3).

Every problem in a file is collected and reported together, each naming the file, the key
path, what was expected and what was found; secrets are never quoted back.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from proxy.egress import read_egress
from proxy.errors import ConfigError
from proxy.interpolation import interpolate
from proxy.providers import DEFAULT_REPLAY_MAX_BYTES, ProviderConfig, read_provider
from proxy.route_config import read_routes
from proxy.routing import Route
from proxy.schema import Node, Problems, Redactor, Secret, describe
from proxy.workers_config import read_workers

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
PROVIDER_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def default_store() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return "sqlite://" + os.path.join(state, "keyhop", "tokens.db")


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientTimeouts:
    """Time limits on the client's side of a connection (the upstream's are per provider)."""

    head: float = 10.0  # from a request's first byte to the end of its head
    keepalive: float = 75.0  # an idle keep-alive connection is closed after this
    client_write: float = 60.0  # longest a client may leave an answer unread


@dataclass(frozen=True)
class TracingConfig:
    """SPEC 6.2: OTLP over HTTP; spans go to <otlp_endpoint>/v1/traces."""

    otlp_endpoint: str
    service_name: str = "keyhop"
    sample_ratio: float = 1.0


@dataclass(frozen=True)
class Config:
    source: str
    listen: Listen
    store: str
    client_keys: tuple[Secret, ...] = field(repr=False)
    providers: Mapping[str, ProviderConfig]
    routes: tuple[Route, ...]
    drain_timeout: float = 30.0
    fetch_lock_ttl: float = 30.0
    timeouts: ClientTimeouts = ClientTimeouts()
    tracing: TracingConfig | None = None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    #: worker processes serving `listen` (SPEC 7); 1 = no supervisor
    workers: int = 1


# --- interpolation (SPEC 3.1) ----------------------------------------------------------------


def _parse_listen(text: str) -> Listen | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    return Listen(host.strip("[]"), int(port))


def _read_tracing(node: Node) -> TracingConfig | None:
    if not node.ok or not node.raw:
        node.finish()
        return None
    endpoint = node.url("otlp_endpoint", required=True)
    service = node.string("service_name", "keyhop") or "keyhop"
    ratio = node.number("sample_ratio", 1.0, minimum=0.0)
    if ratio > 1.0:
        node.error("sample_ratio", f"expected a number from 0 to 1, found {ratio:g}")
    node.finish()
    return TracingConfig(endpoint, service, min(ratio, 1.0)) if endpoint else None


def parse_config(
    data: Any,
    source: str = "<config>",
    *,
    listen_override: str | None = None,
    workers_override: str | None = None,
) -> Config:
    problems = Problems(source)
    found: set[str] = set()
    data = interpolate(data if data is not None else {}, "", problems, found)
    root = Node(data, "", problems)

    listen_text = listen_override or root.string("listen", DEFAULT_LISTEN) or DEFAULT_LISTEN
    if listen_override:
        root.get("listen")
    listen = _parse_listen(listen_text)
    if listen is None:
        problems.add("listen", f"expected HOST:PORT, found {describe(listen_text)}")
        listen = Listen("127.0.0.1", 8080)

    store = root.string("store") or default_store()
    if store == "memory":
        store = "memory:"
    if not (store == "memory:" or store.startswith(("sqlite://", "redis://", "rediss://"))):
        problems.add(
            "store",
            f'expected sqlite://PATH, "memory:" or redis://HOST:PORT/DB, found {store!r}',
        )
    elif store == "sqlite://":
        problems.add("store", "sqlite:// needs a file path, e.g. sqlite:///var/lib/keyhop/t.db")

    cnode = root.child("clients")
    keys = []
    for i, item in enumerate(cnode.seq("keys")):
        if item is None or item == "" or isinstance(item, bool) or not isinstance(item, str | int):
            # a key that is not there must never mean "no key needed"
            problems.add(f"clients.keys[{i}]", f"expected a non-empty key, found {describe(item)}")
            continue
        keys.append(Secret(str(item)))
    client_keys = tuple(keys)
    cnode.finish()
    if not listen.is_loopback() and not client_keys:
        problems.add(
            "clients.keys",
            f"required when listen ({listen}) is not a loopback address: "
            "anyone who reaches the port would use your credentials",
        )

    # routes first: a provider's endpoints written as paths resolve against its first route
    routes = read_routes(root, problems)

    egress = read_egress(root)
    pnode = root.child("providers")
    providers: dict[str, ProviderConfig] = {}
    for name in pnode.raw:
        pnode.get(str(name))
        if not PROVIDER_RE.fullmatch(str(name)):
            problems.add(
                f"providers.{name}",
                "a provider name is letters, digits, '_', '.' or '-', starting with a letter",
            )
            continue
        first = next((r for r in routes if r.provider == name), None)
        base = first.upstream.origin if first else None
        parsed = read_provider(str(name), pnode.raw[name], base, problems, root, egress)
        if parsed is not None:
            providers[str(name)] = parsed
    for i, route in enumerate(routes):
        known_provider = providers.get(route.provider)
        if route.tenant == "path" and known_provider is not None and not known_provider.tenants:
            problems.add(
                f"routes[{i}].tenant",
                f"'path' needs a provider with several accounts; {route.provider} has no "
                "`tenants: true`",
            )
        if route.provider not in pnode.raw:
            known = ", ".join(sorted(map(str, pnode.raw))) or "none defined"
            problems.add(
                f"routes[{i}].provider", f"unknown provider {route.provider!r}; known: {known}"
            )
    if not routes:
        problems.add("routes", "no routes: keyhop would have nothing to forward")

    drain = root.number("drain_timeout", 30.0, minimum=0.0)
    lock_ttl = root.number("fetch_lock_ttl", 30.0, minimum=1.0)
    root.integer("replay_max_bytes", DEFAULT_REPLAY_MAX_BYTES)
    tnode = root.child("timeouts")
    timeouts = ClientTimeouts(
        head=tnode.number("head", ClientTimeouts.head, minimum=0.0, exclusive=True),
        keepalive=tnode.number("keepalive", ClientTimeouts.keepalive, minimum=0.0, exclusive=True),
        client_write=tnode.number(
            "client_write", ClientTimeouts.client_write, minimum=0.0, exclusive=True
        ),
    )
    tnode.finish()
    tracing = _read_tracing(root.child("tracing"))
    workers = read_workers(root.get("workers", 1), workers_override, store, problems)
    root.finish()
    if problems.items:
        # a value read from ${...} is never quoted back, even when it is the wrong value
        redact = Redactor(v for v in found if len(v) >= 4)
        raise ConfigError([redact(p) for p in problems.items])
    secrets = {s for s in found if len(s) >= 6}
    secrets.update(k.reveal() for k in client_keys)
    for provider in providers.values():
        for value in vars(provider.scheme).values():
            if isinstance(value, Secret):
                secrets.add(value.reveal())
            elif isinstance(value, Mapping):
                secrets.update(v.reveal() for v in value.values() if isinstance(v, Secret))
        if provider.sign is not None:
            secrets.update(s for s in provider.sign.secrets() if s)
        if provider.tls is not None:
            secrets.update(provider.tls.secrets())
        secrets.update(provider.egress.secrets())
    return Config(
        source=source,
        listen=listen,
        store=store,
        client_keys=client_keys,
        providers=providers,
        routes=tuple(routes),
        drain_timeout=drain,
        fetch_lock_ttl=lock_ttl,
        timeouts=timeouts,
        tracing=tracing,
        secrets=frozenset(s for s in secrets if len(s) >= 4),
        workers=workers,
    )


#: path -> the file it is read from instead: a worker reads the copy of the config file its
#: supervisor last checked (proxy/supervisor.py), so every worker, a replacement started
#: after the file was edited included, runs the config that was checked; errors and logs
#: still name the path
READ_FROM: dict[str, str] = {}


def load_config(
    path: str, *, listen_override: str | None = None, workers_override: str | None = None
) -> Config:
    return parse_config_text(
        read_config_text(path),
        path,
        listen_override=listen_override,
        workers_override=workers_override,
    )


def read_config_text(path: str) -> str:
    try:
        return Path(READ_FROM.get(path, path)).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def parse_config_text(
    text: str, path: str, *, listen_override: str | None = None, workers_override: str | None = None
) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return parse_config(
        data, path, listen_override=listen_override, workers_override=workers_override
    )
