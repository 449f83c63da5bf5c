"""Egress through a corporate HTTP proxy (SPEC 5.3): which proxy a connection takes, and
what aiohttp needs to use it; the CONNECT tunnel itself is proxy/tunnel.py (re-exported here).

Rules:
- `egress_proxy` is `none` (the default: direct), `env` (curl's variables, read when the config
  is loaded, so SIGHUP re-reads them) or `http://[user:pass@]host:port`.
- A connection that should go through a proxy goes through it or fails with EgressError naming
  the proxy (host:port); it never falls back to a direct connection.
- TLS stays end to end: the tunnel hands back a plain TCP socket and the caller runs TLS over it
  against the partner's own name and certificate.
- The proxy password is a Secret: never in a repr, a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

from aiohttp import ClientHttpProxyError, ClientProxyConnectionError

from proxy.schema import Node, Secret
from proxy.tunnel import UNPRINTABLE, EgressError, ProxyTarget, open_tunnel

__all__ = [
    "DIRECT",
    "EgressError",
    "EgressSettings",
    "NoProxy",
    "ProxyTarget",
    "SessionProxy",
    "open_tunnel",
    "proxy_for",
    "read_egress",
    "session_proxy",
]

CURL_DEFAULT_PORT: Final = 1080  # curl: a proxy variable without a port (CURLOPT_PROXYPORT)


@dataclass(frozen=True)
class NoProxy:
    """NO_PROXY as curl's lib/noproxy.c reads it: `*` alone means every host; otherwise a
    comma-separated list where a name matches itself and every subdomain (a leading dot changes
    nothing), case-insensitively, trailing dots ignored; IP addresses and CIDR ranges match
    IP-literal hosts only. The port of the connection plays no part, and keyhop also drops a
    `:port` written on an entry (curl would never match such an entry)."""

    everything: bool = False
    names: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        if text.strip() == "*":
            return cls(everything=True)
        names: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in text.split(","):
            entry = raw.strip()
            if entry.startswith("["):  # [v6]:port or [v6]
                entry = entry[1:].partition("]")[0]
            elif entry.count(":") == 1:  # name:port or v4:port
                entry = entry.partition(":")[0]
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.strip(".").lower()
            if name:
                names.append(name)
        return cls(False, tuple(names), tuple(networks))

    def matches(self, host: str) -> bool:
        if self.everything:
            return True
        if not (self.names or self.networks):
            return False
        host = host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.rstrip(".").lower()
            return any(name == n or name.endswith("." + n) for n in self.names)
        return any(address in net for net in self.networks if net.version == address.version)


@dataclass(frozen=True)
class EgressSettings:
    """Where one provider's connections go. With `url` every connection takes the proxy
    (NO_PROXY is for `env` only: an explicit proxy is an explicit choice)."""

    mode: Literal["none", "env", "url"] = "none"
    https: ProxyTarget | None = None
    http: ProxyTarget | None = None
    no_proxy: NoProxy = NoProxy()
    #: (scheme, host) -> proxy_for's answer: NO_PROXY matching costs ~10 us, a lookup ~0.1 us
    _answers: dict[tuple[str, str], ProxyTarget | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def secrets(self) -> set[str]:
        """The proxy passwords, for the config's redaction list."""
        return {t.password.reveal() for t in (self.https, self.http) if t and t.password}


DIRECT: Final = EgressSettings()


def parse_proxy_url(text: str, *, default_port: int | None) -> ProxyTarget | str:
    """A ProxyTarget, or what is wrong with `text` (a sentence that never quotes it: it may hold
    a password). Without a scheme, http:// is meant, as curl reads its variables."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "not a valid proxy URL (a bad port or address)"
    if parts.scheme.lower() != "http":
        return (
            f"a {parts.scheme}:// proxy is not supported; expected http://[user:pass@]host:port "
            "(an HTTP proxy that speaks CONNECT)"
        )
    if not parts.hostname:
        return "the proxy URL names no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy URL is http://[user:pass@]host:port, without a path or query"
    if port is None:
        if default_port is None:
            return f"the proxy URL for {parts.hostname} needs a port (http://host:port)"
        port = default_port
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password else None
    return ProxyTarget(
        parts.hostname.lower(), port, username, Secret(password) if password else None
    )


def _from_env(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    # curl (lib/url.c detect_proxy, lib/getenv.c): the lowercase name first, the uppercase one
    # when the lowercase one is unset; an empty variable counts as unset
    for name in names:
        if environ.get(name, "").strip():
            return name, environ[name]
    return None


def read_egress(
    node: Node,
    key: str = "egress_proxy",
    inherit: EgressSettings = DIRECT,
    environ: Mapping[str, str] | None = None,
) -> EgressSettings:
    """Read `key` of `node` (top level, or a provider inheriting the top level's setting)."""
    if not node.has(key):
        node.get(key)
        return inherit
    text = node.string(key)
    if text is None:
        return inherit
    if text == "none":
        return DIRECT
    if text == "env":
        env = os.environ if environ is None else environ
        targets: dict[str, ProxyTarget | None] = {}
        reported: set[str] = set()  # a bad ALL_PROXY is said once, not once per scheme
        # http_proxy has no uppercase form in curl: CGI servers put a request's `Proxy:` header
        # in HTTP_PROXY ("httpoxy", CVE-2016-5385)
        for scheme, names in (
            ("https", ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")),
            ("http", ("http_proxy", "all_proxy", "ALL_PROXY")),
        ):
            found = _from_env(env, names)
            targets[scheme] = None
            if found is not None:
                target = parse_proxy_url(found[1], default_port=CURL_DEFAULT_PORT)
                if isinstance(target, str):
                    if found[0] not in reported:
                        node.error(key, f"env: {found[0]}: {target}")
                    reported.add(found[0])
                else:
                    targets[scheme] = target
        no_proxy = _from_env(env, ("no_proxy", "NO_PROXY"))
        return EgressSettings(
            "env", targets["https"], targets["http"], NoProxy.parse(no_proxy[1] if no_proxy else "")
        )
    if "://" not in text:
        node.error(key, "expected none, env or http://[user:pass@]host:port")
        return DIRECT
    target = parse_proxy_url(text, default_port=None)
    if isinstance(target, str):
        node.error(key, target)
        return DIRECT
    return EgressSettings("url", target, target)


def proxy_for(settings: EgressSettings, scheme: str, host: str) -> ProxyTarget | None:
    """The proxy a connection to `scheme://host` goes through, or None for a direct one."""
    key = (scheme, host)
    try:
        return settings._answers[key]
    except KeyError:
        pass
    target = settings.https if scheme in ("https", "wss") else settings.http
    if target is not None and settings.no_proxy.matches(host):
        target = None
    if len(settings._answers) >= 1024:  # hosts come from the config, but stay bounded
        settings._answers.clear()
    settings._answers[key] = target
    return target


@dataclass(frozen=True)
class SessionProxy:
    """What aiohttp's ClientSession.request needs to reach one URL through the proxy:
    `proxy=url, proxy_headers=headers`, and `request_headers` merged into the request's own
    headers. The password is never in the URL (aiohttp quotes URLs in its errors). For an
    http:// URL aiohttp sends the request itself to the proxy (absolute form) and sends no
    `proxy_headers` then, so the credentials ride in `request_headers`; for https:// they go
    on the CONNECT request only, never to the partner."""

    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    request_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    label: str | None = None  # host:port of the proxy, for messages

    def failure(self, exc: BaseException) -> str | None:
        """What went wrong, naming the proxy, for an aiohttp error raised on a request sent
        through it (None for a direct request). aiohttp cannot tell a proxy that dropped the
        connection from a partner that did, so such a failure says "through proxy"."""
        if self.label is None:
            return None
        if isinstance(exc, ClientHttpProxyError):
            reason = UNPRINTABLE.sub("?", exc.message)[:60]
            if exc.status == 407:
                return f"proxy {self.label} refused the credentials (407 {reason})"
            return f"proxy {self.label} refused CONNECT ({exc.status} {reason})"
        if isinstance(exc, ClientProxyConnectionError):
            return f"cannot connect to proxy {self.label}"
        if isinstance(exc, TimeoutError):
            return f"no answer in time through proxy {self.label}"
        return f"the connection through proxy {self.label} failed ({type(exc).__name__})"


def session_proxy(settings: EgressSettings, scheme: str, host: str) -> SessionProxy:
    target = proxy_for(settings, scheme, host)
    if target is None:
        return SessionProxy()
    credentials = target.authorization()
    if credentials is None:
        return SessionProxy(target.url, label=target.label)
    header = {"Proxy-Authorization": credentials}
    if scheme in ("https", "wss"):
        return SessionProxy(target.url, header, label=target.label)
    return SessionProxy(target.url, {}, header, label=target.label)
