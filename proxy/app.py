"""create_app(config): the aiohttp application and the services it owns."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from aiohttp import ClientRequest, ClientSession, DummyCookieJar, TCPConnector, hdrs, web
from multidict import CIMultiDict

from proxy.auth import CredentialFlow
from proxy.config import Config
from proxy.flows import run_flow
from proxy.forward import dispatch, unrouted
from proxy.metrics import Metrics
from proxy.providers import ProviderConfig
from proxy.ratelimit import Limiter, LocalLimiter
from proxy.redis_store import RedisLimiter, RedisStore
from proxy.runtime import KEYHOP, Keyhop, Runtime
from proxy.state_metrics import StateCollector
from proxy.store import Store, open_store
from proxy.token_cache import CredentialManager
from proxy.tokens import Credential

#: the longest request line and header field keyhop's server takes (aiohttp's default is 8190)
LINE_LIMIT: Final = 16 * 1024

_ADDS_NOTHING: Final = CIMultiDict(
    (name, None) for name in (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
)


class _ForwardedRequest(ClientRequest):
    """A client request that adds no header of its own (Accept, Accept-Encoding, User-Agent,
    a default Content-Type): keyhop forwards what the client sent. Same effect as
    `skip_auto_headers`, without the copy of every request's headers that costs."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _ADDS_NOTHING


async def _services(app: web.Application) -> AsyncIterator[None]:
    kh = app[KEYHOP]
    await kh.store.open()  # first: when it fails, nothing else is left open
    # never follow redirects (per request), never decompress, never add headers the client
    # did not send: keyhop forwards, it does not browse
    kh.session = ClientSession(
        connector=TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60),
        auto_decompress=False,
        request_class=_ForwardedRequest,
        # upstream cookies belong to the client: passed through, never kept
        cookie_jar=DummyCookieJar(),
    )
    kh.deadlines.start()
    kh.upstreams.start()
    if kh.runtime.config.tracing is not None:
        from proxy.tracing import Tracing  # opentelemetry is imported only when it is used

        kh.tracing = Tracing(kh.runtime.config.tracing)
        kh.tracing.register(kh.metrics.registry)

    async def runner(provider: ProviderConfig, flow: CredentialFlow) -> Credential:
        return await run_flow(kh, provider, flow)

    kh.credentials = CredentialManager(
        kh.store,
        runner,
        clock=kh.clock,
        observer=kh.metrics,
        lock_ttl=kh.runtime.config.fetch_lock_ttl,
    )
    kh.metrics.registry.register(StateCollector(kh))
    try:
        yield
    finally:
        if kh.tracing is not None:
            kh.tracing.close()
        await kh.credentials.close()
        await kh.deadlines.stop()
        await kh.upstreams.close()
        await kh.session.close()
        await kh.store.close()


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application(
        middlewares=[unrouted],
        handler_args={"max_field_size": LINE_LIMIT, "max_line_size": LINE_LIMIT},
    )
    # one catch-all route hands every request to dispatch ([\s\S]: even a decoded newline)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", dispatch)
    store = store if store is not None else open_store(config.store)
    limiter: Limiter = LocalLimiter(clock)
    if isinstance(store, RedisStore):
        limiter = RedisLimiter(store, clock)  # one budget across replicas
    app[KEYHOP] = Keyhop(
        runtime=Runtime(config),
        store=store,
        limiter=limiter,
        metrics=Metrics(),
        clock=clock,
    )
    app.cleanup_ctx.append(_services)
    return app
