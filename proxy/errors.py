"""The proxy's own failures, each mapped to one SPEC 4.6 answer.

    ProxyError(status, code)       -> JSON {"error": code, "message": ...}
      ├─ BadRequest                 400 bad_request
      ├─ NoRoute                    404 no_route
      ├─ BodyTooLarge               413 body_too_large (a signer needs more than it may buffer)
      ├─ ClientKeyRequired          401 client_key_required
      ├─ BadSignature               401 bad_signature (an inbound callback's hmac)
      ├─ TenantRequired             400 tenant_required
      ├─ NotConnected               503 not_connected
      │    └─ LoginExpired           the stored login was refused: a person must act again
      ├─ CredentialError            502 credential_error
      │    └─ EgressFailed           502 upstream_unreachable (the proxy before a token endpoint)
      ├─ UpstreamUnreachable        502 upstream_unreachable
      ├─ UpstreamRefusedUpgrade     502 upstream_refused_upgrade (a WebSocket handshake)
      ├─ UpstreamTimeout            504 upstream_timeout
      └─ RateLimited                429 rate_limited (+ Retry-After)
    ConfigError                    every problem found in a config file, listed

Messages are sentences a user can act on and never carry a secret.
"""

from __future__ import annotations

from typing import ClassVar


class ProxyError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, route: str | None = None, provider: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.route = route
        self.provider = provider

    def body(self) -> dict[str, str]:
        out = {"error": self.code, "message": self.message}
        if self.route is not None:
            out["route"] = self.route
        if self.provider is not None:
            out["provider"] = self.provider
        return out


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class NoRoute(ProxyError):
    status = 404
    code = "no_route"


class BodyTooLarge(ProxyError):
    status = 413
    code = "body_too_large"


class ClientKeyRequired(ProxyError):
    status = 401
    code = "client_key_required"


class BadSignature(ProxyError):
    status = 401
    code = "bad_signature"


class TenantRequired(ProxyError):
    status = 400
    code = "tenant_required"


class NotConnected(ProxyError):
    status = 503
    code = "not_connected"


class LoginExpired(NotConnected):
    """The provider refused the stored login (a dead refresh token): a person must act."""


class CredentialError(ProxyError):
    status = 502
    code = "credential_error"
    #: the provider's own error code (RFC 6749 5.2 `error`), when it gave one
    vendor_code: str | None = None


class EgressFailed(CredentialError):
    """The egress proxy in front of a token endpoint refused or failed (SPEC 5.3): answered
    502 upstream_unreachable naming the proxy, and backed off like any failing token
    endpoint (SPEC 4.4), which is why it is a CredentialError."""

    code = "upstream_unreachable"


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"


class UpstreamRefusedUpgrade(ProxyError):
    status = 502
    code = "upstream_refused_upgrade"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class RateLimited(ProxyError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after = max(1, retry_after)


class ConfigError(Exception):
    """All problems of one config file; each line names file, key path and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreUnavailable(Exception):
    """The token store could not be opened at startup (a path that cannot be created)."""
