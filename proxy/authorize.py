"""What keyhop adds to one upstream request: provider headers, credential headers and the
signature. Pure: time and nonce are passed in, so tests pin the output exactly."""

from __future__ import annotations

import secrets

from proxy.config import ProviderConfig
from proxy.routing import Upstream
from proxy.signing import (
    NONCE_ALPHABET,
    mac_authorization,
    mac_normalized_string,
    mac_signature,
    x_signature,
)
from proxy.tokens import Credential


def new_nonce(length: int = 10) -> str:
    """SPEC 4.2: 10 characters of [0-9a-zA-Z] from a CSPRNG, fresh per request."""
    return "".join(secrets.choice(NONCE_ALPHABET) for _ in range(length))


def provider_headers(
    provider: ProviderConfig, credential: Credential | None, tenant: str | None
) -> list[tuple[str, str]]:
    """The headers that depend only on the credential and tenant (cacheable per pair)."""
    values = {"token": credential.token if credential else "", "tenant": tenant or ""}
    out = [(h.name, h.render(values)) for h in provider.headers]
    if credential is not None:
        out.extend(provider.scheme.credential_headers(credential).items())
    return out


def signature_headers(
    provider: ProviderConfig,
    credential: Credential | None,
    method: str,
    upstream: Upstream,
    target: str,
    now: float,
    nonce: str = "",
) -> list[tuple[str, str]]:
    """The headers computed afresh for every request: the `sign:` block's."""
    sign = provider.sign
    if sign is None:
        return []
    ts = str(int(now))
    key = sign.key.reveal().encode()
    if sign.type == "x_signature":
        return [("X-Timestamp", ts), ("X-Signature", x_signature(key, ts))]
    normalized = mac_normalized_string(ts, nonce, method, target, upstream.host, upstream.port)
    token = credential.token if credential else ""
    return [("Authorization", mac_authorization(token, ts, nonce, mac_signature(key, normalized)))]
