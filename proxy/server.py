"""`keyhop serve`: run the app with SIGHUP reload and SIGTERM drain (SPEC 4.7)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.logs import JsonFormatter
from proxy.runtime import KEYHOP

log = logging.getLogger("keyhop")


async def serve(config: Config, path: str, listen: str | None, formatter: JsonFormatter) -> None:
    app = create_app(config)
    kh = app[KEYHOP]
    formatter.redact = kh.runtime.redact
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=config.drain_timeout
    )
    await runner.setup()
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.listen.host, config.listen.port))
    sock.listen(1024)
    sock.setblocking(False)
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    log.info(
        "keyhop serving %s on http://%s:%s (store %s)",
        path,
        f"[{host}]" if ":" in host else host,
        port,
        kh.store.description,
    )

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
    await runner.cleanup()
    log.info("keyhop stopped")


def run(config: Config, path: str, listen: str | None, formatter: JsonFormatter) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, path, listen, formatter))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, path, listen, formatter))
