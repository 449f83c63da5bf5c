"""The express lane (a package: take.py takes a request and sends it, trip.py answers it or
gives it back, writes.py sends what both write once per loop turn): the usual request
served with no task, no request or response object and no coroutine (issue 16: CPU per
request).

Most requests through keyhop are the same: a bodyless GET (or DELETE, OPTIONS) on a route
whose credential is in memory, answered by the upstream with a small body of known length
and a status no rule looks at. For those, the lane does the pipeline's work (forward.py)
in two callbacks: when aiohttp's parser has the request head, it checks the gate, picks the
route, builds the Outbound exactly as the pipeline does (outbound.py) and writes it on an
idle pooled connection; when the answer has arrived, it writes the relayed answer
(relay.py's small-body case, byte for byte: the upstream's cleaned headers, Content-Length,
Date) and the access line. A plain answer whole in one segment (http1.plain_answer: the
usual one) is relayed from its bytes without aiohttp's parser; any other goes through the
parser, and is relayed from the parsed message or given back.

Rules, each with a test in tests/test_lane*.py:
- The lane takes a request only when nothing can make it wait: no body, no Expect or
  Upgrade, HTTP/1.1 keep-alive, no tracing, a `rate_limit` slot free now, the tenant named,
  no body-covering signer, "throttled until" known and past, the credential in memory and
  an idle upstream connection free. Anything else goes to forward.py unchanged, in order:
  one request of a connection is in progress at a time, lane or not.
- Once the request is sent, whatever is not the usual answer is given back to forward.py
  with what was already done (the credential used and the upstream's answer, or why there
  is none): a rule's status, 204/304, a body without Content-Length, over SMALL_BODY or not
  all here yet, a header that cannot be relayed, a read timeout, a broken answer. So the
  rules, streaming and every error answer have one implementation, and nothing is sent twice
  (a reused connection the upstream had closed is the one case sent again, as upstream.py
  does).
- The read timeout is the provider's `timeouts.read`, checked every TICK as the deadlines
  watchdog does for the pipeline.
- A client that goes away mid-request is logged as 499 `aborted` once the upstream has
  answered (whose connection is pooled if the answer ended cleanly), as by the pipeline.
- A connection whose answer is still unread past `timeouts.client_write` (beyond what the
  kernel buffers) is cut; while its writing is paused, its next requests take the pipeline.
"""

from __future__ import annotations

from proxy.handover import Handover
from proxy.lane.take import METHODS, Lane, head_size

__all__ = ["METHODS", "Handover", "Lane", "head_size"]
