"""Vectors as the processes prove them (SPEC 5.1): `keyhop check` and `keyhop serve` refuse
a recipe whose published example does not reproduce (exit 2, the computed message shown,
never a key), and a SIGHUP with such a recipe keeps the old signer signing."""

from __future__ import annotations

import asyncio
import copy
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from proxy.sandbox.exchange import FakeExchange
from tests.conftest import StartUpstream
from tests.e2e.test_signing_e2e import shipped_exchange_provider
from tests.support import ROOT, KeyhopProcess, free_port, write_config

WRONG = "0" * 64
SHIPPED_KEY = "sandbox-exchange-secret-key"


def exchange_config(base: str, ca_file: str, *, broken: bool = False) -> dict[str, Any]:
    provider = copy.deepcopy(shipped_exchange_provider())
    if broken:
        provider["sign"]["vectors"][0]["expect"]["signature"] = WRONG
    return {
        "store": "memory:",
        "providers": {"exchange": {**provider, "ca_file": ca_file}},
        "routes": [{"prefix": "/x", "upstream": base, "provider": "exchange"}],
    }


def keyhop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_and_serve_refuse_a_recipe_whose_vector_does_not_reproduce(
    tmp_path: Path, ca_file: str
) -> None:
    config = write_config(
        tmp_path / "k.yaml", exchange_config("https://127.0.0.1:9", ca_file, broken=True)
    )
    check = keyhop("check", "--config", str(config))
    assert check.returncode == 2
    assert "providers.exchange.sign.vectors[0]" in check.stderr
    # Binance's documented signature, as keyhop computed it, next to the wrong expectation
    assert "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71" in check.stderr
    assert WRONG in check.stderr
    vector_key = shipped_exchange_provider()["sign"]["vectors"][0]["given"]["key"]
    for text in (check.stdout, check.stderr):
        assert SHIPPED_KEY not in text and vector_key not in text
    serve = keyhop("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert serve.returncode == 2
    assert "providers.exchange.sign.vectors[0]" in serve.stderr + serve.stdout


async def test_a_reload_with_a_failing_vector_keeps_the_old_signer_signing(
    upstream: StartUpstream,
    processes: Callable[..., KeyhopProcess],
    tmp_path: Path,
    ca_file: str,
) -> None:
    fake = FakeExchange()
    base = await upstream(fake.app)
    path = write_config(tmp_path / "k.yaml", exchange_config(base, ca_file))
    proc = processes(path)
    target = proc.url + "/x/api/v3/account?recvWindow=5000"
    async with aiohttp.ClientSession() as session:
        async with session.get(target) as resp:
            assert resp.status == 200, await resp.text()
        write_config(path, exchange_config(base, ca_file, broken=True))
        proc.send(signal.SIGHUP)
        for _ in range(200):
            if re.search(r"reload.*(fail|error|invalid)", proc.logs(), re.I):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no reload failure logged:\n{proc.logs()}")
        async with session.get(target) as resp:
            assert resp.status == 200, await resp.text()
    logs = proc.logs()
    assert "vectors[0]" in logs
    assert SHIPPED_KEY not in logs
    assert fake.stats()["refused"] == 0 and fake.resource_requests == 2
