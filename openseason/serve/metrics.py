"""`GET /metrics` in the Prometheus text format (prometheus-client), with vLLM-like names, plus the
JSON view at `GET /metrics.json`.

Counters and gauges are read from the engine at scrape time (requests, tokens, queue, running
sequences, KV-cache bytes); latency histograms (time to first token, time per output token,
end-to-end) are observed by the HTTP layer as events reach each request.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    20.0, 40.0, 80.0)


class _EngineCollector:
    def __init__(self, engine, server, model_name: str):
        self.engine, self.server, self.model = engine, server, model_name

    def collect(self):
        m = self.engine.metrics()
        label = ["model_name"]

        def counter(name, doc, value):
            family = CounterMetricFamily(f"openseason_{name}", doc, labels=label)
            family.add_metric([self.model], value)
            return family

        def gauge(name, doc, value):
            family = GaugeMetricFamily(f"openseason_{name}", doc, labels=label)
            family.add_metric([self.model], value)
            return family

        yield counter("requests", "requests accepted by the engine", m["requests_total"])
        yield counter("requests_rejected", "requests refused with 503 (queue full)", m["requests_rejected"])
        yield counter("requests_cancelled", "requests whose client went away", m["requests_cancelled"])
        yield counter("requests_failed", "requests that ended with a generation error", m["requests_failed"])
        yield counter("prompt_tokens", "prompt tokens prefilled", m["prompt_tokens_total"])
        yield counter("generation_tokens", "tokens generated", m["tokens_generated_total"])
        yield counter("decode_steps", "batched decode steps", m["decode_steps_total"])
        yield counter("http_requests", "HTTP requests received", self.server.http_requests)
        yield counter("http_errors", "HTTP requests answered with an error", self.server.http_errors)
        yield gauge("num_requests_running", "requests with sequences in the running batch", m["requests_running"])
        yield gauge("num_sequences_running", "sequences in the running batch", m["sequences_running"])
        yield gauge("num_requests_waiting", "requests waiting for a row", m["queue_length"])
        yield gauge("kv_cache_usage_bytes", "bytes held by the running batch's KV cache", kv_cache_bytes(self.engine))
        yield gauge("healthy", "1 while the engine serves", 1.0 if m["healthy"] else 0.0)


def kv_cache_bytes(engine) -> int:
    cache = getattr(engine.batch, "cache", None)
    if cache is None:
        return 0
    try:
        return sum(t.numel() * t.element_size() for t in list(cache.k) + list(cache.v))
    except (AttributeError, RuntimeError):   # swapped by the engine thread mid-read: report nothing
        return 0


class ServerMetrics:
    """The registry one app exposes (one per app, so tests can run several servers in a process)."""

    def __init__(self, engine, server, model_name: str):
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram("openseason_time_to_first_token_seconds", "time from request to first token",
                              labels, buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.tpot = Histogram("openseason_time_per_output_token_seconds", "time between two tokens of a reply",
                              labels, buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("openseason_e2e_request_latency_seconds", "time from request to its last token",
                             labels, buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.registry.register(_EngineCollector(engine, server, model_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)
