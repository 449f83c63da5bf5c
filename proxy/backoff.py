"""A failing token endpoint gets backoff, not a storm (SPEC 4.4): at most one token request
per step, steps from 1 s doubling to 60 s with jitter; a still-valid credential keeps
serving until its real expiry, and only then do requests get the error. Pure."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from proxy.errors import CredentialError, LoginExpired
from proxy.tokens import Credential

BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0


@dataclass
class KeyState:
    """What /-/providers shows for one provider and tenant; never the credential itself."""

    failures: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_fetch_at: float | None = None
    fetches: int = 0
    last_exception: CredentialError | LoginExpired | None = None

    def failed(self, exc: CredentialError | LoginExpired, now: float) -> None:
        """Count a refusal and set the next step (jittered by up to a quarter)."""
        self.last_exception = exc
        self.failures += 1
        step = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.next_attempt = now + step * random.uniform(1.0, 1.25)
        self.last_error = exc.message
        self.last_error_at = now


def fallback(
    provider: str,
    previous: Credential | None,
    state: KeyState,
    now: float,
    exc: CredentialError | LoginExpired | None = None,
) -> Credential:
    """While backing off: the old credential until its real expiry, then the error."""
    if previous is not None and not previous.is_expired(now):
        return previous
    if exc is not None:
        raise exc
    wait = max(1, math.ceil(state.next_attempt - now))
    last = state.last_exception
    if isinstance(last, LoginExpired):
        raise LoginExpired(last.message, provider=provider)
    # the same kind of answer as the failure itself (a failing egress proxy stays one)
    kind = type(last) if isinstance(last, CredentialError) else CredentialError
    raise kind(
        f"could not get a credential for {provider}: {state.last_error}; next attempt in {wait} s",
        provider=provider,
    )
