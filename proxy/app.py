"""create_app(config): the aiohttp application and the services it owns."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import ClientSession, DummyCookieJar, TCPConnector, hdrs, web

from proxy.auth import CredentialFlow
from proxy.config import Config, ProviderConfig
from proxy.forward import dispatch, run_flow
from proxy.metrics import Metrics
from proxy.ratelimit import Limiter, LocalLimiter
from proxy.redis_store import RedisLimiter, RedisStore
from proxy.runtime import KEYHOP, Keyhop, Runtime
from proxy.store import Store, open_store
from proxy.token_cache import CredentialManager
from proxy.tokens import Credential


async def _services(app: web.Application) -> AsyncIterator[None]:
    kh = app[KEYHOP]
    # never follow redirects (per request), never decompress, never add headers the client
    # did not send: keyhop forwards, it does not browse
    kh.session = ClientSession(
        connector=TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60),
        auto_decompress=False,
        skip_auto_headers=(hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE),
        # upstream cookies belong to the client: passed through, never kept
        cookie_jar=DummyCookieJar(),
    )
    await kh.store.open()

    async def runner(provider: ProviderConfig, flow: CredentialFlow) -> Credential:
        return await run_flow(kh, provider, flow)

    kh.credentials = CredentialManager(
        kh.store,
        runner,
        clock=kh.clock,
        observer=kh.metrics,
        lock_ttl=kh.runtime.config.fetch_lock_ttl,
    )
    try:
        yield
    finally:
        await kh.credentials.close()
        await kh.session.close()
        await kh.store.close()


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application(middlewares=[dispatch], handler_args={"max_field_size": 16384})
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
