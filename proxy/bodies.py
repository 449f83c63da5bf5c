"""The client's request body: streamed, or buffered when a retry may need it (SPEC 4.1:
up to `replay_max_bytes`; a larger body streams and is not replayed), or read whole when a
signer covers it (SPEC 5.1: up to `sign.body_max_bytes`; a larger one is 413, never sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from proxy.errors import BodyTooLarge


async def read_body(request: web.BaseRequest, limit: int, replay: bool) -> tuple[Any, bool]:
    """The body to send and whether it can be sent again."""
    if not request.body_exists:
        return None, True
    if not replay or (request.content_length or 0) > limit:
        return request.content, False
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return _prefixed(b"".join(chunks), request.content), False


async def _prefixed(prefix: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    yield prefix
    async for chunk in rest.iter_any():
        yield chunk


async def read_whole_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, for a signer that covers it; BodyTooLarge past `limit` bytes."""
    if not request.body_exists:
        return b""
    if (request.content_length or 0) > limit:
        raise BodyTooLarge(f"the body is over {limit} bytes, more than the signer may buffer")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes, more than the signer may buffer")
        chunks.append(chunk)
    return b"".join(chunks)
