"""What tracing costs keyhop per request (issue 15 item 3: "when off it costs nothing
measurable").

    .venv/bin/python bench/tracing.py [--requests 12000] [--rounds 5] [--concurrency 16]

Four `keyhop serve` processes with the same static-key route to one TLS upstream: two with
tracing off (their difference is this machine's noise band: with tracing off, the request
path only asks `kh.tracing is None`), one exporting every span to a local OTLP/HTTP sink,
and one whose OTLP endpoint is a closed port (spans dropped, counted). Rounds alternate
between them after a warm-up; keyhop's CPU time (/proc/PID/stat) is divided by the
requests. Everything runs on 127.0.0.1 as subprocesses, stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.egress import _load  # noqa: E402
from bench.tunnel import _cpu_seconds, _free_port, _stop, _tls_upstream, _wait_port  # noqa: E402

SINK = """
import sys
from aiohttp import web
async def take(request):
    await request.read()
    return web.Response(content_type="application/x-protobuf", body=b"")
app = web.Application()
app.router.add_post("/v1/traces", take)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=12000, help="per keyhop and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sink = _free_port()
        try:
            up, ca_file = _tls_upstream(tmp, procs)
            procs.append(subprocess.Popen([sys.executable, "-c", SINK, str(sink)]))
            _wait_port(up)
            _wait_port(sink)
            variants = {
                "off": None,
                "off-again": None,
                "on": f"http://127.0.0.1:{sink}",
                "on-dead": f"http://127.0.0.1:{_free_port()}",  # nothing listens there
            }
            keyhops: dict[str, tuple[int, int]] = {}
            for label, endpoint in variants.items():
                port = _free_port()
                data: dict[str, object] = {
                    "store": "memory:",
                    "providers": {"p": {"auth": {"type": "static"}, "headers": {"X-Key": "k"},
                                        "ca_file": ca_file}},
                    "routes": [{"prefix": "/r", "upstream": f"https://localhost:{up}",
                                "provider": "p"}],
                }  # fmt: skip
                if endpoint is not None:
                    data["tracing"] = {"otlp_endpoint": endpoint}
                config = tmp / f"{label}.yaml"
                config.write_text(yaml.safe_dump(data))
                with open(tmp / f"{label}.log", "wb") as log:  # the child keeps its own copy
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "proxy", "serve", "--config", str(config),
                         "--listen", f"127.0.0.1:{port}"],
                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    ))  # fmt: skip
                _wait_port(port)
                keyhops[label] = (port, procs[-1].pid)
            for port, _ in keyhops.values():  # warm-up: pools filled, code paths hot
                asyncio.run(_load(f"http://127.0.0.1:{port}/r/small", 1000, args.concurrency))
            per_round: dict[str, list[float]] = {label: [] for label in keyhops}
            for _ in range(args.rounds):
                for label, (port, pid) in keyhops.items():
                    before = _cpu_seconds(pid)
                    url = f"http://127.0.0.1:{port}/r/small"
                    asyncio.run(_load(url, args.requests, args.concurrency))
                    per_round[label].append((_cpu_seconds(pid) - before) / args.requests)
            for label, values in per_round.items():
                print(f"{label:10} " + " ".join(f"{v * 1e6:6.1f}us" for v in values))
            off = per_round["off"]
            for label in ("off-again", "on", "on-dead"):
                ratios = sorted(x / o for x, o in zip(per_round[label], off, strict=True))
                print(
                    f"keyhop CPU per request, {label} / off: median "
                    f"{ratios[len(ratios) // 2]:.2f} "
                    f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
                )
        finally:
            _stop(procs)


if __name__ == "__main__":
    main()
