"""``serve --speculative mtp``: greedy output equals plain greedy output; /metrics counts drafts and accepts;
logprobs are the main model's own (teacher-forced) log-probabilities."""

import re
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from server_env import MODEL_NAME, USER_KEYS, ServerProcess, free_port

from ernie_paddle.devkit.mtp_fit import damp_main_layers, fit_mtp

PROMPTS = [[5, 17, 300, 42, 9, 77, 1000], [400, 3, 90, 91]]
GREEDY = dict(max_tokens=16, temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})
AUTH = {"Authorization": f"Bearer {USER_KEYS[0]}"}


def _counter(base: str, name: str) -> float:
    m = re.search(rf"^ernie_{name} (\S+)$", httpx.get(base + "/metrics", headers=AUTH).text, re.M)
    return float(m.group(1)) if m else 0.0


class _ThreadServer:
    """uvicorn on 127.0.0.1 in this process, serving an app built around an already loaded runtime."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.base + "/health", timeout=2).json().get("status") == "ok":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("in-process server did not become ready")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def fitted(tiny_ckpts):
    """A tiny MoE model whose MTP layer is fitted to it (real acceptance), as in tests/test_speculative.py."""
    from ernie_paddle.api import load

    folder = tiny_ckpts("spec-moe2", "moe", mtp=1, num_hidden_layers=2, bias_scale=0.1)
    rt = load(folder, device="cpu")
    damp_main_layers(rt.model, 0.1)
    seqs = rt.generate(np.random.default_rng(0).integers(3, 1024, size=(32, 4)), max_new_tokens=28,
                       stop_token_ids=[])
    assert fit_mtp(rt.model, seqs, block_scale=0.5) > 0.7
    return rt, folder


def test_speculative_server_is_greedy_identical_and_counts_acceptance(fitted, tmp_path):
    from ernie_paddle.server import Settings, create_app
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    rt, folder = fitted
    want = [rt.generate([p], max_new_tokens=16, stop_token_ids=[])[0, len(p):].tolist() for p in PROMPTS]
    settings = Settings(model_path=str(folder), model_name=MODEL_NAME, data_dir=str(tmp_path),
                        speculative="mtp", num_draft=2)
    app = create_app(settings, runtime=rt, tokenizer=ErnieTokenizer.from_folder(folder))
    with _ThreadServer(app) as srv:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        got = [client.completions.create(model=MODEL_NAME, prompt=p, **GREEDY).choices[0].model_extra["token_ids"]
               for p in PROMPTS]
        chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], stream=True, **GREEDY))
        streamed = [t for c in chunks for ch in c.choices for t in ch.model_extra.get("token_ids") or []]
        drafted = _counter(srv.base, "speculative_draft_tokens_total")
        accepted = _counter(srv.base, "speculative_accepted_tokens_total")
        rate = _counter(srv.base, "speculative_acceptance_rate")
        for extra in ({"frequency_penalty": 1.0}, {"logit_bias": {"5": 3}}):
            with pytest.raises(openai.BadRequestError) as err:
                client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], **GREEDY, **extra)
            assert err.value.body["param"] == next(iter(extra))
        rep = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], **{**GREEDY, "extra_body": {
            **GREEDY["extra_body"], "repetition_penalty": 2.0}}).choices[0].model_extra["token_ids"]
    assert rep == rt.generate([PROMPTS[0]], max_new_tokens=16, stop_token_ids=[], repetition_penalty=2.0,
                              do_sample=False)[0, len(PROMPTS[0]):].tolist()
    assert got == want and streamed == want[0]
    assert drafted > 0 and accepted > 0 and rate == pytest.approx(accepted / drafted)


def test_serve_cli_speculative_matches_plain_greedy(moe_hf, tmp_path):
    """The CLI flags end to end on a checkpoint with a random MTP layer (drafts, maybe no accepts)."""
    from ernie_paddle.api import load

    prompt = PROMPTS[0]
    want = load(moe_hf, device="cpu").generate([prompt], max_new_tokens=16, stop_token_ids=[])[0, 7:].tolist()
    (tmp_path / "keys.txt").write_text(USER_KEYS[0] + "\n")
    (tmp_path / "admin.txt").write_text("sk-admin-x\n")
    proc = ServerProcess(moe_hf, tmp_path / "data", tmp_path / "keys.txt", tmp_path / "admin.txt",
                         tmp_path / "server.log", ["--speculative", "mtp", "--num-draft", "3"])
    proc.start()
    try:
        client = openai.OpenAI(base_url=proc.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, **GREEDY)
        assert r.choices[0].model_extra["token_ids"] == want
        assert _counter(proc.base, "speculative_draft_tokens_total") > 0
    finally:
        proc.stop()


def _forced(rt, prompt: list[int], generated: list[int]) -> np.ndarray:
    """Teacher-forced log-softmax rows [len(generated), V] of the runtime's own logits."""
    x = rt.logits(np.array([prompt + generated], dtype=np.int64))[0, len(prompt) - 1: -1].astype(np.float64)
    peak = x.max(-1, keepdims=True)
    return x - (peak + np.log(np.exp(x - peak).sum(-1, keepdims=True)))


def test_speculative_server_logprobs_are_the_main_models(fitted, tmp_path):
    from ernie_paddle.server import Settings, create_app
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    rt, folder = fitted
    tok = ErnieTokenizer.from_folder(folder)
    settings = Settings(model_path=str(folder), model_name=MODEL_NAME, data_dir=str(tmp_path),
                        speculative="mtp", num_draft=2)
    messages = [{"role": "user", "content": "hello there"}]
    chat_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    with _ThreadServer(create_app(settings, runtime=rt, tokenizer=tok)) as srv:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        done = [client.completions.create(model=MODEL_NAME, prompt=p, logprobs=3, **GREEDY).choices[0]
                for p in PROMPTS]
        chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], logprobs=3, stream=True,
                                                **GREEDY))
        chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, logprobs=True, top_logprobs=4,
                                              **GREEDY).choices[0]
        echo = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], logprobs=2, echo=True,
                                         **GREEDY).choices[0]
    for p, choice in zip(PROMPTS, done):
        ids = choice.model_extra["token_ids"]
        assert ids == rt.generate([p], max_new_tokens=16, stop_token_ids=[])[0, len(p):].tolist()
        forced = _forced(rt, p, ids)
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) == 16
        np.testing.assert_allclose(lp.token_logprobs, forced[np.arange(16), ids], atol=1e-4)
        for top, row, chosen in zip(lp.top_logprobs, forced, lp.token_logprobs):
            assert 1 <= len(top) <= 3  # two ids may share a display text
            assert max(top.values()) == pytest.approx(chosen, abs=1e-9)  # greedy: the token is the top one
            assert set(np.round(list(top.values()), 4)) <= set(np.round(np.sort(row)[-3:], 4))
    streamed = [v for c in chunks for ch in c.choices for v in (ch.logprobs.token_logprobs if ch.logprobs else [])]
    np.testing.assert_allclose(streamed, done[0].logprobs.token_logprobs, atol=1e-6)
    ids = chat.model_extra["token_ids"]
    assert ids == rt.generate([chat_ids], max_new_tokens=16, stop_token_ids=[])[0, len(chat_ids):].tolist()
    forced = _forced(rt, chat_ids, ids)
    assert len(chat.logprobs.content) == len(ids)
    for entry, row, t in zip(chat.logprobs.content, forced, ids):
        assert entry.logprob == pytest.approx(row[t], abs=1e-4)
        top = [e.logprob for e in entry.top_logprobs]
        assert len(top) == 4 and top == sorted(top, reverse=True) and top[0] == pytest.approx(entry.logprob)
        np.testing.assert_allclose(top, np.sort(row)[::-1][:4], atol=1e-4)
    lp, n = echo.logprobs, len(PROMPTS[1])  # echo: the prompt's own logprobs (first null), then the generated
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == n + 16
    gen = echo.model_extra["token_ids"]
    whole = _forced(rt, PROMPTS[1][:1], PROMPTS[1][1:] + gen)
    np.testing.assert_allclose(lp.token_logprobs[1:], whole[np.arange(n - 1 + 16), PROMPTS[1][1:] + gen], atol=1e-4)
