"""The live state of one keyhop process: services that outlive a reload (HTTP session, store,
credentials, limiter, metrics) and the config-derived Runtime that SIGHUP swaps whole."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import ClientSession, ClientTimeout, web

from proxy.config import Config, ProviderConfig
from proxy.metrics import Metrics
from proxy.ratelimit import Limiter
from proxy.routing import RouteTable
from proxy.schema import Redactor
from proxy.store import Store
from proxy.token_cache import CredentialManager

log = logging.getLogger("keyhop")


@dataclass(frozen=True)
class ProviderRuntime:
    config: ProviderConfig
    ssl: ssl.SSLContext | bool
    timeout: ClientTimeout

    @property
    def needs_credential(self) -> bool:
        return self.config.scheme.kind not in ("static", "none")


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True  # aiohttp's default: verified against the system trust store
    return ssl.create_default_context(cafile=ca_file)


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
                _ssl_context(p.ca_file),
                ClientTimeout(
                    total=None, sock_connect=p.timeouts.connect, sock_read=p.timeouts.read
                ),
            )
            for name, p in self.config.providers.items()
        }
        self.client_keys = tuple(k.reveal().encode() for k in self.config.client_keys)
        self.redact = Redactor(self.config.secrets)


@dataclass
class Keyhop:
    runtime: Runtime
    store: Store
    limiter: Limiter
    metrics: Metrics
    clock: Callable[[], float] = time.time
    session: ClientSession | None = None
    credentials: CredentialManager | None = None
    started_at: float = field(default_factory=time.time)
    #: pending browser logins: state -> (provider, tenant, pkce verifier, created)
    logins: dict[str, tuple[str, str | None, str | None, float]] = field(default_factory=dict)

    @property
    def http(self) -> ClientSession:
        assert self.session is not None, "the app is not running"
        return self.session

    @property
    def manager(self) -> CredentialManager:
        assert self.credentials is not None, "the app is not running"
        return self.credentials

    def reload(self, config: Config) -> None:
        old = self.runtime.config.providers
        for name, provider in old.items():
            new = config.providers.get(name)
            if new is None or new.fingerprint != provider.fingerprint:
                self.manager.forget(name)
        self.runtime = Runtime(config)


KEYHOP: Final = web.AppKey("keyhop", Keyhop)
