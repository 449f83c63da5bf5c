"""`keyhop serve`: run the app with SIGHUP reload and SIGTERM drain (SPEC 4.7)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sqlite3
import sys

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, load_config
from proxy.errors import ConfigError, StoreUnavailable
from proxy.forward import handle
from proxy.logs import AccessWriter, JsonFormatter
from proxy.runtime import KEYHOP

log = logging.getLogger("keyhop")


async def serve(config: Config, path: str, listen: str | None, formatter: JsonFormatter) -> None:
    app = create_app(config)
    kh = app[KEYHOP]
    formatter.redact = kh.runtime.redact
    writer = AccessWriter(sys.stderr)
    kh.access_log = writer
    kh.answers_expect = True
    # the app owns the services (HTTP session, store, credentials) through its cleanup_ctx;
    # requests go through aiohttp's low-level server straight to forward.handle: no router,
    # no middleware chain, nothing per request that keyhop does not need
    app.freeze()
    try:
        await app.startup()
    except (OSError, sqlite3.Error) as exc:
        await app.cleanup()
        raise StoreUnavailable(
            f"cannot open the token store {kh.store.description}: {exc}"
        ) from None

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await handle(kh, request)

    server = web.Server(handler, access_log=None, max_field_size=16384)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.drain_timeout)
    await runner.setup()
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.listen.host, config.listen.port))
    sock.listen(1024)
    sock.setblocking(False)
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    host, port = sock.getsockname()[:2]
    log.info(
        "keyhop serving %s on http://%s:%s (store %s)",
        path,
        f"[{host}]" if ":" in host else host,
        port,
        kh.store.description,
    )

    if os.environ.get("KEYHOP_GC_TUNE", "1") == "1":
        # everything loaded so far lives as long as the process: keep it out of every
        # collection, and collect the young generation less often (requests allocate a lot)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load_config(path, listen_override=listen)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the running config: %s", problem)
            return
        if new.store != kh.runtime.config.store:
            log.warning("store changed in %s; restart keyhop to switch stores", path)
        if new.listen != kh.runtime.config.listen:
            log.warning("listen changed in %s; restart keyhop to move", path)
        kh.reload(new)
        formatter.redact = kh.runtime.redact
        log.info("reloaded %s: %d routes, %d providers", path, len(new.routes), len(new.providers))

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("draining in-flight requests (up to %g s), then exiting", config.drain_timeout)
    await runner.cleanup()  # stops listening, waits for in-flight requests
    await app.shutdown()
    await app.cleanup()
    writer.flush()
    log.info("keyhop stopped")


def run(config: Config, path: str, listen: str | None, formatter: JsonFormatter) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, path, listen, formatter))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, path, listen, formatter))
