"""A signed request sent again (SPEC 4.4 refresh on `refresh_on`, 4.1 `retry_throttled`,
5.4 "what stays true"): each attempt is signed afresh over the credential it carries and
the body replayed byte for byte, so the vendor accepts the second attempt."""

from __future__ import annotations

import hashlib
from itertools import count

from aiohttp import web

from tests.conftest import MakeProxy, StartUpstream
from tests.e2e.signing_fakes import HmacUpstream, OAuth1Upstream, Received
from tests.e2e.signing_helpers import config

SECRET = "retries-secret-e2e"


def token_message(rec: Received, ts: str) -> bytes:
    body = hashlib.sha256(rec.body or b"").hexdigest()
    return f"{ts}{rec.headers.get('X-Token', '')}{body}".encode()


class Tokens:
    """A client_credentials endpoint issuing tok-1, tok-2, ...; the fake upstream accepts
    only the ones in `valid`."""

    def __init__(self, valid: set[str]) -> None:
        self.valid = valid
        self.issued: list[str] = []
        self._n = count(1)
        self.app = web.Application()
        self.app.router.add_post("/token", self._issue)

    async def _issue(self, request: web.Request) -> web.Response:
        await request.read()
        token = f"tok-{next(self._n)}"
        self.issued.append(token)
        self.valid.add(token)
        return web.json_response({"access_token": token, "token_type": "bearer", "expires_in": 600})


async def test_a_refresh_on_401_re_signs_the_replayed_body_over_the_new_token(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    valid: set[str] = set()
    fake = HmacUpstream(SECRET, token_message, tokens=valid)
    issuer = Tokens(valid)
    base, tokens = await upstream(fake.app), await upstream(issuer.app)
    sign = {
        "type": "hmac",
        "key": SECRET,
        "message": "{timestamp}{token}{body_sha256}",
        "timestamp": "unix_ms",
        "headers": {
            "X-Timestamp": "{timestamp}",
            "X-Token": "{token}",
            "X-Signature": "{signature}",
        },
    }
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": tokens + "/token",
        "client_id": "cid",
        "client_secret": "client-secret-e2e",
    }
    client = await proxy(config(base, ca_file, sign, auth=auth, refresh_on=[401]))
    assert (await client.post("/p/x", data=b"first")).status == 200
    valid.discard("tok-1")  # the upstream revokes the token keyhop holds
    body = bytes(range(256)) * 3
    resp = await client.post("/p/orders", data=body)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    assert issuer.issued == ["tok-1", "tok-2"]
    assert fake.refusals == ["invalid_token"]
    refused, accepted = fake.received[1:]
    assert refused.headers["X-Token"] == "tok-1" and accepted.headers["X-Token"] == "tok-2"
    assert accepted.body == refused.body == body
    assert accepted.headers["X-Signature"] != refused.headers["X-Signature"]


async def test_a_throttled_oauth1_request_is_retried_with_a_fresh_nonce(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = OAuth1Upstream({"ck": "consumer secret"}, {"tk": "token secret"}, "HMAC-SHA1")
    fake.throttle_next = 1
    sign = {
        "type": "oauth1",
        "consumer_key": "ck",
        "consumer_secret": "consumer secret",
        "token": "tk",
        "token_secret": "token secret",
        "body": "form",
    }
    client = await proxy(config(await upstream(fake.app), ca_file, sign, retry_throttled=True))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post("/p/statuses?x=1", data="status=hello%20world", headers=form)
    assert resp.status == 200, (await resp.text(), fake.refusals)
    first, second = fake.received
    assert fake.refusals == [] and first.body == second.body == b"status=hello%20world"
    assert first.headers["Authorization"] != second.headers["Authorization"]
