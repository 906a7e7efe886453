"""Evaluation clients: completions ``echo`` with prompt logprobs, vLLM's tokenizer routes, and
lm-evaluation-harness (``local-completions``, ``local-chat-completions``) run against the real server."""

from pathlib import Path

import httpx
import numpy as np
import pytest
from server_env import MODEL_NAME, USER_KEYS

DATA = Path(__file__).resolve().parents[1] / "data" / "lm_eval"
AUTH = {"Authorization": f"Bearer {USER_KEYS[0]}"}


def _log_softmax(runtime, ids: list[int]) -> np.ndarray:
    """The runtime's own teacher-forced log-probabilities [T, V] (float64)."""
    x = runtime.logits(np.array([ids], dtype=np.int64))[0].astype(np.float64)
    return x - (x.max(-1, keepdims=True) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)))


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base + path, json=body, headers=AUTH, timeout=60)


def test_echo_returns_prompt_logprobs_equal_to_the_runtime(server, client, api):
    runtime, tok = api
    prompt = "模型 echo test: the 7 data points"
    ids = tok.encode(prompt, add_special_tokens=False)
    ref = _log_softmax(runtime, ids)
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, echo=True, logprobs=2, max_tokens=1,
                                  temperature=0)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [ref[i - 1, ids[i]] for i in range(1, len(ids))]
    assert np.allclose(lp.token_logprobs[1:len(ids)], want, atol=1e-4, rtol=0)
    for i in range(1, len(ids)):
        assert len(lp.top_logprobs[i]) <= 2  # two ids may share a display text
        assert max(lp.top_logprobs[i].values()) == pytest.approx(ref[i - 1].max(), abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset)
    # the generated token follows with its own logprob (greedy: the best one at the end of the prompt)
    assert lp.token_logprobs[-1] == pytest.approx(ref[-1].max(), abs=1e-4)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 1

    zero = _post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": [ids, ids[:3]], "echo": True,
                                             "logprobs": 0, "max_tokens": 0})
    assert zero.status_code == 200, zero.text
    body = zero.json()
    assert body["usage"]["completion_tokens"] == 0
    first = body["choices"][0]
    assert first["text"] == tok.decode(ids) and first["finish_reason"] == "length"
    assert np.allclose(first["logprobs"]["token_logprobs"][1:], want, atol=1e-4, rtol=0)
    assert body["choices"][1]["logprobs"]["token_logprobs"][1:] == pytest.approx(want[:2], abs=1e-4)

    refused = _post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_echo_streams_the_prompt_first_and_vllm_prompt_logprobs(server, client, api):
    runtime, tok = api
    ids = tok.encode("stream the prompt back 模型", add_special_tokens=False)
    ref = _log_softmax(runtime, ids)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=ids, echo=True, logprobs=1, max_tokens=3,
                                            temperature=0, stream=True))
    assert chunks[0].choices[0].text == tok.decode(ids)
    assert chunks[0].choices[0].logprobs.token_logprobs[0] is None
    streamed = [x for c in chunks for x in (c.choices[0].logprobs.token_logprobs if c.choices[0].logprobs else [])]
    assert len(streamed) == len(ids) + 3
    assert np.allclose(streamed[1:len(ids)], [ref[i - 1, ids[i]] for i in range(1, len(ids))], atol=1e-4)

    r = _post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": ids, "max_tokens": 1,
                                          "prompt_logprobs": 3, "temperature": 0}).json()
    plp = r["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for i in range(1, len(ids)):
        own = plp[i][str(ids[i])]
        assert own["logprob"] == pytest.approx(ref[i - 1, ids[i]], abs=1e-4)
        assert own["rank"] == int((ref[i - 1] > ref[i - 1, ids[i]]).sum()) + 1
        best = int(ref[i - 1].argmax())
        assert plp[i][str(best)]["rank"] == 1 and 3 <= len(plp[i]) <= 4


def test_tokenizer_routes_answer_like_vllm(server, api):
    _, tok = api
    text = "模型 tokens, and 42 more"
    r = _post(server, "/tokenize", {"model": MODEL_NAME, "prompt": text, "add_special_tokens": False,
                                    "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tok.encode(text, add_special_tokens=False) and body["count"] == len(body["tokens"])
    assert body["token_strs"] == tok.convert_ids_to_tokens(body["tokens"]) and body["max_model_len"] > 0
    chat = _post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                     add_generation_prompt=True, tokenize=True)
    back = _post(server, "/detokenize", {"model": MODEL_NAME, "tokens": body["tokens"]}).json()
    assert back == {"prompt": tok.decode(body["tokens"])}
    info = httpx.get(server.base + "/tokenizer_info", headers=AUTH).json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    assert _post(server, "/detokenize", {"tokens": [len(tok)]}).status_code == 400
    assert _post(server, "/tokenize", {"prompt": "a", "messages": []}).status_code == 400
    assert _post(server, "/tokenize", {"model": "other", "prompt": "a"}).status_code == 404
    assert httpx.post(server.base + "/tokenize", json={"prompt": "a"}).status_code == 401


def _lm_eval(server, monkeypatch, tmp_path, model: str, tasks: list[str], **kwargs) -> dict:
    """Run lm-evaluation-harness on the tasks of tests/data/lm_eval against the server."""
    evaluator = pytest.importorskip("lm_eval.evaluator")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", USER_KEYS[0])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.chdir(DATA)  # the task files name their data files relative to this folder
    path = "chat/completions" if "chat" in model else "completions"
    args = {"model": MODEL_NAME, "base_url": f"{server.base}/v1/{path}", "num_concurrent": 4,
            "max_retries": 1, "auth_token": USER_KEYS[0], **kwargs}
    return evaluator.simple_evaluate(model=model, model_args=args, tasks=tasks,
                                     task_manager=TaskManager(include_path=str(DATA)), log_samples=True,
                                     apply_chat_template="chat" in model)


def _encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids the way a causal-LM evaluator splits them: trailing spaces of the
    context go to the continuation; the whole text is encoded once and split after the context."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


def test_lm_eval_local_completions_multiple_choice_and_generation(server, api, reference, monkeypatch,
                                                                  tmp_path):
    runtime, tok = api
    out = _lm_eval(server, monkeypatch, tmp_path, "local-completions", ["ernie_tiny_mc", "ernie_tiny_gen"])
    mc = out["samples"]["ernie_tiny_mc"]
    assert len(mc) == 4 and "acc,none" in out["results"]["ernie_tiny_mc"]
    checked = 0
    for sample in mc:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ctx, cont = _encode_pair(tok, context, continuation)
            ref = _log_softmax(runtime, ctx + cont)
            want = sum(ref[len(ctx) + j - 1, t] for j, t in enumerate(cont))
            greedy = all(ref[len(ctx) + j - 1].argmax() == t for j, t in enumerate(cont))
            loglikelihood, is_greedy = resp[0]
            assert loglikelihood == pytest.approx(want, abs=1e-4)
            assert bool(is_greedy) == greedy
            checked += 1
    assert checked == 12
    gen = out["samples"]["ernie_tiny_gen"]
    assert len(gen) == 3
    for sample in gen:
        context = sample["arguments"][0][0]
        want = reference(tok.encode(context, add_special_tokens=False), 8)[1].split("\n\n")[0]
        assert sample["resps"][0][0] == want


def test_lm_eval_local_chat_completions_generates(server, api, reference, monkeypatch, tmp_path):
    _, tok = api
    out = _lm_eval(server, monkeypatch, tmp_path, "local-chat-completions", ["ernie_tiny_gen"])
    gen = out["samples"]["ernie_tiny_gen"]
    assert len(gen) == 3 and "exact_match,none" in out["results"]["ernie_tiny_gen"]
    for sample, doc in zip(sorted(gen, key=lambda s: s["doc_id"]), (DATA / "gen.jsonl").read_text().splitlines()):
        import json

        ids = tok.apply_chat_template([{"role": "user", "content": json.loads(doc)["prompt"]}],
                                      add_generation_prompt=True, tokenize=True)
        assert sample["resps"][0][0] == reference(ids, 8)[1].split("\n\n")[0]
