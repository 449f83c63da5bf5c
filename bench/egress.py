"""keyhop's own CPU per pooled keep-alive request through an egress proxy against direct (issue
14, Performance: "no more CPU than a direct one (±10 %) once the tunnel is up").

    .venv/bin/python bench/egress.py [--requests 12000] [--rounds 5] [--concurrency 16]

Two `keyhop serve` processes with the same static-key route to one TLS upstream, one with
`egress_proxy: none`, one through
proxy/sandbox/connect_proxy.py; rounds alternate between them after
a warm-up that fills both pools (so the tunnels are up), and the keyhop process's CPU time
(/proc/PID/stat) is divided by the requests. Everything runs on 127.0.0.1 as subprocesses,
stopped by PID. Needs `egress_proxy` support in the config (issue 14 item 5).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tunnel import _cpu_seconds, _free_port, _stop, _tls_upstream, _wait_port  # noqa: E402


async def _load(url: str, requests: int, concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"{url}: {resp.status} {await resp.text()}")
                    await resp.read()

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=12000, help="per keyhop and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        px = _free_port()
        try:
            up, ca_file = _tls_upstream(tmp, procs)
            procs.append(subprocess.Popen(
                [
                    sys.executable, "-m", "proxy.sandbox.connect_proxy",
                    "--listen", f"127.0.0.1:{px}",
                ],
                cwd=ROOT, stdout=subprocess.DEVNULL,
            ))  # fmt: skip
            _wait_port(up)
            _wait_port(px)
            keyhops: dict[str, tuple[int, int]] = {}
            for label, egress in (("direct", "none"), ("tunnelled", f"http://127.0.0.1:{px}")):
                port = _free_port()
                config = tmp / f"{label}.yaml"
                config.write_text(yaml.safe_dump({
                    "store": "memory:",
                    "egress_proxy": egress,
                    "providers": {"p": {"auth": {"type": "static"}, "headers": {"X-Key": "k"},
                                        "ca_file": ca_file}},
                    "routes": [{"prefix": "/r", "upstream": f"https://localhost:{up}",
                                "provider": "p"}],
                }))  # fmt: skip
                with open(tmp / f"{label}.log", "wb") as log:  # the child keeps its own copy
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "proxy", "serve", "--config", str(config),
                         "--listen", f"127.0.0.1:{port}"],
                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    ))  # fmt: skip
                _wait_port(port)
                keyhops[label] = (port, procs[-1].pid)
            for port, _ in keyhops.values():  # fills the pools: the tunnels are up
                asyncio.run(_load(f"http://127.0.0.1:{port}/r/small", 500, args.concurrency))
            per_round: dict[str, list[float]] = {label: [] for label in keyhops}
            for _ in range(args.rounds):
                for label, (port, pid) in keyhops.items():
                    before = _cpu_seconds(pid)
                    url = f"http://127.0.0.1:{port}/r/small"
                    asyncio.run(_load(url, args.requests, args.concurrency))
                    per_round[label].append((_cpu_seconds(pid) - before) / args.requests)
            direct, tunnelled = per_round["direct"], per_round["tunnelled"]
            for label, values in per_round.items():
                print(f"{label:10} " + " ".join(f"{v * 1e6:6.1f}us" for v in values))
            ratios = sorted(t / d for t, d in zip(tunnelled, direct, strict=True))
            print(
                f"keyhop CPU per request, tunnelled / direct: median "
                f"{ratios[len(ratios) // 2]:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        finally:
            _stop(procs)


if __name__ == "__main__":
    main()
