"""Inbound OAuth endpoints under /-/oauth/<provider>/ (SPEC 4.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.errors import NoRoute
from proxy.runtime import Keyhop

if TYPE_CHECKING:
    from proxy.forward import AccessInfo


async def handle_oauth(kh: Keyhop, request: web.Request, info: AccessInfo) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    raise NoRoute(f"no keyhop endpoint {path}")
