"""What the express lane did for a request it gives back (proxy/lane/), read by forward.py
and exchange.py to go on from there."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from proxy.tokens import Credential
from proxy.upstream import UpstreamResponse


class GoneLog(Protocol):
    def log_gone(self, answered: bool) -> None:
        """The access line of a request given back whose client left first."""
        ...


@dataclass(slots=True)
class Handover:
    """What the lane did for a request it gives back: forward.py goes on from here."""

    credential: Credential | None
    source: str  # the access line's `credential`
    #: the upstream's answer, or why there is none; None: nothing to go on, send afresh
    answer: asyncio.Future[UpstreamResponse] | None
    started: float  # perf_counter() when the request was written upstream
    began: float  # perf_counter() when the lane took the request (its access line's clock)
    trip: GoneLog

    def discard(self) -> bool:
        """forward.py will not read the answer (the client went away first): it is released.
        True when there was an answer (not a failure) to release."""
        answer = self.answer
        if answer is None or not answer.done() or answer.cancelled():
            return False
        if answer.exception() is not None:
            return False
        answer.result().release()
        return True

    def abandon(self) -> None:
        """The client left before the pipeline took the request: it ends here, logged as
        the pipeline would log it (499 `aborted`)."""
        self.trip.log_gone(self.discard())
