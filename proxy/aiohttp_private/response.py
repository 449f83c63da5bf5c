"""The answers keyhop relays, without what aiohttp adds to its own (see
proxy/aiohttp_private/__init__.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.headers import all_ascii, serialize_obs_text


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

    async def _write_headers(self) -> None:
        """aiohttp's C serializer drops obs-text bytes of a relayed reason or value: such a
        head is written as it came (the rare case; the usual one is aiohttp's own)."""
        reason: str = self._reason  # type: ignore[attr-defined]
        headers: CIMultiDict[str] = self._headers  # type: ignore[attr-defined]
        version = self._req.version  # type: ignore[attr-defined]
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {reason}"  # type: ignore[attr-defined]
        if all_ascii(status_line, headers):
            await super()._write_headers()  # type: ignore[misc]
            return
        writer = self._payload_writer  # type: ignore[attr-defined]
        await writer.write_headers(status_line, headers)  # (its signal, its state)
        writer._headers_buf = serialize_obs_text(status_line, headers)
        if self._send_headers_immediately:  # type: ignore[attr-defined]
            writer.send_headers()


class RelayedResponse(_Relayed, web.Response):
    pass


class RelayedStreamResponse(_Relayed, web.StreamResponse):
    pass


def relayed(response: _Relayed, upstream_headers: Any) -> None:
    response._upstream_sent = frozenset(
        name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in upstream_headers
    )
