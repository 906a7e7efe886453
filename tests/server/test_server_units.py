"""Server parts on their own: continuous batching, stop strings, keys, usage store, metrics, readiness."""

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.batching import EagerEngine
from ernie_paddle.server import Settings, create_app
from ernie_paddle.server.auth import KeyRing, key_id, read_keys
from ernie_paddle.server.metrics import Metrics
from ernie_paddle.server.sampling import SamplingParams
from ernie_paddle.server.scheduler import Scheduler, Sequence
from ernie_paddle.server.textstream import ChoiceText
from ernie_paddle.server.usage import UsageStore


class Collector:
    def __init__(self):
        self.tokens, self.end, self.done = [], None, threading.Event()

    def __call__(self, event):
        if event[0] == "token":
            self.tokens.append(event[1].id)
        else:
            self.end = event
            self.done.set()


def test_continuous_batching_matches_each_sequence_alone(api):
    runtime, tok = api
    prompts = [tok.encode(t) for t in ["hello", "数据 模型 and more words here", "1 2 3", "你好", "The model x"]]
    lengths = [9, 4, 12, 1, 7]
    alone = [runtime.generate(np.array([p]), max_new_tokens=n, stop_token_ids=[])[0, len(p):].tolist()
             for p, n in zip(prompts, lengths)]
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=5)
    sched = Scheduler(EagerEngine(runtime), max_batch=4)
    sched.start()
    try:
        solo = Collector()
        sched.submit(Sequence(tok.encode("seeded"), seeded, solo))
        assert solo.done.wait(30)
        sinks = [Collector() for _ in prompts]
        for i, (p, n) in enumerate(zip(prompts, lengths)):  # staggered arrivals join a running batch
            sched.submit(Sequence(p, SamplingParams(max_tokens=n, temperature=0), sinks[i]))
            if i == 1:
                sched.submit(Sequence(tok.encode("seeded"), seeded, seeded_in_batch := Collector()))
            time.sleep(0.01 * i)
        cancelled = Collector()
        victim = Sequence(prompts[0], SamplingParams(max_tokens=10_000, temperature=0), cancelled)
        sched.submit(victim)
        for s in sinks:
            assert s.done.wait(30)
        victim.cancel()
        assert seeded_in_batch.done.wait(30)
        deadline = time.time() + 10
        while sched.running and time.time() < deadline:
            time.sleep(0.01)
        assert sched.running == 0 and len(cancelled.tokens) < 10_000
    finally:
        sched.stop()
    assert [s.tokens for s in sinks] == alone
    assert [s.end for s in sinks] == [("end", "length")] * len(prompts)
    assert seeded_in_batch.tokens == solo.tokens  # a seeded row samples the same in any batch


def test_choice_text_holds_back_and_cuts_stop_strings(model_dir):
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    tok = ErnieTokenizer.from_folder(model_dir)
    ids = tok.encode("Hello world, 你好世界 🦄 end")
    ct = ChoiceText(tok, stop=["d, 你", "zzz"])
    deltas = [ct.feed(i) for i in ids]
    assert "".join(deltas) == "Hello worl" and ct.stopped and ct.finish() == ""
    assert all("d, " not in d for d in deltas)
    ct = ChoiceText(tok, stop=["🦄 x"])
    out = "".join(ct.feed(i) for i in ids) + ct.finish()
    assert out == tok.decode(ids) and not ct.stopped
    ct = ChoiceText(tok, stop=["end!"])
    streamed = "".join(ct.feed(i) for i in ids)
    assert streamed.endswith("🦄 ") and ct.finish() == "end"  # "end" might have begun "end!"


def test_keys_file_parsing_and_checks(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# team a\nsk-one\n\n  sk-two  \n# sk-commented\n")
    assert read_keys(f) == ["sk-one", "sk-two"]
    ring = KeyRing(read_keys(f), ["sk-admin"])
    assert ring.identify("Bearer sk-two") == key_id("sk-two") and not ring.is_admin(key_id("sk-two"))
    assert ring.is_admin(ring.identify("bearer sk-admin"))
    for bad in (None, "", "Bearer", "Bearer sk-three", "Token sk-one"):
        with pytest.raises(Exception) as info:
            ring.identify(bad)
        assert info.value.status == 401
    assert KeyRing().identify(None) == "anonymous"
    f.write_text("# nothing\n\n")
    with pytest.raises(ErnieError, match="no keys"):
        read_keys(f)
    f.write_text("sk-a sk-b\n")
    with pytest.raises(ErnieError, match="whitespace"):
        read_keys(f)
    with pytest.raises(ErnieError, match="keys file"):
        read_keys(tmp_path / "missing")


def test_usage_store_persists_and_sums(tmp_path):
    store = UsageStore(tmp_path)
    store.record("key-a", "m", 10, 5)
    store.record("key-a", "m", 3, 4)
    store.record("key-b", "m", 1, 1)
    store.close()
    again = UsageStore(tmp_path)
    assert again.totals() == {
        "key-a": {"requests": 2, "prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22},
        "key-b": {"requests": 1, "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    assert list(again.totals("key-b")) == ["key-b"]
    again.close()


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.counter("requests_total", "requests")
    m.histogram("ttft_seconds", "ttft", (0.1, 1.0))
    m.gauge("depth", "queue", lambda: 3)
    m.inc("requests_total", route="/v1/x", status=200)
    m.inc("requests_total", 2, route='a"b', status=400)
    for v in (0.05, 0.5, 5):
        m.observe("ttft_seconds", v)
    text = m.render()
    assert 'ernie_requests_total{route="/v1/x",status="200"} 1' in text
    assert 'ernie_requests_total{route="a\\"b",status="400"} 2' in text
    assert 'ernie_ttft_seconds_bucket{le="0.1"} 1' in text and 'ernie_ttft_seconds_bucket{le="1.0"} 2' in text
    assert 'ernie_ttft_seconds_bucket{le="+Inf"} 3' in text and "ernie_ttft_seconds_count 3" in text
    assert "ernie_depth 3" in text and "# TYPE ernie_ttft_seconds histogram" in text


def test_health_is_ready_only_after_the_model_loads(model_dir, tmp_path):
    app = create_app(Settings(str(model_dir), data_dir=str(tmp_path)))
    state = app.state.server
    gate, real_load = threading.Event(), state._load
    state._load = lambda: (gate.wait(30), real_load())
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/chat/completions", json={"model": model_dir.name, "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        deadline = time.time() + 60
        while c.get("/health").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/health").json() == {"status": "ok", "model": model_dir.name}
        r = c.post("/v1/chat/completions", json={"model": model_dir.name, "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_failed_load_is_reported_by_health(tmp_path):
    (tmp_path / "empty-model").mkdir()
    app = create_app(Settings(str(tmp_path / "empty-model"), data_dir=str(tmp_path / "data")),
                     background_load=False)
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error" and r.json()["error"]
