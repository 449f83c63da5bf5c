"""OpenTelemetry traces (SPEC 6.2): one server span per proxied request, child spans for
the credential (store round trips, token fetches, logins) and for the upstream exchange;
an incoming `traceparent` is continued and one is sent upstream.

Rules:
- Off by default, and then nothing here runs: the request path asks `kh.tracing is None`.
- Attributes carry route, provider, tenant, method, path (never the query), status,
  credential source and error code: never a header value, a token or a secret.
- Export never slows a request: spans go to a bounded queue that a thread drains in
  batches (OTLP over HTTP); a full queue or a failed export drops spans and counts them
  (`keyhop_trace_spans_dropped_total`), and a failing endpoint is logged once per change.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.core import CounterMetricFamily, Metric

from proxy.config import TracingConfig

log = logging.getLogger("keyhop")

QUEUE_LIMIT: Final = 4096  # spans waiting for export; beyond it new ones are dropped
BATCH: Final = 512
FLUSH_EVERY: Final = 1.0  # seconds between exports when the queue is not full
EXPORT_TIMEOUT: Final = 5.0
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _Exporting(SpanProcessor):
    """A bounded queue and one exporting thread (the SDK's batch processor logs a warning
    per dropped span and keeps no count)."""

    def __init__(self, exporter: SpanExporter, endpoint: str) -> None:
        self._exporter = exporter
        self._endpoint = endpoint
        self._queue: deque[ReadableSpan] = deque()
        self._wake = threading.Event()
        self._stop = False
        self.dropped = 0
        self.exported = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="keyhop-traces", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self._queue.append(span)
        if len(self._queue) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                ok = self._exporter.export(batch) == SpanExportResult.SUCCESS
            except Exception:  # the exporter's own failure: counted, never raised
                ok = False
            if ok:
                self.exported += len(batch)
            else:
                self.dropped += len(batch)
            if ok == self._failing:  # a change of state: logged once, not per batch
                self._failing = not ok
                if ok:
                    log.info("traces: exporting to %s again", self._endpoint)
                else:
                    log.warning("traces: export to %s failed; spans are dropped", self._endpoint)
            if not ok:
                self._queue.clear()  # an endpoint that is down is not queued for
                return

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(EXPORT_TIMEOUT + 1)
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._wake.set()
        return True


class _Collector:
    def __init__(self, processor: _Exporting) -> None:
        self._p = processor

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "keyhop_trace_spans_dropped",
            "Spans not exported: the queue was full or the OTLP endpoint failed.",
        )
        dropped.add_metric([], self._p.dropped)
        yield dropped
        exported = CounterMetricFamily("keyhop_trace_spans_exported", "Spans exported.")
        exported.add_metric([], self._p.exported)
        yield exported


class Tracing:
    """A tracer of keyhop's own (never the global provider: several apps share a process in
    tests), with the few operations the request path needs."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        # the exporter's own loggers would report every failed batch, with a traceback
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
        endpoint = config.otlp_endpoint.rstrip("/") + "/v1/traces"
        self._processor = _Exporting(
            exporter or OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT), endpoint
        )
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("keyhop")

    def register(self, registry: Any) -> None:
        registry.register(_Collector(self._processor))

    def start_request(self, method: str, path: str, traceparent: str | None) -> tuple[Span, Any]:
        """The server span for one request, made current; continues the client's trace."""
        parent = (
            _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent is not None else None
        )
        span = self._tracer.start_span(
            "keyhop " + method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def end_request(span: Span, token: Any, attributes: dict[str, Any], status: int) -> None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(token)

    @contextmanager
    def span(
        self, name: str, attributes: dict[str, Any], *, client: bool = False
    ) -> Iterator[Span]:
        """A child of the current span (a CLIENT span for a call out); an exception marks it
        failed with its type and keyhop error code only (messages can quote a vendor)."""
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        with self._tracer.start_as_current_span(
            name, kind=kind, record_exception=False, set_status_on_exception=False
        ) as span:
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                code = getattr(exc, "code", None)
                if isinstance(code, str):
                    span.set_attribute("keyhop.error", code)
                raise

    def start_upstream(self, provider: str, attempt: int) -> tuple[Span, str]:
        """A client span for one upstream exchange (not made current: nothing nests in it)
        and the W3C traceparent that names it, to send upstream."""
        span = self._tracer.start_span(
            "upstream",
            kind=SpanKind.CLIENT,
            attributes={"keyhop.provider": provider, "keyhop.attempt": attempt},
        )
        ctx = span.get_span_context()
        return span, f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def close(self) -> None:
        self._provider.shutdown()

    def flush(self) -> None:
        self._processor.force_flush()
