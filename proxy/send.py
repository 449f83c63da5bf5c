"""Sending one Outbound over the pooled upstream client, and what its failures mean to the
client (SPEC 4.6: 502 upstream_unreachable, 504 upstream_timeout)."""

from __future__ import annotations

import asyncio
import math
import ssl

import aiohttp
from multidict import CIMultiDict

from proxy.deadlines import Deadline
from proxy.egress import EgressError, proxy_for
from proxy.errors import CredentialError, UpstreamTimeout, UpstreamUnreachable
from proxy.outbound import Outbound
from proxy.runtime import Keyhop, ProviderRuntime
from proxy.upstream import BadUpstreamAnswer, RequestBodyLost, UnsafeHeader, UpstreamResponse


async def send(
    kh: Keyhop,
    deadline: Deadline,
    prt: ProviderRuntime,
    outbound: Outbound,
    sent: asyncio.Future[UpstreamResponse] | None = None,
) -> UpstreamResponse:
    """Send and wait for the head of the answer, under the read deadline. `sent`: the
    express lane sent the request already; its answer, or its failure, means the same."""
    upstream = outbound.upstream
    host = upstream.host
    loop = kh.deadlines.loop or asyncio.get_running_loop()
    deadline.extend(loop.time())

    def progress() -> None:  # a body still going up is not a silent upstream
        deadline.extend(loop.time())

    try:
        if sent is not None:
            return await sent
        return await kh.upstreams.request(
            upstream,
            prt.ssl,
            prt.config.timeouts.connect,
            outbound.method,
            outbound.target,
            CIMultiDict(outbound.headers),  # the sender adds the body's framing to its copy
            outbound.body,
            progress,
            proxy_for(prt.config.egress, upstream.scheme, upstream.host),
        )
    except asyncio.CancelledError:
        if kh.deadlines.expired(deadline):
            raise UpstreamTimeout(
                f"{host} did not answer within {prt.config.timeouts.read:g} s"
            ) from None
        raise
    except EgressError as exc:  # an OSError: before the generic ones; names the proxy
        raise UpstreamUnreachable(str(exc)) from None
    except ssl.SSLCertVerificationError:
        raise UpstreamUnreachable(f"the TLS certificate of {host} could not be verified") from None
    except ssl.SSLError:
        raise UpstreamUnreachable(f"the TLS handshake with {host} failed") from None
    except TimeoutError:
        raise UpstreamTimeout(
            f"{host} did not accept a connection within {prt.config.timeouts.connect:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"{host} failed before answering ({type(exc).__name__})"
        ) from None
    except RequestBodyLost:
        raise  # the client went away mid-upload: logged as 499
    except UnsafeHeader:
        raise CredentialError(
            f"a header for {prt.config.name} (a credential or a configured value) holds a "
            "line break or control character; the request was not sent"
        ) from None
    except BadUpstreamAnswer as exc:
        raise UpstreamUnreachable(f"{host} answered with {exc}") from None
    except OSError:
        raise UpstreamUnreachable(f"cannot connect to {host}:{upstream.port}") from None
    finally:
        deadline.at = math.inf  # not waiting on the upstream any more
