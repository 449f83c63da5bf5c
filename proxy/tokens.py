"""Credentials and the parsing of token endpoint answers (RFC 6749 5.1 and 5.2). Pure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.errors import CredentialError
from proxy.messages import HttpResponse

DEFAULT_EXPIRES_IN: Final = 3600.0  # RFC 6749 5.1 makes expires_in optional; assume an hour
MAX_MARGIN: Final = 60.0  # SPEC 4.4: renew 60 s or 10 % of the life before expiry


@dataclass(frozen=True)
class Credential:
    """What a scheme obtained: a token, its expiry and what it takes to renew it.

    `expires_at` is unix seconds or None for a credential that never expires (offline tokens,
    static keys). `fields` holds named values a scheme turns into headers (session ids).
    """

    token: str = field(repr=False)
    expires_at: float | None = None
    obtained_at: float = 0.0
    refresh_token: str | None = field(default=None, repr=False)
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)
    kind: str = "access"  # access | session | offline
    #: which auth obtained it (type, endpoint, client): a record from another is not reused
    identity: str = ""

    def renew_at(self) -> float:
        """When to start renewing: the smaller of 60 s or 10 % of the life before expiry."""
        if self.expires_at is None:
            return math.inf
        life = max(0.0, self.expires_at - self.obtained_at)
        return self.expires_at - min(MAX_MARGIN, 0.1 * life)

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "expires_at": self.expires_at,
                "obtained_at": self.obtained_at,
                "refresh_token": self.refresh_token,
                "fields": dict(self.fields),
                "kind": self.kind,
                "identity": self.identity,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Credential:
        data = json.loads(text)
        return cls(
            token=str(data["token"]),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            obtained_at=float(data.get("obtained_at") or 0.0),
            refresh_token=data.get("refresh_token"),
            fields={str(k): str(v) for k, v in (data.get("fields") or {}).items()},
            kind=str(data.get("kind") or "access"),
            identity=str(data.get("identity") or ""),
        )


@dataclass(frozen=True)
class StoredItem:
    """One record of the token store: a provider's (and tenant's) credential."""

    provider: str
    tenant: str | None
    credential: Credential


def token_error(provider: str, response: HttpResponse) -> CredentialError:
    """RFC 6749 5.2: name the provider and its error code, never echo the body at length."""
    body = response.json()
    code = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(code, str) and code and len(code) <= 64 and code.isprintable():
        error = CredentialError(
            f"token endpoint of {provider} refused: {code} (HTTP {response.status})",
            provider=provider,
        )
        error.vendor_code = code
        return error
    return CredentialError(
        f"token endpoint of {provider} answered HTTP {response.status}", provider=provider
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def parse_token_response(
    provider: str,
    response: HttpResponse,
    now: float,
    *,
    token_field: str = "access_token",
    previous_refresh: str | None = None,
) -> Credential:
    """RFC 6749 5.1: a successful answer is 200 with JSON carrying the token; anything else fails.

    An empty or malformed answer is a failure, not a token. `token_type` is compared
    case-insensitively (5.1 says so) and must be bearer or mac when present.
    """
    if response.status != 200:
        raise token_error(provider, response)
    body = response.json()
    if not isinstance(body, Mapping):
        raise CredentialError(
            f"token endpoint of {provider} answered something that is not a JSON object",
            provider=provider,
        )
    if "error" in body:
        raise token_error(provider, HttpResponse(400, body=response.body))
    token = body.get(token_field)
    if not isinstance(token, str) or not token.strip():
        raise CredentialError(
            f"token endpoint of {provider} answered without {token_field}", provider=provider
        )
    token_type = body.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() not in ("bearer", "mac")
    ):
        raise CredentialError(
            f"token endpoint of {provider} issued an unsupported token_type", provider=provider
        )
    expires_in = _number(body.get("expires_in"))
    if body.get("expires_in") is not None and (expires_in is None or expires_in <= 0):
        raise CredentialError(
            f"token endpoint of {provider} answered a bad expires_in", provider=provider
        )
    life = expires_in if expires_in is not None else DEFAULT_EXPIRES_IN
    refresh = body.get("refresh_token")
    return Credential(
        token=token,
        expires_at=now + life,
        obtained_at=now,
        # RFC 6749 6: the server MAY issue a new refresh token; keep the old one when it doesn't.
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        kind="access",
    )
