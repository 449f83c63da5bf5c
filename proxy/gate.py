"""The gate: what a request must be and carry before keyhop looks further (SPEC 4.1, 4.6).
Shared by the proxy path and the admin endpoints that follow the same access rules."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import hdrs, web

from proxy.errors import BadRequest, ClientKeyRequired
from proxy.runtime import Runtime


def check_target(request: web.BaseRequest) -> None:
    """Only origin-form targets: an absolute-form URL or CONNECT could name another host."""
    if request.method == hdrs.METH_CONNECT or not request.raw_path.startswith("/"):
        raise BadRequest("only origin-form request targets (/path) are accepted")


def key_matches(keys: tuple[bytes, ...], given: bytes) -> bool:
    """`given` is one of `keys`; every key is compared, each in constant time."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


def client_key_ok(runtime: Runtime, headers: Mapping[str, str]) -> bool:
    """`clients.keys`, on every listen address, compared in constant time."""
    keys = runtime.client_keys
    if not keys:
        return True
    given = headers.get("X-Keyhop-Key", "").encode("utf-8", "surrogateescape")
    return key_matches(keys, given)


def check_client_key(runtime: Runtime, request: web.BaseRequest) -> None:
    if not client_key_ok(runtime, request.headers):
        raise ClientKeyRequired("this proxy needs a valid X-Keyhop-Key header")
