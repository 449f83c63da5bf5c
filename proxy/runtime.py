"""The live state of one keyhop process: services that outlive a reload (HTTP session, store,
credentials, limiter, metrics) and the config-derived Runtime that SIGHUP swaps whole."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp import ClientSession, ClientTimeout, web

from proxy.config import Config
from proxy.deadlines import Deadlines
from proxy.metrics import Metrics
from proxy.outbound import Injector
from proxy.providers import ProviderConfig
from proxy.ratelimit import Limiter
from proxy.routing import RouteTable
from proxy.schema import Redactor
from proxy.store import Store
from proxy.tls import client_context
from proxy.token_cache import CredentialManager
from proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from proxy.tracing import Tracing

log = logging.getLogger("keyhop")


@dataclass
class ProviderRuntime:
    config: ProviderConfig
    ssl: ssl.SSLContext | bool
    timeout: ClientTimeout
    needs_credential: bool = field(init=False)
    inject: Injector = field(init=False, repr=False)
    #: the statuses some refresh_on / throttle_on rule is about; any other answer is relayed
    rule_statuses: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self.needs_credential = self.config.scheme.needs_credential
        rules = (*self.config.refresh_on, *self.config.throttle_on)
        self.rule_statuses = frozenset(rule.status for rule in rules)
        self.inject = Injector(self.config.headers, self.config.scheme, self.config.sign)


def _ssl_context(provider: ProviderConfig) -> ssl.SSLContext | bool:
    if provider.tls is not None:
        return client_context(provider.tls, provider.ca_file)  # mTLS (SPEC 5.3)
    ca_file = provider.ca_file
    if ca_file is None:
        return True  # aiohttp's default: verified against the system trust store
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])  # what keyhop speaks, said as aiohttp says it
    return context


@dataclass
class Runtime:
    """Everything derived from one config file."""

    config: Config
    table: RouteTable = field(init=False)
    providers: dict[str, ProviderRuntime] = field(init=False)
    client_keys: tuple[bytes, ...] = field(init=False, repr=False)
    redact: Redactor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.table = RouteTable(self.config.routes)
        self.providers = {
            name: ProviderRuntime(
                p,
                _ssl_context(p),
                # for token-endpoint calls (ClientSession); their read timeout is an
                # asyncio.timeout around the call in forward.py. The request path
                # (proxy/upstream.py) takes the connect timeout directly.
                ClientTimeout(total=None, sock_connect=p.timeouts.connect, sock_read=None),
            )
            for name, p in self.config.providers.items()
        }
        self.client_keys = tuple(k.reveal().encode() for k in self.config.client_keys)
        self.redact = Redactor(self.config.secrets)


class PeerStates(Protocol):
    """What the request side asks of the other workers (proxy/peers.py implements it)."""

    def merge_providers(self, view: dict[str, Any], now: float) -> None: ...


@dataclass
class Keyhop:
    runtime: Runtime
    store: Store
    limiter: Limiter
    metrics: Metrics
    clock: Callable[[], float] = time.time
    session: ClientSession | None = None  # token endpoints, websockets
    upstreams: UpstreamPool = field(default_factory=UpstreamPool)  # the request path
    deadlines: Deadlines = field(default_factory=Deadlines)
    credentials: CredentialManager | None = None
    started_at: float = field(default_factory=time.time)
    #: provider -> "throttled until" (unix s) as of the last /-/metrics scrape
    throttled_until: dict[str, float] = field(default_factory=dict)
    #: OpenTelemetry spans, when `tracing:` is configured (proxy/tracing.py); None: off
    tracing: Tracing | None = None
    #: the other workers of the same supervisor (proxy/peers.py); None: a single process
    peers: PeerStates | None = None
    #: True under the low-level server, which leaves `Expect: 100-continue` to keyhop
    answers_expect: bool = False
    #: where access-log lines go: the logging module by default (tests see the records);
    #: `keyhop serve` swaps in a buffered writer (proxy/logs.py)
    access_log: Callable[[str], None] = field(
        default_factory=lambda: logging.getLogger("keyhop.access").info
    )

    @property
    def http(self) -> ClientSession:
        assert self.session is not None, "the app is not running"
        return self.session

    @property
    def manager(self) -> CredentialManager:
        assert self.credentials is not None, "the app is not running"
        return self.credentials

    def reload(self, config: Config) -> None:
        if config.tracing != self.runtime.config.tracing:
            log.warning("tracing changed in %s; restart keyhop to apply it", config.source)
        runtime = Runtime(config)  # first: when it fails (a CA file TLS refuses), nothing changed
        old = self.runtime.config.providers
        for name, provider in old.items():
            new = config.providers.get(name)
            if new is None or new.fingerprint != provider.fingerprint:
                self.manager.forget(name)
        self.runtime = runtime


KEYHOP: Final = web.AppKey("keyhop", Keyhop)
