"""`keyhop login PROVIDER [--tenant ID]`: the authorization-code login from a terminal.

Prints the authorize URL, then takes whichever comes first: a pasted code (or the whole
redirect URL: Saison's redirect lands on the vendor's own page showing the code), or the
callback of a running keyhop finishing the same login (pending logins live in the store).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from proxy.app import create_app
from proxy.auth.oauth2 import AuthorizationCode
from proxy.callbacks import LOGIN_STATE, LOGIN_TTL, begin_login, finish_login
from proxy.config import Config
from proxy.errors import ProxyError
from proxy.providers import TENANT_RE, TENANT_RULE
from proxy.runtime import KEYHOP


def parse_pasted(text: str) -> tuple[str | None, str | None]:
    """(code, state) from a pasted code or a whole redirect URL."""
    text = text.strip()
    if "code=" in text:
        query = parse_qs(urlsplit(text).query if "?" in text else text)
        codes, states = query.get("code", []), query.get("state", [])
        return (codes[0] if codes else None), (states[0] if states else None)
    return (text or None), None


def _read_line_in_background(loop: asyncio.AbstractEventLoop) -> asyncio.Future[str]:
    future: asyncio.Future[str] = loop.create_future()

    def deliver(line: str) -> None:
        if not future.done():
            future.set_result(line)

    def read() -> None:
        loop.call_soon_threadsafe(deliver, sys.stdin.readline())

    threading.Thread(target=read, daemon=True).start()  # daemon: never blocks the exit
    return future


async def login(config: Config, provider_name: str, tenant: str | None, code: str | None) -> int:
    provider = config.providers.get(provider_name)
    if provider is None:
        known = ", ".join(sorted(config.providers))
        print(f"keyhop login: unknown provider {provider_name!r}; known: {known}", file=sys.stderr)
        return 2
    scheme = provider.scheme
    if not isinstance(scheme, AuthorizationCode):
        print(
            f"keyhop login: {provider_name} uses {provider.kind}, not oauth2_authorization_code",
            file=sys.stderr,
        )
        return 2
    tenant = tenant or provider.default_tenant
    if provider.tenants and not tenant:
        print(f"keyhop login: {provider_name} needs --tenant ID", file=sys.stderr)
        return 2
    if tenant and not TENANT_RE.fullmatch(tenant):
        print(f"keyhop login: {TENANT_RULE}", file=sys.stderr)
        return 2
    tenant = tenant if provider.tenants else None

    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()  # opens the store and the HTTP session, serves nothing
    try:
        kh = app[KEYHOP]
        url = await begin_login(kh, provider, tenant, scheme.redirect_uri)
        state = parse_qs(urlsplit(url).query)["state"][0]
        print(f"Open this URL in a browser and log in:\n\n  {url}\n", flush=True)
        if code is None:
            print(
                "Then paste the code (or the whole URL you were sent to) and press Enter;\n"
                "if keyhop is running, its callback finishes the login by itself.",
                flush=True,
            )
            pasted = _read_line_in_background(asyncio.get_running_loop())
            deadline = kh.clock() + LOGIN_TTL
            while not pasted.done() and kh.clock() < deadline:
                if await kh.store.get(LOGIN_STATE, state) is None:  # the callback took it
                    print(f"connected: {provider_name}" + (f" ({tenant})" if tenant else ""))
                    return 0
                await asyncio.wait({pasted}, timeout=1.0)
            if not pasted.done():
                print("keyhop login: timed out waiting for the code", file=sys.stderr)
                return 1
            code_text = pasted.result()
        else:
            code_text = code
        got_code, got_state = parse_pasted(code_text)
        if not got_code:
            print("keyhop login: no code given", file=sys.stderr)
            return 1
        if got_state is not None and got_state != state:
            print(
                "keyhop login: that URL belongs to another login (state differs)", file=sys.stderr
            )
            return 1
        try:
            await finish_login(kh, provider, got_code, state)
        except ProxyError as exc:
            print(f"keyhop login: {kh.runtime.redact(exc.message)}", file=sys.stderr)
            return 1
        print(f"connected: {provider_name}" + (f" ({tenant})" if tenant else ""))
        return 0
    finally:
        await runner.cleanup()
