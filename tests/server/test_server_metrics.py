"""``GET /metrics`` over HTTP, parsed as Prometheus text: every metric keeps its name, type, help and labels."""

import httpx
from prometheus_client.parser import text_string_to_metric_families
from server_env import ADMIN_KEY, MODEL_NAME

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TTFT_LE = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
RATE_LE = ["1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "+Inf"]
BATCH_LE = ["1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"]
# family name (a counter's without "_total", as the parser names it) -> type, help text, bucket bounds
EXPECTED = {
    "ernie_requests": ("counter", "HTTP requests by route and status code", None),
    "ernie_prompt_tokens": ("counter", "Prompt tokens processed", None),
    "ernie_completion_tokens": ("counter", "Completion tokens generated", None),
    "ernie_time_to_first_token_seconds": ("histogram", "Time from request to first generated token", TTFT_LE),
    "ernie_request_tokens_per_second": ("histogram", "Completion tokens per second of each request", RATE_LE),
    "ernie_batch_tokens_per_second": ("histogram", "Tokens per second of each batched decode step", RATE_LE),
    "ernie_decode_batch_size": ("histogram", "Sequences decoded together per step", BATCH_LE),
    "ernie_queue_depth": ("gauge", "Sequences waiting to join the running batch", None),
    "ernie_running_sequences": ("gauge", "Sequences in the running batch", None),
    "ernie_speculative_draft_tokens": ("counter", "Tokens drafted by the MTP layer (--speculative)", None),
    "ernie_speculative_accepted_tokens": ("counter", "Drafted tokens the main model accepted (--speculative)",
                                          None),
    "ernie_speculative_acceptance_rate": ("gauge", "Accepted / drafted tokens since start (0 before any draft)",
                                          None),
}


def test_metrics_scraped_over_http_keep_names_types_and_labels(server):
    httpx.get(server.base + "/v1/models")  # a 401
    r = httpx.post(server.base + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"model": MODEL_NAME, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    r = httpx.get(server.base + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert set(families) == set(EXPECTED)
    for name, (kind, help_text, bounds) in EXPECTED.items():
        family = families[name]
        assert (family.type, family.documentation) == (kind, help_text), name
        if kind == "histogram":
            assert [s.labels["le"] for s in family.samples if s.name == name + "_bucket"] == bounds
            assert {s.name for s in family.samples} == {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "counter":
            assert {s.name for s in family.samples} == {name + "_total"}
        else:
            assert [(s.name, s.labels) for s in family.samples] == [(name, {})]
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["ernie_requests"].samples}
    assert all(set(s.labels) == {"route", "status"} for s in families["ernie_requests"].samples)
    assert requests[("/v1/models", "401")] >= 1 and requests[("/v1/chat/completions", "200")] >= 1
    assert families["ernie_completion_tokens"].samples[0].value >= 1
    steps = [s.value for s in families["ernie_decode_batch_size"].samples if s.name.endswith("_count")]
    assert steps[0] >= 1
