"""What the Redis path adds per request, against SQLite (issue 7).

One upstream, one redis-server, and keyhop four times with the same Kibo-like route:
store sqlite or redis, each with and without `rate_limit` (the only per-request Redis
round trip: the shared GCRA budget; "blocked until" is read at most every 250 ms).
Reports req/s and p50/p99 at c=1 and c=64 per variant, and the p50 difference at c=1.

Usage: .venv/bin/python bench/stores.py [--duration S]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from procs import Service, free_port  # noqa: E402
from wrk import ensure_wrk, run_wrk  # noqa: E402


def keyhop_config(upstream: int, store: str, rate_limit: bool) -> dict[str, object]:
    provider: dict[str, object] = {
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": f"http://127.0.0.1:{upstream}/oauth/token",
            "client_id": "bench-client",
            "client_secret": "bench-secret",
        },
        "headers": {"API-Key": "{client_id}"},
    }
    if rate_limit:
        provider["rate_limit"] = {"per_second": 1_000_000, "burst": 1_000_000}
    return {
        "store": store,
        "providers": {"kiboish": provider},
        "routes": [
            {"prefix": "/kibo", "upstream": f"http://127.0.0.1:{upstream}", "provider": "kiboish"}
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    wrk = ensure_wrk()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="keyhop-stores-"))
    py = sys.executable
    up_port = free_port()
    upstream = Service(
        "upstream", [py, str(BENCH / "upstream.py"), "--port", str(up_port)], up_port, work / "u"
    )
    redis_port = free_port()
    redis = Service(
        "redis",
        [
            redis_bin,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(work),
        ],
        redis_port,
        work / "redis.log",
    )
    variants = {
        "sqlite": (f"sqlite://{work}/tokens.db", False),
        "sqlite+rate_limit": (f"sqlite://{work}/tokens2.db", True),
        "redis": (f"redis://127.0.0.1:{redis_port}/0", False),
        "redis+rate_limit": (f"redis://127.0.0.1:{redis_port}/1", True),
    }
    services: list[Service] = [upstream, redis]
    try:
        upstream.start()
        redis.start()
        upstream.wait_tcp()
        redis.wait_tcp()
        keyhops = {}
        for name, (store, rate) in variants.items():
            port = free_port()
            config = work / f"{name}.yaml"
            config.write_text(yaml.safe_dump(keyhop_config(upstream.port, store, rate)))
            argv = [
                py,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ]
            service = Service(name, argv, port, work / f"{name}.log")
            service.start(cwd=ROOT)
            services.append(service)
            keyhops[name] = service
        for service in keyhops.values():
            service.wait_http("/-/health")
            service.wait_http("/kibo/small")  # the token is fetched and cached
        print("| store | req/s c=1 | p50 c=1 | p99 c=1 | req/s c=64 | p50 c=64 | p99 c=64 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        p50: dict[str, float] = {}
        for name, service in keyhops.items():
            url = f"{service.base_url}/kibo/small"
            one = run_wrk(wrk, url, 1, 1, args.duration)
            many = run_wrk(wrk, url, 2, 64, args.duration)
            p50[name] = one.p50_ms
            print(
                f"| {name} | {one.rps:,.0f} | {one.p50_ms:.3f} | {one.p99_ms:.3f} | "
                f"{many.rps:,.0f} | {many.p50_ms:.3f} | {many.p99_ms:.3f} |"
            )
        print()
        print(f"- redis - sqlite p50 at c=1: {p50['redis'] - p50['sqlite']:+.3f} ms")
        print(
            "- redis+rate_limit - sqlite+rate_limit p50 at c=1: "
            f"{p50['redis+rate_limit'] - p50['sqlite+rate_limit']:+.3f} ms "
            "(one Redis round trip per request: the shared GCRA budget)"
        )
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
