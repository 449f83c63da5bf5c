"""What an egress proxy costs keyhop's side (issue 14 item 5): opening a connection through a
CONNECT tunnel (proxy/egress.py open_tunnel + end-to-end TLS) against opening one directly,
and keep-alive requests on a tunnelled connection against a direct one.

    .venv/bin/python bench/tunnel.py [--opens 300] [--requests 10000] [--rounds 5]
                                     [--concurrency 16]

The TLS upstream (aiohttp's low-level server, a trustme certificate) and the CONNECT proxy
(proxy/sandbox/connect_proxy.py) run as subprocesses on 127.0.0.1, stopped by PID; only this
process's
CPU time is keyhop's side (time.process_time), the proxy's is reported beside it. The client
drives aiohttp's ResponseHandler over the socket as proxy/upstream.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.client_proto import ResponseHandler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.egress import ProxyTarget, open_tunnel  # noqa: E402

REQUEST = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_upstream(port: int, cert: str, key: str) -> None:
    from aiohttp import web

    async def handler(_request: web.BaseRequest) -> web.Response:
        return web.Response(body=b'{"ok": true, "pad": "' + b"x" * 180 + b'"}')

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        server = web.Server(handler)
        loop = asyncio.get_running_loop()
        await loop.create_server(server, "127.0.0.1", port, ssl=ctx)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _tls_upstream(tmp: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[int, str]:
    """Start `--serve-upstream` on a free port with a fresh trustme certificate for
    localhost; (its port, the CA file that verifies it). The process joins `procs`."""
    import trustme  # not needed by the --serve-upstream child

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    port = _free_port()
    procs.append(subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port),
         str(tmp / "cert.pem"), str(tmp / "key.pem")]
    ))  # fmt: skip
    return port, str(tmp / "ca.pem")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each by its PID, SIGKILL the ones still there after 5 s."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _request(conn: ResponseHandler) -> None:
    assert conn.transport is not None
    conn.set_response_params(read_until_eof=False)
    conn.transport.write(REQUEST)
    message, payload = await conn.read()
    assert message.code == 200
    await payload.read()


async def _connect(
    ctx: ssl.SSLContext, port: int, proxy: ProxyTarget | None
) -> tuple[asyncio.BaseTransport, ResponseHandler]:
    loop = asyncio.get_running_loop()
    if proxy is None:
        return await loop.create_connection(
            lambda: ResponseHandler(loop), "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
    sock = await open_tunnel(proxy, "localhost", port, timeout=5)
    return await loop.create_connection(
        lambda: ResponseHandler(loop), sock=sock, ssl=ctx, server_hostname="localhost"
    )


async def _measure(n: int, step: Callable[[], Awaitable[None]]) -> tuple[list[float], float]:
    for _ in range(min(20, n)):  # warm-up
        await step()
    walls = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await step()
        walls.append(time.perf_counter() - start)
    return walls, time.process_time() - cpu


async def run(opens: int, requests: int, rounds: int, concurrency: int, ctx: ssl.SSLContext,
              up: int, proxy_pid: int, proxy: ProxyTarget) -> None:  # fmt: skip
    print(f"{'':28} {'wall p50':>10} {'wall p90':>10} {'CPU here':>10} {'CPU proxy':>10}")
    for label, via in (("open, direct", None), ("open, through the tunnel", proxy)):

        async def open_one(via: ProxyTarget | None = via) -> None:
            transport, conn = await _connect(ctx, up, via)
            await _request(conn)
            transport.close()

        before = _cpu_seconds(proxy_pid)
        walls, cpu = await _measure(opens, open_one)
        proxy_cpu = _cpu_seconds(proxy_pid) - before
        _report(label, walls, cpu, proxy_cpu, opens, "ms", 1e3)
    # keep-alive: rounds alternate between the two, and each keeps its quietest round (the
    # least CPU per request): on a shared machine the noise only ever adds
    best: dict[str, tuple[list[float], float, float]] = {}
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        for label, via in (("keep-alive, direct", None), ("keep-alive, tunnelled", proxy)):
            transport, conn = await _connect(ctx, up, via)

            async def one(conn: ResponseHandler = conn) -> None:
                await _request(conn)

            before = _cpu_seconds(proxy_pid)
            walls, cpu = await _measure(per_round, one)
            proxy_cpu = _cpu_seconds(proxy_pid) - before
            transport.close()
            if label not in best or cpu < best[label][1]:
                best[label] = (walls, cpu, proxy_cpu)
    for label, (walls, cpu, proxy_cpu) in best.items():
        _report(label, walls, cpu, proxy_cpu, per_round, "us", 1e6)
    direct, tunnelled = best["keep-alive, direct"][1], best["keep-alive, tunnelled"][1]
    print(f"keep-alive CPU here, tunnelled / direct: {tunnelled / direct:.2f}")
    # the same with `concurrency` connections busy at once, as under load: the event loop
    # then rarely sleeps between answers, so the CPU per request is the work, not the waits
    cpu_best: dict[str, float] = {}
    for _ in range(rounds):
        for label, via in (("direct", None), ("tunnelled", proxy)):
            conns = [await _connect(ctx, up, via) for _ in range(concurrency)]
            each = max(1, per_round // concurrency)

            async def worker(conn: ResponseHandler, n: int) -> None:
                for _ in range(n):
                    await _request(conn)

            await asyncio.gather(*(worker(c, 10) for _, c in conns))  # warm-up
            cpu = time.process_time()
            await asyncio.gather(*(worker(c, each) for _, c in conns))
            cpu = (time.process_time() - cpu) / (each * concurrency)
            for transport, _ in conns:
                transport.close()
            cpu_best[label] = min(cpu, cpu_best.get(label, cpu))
    direct, tunnelled = cpu_best["direct"], cpu_best["tunnelled"]
    print(
        f"keep-alive x{concurrency} connections, CPU here per request: direct "
        f"{direct * 1e6:.1f}us, tunnelled {tunnelled * 1e6:.1f}us, ratio {tunnelled / direct:.2f}"
    )


def _report(label: str, walls: list[float], cpu: float, proxy: float, n: int, unit: str,
            scale: float) -> None:  # fmt: skip
    walls.sort()
    p50, p90 = statistics.median(walls), walls[int(len(walls) * 0.9)]
    cells = [f"{v * scale:8.1f}{unit}" for v in (p50, p90, cpu / n, proxy / n)]
    print(f"{label:28} " + " ".join(f"{c:>10}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=300)
    parser.add_argument("--requests", type=int, default=10000, help="keep-alive, in all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve-upstream", nargs=3, metavar=("PORT", "CERT", "KEY"))
    args = parser.parse_args()
    if args.serve_upstream:
        port, cert, key = args.serve_upstream
        _serve_upstream(int(port), cert, key)
        return
    import trustme

    ca = trustme.CA()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        up, px = _free_port(), _free_port()
        try:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve-upstream", str(up), str(cert), str(key)]
            ))  # fmt: skip
            procs.append(subprocess.Popen(
                [
                    sys.executable, "-m", "proxy.sandbox.connect_proxy",
                    "--listen", f"127.0.0.1:{px}",
                ],
                cwd=ROOT, stdout=subprocess.DEVNULL,
            ))  # fmt: skip
            _wait_port(up)
            _wait_port(px)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.set_alpn_protocols(["http/1.1"])
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            proxy = ProxyTarget("127.0.0.1", px)
            options = (args.opens, args.requests, args.rounds, args.concurrency)
            runner(run(*options, ctx, up, procs[1].pid, proxy))
        finally:
            _stop(procs)


if __name__ == "__main__":
    main()
