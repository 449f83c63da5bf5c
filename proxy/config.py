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
from urllib.parse import urlsplit

import yaml

from proxy.auth import AuthScheme, SchemeContext, build_scheme
from proxy.errors import ConfigError
from proxy.headers import CONTROL_CHARS, FIELD_NAME
from proxy.outbound import HeaderTemplate, SignConfig, compile_template
from proxy.presets import PRESETS, merge
from proxy.routing import DEFAULT_PORTS, Route, Upstream, check_prefix
from proxy.schema import Node, Problems, Redactor, Secret, describe, is_url

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
DEFAULT_REPLAY_MAX_BYTES: Final = 1024 * 1024
PROVIDER_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
TENANT_RULE: Final = "a tenant id is 1-128 characters of A-Z a-z 0-9 . _ ~ -"
TENANT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_INTERP: Final = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
class ResponseMatch:
    """A rule on an upstream answer: a status, optionally header values and JSON fields."""

    status: int
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    json: Mapping[str, Any] = field(default_factory=dict)

    def matches_head(self, status: int, headers: Mapping[str, str]) -> bool:
        if status != self.status:
            return False
        for name, allowed in self.headers.items():
            value = headers.get(name)
            if value is None or value.strip() not in allowed:
                return False
        return True


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: float


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    scheme: AuthScheme
    headers: tuple[HeaderTemplate, ...] = ()
    refresh_on: tuple[ResponseMatch, ...] = ()
    throttle_on: tuple[ResponseMatch, ...] = ()
    rate_limit: RateLimit | None = None
    retry_throttled: bool = False
    timeouts: Timeouts = Timeouts()
    ca_file: str | None = None
    sign: SignConfig | None = None
    tenants: bool = False
    default_tenant: str | None = None
    replay_max_bytes: int = DEFAULT_REPLAY_MAX_BYTES
    base_url: str | None = None
    fingerprint: str = field(default="", repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.scheme.kind

    @property
    def passes_client_auth(self) -> bool:
        return self.scheme.kind == "none"


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
    secrets: frozenset[str] = field(default=frozenset(), repr=False)


# --- interpolation (SPEC 3.1) ----------------------------------------------------------------


def _interpolate(value: Any, path: str, problems: Problems, found: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, f"{path}.{k}" if path else str(k), problems, found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", problems, found) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        ref = m.group(1)
        if ref.startswith("file:"):
            file_path = ref[5:]
            try:
                text = Path(file_path).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                problems.add(path, f"secret file {file_path} is not UTF-8 text")
                problems.reported.add(path)
                return ""
            except OSError as exc:
                problems.add(path, f"cannot read secret file {file_path}: {exc.strerror}")
                problems.reported.add(path)
                return ""
            text = text[:-1] if text.endswith("\n") else text
            found.add(text)
            return text
        name, sep, fallback = ref.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            problems.add(path, f"bad reference ${{{ref}}}; expected ${{NAME}} or ${{file:/path}}")
            problems.reported.add(path)
            return ""
        env = os.environ.get(name)
        if env is None:
            if sep:
                return fallback
            problems.add(path, f"environment variable {name} is not set")
            problems.reported.add(path)
            return ""
        found.add(env)
        return env

    return _INTERP.sub(substitute, value)


# --- readers ---------------------------------------------------------------------------------


def _read_matches(node: Node, key: str, default: list[Any]) -> tuple[ResponseMatch, ...]:
    items = node.seq(key) if node.has(key) else default
    out = []
    for i, item in enumerate(items):
        where = f"{node.at(key)}[{i}]"
        if isinstance(item, int) and not isinstance(item, bool):
            status, rule = item, None
        elif isinstance(item, Mapping):
            rule = Node(item, where, node.problems)
            status = rule.integer("status", 0, minimum=100)
        else:
            node.problems.add(where, f"expected a status or a mapping, found {describe(item)}")
            continue
        if not 100 <= status <= 599:
            node.problems.add(where, f"expected an HTTP status 100-599, found {status}")
            continue
        headers: dict[str, tuple[str, ...]] = {}
        body: dict[str, Any] = {}
        if rule is not None:
            hnode = rule.child("header")
            for name in hnode.raw:
                raw = hnode.get(str(name))
                values = raw if isinstance(raw, list) else [raw]
                headers[str(name)] = tuple(str(v) for v in values)
            jnode = rule.child("json")
            for name in jnode.raw:
                body[str(name)] = jnode.get(str(name))
            rule.finish()
        out.append(ResponseMatch(status, headers, body))
    return tuple(out)


def _read_provider(
    name: str, raw: Any, base_url: str | None, problems: Problems, defaults: Node
) -> ProviderConfig | None:
    path = f"providers.{name}"
    preset_name = raw.get("preset") if isinstance(raw, Mapping) else None
    if preset_name is not None:
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            problems.add(
                f"{path}.preset",
                f"unknown {describe(preset_name)}; expected one of: {', '.join(sorted(PRESETS))}",
            )
            return None
        raw = merge(PRESETS[preset_name], {k: v for k, v in raw.items() if k != "preset"})
    node = Node(raw, path, problems)
    node.get("preset")
    base = node.url("base_url") or base_url
    ctx = SchemeContext(provider=name, base_url=base)
    scheme = build_scheme(node.child("auth"), ctx)

    vars_node = node.child("vars")
    static: dict[str, str | Secret] = dict(scheme.template_vars()) if scheme else {}
    for var in vars_node.raw:
        value = vars_node.secret(str(var))
        if value is not None:
            static[str(var)] = value

    # defaults first, then the provider's own headers; a null removes a header
    wanted: dict[str, str | None] = {}
    if scheme is not None:
        wanted.update({k.lower(): v for k, v in scheme.default_headers.items()})
    hnode = node.child("headers")
    names: dict[str, str] = {k.lower(): k for k in (scheme.default_headers if scheme else {})}
    for header in hnode.raw:
        value = hnode.get(str(header))
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            hnode.error(str(header), f"expected a string or null, found {describe(value)}")
            continue
        if not FIELD_NAME.fullmatch(str(header)):
            hnode.error(str(header), "not a valid header name (RFC 9110 token characters only)")
            continue
        if value is not None and CONTROL_CHARS.search(str(value)):
            # the value itself is never quoted: it may have come from a secret
            hnode.error(str(header), "the value holds a line break or another control character")
            continue
        wanted[str(header).lower()] = None if value is None else str(value)
        names[str(header).lower()] = str(header)
    headers = []
    for lower, wanted_value in wanted.items():
        if wanted_value is not None:
            template = compile_template(hnode, names[lower], wanted_value, static)
            # a header that is empty once filled in is "not configured": it is not sent
            if template is not None and template.parts != ("",):
                headers.append(template)

    sign = None
    snode = node.child("sign")
    if snode.ok and snode.raw:
        sign_type = snode.choice("type", ("mac", "x_signature"), "x_signature")
        key = snode.secret("key") or (scheme.signing_key if scheme else None)
        if key is None:
            snode.error("key", "required: this auth type has no client secret to sign with")
        else:
            sign = SignConfig(sign_type, key)
        snode.finish()

    refetchable = scheme is not None and scheme.refetchable
    refresh_on = _read_matches(node, "refresh_on", [401] if refetchable else [])
    throttle_on = _read_matches(node, "throttle_on", [429])

    rate_limit = None
    rnode = node.child("rate_limit")
    if rnode.ok and rnode.raw:
        per_second = rnode.number("per_second", 0.0, minimum=0.0, exclusive=True)
        if not rnode.has("per_second"):
            rnode.error("per_second", "required, missing")
        burst = rnode.number("burst", max(per_second, 1.0), minimum=1.0)
        rnode.finish()
        if per_second > 0:
            rate_limit = RateLimit(per_second, burst)

    tnode = node.child("timeouts")
    timeouts = Timeouts(
        connect=tnode.number("connect", 10.0, minimum=0.0, exclusive=True),
        read=tnode.number("read", 60.0, minimum=0.0, exclusive=True),
    )
    tnode.finish()

    ca_file = node.string("ca_file")
    if ca_file is not None and not os.path.isfile(ca_file):
        node.error("ca_file", f"no such file: {ca_file}")
    default_tenant = node.string("default_tenant")
    if default_tenant is not None and not TENANT_RE.fullmatch(default_tenant):
        node.error("default_tenant", f"not a valid tenant id: {describe(default_tenant)}")
    provider = ProviderConfig(
        name=name,
        scheme=scheme,  # type: ignore[arg-type]  # None only when problems were reported
        headers=tuple(headers),
        refresh_on=refresh_on,
        throttle_on=throttle_on,
        rate_limit=rate_limit,
        retry_throttled=node.boolean("retry_throttled", False),
        timeouts=timeouts,
        ca_file=ca_file,
        sign=sign,
        tenants=node.boolean("tenants", False),
        default_tenant=default_tenant,
        replay_max_bytes=node.integer(
            "replay_max_bytes", defaults.integer("replay_max_bytes", DEFAULT_REPLAY_MAX_BYTES)
        ),
        base_url=base,
        fingerprint=repr(sorted(map(str, raw.items()))) if isinstance(raw, Mapping) else "",
    )
    vars_node.finish()
    hnode.finish()
    node.finish()
    return provider if scheme is not None else None


def _parse_listen(text: str) -> Listen | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    return Listen(host.strip("[]"), int(port))


def _read_upstream(node: Node, key: str) -> Upstream | None:
    text = node.string(key, required=True)
    if text is None:
        return None
    parts = urlsplit(text)
    if not is_url(text) or parts.query or parts.fragment or parts.username or parts.password:
        node.error(key, f"expected http(s)://host[:port][/base/path], found {describe(text)}")
        return None
    base_path = parts.path.rstrip("/")
    if any(seg in (".", "..") for seg in base_path.split("/")):
        node.error(key, "the base path may not hold dot-segments")
        return None
    port = parts.port
    return Upstream(
        scheme=parts.scheme,
        host=(parts.hostname or "").lower(),
        port=port or DEFAULT_PORTS[parts.scheme],
        explicit_port=port is not None,
        base_path=base_path,
    )


def parse_config(
    data: Any, source: str = "<config>", *, listen_override: str | None = None
) -> Config:
    problems = Problems(source)
    found: set[str] = set()
    data = _interpolate(data if data is not None else {}, "", problems, found)
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
    routes: list[Route] = []
    rnodes = []
    for i, item in enumerate(root.seq("routes")):
        rnode = Node(item, f"routes[{i}]", problems)
        rnodes.append(rnode)
        prefix = rnode.string("prefix", required=True)
        upstream = _read_upstream(rnode, "upstream")
        provider_name = rnode.string("provider", required=True)
        tenant = rnode.choice("tenant", ("header", "path"), "header")
        websocket = rnode.boolean("websocket", False)
        rnode.finish()
        if prefix is not None:
            err = check_prefix(prefix)
            if err:
                rnode.error("prefix", err)
                prefix = None
        if prefix is None or upstream is None or provider_name is None:
            continue
        routes.append(Route(prefix.rstrip("/") or "/", upstream, provider_name, tenant, websocket))
    seen: dict[str, int] = {}
    for i, route in enumerate(routes):
        if route.prefix in seen:
            problems.add(
                f"routes[{i}].prefix", f"{route.prefix!r} is already routes[{seen[route.prefix]}]"
            )
        seen.setdefault(route.prefix, i)

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
        parsed = _read_provider(str(name), pnode.raw[name], base, problems, root)
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
            secrets.add(provider.sign.key.reveal())
    return Config(
        source=source,
        listen=listen,
        store=store,
        client_keys=client_keys,
        providers=providers,
        routes=tuple(routes),
        drain_timeout=drain,
        fetch_lock_ttl=lock_ttl,
        secrets=frozenset(s for s in secrets if len(s) >= 4),
    )


def load_config(path: str, *, listen_override: str | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return parse_config(data, path, listen_override=listen_override)
