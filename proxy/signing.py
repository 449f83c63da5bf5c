"""PayNet, Saison and Sesami signatures as their vendors compute and verify them: what the
sandbox's fakes check and the inbound Sesami callbacks verify. keyhop's own outbound
signatures are `hmac` recipes in proxy/signers/ (a separate implementation; both are held to
the vendors' vectors by the tests).

Rules (after h11's _state.py): no I/O, no clock and no randomness of its own (time and
nonces are passed in), nothing logged. Each step is a named function so tests can pin
every intermediate against golden values.
"""

from __future__ import annotations

import base64
import hmac
import json
import string
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

NONCE_ALPHABET: Final = string.digits + string.ascii_letters


# --- PayNet X-Signature (SPEC 4.3) -----------------------------------------------------------


@lru_cache(maxsize=64)
def x_signature(key: bytes, timestamp: str) -> str:
    """Lowercase hex HMAC-SHA256 of the X-Timestamp string under the signing key.

    Memoized: the value depends on the key and the second only, and an HMAC set-up costs
    more than everything else keyhop does per request (OpenSSL 3 looks the algorithm up
    every time)."""
    return hmac.digest(key, timestamp.encode("ascii"), "sha256").hex()


@lru_cache(maxsize=64)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 already keyed; `.copy()` of it skips the key set-up per message."""
    return hmac.new(key, digestmod="sha256")


# --- Saison MAC (SPEC 4.2) -------------------------------------------------------------------


def mac_normalized_string(
    ts: str, nonce: str, method: str, path_and_query: str, host: str, port: int
) -> str:
    """The string the MAC covers: seven lines and a trailing empty one."""
    return f"{ts}\n{nonce}\n{method.upper()}\n{path_and_query}\n{host.lower()}\n{port}\n\n"


def mac_signature(key: bytes, normalized: str) -> str:
    mac = _keyed(key).copy()
    mac.update(normalized.encode())
    return base64.b64encode(mac.digest()).decode()


def mac_authorization(token: str, ts: str, nonce: str, mac: str) -> str:
    return f'MAC id="{token}" ts="{ts}" nonce="{nonce}" mac="{mac}"'


def parse_mac_authorization(value: str) -> dict[str, str] | None:
    """The fields of a `MAC id=".." ts=".." nonce=".." mac=".."` header (for verifiers)."""
    if not value.startswith("MAC "):
        return None
    out: dict[str, str] = {}
    for part in value[4:].split(","):
        for item in part.strip().split(" "):
            key, sep, raw = item.partition("=")
            if not sep or len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
                continue
            out[key] = raw[1:-1]
    return out if {"id", "ts", "nonce", "mac"} <= out.keys() else None


# --- Sesami hmac (SPEC 4.5) ------------------------------------------------------------------


def sesami_message(params: Mapping[str, Any]) -> str:
    """Compact JSON of the parameters with sorted keys, no spaces."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hmac_hex(key: bytes, message: str) -> str:
    return hmac.digest(key, message.encode(), "sha256").hex()


def sesami_candidates(params: Mapping[str, str]) -> list[str]:
    """Every message the sender may have signed: `timestamp` hashed as a number or a string."""
    messages = [sesami_message(params)]
    ts = params.get("timestamp")
    if ts is not None and ts.isdigit():
        as_number: dict[str, Any] = dict(params)
        as_number["timestamp"] = int(ts)
        messages.insert(0, sesami_message(as_number))
    return messages


def verify_sesami(key: bytes, params: Mapping[str, str], given: str) -> bool:
    """True when `given` is the lowercase hex HMAC of the params in either timestamp form."""
    given_bytes = given.encode("utf-8", "surrogateescape")  # any bytes: refused, not a crash
    ok = False
    for message in sesami_candidates(params):
        # compare every candidate, in constant time each, so timing says nothing
        ok |= hmac.compare_digest(hmac_hex(key, message).encode(), given_bytes)
    return ok
