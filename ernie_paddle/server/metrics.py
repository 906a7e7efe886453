"""A small Prometheus text-format registry: counters with labels, histograms and callback gauges."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Thread-safe; ``render`` gives the text a Prometheus scraper reads from ``GET /metrics``."""

    def __init__(self, prefix: str = "ernie_"):
        self.prefix = prefix
        self._lock = threading.RLock()  # gauges may read counters while rendering
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[tuple, float]] = {}
        self._hists: dict[str, tuple[tuple, list[int], list[float]]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def histogram(self, name: str, help_text: str, buckets: tuple) -> None:
        self._help[name] = ("histogram", help_text)
        self._hists[name] = (tuple(buckets), [0] * (len(buckets) + 1), [0.0])

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, value: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0) + value

    def observe(self, name: str, value: float) -> None:
        buckets, counts, total = self._hists[name]
        with self._lock:
            counts[bisect.bisect_left(buckets, value)] += 1
            total[0] += value

    def value(self, name: str, **labels) -> float:
        """Current value of one counter series (for tests and the admin view)."""
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        out = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                full = self.prefix + name
                out += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
                if kind == "counter":
                    for key, v in sorted(self._counters[name].items()):
                        out.append(f"{full}{_labels(dict(key))} {v:g}")
                elif kind == "gauge":
                    out.append(f"{full} {float(self._gauges[name]()):g}")
                else:
                    buckets, counts, total = self._hists[name]
                    running = 0
                    for bound, c in zip((*buckets, "+Inf"), counts):
                        running += c
                        out.append(f'{full}_bucket{{le="{bound}"}} {running}')
                    out += [f"{full}_sum {total[0]:g}", f"{full}_count {running}"]
        return "\n".join(out) + "\n"


def server_metrics(queue_depth: Callable[[], float], running: Callable[[], float]) -> Metrics:
    """The registry the server exports."""
    m = Metrics()
    m.counter("requests_total", "HTTP requests by route and status code")
    m.counter("prompt_tokens_total", "Prompt tokens processed")
    m.counter("completion_tokens_total", "Completion tokens generated")
    m.histogram("time_to_first_token_seconds", "Time from request to first generated token", TTFT_BUCKETS)
    m.histogram("request_tokens_per_second", "Completion tokens per second of each request", RATE_BUCKETS)
    m.histogram("batch_tokens_per_second", "Tokens per second of each batched decode step", RATE_BUCKETS)
    m.histogram("decode_batch_size", "Sequences decoded together per step", BATCH_BUCKETS)
    m.gauge("queue_depth", "Sequences waiting to join the running batch", queue_depth)
    m.gauge("running_sequences", "Sequences in the running batch", running)
    m.counter("speculative_draft_tokens_total", "Tokens drafted by the MTP layer (--speculative)")
    m.counter("speculative_accepted_tokens_total", "Drafted tokens the main model accepted (--speculative)")
    m.gauge("speculative_acceptance_rate", "Accepted / drafted tokens since start (0 before any draft)",
            lambda: m.value("speculative_accepted_tokens_total")
            / max(1, m.value("speculative_draft_tokens_total")))
    return m
