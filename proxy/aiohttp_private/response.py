"""The answers keyhop relays, without what aiohttp adds to its own (see
proxy/aiohttp_private/__init__.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict


class _Relayed:
    """Mixin for the answers keyhop relays: aiohttp adds a default Content-Type and its own
    Server header to every response; an upstream's answer keeps only what the upstream sent."""

    _upstream_sent: frozenset[str] = frozenset()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # type: ignore[misc]
        headers: CIMultiDict[str] = self.headers  # type: ignore[attr-defined]
        for name in (hdrs.CONTENT_TYPE, hdrs.SERVER):
            if name not in self._upstream_sent:
                headers.popall(name, None)


class RelayedResponse(_Relayed, web.Response):
    pass


class RelayedStreamResponse(_Relayed, web.StreamResponse):
    pass


def relayed(response: _Relayed, upstream_headers: Any) -> None:
    response._upstream_sent = frozenset(
        name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in upstream_headers
    )
