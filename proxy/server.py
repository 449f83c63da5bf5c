"""`keyhop serve`: run the app with SIGHUP reload and SIGTERM drain (SPEC 4.7).

Limits on what a client connection may hold (issue 12), each with its own clock:
- HEAD_TIMEOUT: from the first byte of a request head to its blank line; a head dribbled
  or never finished is answered 408 and the connection closed.
- MAX_HEAD_BYTES: a request head in total (aiohttp limits each line, LINE_LIMIT, and the
  number of fields, not the sum); over it, 431 and the connection closed.
- KEEPALIVE_TIMEOUT: a connection with no request in progress (after an answer, or since
  it opened) is closed after this long; aiohttp's own default is an hour.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from proxy.aiohttp_private import Express, GuardedRequestHandler, ProtocolServer
from proxy.app import LINE_LIMIT, create_app
from proxy.config import ClientTimeouts, Config, load_config
from proxy.errors import ConfigError, StoreUnavailable
from proxy.forward import handle
from proxy.lane import Lane, head_size
from proxy.logs import AccessWriter, JsonFormatter
from proxy.runtime import KEYHOP

if TYPE_CHECKING:
    from proxy.worker import WorkerLink

log = logging.getLogger("keyhop")

HEAD_TIMEOUT: Final = ClientTimeouts.head  # 10 s; `timeouts.head` in the config
MAX_HEAD_BYTES: Final = 64 * 1024
KEEPALIVE_TIMEOUT: Final = ClientTimeouts.keepalive  # 75 s, nginx's; `timeouts.keepalive`
_REASONS: Final = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def _json_answer(status: int, text: str) -> bytes:
    body = json.dumps({"error": "bad_request", "message": text}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Handler(GuardedRequestHandler):
    """aiohttp answers a request its parser refused (a header over the size limit, raw
    non-ASCII bytes in the target, a malformed line) with plain text and logs a traceback;
    keyhop's clients get the same JSON as for every other refusal, and the log one line."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent; cannot send an error after it")
        if isinstance(exc, LineTooLong):
            limit = LINE_LIMIT // 1024
            text = f"a request line or header is longer than keyhop accepts ({limit} KiB)"
        else:
            text = "the request is not valid HTTP/1.1 (malformed line, header or target)"
        log.warning("refused a malformed request from %s: %s", request.remote, type(exc).__name__)
        response = web.json_response({"error": "bad_request", "message": text}, status=status)
        response.force_close()
        return response

    def refusal(self, status: int, text: str) -> bytes:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.warning("refused a request head from %s: %s", peer[0] if peer else "?", text)
        return _json_answer(status, text)


def create_server(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    *,
    head_timeout: float = HEAD_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_head: int = MAX_HEAD_BYTES,
    express: Express | None = None,
) -> web.Server:
    """keyhop's low-level HTTP server: aiohttp's, with keyhop's JSON for refused requests
    and the limits above (a whole head over `max_head` that arrived in one read is refused
    here too, before `handler` sees it)."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        if head_size(request.method, request.raw_path, request.raw_headers) > max_head:
            text = f"the request head is over {max_head // 1024} KiB"
            log.warning("refused a request head from %s: %s", request.remote, text)
            response = web.json_response({"error": "bad_request", "message": text}, status=431)
            response.force_close()
            return response
        return await handler(request)

    return ProtocolServer(
        guarded,
        protocol=partial(_Handler, head_timeout=head_timeout, max_head=max_head, express=express),
        access_log=None,
        max_field_size=LINE_LIMIT,
        max_line_size=LINE_LIMIT,
        keepalive_timeout=keepalive_timeout,
    )


async def serve(
    config: Config,
    path: str,
    listen: str | None,
    formatter: JsonFormatter,
    worker: WorkerLink | None = None,
) -> None:
    app = create_app(config)
    kh = app[KEYHOP]
    formatter.redact = kh.runtime.redact
    writer = AccessWriter(sys.stderr, pid=os.getpid() if worker is not None else None)
    if worker is not None:
        worker.attach(kh)  # SPEC 7: one budget and one view for all workers
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

    limits = config.timeouts  # read at start: a reload that changes them needs a restart
    # the express lane serves the usual request without a task (proxy/lane/);
    # KEYHOP_EXPRESS=0 turns it off (bench/ measures both)
    express = Lane(kh) if os.environ.get("KEYHOP_EXPRESS", "1") != "0" else None
    server = create_server(
        handler, head_timeout=limits.head, keepalive_timeout=limits.keepalive, express=express
    )
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.drain_timeout)
    await runner.setup()
    if worker is not None:
        sock = worker.socket()  # bound by the supervisor (SO_REUSEPORT), one per worker
    else:
        sock = listening_socket(config.listen.host, config.listen.port)
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
        old = kh.runtime.config.timeouts
        if (new.timeouts.head, new.timeouts.keepalive) != (old.head, old.keepalive):
            log.warning("timeouts.head/keepalive changed in %s; restart keyhop to apply", path)
        try:
            kh.reload(new)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("reload failed, keeping the running config: %s: %s", path, exc)
            return
        formatter.redact = kh.runtime.redact
        log.info("reloaded %s: %d routes, %d providers", path, len(new.routes), len(new.providers))

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if worker is not None:
        worker.started(stop.set)
    await stop.wait()
    log.info("draining in-flight requests (up to %g s), then exiting", config.drain_timeout)
    try:
        # stops listening, waits for in-flight requests; aiohttp's own shutdown would wait
        # its timeout twice (once for the requests, once more after cancelling them)
        await asyncio.wait_for(runner.cleanup(), config.drain_timeout)
    except TimeoutError:
        left = [task for task in kh.metrics.in_flight if not task.done()]
        cut = express.cut() if express is not None else 0  # the lane's: no task to cancel
        log.warning("drain timeout: cutting %d request(s) still in flight", len(left) + cut)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2)
    if worker is not None:
        await worker.close()
    await app.shutdown()
    await app.cleanup()
    writer.flush()
    log.info("keyhop stopped")


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """`reuse_port`: one of several sockets on the same address, between which the kernel
    spreads new connections evenly (SO_REUSEPORT, Linux 3.9)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def run(
    config: Config,
    path: str,
    listen: str | None,
    formatter: JsonFormatter,
    worker: WorkerLink | None = None,
) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, path, listen, formatter, worker))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, path, listen, formatter, worker))
