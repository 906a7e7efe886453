"""The server's Prometheus metrics through ``prometheus-client``, in one registry per app.

Names, types, labels, help texts and histogram bounds are those the server has always exported, so
dashboards keep working: no ``_created`` series, and bucket bounds written as declared (``le="8"``).
One process serves HTTP (``serve --tp``: rank 0 only), so the client's multiprocess mode is not needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the format generate_latest writes
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Exported(Collector):
    """One client metric as the server exports it: without ``_created`` samples, bucket bounds as declared."""

    def __init__(self, metric, bounds: tuple = ()):
        self.metric = metric
        self.le = {float(b): str(b) for b in bounds}

    def describe(self):
        return self.metric.describe()

    def collect(self):
        for family in self.metric.collect():
            family.samples = [s._replace(labels={**s.labels, "le": self.le.get(float(s.labels["le"]),
                                                                               s.labels["le"])})
                              if "le" in s.labels else s
                              for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """Counters, histograms and callback gauges by short name; ``render`` gives what ``GET /metrics`` serves."""

    def __init__(self, prefix: str = "ernie_"):
        self.prefix = prefix
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        self._metrics: dict = {}

    def _add(self, name: str, metric, bounds: tuple = ()):
        self.registry.register(_Exported(metric, bounds))
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] | None = None) -> None:
        """``labels``: the label names; None takes them from the first ``inc``."""
        self._specs[name] = (help_text, labels)
        if labels is not None:
            self._counter(name, {})

    def _counter(self, name: str, labels: dict) -> Counter:
        with self._lock:
            if name not in self._metrics:
                help_text, names = self._specs[name]
                self._add(name, Counter(self.prefix + name, help_text, sorted(labels) if names is None else names,
                                        registry=None))
            return self._metrics[name]

    def histogram(self, name: str, help_text: str, buckets: tuple) -> None:
        self._add(name, Histogram(self.prefix + name, help_text, buckets=buckets, registry=None), buckets)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._add(name, Gauge(self.prefix + name, help_text, registry=None)).set_function(read)

    def inc(self, name: str, value: float = 1, **labels) -> None:
        counter = self._counter(name, labels)
        (counter.labels(**labels) if labels else counter).inc(value)

    def observe(self, name: str, value: float) -> None:
        self._metrics[name].observe(value)

    def value(self, name: str, **labels) -> float:
        """Current value of one counter series (0 before its first ``inc``)."""
        wanted = {k: str(v) for k, v in labels.items()}
        counter = self._metrics.get(name)
        samples = [s for f in (counter.collect() if counter else []) for s in f.samples]
        return next((s.value for s in samples if s.name.endswith("_total") and s.labels == wanted), 0)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def server_metrics(queue_depth: Callable[[], float], running: Callable[[], float]) -> Metrics:
    """The metrics the server exports."""
    m = Metrics()
    m.counter("requests_total", "HTTP requests by route and status code", ("route", "status"))
    m.counter("prompt_tokens_total", "Prompt tokens processed", ())
    m.counter("completion_tokens_total", "Completion tokens generated", ())
    m.histogram("time_to_first_token_seconds", "Time from request to first generated token", TTFT_BUCKETS)
    m.histogram("request_tokens_per_second", "Completion tokens per second of each request", RATE_BUCKETS)
    m.histogram("batch_tokens_per_second", "Tokens per second of each batched decode step", RATE_BUCKETS)
    m.histogram("decode_batch_size", "Sequences decoded together per step", BATCH_BUCKETS)
    m.gauge("queue_depth", "Sequences waiting to join the running batch", queue_depth)
    m.gauge("running_sequences", "Sequences in the running batch", running)
    m.counter("speculative_draft_tokens_total", "Tokens drafted by the MTP layer (--speculative)", ())
    m.counter("speculative_accepted_tokens_total", "Drafted tokens the main model accepted (--speculative)", ())
    m.gauge("speculative_acceptance_rate", "Accepted / drafted tokens since start (0 before any draft)",
            lambda: m.value("speculative_accepted_tokens_total")
            / max(1, m.value("speculative_draft_tokens_total")))
    return m
