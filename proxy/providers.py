"""A provider's config (SPEC 3, 3.2, 5): read from YAML into one frozen record, every
problem located by its key path. `preset:` is merged first; keys beside it override."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.auth import AuthScheme, SchemeContext, build_scheme
from proxy.egress import DIRECT, EgressSettings, read_egress
from proxy.headers import configured_header_problem
from proxy.outbound import HeaderTemplate, compile_template
from proxy.presets import PRESETS, merge
from proxy.schema import Node, Problems, Secret, describe
from proxy.signers import Signer, SignerSetup, build_signer
from proxy.tls import TlsSettings, read_tls

DEFAULT_REPLAY_MAX_BYTES: Final = 1024 * 1024
TENANT_RULE: Final = "a tenant id is 1-128 characters of A-Z a-z 0-9 . _ ~ -"
TENANT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")


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
    sign: Signer | None = None
    tls: TlsSettings | None = None  # a client certificate (SPEC 5.3)
    egress: EgressSettings = DIRECT  # how its connections leave (SPEC 5.3)
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
        return self.scheme.passes_client_auth


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


def read_provider(
    name: str,
    raw: Any,
    base_url: str | None,
    problems: Problems,
    defaults: Node,
    egress: EgressSettings = DIRECT,
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
        override = {k: v for k, v in raw.items() if k != "preset"}
        preset = PRESETS[preset_name]
        raw = merge(preset, override)
        sign = override.get("sign")
        if isinstance(sign, Mapping) and "type" in sign and "sign" in preset:
            if sign["type"] != preset["sign"].get("type"):
                raw["sign"] = sign  # another signer: none of the preset's recipe applies
    node = Node(raw, path, problems)
    node.get("preset")
    base = node.url("base_url") or base_url
    # the transport first: tls_client_auth needs to know that a certificate will be shown
    tls = read_tls(node)
    provider_egress = read_egress(node, inherit=egress)
    ctx = SchemeContext(provider=name, base_url=base, client_certificate=tls is not None)
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
        problem = configured_header_problem(str(header), None if value is None else str(value))
        if problem is not None:  # the value itself is never quoted: it may be a secret
            hnode.error(str(header), problem)
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
    raw_sign = node.get("sign")
    if isinstance(raw_sign, Mapping) and raw_sign:
        if "type" not in raw_sign:  # before the registry, a sign: block without a type
            raw_sign = {"type": "x_signature", **raw_sign}  # meant PayNet's X-Signature
        setup = SignerSetup(
            provider=name,
            default_key=scheme.signing_key if scheme else None,
            static_vars=static,
        )
        sign = build_signer(Node(raw_sign, node.at("sign"), problems), setup)
    elif raw_sign is not None and raw_sign != {}:
        node.error("sign", f"expected a mapping, found {describe(raw_sign)}")

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
        tls=tls,
        egress=provider_egress,
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
