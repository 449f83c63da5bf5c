"""Randomized requests through a real keyhop, each signer's vendor fake (an independent
oracle) verifying every one: odd but well-formed paths and queries (percent-encoded
characters, unreserved ones, repeated keys, empty values, keys without `=`), methods and
bodies drawn from a seeded generator."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from http_message_signatures.algorithms import HMAC_SHA256

from proxy.sandbox.exchange import FakeExchange
from tests.conftest import MakeProxy, StartUpstream, raw_url
from tests.e2e.signing_fakes import MessageSignatureUpstream, OAuth1Upstream, SigV4Upstream
from tests.e2e.signing_helpers import SHARED_SECRET, config
from tests.e2e.test_signing_e2e import shipped_exchange_provider

SEGMENTS = ["a", "", "b%20c", "d.e", "%E2%9C%93", "f-_~", "x%2Fy", "UP", "1"]
VALUES = ["1", "x%20y", "", "%2F", "-._~", "%E2%9C%93", "a%26b", "%3D"]
ROUNDS = 12


def random_target(rng: random.Random) -> str:
    path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(1, 4)))
    if path.startswith("//"):  # refused on a route without a base path: it names a host
        path = "/a" + path
    items = []
    for _ in range(rng.randint(0, 5)):
        key = rng.choice(["a", "b", "c", "k%20y"])
        items.append(key if rng.random() < 0.1 else f"{key}={rng.choice(VALUES)}")
    return path + ("?" + "&".join(items) if items else "")


def random_body(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 2048))


async def send_all(client: Any, prefix: str, seed: int, **kw: Any) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    statuses = []
    for _ in range(ROUNDS):
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        target = prefix + random_target(rng)
        body = random_body(rng) if method in ("POST", "PUT") else None
        resp = await client.session.request(method, raw_url(client, target), data=body, **kw)
        statuses.append((f"{method} {target}", resp.status))
    return statuses


@pytest.mark.parametrize("service", ["execute-api", "s3"])
async def test_botocore_verifies_randomized_sigv4_requests(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str, service: str
) -> None:
    fake = SigV4Upstream("AKIDRANDOM", "random/secret", "us-west-2", service)
    sign = {
        "type": "aws_sigv4",
        "region": "us-west-2",
        "service": service,
        "access_key_id": "AKIDRANDOM",
        "secret_access_key": "random/secret",
    }
    client = await proxy(config(await upstream(fake.app), ca_file, sign))
    # a header whose inner runs of spaces SigV4 collapses, repeated fields joined with ","
    headers = [("X-Amz-Meta-Note", "a  b   c"), ("X-Amz-Meta-Tag", "t1"), ("X-Amz-Meta-Tag", "t2")]
    statuses = await send_all(client, "/p", seed=len(service), headers=headers)
    assert [s for s in statuses if s[1] != 200] == [], fake.refusals
    assert fake.requests == ROUNDS
    first = fake.received[0]
    assert first.headers.getall("X-Amz-Meta-Tag") == ["t1", "t2"]
    assert "x-amz-meta-note;x-amz-meta-tag" in first.headers["Authorization"]


async def test_oauthlib_verifies_randomized_oauth1_requests_with_form_bodies(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = OAuth1Upstream({"ck": "c&s"}, {"tk": "t s"}, "HMAC-SHA256")
    sign = {
        "type": "oauth1",
        "signature_method": "HMAC-SHA256",
        "consumer_key": "ck",
        "consumer_secret": "c&s",
        "token": "tk",
        "token_secret": "t s",
        "body": "form",
    }
    client = await proxy(config(await upstream(fake.app), ca_file, sign))
    rng = random.Random(5)
    for _ in range(ROUNDS):
        fields = [f"f{rng.randint(0, 3)}={rng.choice(VALUES)}" for _ in range(rng.randint(0, 4))]
        form = "&".join(fields) + rng.choice(["", "&note=two+words"])
        resp = await client.session.post(
            raw_url(client, "/p" + random_target(rng)),
            data=form.lstrip("&"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200, (await resp.text(), fake.refusals)
    assert fake.requests == ROUNDS and fake.refusals == []


async def test_the_package_verifies_randomized_message_signatures(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    rng = random.Random(9)
    pool = ["@method", "@authority", "@path", "@query", "@target-uri", "@scheme", "content-type"]
    for _ in range(4):
        components = [*rng.sample(pool, rng.randint(1, len(pool))), "content-digest"]
        fake = MessageSignatureUpstream(
            HMAC_SHA256, {"k": base64.b64decode(SHARED_SECRET)}, tuple(components)
        )
        sign = {
            "type": "http_message_signature",
            "algorithm": "hmac-sha256",
            "key_id": "k",
            "key": SHARED_SECRET,
            "components": components,
            "nonce": True,
        }
        client = await proxy(config(await upstream(fake.app), ca_file, sign))
        statuses = await send_all(
            client, "/p", seed=rng.randint(0, 99), headers={"Content-Type": "text/plain"}
        )
        assert [s for s in statuses if s[1] != 200] == [], (components, fake.refusals)


async def test_the_exchange_verifies_randomized_binance_requests(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = FakeExchange()
    provider = {**shipped_exchange_provider(), "ca_file": ca_file}
    base = await upstream(fake.app)
    client = await proxy(
        {
            "providers": {"exchange": provider},
            "routes": [{"prefix": "/x", "upstream": base, "provider": "exchange"}],
        }
    )
    rng = random.Random(3)
    for _ in range(ROUNDS):
        query = random_target(rng).partition("?")[2]
        target = "/x/api/v3/order" + ("?" + query if query else "")
        resp = await client.session.request(rng.choice(["GET", "DELETE"]), raw_url(client, target))
        assert resp.status == 200, (target, await resp.text())
    assert fake.stats()["refused"] == 0


async def test_a_plus_in_the_query_is_a_space_to_oauth1_as_rfc5849_says(
    upstream: StartUpstream, proxy: MakeProxy, ca_file: str
) -> None:
    fake = OAuth1Upstream({"ck": "cs"}, {}, "HMAC-SHA1")
    sign = {"type": "oauth1", "consumer_key": "ck", "consumer_secret": "cs"}
    client = await proxy(config(await upstream(fake.app), ca_file, sign))
    resp = await client.session.get(raw_url(client, "/p/search?q=two+words"))
    assert resp.status == 200, fake.refusals
