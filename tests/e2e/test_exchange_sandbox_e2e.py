"""The README's try-it line for the signed exchange: `keyhop sandbox` and
`keyhop serve --config config/sandbox.yaml`, both real processes (the stack of
tests/test_sandbox_e2e.py), answer 200 through keyhop and Binance's -1022 without it."""

from __future__ import annotations

import aiohttp

from tests.support import KeyhopProcess
from tests.test_sandbox_e2e import stack  # noqa: F401  (the fixture)


async def test_the_exchange_route_is_signed_by_keyhop_and_refused_without_it(
    stack: tuple[str, str, KeyhopProcess],  # noqa: F811
) -> None:
    sandbox, keyhop, proc = stack
    target = "/exchange/api/v3/account?recvWindow=5000"
    async with aiohttp.ClientSession() as session:
        async with session.get(keyhop + target) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["provider"] == "exchange" and body["path"] == "/exchange/api/v3/account"
        assert body["query"].startswith("recvWindow=5000&timestamp=")
        async with session.get(sandbox + target) as resp:
            assert resp.status == 401
            assert await resp.json() == {
                "code": -1022,
                "msg": "Signature for this request is not valid.",
            }
        async with session.get(sandbox + "/-/sandbox/stats") as resp:
            stats = await resp.json()
        async with session.get(sandbox + "/") as resp:
            index = await resp.text()
    assert stats["exchange"]["refused"] == 1 and stats["exchange"]["resource_requests"] == 2
    assert "sandbox-exchange-api-key" in index and "sandbox-exchange-secret-key" in index
    assert "sandbox-exchange-secret-key" not in proc.logs()
