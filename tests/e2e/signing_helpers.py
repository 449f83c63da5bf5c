"""Config and replay helpers for the signing end-to-end tests."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from tests.e2e.signing_fakes import Received
from tests.support import ROOT

RFC9421 = ROOT / "tests" / "golden" / "signers" / "rfc9421"
#: RFC 9421 B.1.5 test-shared-secret
SHARED_SECRET = (
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)


def config(base: str, ca_file: str, sign: dict[str, Any], **provider: Any) -> dict[str, Any]:
    """One provider `p` with `sign`, routed at /p to `base`."""
    return {
        "providers": {
            "p": {"auth": {"type": "static"}, "sign": sign, "ca_file": ca_file, **provider}
        },
        "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
    }


async def replay(
    base: str,
    ca_file: str,
    rec: Received,
    *,
    raw_path: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Send a request the fake received once more, straight to it, with one thing changed
    (or none); the status it answers."""
    sent = CIMultiDict(
        (k, v)
        for k, v in rec.headers.items()
        if k.lower() not in ("content-length", "transfer-encoding")
    )
    sent.update(headers or {})
    context = ssl.create_default_context(cafile=ca_file)
    url = URL(base + (raw_path or rec.raw_path), encoded=True)
    data = rec.body if body is None else body
    async with aiohttp.ClientSession() as session:
        async with session.request(rec.method, url, headers=sent, data=data, ssl=context) as resp:
            await resp.read()
            return resp.status
