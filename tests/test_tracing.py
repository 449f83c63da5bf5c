"""tracing.py: OpenTelemetry spans over OTLP/HTTP (SPEC 6.2), checked at a local receiver that
decodes what keyhop exports with the OTLP protobuf definitions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.sandbox.kibo import FakeKibo
from tests.conftest import MakeProxy, StartUpstream
from tests.support import free_port

CLIENT_ID, CLIENT_SECRET = "trace-client-id", "trace-client-secret-7f3a9c"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf body."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def wait_for(self, names: set[str], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {s.name: s for s in self.spans}
            if names <= found.keys():
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(f"spans seen: {[s.name for s in self.spans]}, wanted {names}")


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def config(token_base: str, upstream: str, ca_file: str, otlp: str) -> dict[str, Any]:
    return {
        "tracing": {"otlp_endpoint": otlp, "service_name": "keyhop-test"},
        "providers": {
            "kibo": {
                "preset": "kibo",
                "auth": {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_url": token_base + "/oauthserver/oauth2/token",
                },
                "ca_file": ca_file,
            }
        },
        "routes": [{"prefix": "/kibo", "upstream": upstream, "provider": "kibo"}],
    }


async def test_a_request_continues_the_clients_trace_with_child_spans_and_sends_one_upstream(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    otlp = await aiohttp_server(receiver.app)
    fake = FakeKibo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    token_base = await upstream(fake.app)
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    base = await upstream(app)
    client = await proxy(config(token_base, base, ca_file, f"http://127.0.0.1:{otlp.port}"))
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    async with client.get("/kibo/api/item/7?secret_q=1", headers={"traceparent": incoming}) as r:
        assert r.status == 200

    spans = await receiver.wait_for({"keyhop GET", "credential", "credential.fetch", "upstream"})
    server, upstream_span = spans["keyhop GET"], spans["upstream"]
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID
    for name in ("credential", "upstream"):
        assert spans[name].parent_span_id == server.span_id, name
    assert spans["credential.fetch"].parent_span_id == spans["credential"].span_id
    assert all(s.trace_id.hex() == TRACE_ID for s in receiver.spans)
    # what the upstream got names keyhop's upstream span, in the client's trace
    assert seen == [f"00-{TRACE_ID}-{upstream_span.span_id.hex()}-01"]

    attrs = attributes(server)
    assert attrs["keyhop.route"] == "/kibo"
    assert attrs["keyhop.provider"] == "kibo"
    assert attrs["keyhop.credential_source"] == "fetched"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/kibo/api/item/7"  # never the query
    assert attributes(upstream_span)["http.response.status_code"] == 200
    everything = repr([attributes(s) for s in receiver.spans]) + repr(receiver.spans)
    for secret in (CLIENT_SECRET, "secret_q", *fake._tokens):
        assert secret not in everything


async def test_an_unreachable_otlp_endpoint_neither_fails_nor_slows_requests(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    fake = FakeKibo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    base = await upstream(fake.app)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = await proxy(config(base, base, ca_file, dead))
    started = time.monotonic()
    for _ in range(50):
        async with client.get("/kibo/api/v2/location/7") as r:
            assert r.status == 200
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 10
    dropped = 0.0
    while time.monotonic() < deadline:
        async with client.get("/-/metrics") as r:
            text = await r.text()
        line = next(
            x for x in text.splitlines() if x.startswith("keyhop_trace_spans_dropped_total")
        )
        dropped = float(line.split()[-1])
        if dropped >= 50:
            break
        await asyncio.sleep(0.2)
    assert dropped >= 50  # one request span each, at least


async def test_without_tracing_the_clients_traceparent_passes_unchanged(
    proxy: MakeProxy, upstream: StartUpstream, ca_file: str
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    base = await upstream(app)
    cfg = {
        "providers": {"p": {"auth": {"type": "none"}, "ca_file": ca_file}},
        "routes": [{"prefix": "/p", "upstream": base, "provider": "p"}],
    }
    client = await proxy(cfg)
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    async with client.get("/p/x", headers={"traceparent": incoming}) as r:
        assert r.status == 200
    assert seen == [incoming]
