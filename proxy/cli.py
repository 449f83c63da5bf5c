"""The `keyhop` command (SPEC 2). Config problems go to stderr with exit 2, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError, StoreUnavailable

DEFAULT_CONFIG = os.environ.get("KEYHOP_CONFIG", "config/keyhop.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyhop", description="A local authenticating reverse proxy for partner APIs."
    )
    parser.add_argument("--version", action="version", version=f"keyhop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=DEFAULT_CONFIG, help="route map (%(default)s)")
        return p

    serve = with_config(commands.add_parser("serve", help="run the proxy"))
    serve.add_argument("--listen", help="HOST:PORT, overrides the config's listen")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", help="N or auto: worker processes (overrides the config's)")
    # how the supervisor starts a worker (proxy/supervisor.py); not for people
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fds", help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", help=argparse.SUPPRESS)

    with_config(commands.add_parser("check", help="validate the config; exit 0 or 2"))

    login = with_config(commands.add_parser("login", help="authorization-code login"))
    login.add_argument("provider")
    login.add_argument("--tenant")
    login.add_argument("--code", help="the code or the whole redirect URL (else asked for)")

    tokens = with_config(commands.add_parser("tokens", help="what the store holds"))
    tokens.add_argument("action", nargs="?", default="list", choices=["list", "revoke"])
    tokens.add_argument("provider", nargs="?")
    tokens.add_argument("--tenant")

    sandbox = commands.add_parser("sandbox", help="local emulation of the five providers")
    sandbox.add_argument("--listen", default="127.0.0.1:9090")
    return parser


def _load(path: str, listen: str | None = None, workers: str | None = None) -> Config | None:
    try:
        return load_config(path, listen_override=listen, workers_override=workers)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); nothing started", file=sys.stderr)
        return None
    except Exception as exc:  # a shape the validator did not foresee: still no traceback
        print(
            f"{path}: could not be read as a keyhop config ({type(exc).__name__})", file=sys.stderr
        )
        return None


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _tokens(config: Config, action: str, provider: str | None, tenant: str | None) -> int:
    from proxy.store import open_store

    store = open_store(config.store)
    try:
        await store.open()
    except (OSError, sqlite3.Error) as exc:
        print(f"keyhop tokens: cannot open the store {store.description}: {exc}", file=sys.stderr)
        return 1
    try:
        if action == "revoke":
            if provider is None:
                print("keyhop tokens revoke: name a PROVIDER", file=sys.stderr)
                return 2
            if provider not in config.providers:
                print(f"keyhop tokens revoke: unknown provider {provider!r}", file=sys.stderr)
                return 2
            removed = await store.delete(provider, tenant)
            who = provider + (f" (tenant {tenant})" if tenant else "")
            print(f"revoked {who}" if removed else f"nothing stored for {who}")
            return 0
        items = [
            i for i in await store.items() if i.provider in config.providers
        ]  # pending logins and providers no longer configured are not credentials to list
        if provider is not None:
            items = [i for i in items if i.provider == provider]
        if not items:
            print(f"the store ({store.description}) holds nothing")
            return 0
        print(f"{'PROVIDER':<20} {'TENANT':<26} {'KIND':<8} {'REFRESH':<8} EXPIRES")
        for item in items:
            c = item.credential
            print(
                f"{item.provider:<20} {item.tenant or '-':<26} {c.kind:<8} "
                f"{'yes' if c.refresh_token else 'no':<8} {_when(c.expires_at)}"
            )
        return 0
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sandbox":
        from proxy.sandbox import main as sandbox_main

        return sandbox_main(args.listen)

    worker_index = getattr(args, "worker_index", None)
    workers = getattr(args, "workers", None) if worker_index is None else None
    if worker_index is not None:
        from proxy.config import READ_FROM
        from proxy.supervisor import CONFIG_COPY

        # what the supervisor checked, named as the user's file
        READ_FROM[args.config] = os.path.join(args.worker_dir, CONFIG_COPY)
    config = _load(args.config, getattr(args, "listen", None), workers)
    if config is None:
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.routes)} routes, {len(config.providers)} providers)")
        return 0
    if args.command == "serve":
        from proxy.logs import setup_logging
        from proxy.server import run

        formatter = setup_logging(args.log_level)
        link = None
        if worker_index is not None:
            from proxy.worker import WorkerLink

            link = WorkerLink.parse(worker_index, args.worker_fds, args.worker_dir)
            formatter.fields = {"pid": os.getpid(), "worker": worker_index}
        elif config.workers > 1:
            from proxy.supervisor import supervise

            return supervise(config, args.config, args.listen, args.workers, args.log_level)
        try:
            run(config, args.config, args.listen, formatter, link)
        except StoreUnavailable as exc:
            print(f"keyhop: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"keyhop: cannot listen on {config.listen}: {exc.strerror}", file=sys.stderr)
            return 1
        return 0
    if args.command == "tokens":
        return asyncio.run(_tokens(config, args.action, args.provider, args.tenant))
    if args.command == "login":
        from proxy.login import login

        return asyncio.run(login(config, args.provider, args.tenant, args.code))
    return 2
