"""Relaying an upstream's answer to the client (SPEC 4.1): status, reason, headers and
body as the upstream sent them, streamed; a body the upstream cuts short is cut short to the
client too (the connection is aborted), never finished as if it were whole."""

from __future__ import annotations

import asyncio
import math
from typing import Final

import aiohttp
from aiohttp import HttpVersion11, hdrs, web

from proxy.access import AccessInfo
from proxy.aiohttp_private import RelayedResponse, RelayedStreamResponse, relayed
from proxy.deadlines import Deadline
from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.headers import UnrelayableHeader, clean_response_headers
from proxy.runtime import Keyhop
from proxy.upstream import UpstreamResponse

SMALL_BODY: Final = 64 * 1024  # answers up to this size are sent whole, in one write


class UpstreamCut(Exception):
    """The upstream ended its body early; the client connection was aborted to match.
    `response` is what the client already got (None when nothing was sent yet)."""

    def __init__(self, response: web.StreamResponse | None = None) -> None:
        super().__init__("the upstream cut its answer short")
        self.response = response


def _cut_short(
    request: web.BaseRequest, info: AccessInfo, sent: web.StreamResponse | None = None
) -> UpstreamCut:
    """The upstream ended its body early: the client must see a cut too, never a clean end."""
    info.aborted = True
    if request.transport is not None:
        request.transport.abort()
    return UpstreamCut(sent)


async def stream_back(
    kh: Keyhop,
    request: web.BaseRequest,
    up: UpstreamResponse,
    info: AccessInfo,
    deadline: Deadline,
    prefix: bytes = b"",
) -> web.StreamResponse:
    """Relay `up` (of which `prefix` was already read) to the client; always releases it.

    Two time limits, neither counting against the other: the provider's read timeout is
    the longest silence from the upstream (each chunk that arrives starts it again), and
    `timeouts.client_write` the longest a client may leave an answer unread; past it the
    client's connection is cut, so a client that never reads cannot hold an upstream
    connection."""
    length = up.headers.get(hdrs.CONTENT_LENGTH)
    declared = int(length) if length is not None and length.isdigit() else None
    loop = kh.deadlines.loop or asyncio.get_running_loop()
    client_write = kh.runtime.config.timeouts.client_write
    writing = False  # True while waiting on the client, False while waiting on the upstream
    sent: web.StreamResponse | None = None
    try:
        headers = clean_response_headers(up.headers)
        if declared is not None and declared <= SMALL_BODY and request.method != hdrs.METH_HEAD:
            # a small body of known length goes out in one write with its headers
            chunks = [prefix] if prefix else []
            try:
                while True:
                    deadline.extend(loop.time())  # a steady trickle is not silence
                    chunk = await up.content.readany()
                    if not chunk:
                        break
                    chunks.append(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # what arrived goes out under the declared length, then the cut: the
                # client sees a short body, exactly as on the streamed path
                partial = RelayedStreamResponse(status=up.status, reason=up.reason, headers=headers)
                relayed(partial, up.headers)
                partial.content_length = declared
                sent, writing = partial, True
                deadline.at = loop.time() + client_write
                await partial.prepare(request)
                await partial.write(b"".join(chunks))
                raise _cut_short(request, info, partial) from None
            up.release()  # all of it is here: the connection goes back before the client reads
            small = RelayedResponse(
                status=up.status, reason=up.reason, headers=headers, body=b"".join(chunks)
            )
            relayed(small, up.headers)
            sent, writing = small, True
            deadline.at = loop.time() + client_write
            await small.prepare(request)
            await small.write_eof()
            return small
        response = RelayedStreamResponse(status=up.status, reason=up.reason, headers=headers)
        relayed(response, up.headers)
        if declared is not None:
            response.content_length = declared
        elif request.version < HttpVersion11:
            # an HTTP/1.0 client knows the end of a body of unknown length only by the
            # connection closing (aiohttp would keep a keep-alive one open: a hang)
            response.force_close()
        writing = True
        deadline.at = loop.time() + client_write
        await response.prepare(request)
        sent = response
        if prefix:
            await response.write(prefix)
        while True:
            writing = False
            deadline.extend(loop.time())
            chunk = await up.content.readany()
            if not chunk:
                break
            writing = True
            deadline.at = loop.time() + client_write
            await response.write(chunk)
        writing = True
        deadline.at = loop.time() + client_write
        await response.write_eof()
        return response
    except asyncio.CancelledError:
        if kh.deadlines.expired(deadline):
            if writing:
                # the client stopped reading: its connection is cut, the upstream's freed
                info.error = "client_write_timeout"
                raise _cut_short(request, info, sent) from None
            if sent is None and not request.writer.output_size:
                # nothing went out yet (a small answer being gathered): a clean 504
                raise UpstreamTimeout(
                    f"{up.host} went silent for {deadline.seconds:g} s in the middle of its answer"
                ) from None
            raise _cut_short(request, info, sent) from None
        raise
    except UnrelayableHeader as exc:  # nothing was sent yet
        raise UpstreamUnreachable(f"{up.host} {exc}") from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError):
            raise  # the client went away; nothing to tell it
        raise _cut_short(request, info, sent) from None
    finally:
        deadline.at = math.inf
        up.release()
