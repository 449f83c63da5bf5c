from __future__ import annotations

from typing import Any

from tests.conftest import MakeProxy, StartUpstream, raw_url


async def test_a_request_reaches_the_upstream_over_verified_tls_with_static_auth(
    upstream: StartUpstream, proxy: MakeProxy, echo_app: Any, ca_file: str
) -> None:
    base = await upstream(echo_app)
    client = await proxy(
        {
            "providers": {
                "p": {
                    "auth": {"type": "static", "token": "tok-123456"},
                    "headers": {"Authorization": "Bearer {token}"},
                    "ca_file": ca_file,
                }
            },
            "routes": [{"prefix": "/p", "upstream": base + "/v1", "provider": "p"}],
        }
    )
    resp = await client.session.get(raw_url(client, "/p/a%2Fb?x=%2F"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["raw"] == "/v1/a%2Fb?x=%2F"
    assert dict(body["headers"])["Authorization"] == "Bearer tok-123456"
    assert resp.headers["X-RateLimit-Remaining"] == "41"
