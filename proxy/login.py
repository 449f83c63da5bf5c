"""`keyhop login PROVIDER`: the authorization-code login from a terminal (SPEC 2)."""

from __future__ import annotations

import sys

from proxy.config import Config


async def login(config: Config, provider: str, tenant: str | None, code: str | None) -> int:
    print("keyhop login: not available in this build", file=sys.stderr)
    return 2
