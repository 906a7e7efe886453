"""The OpenAI routes through the official ``openai`` client against a real uvicorn server."""

import subprocess
import sys

import httpx
from server_env import ADMIN_KEY, MODEL_NAME, USER_KEYS

CHAT = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "数据 模型 hello 🦄"}]


def _stream_text(stream):
    texts, finish, usage, logprobs = {}, {}, None, {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            piece = getattr(ch.delta, "content", None) if hasattr(ch, "delta") else ch.text
            texts[ch.index] = texts.get(ch.index, "") + (piece or "")
            if ch.logprobs is not None:
                logprobs.setdefault(ch.index, []).append(ch.logprobs)
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return texts, finish, usage, logprobs


def test_health_models_and_metrics(server):
    assert httpx.get(server.base + "/health").json()["status"] == "ok"  # no key needed
    auth = {"Authorization": f"Bearer {USER_KEYS[0]}"}
    models = httpx.get(server.base + "/v1/models", headers=auth).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME]
    text = httpx.get(server.base + "/metrics", headers=auth).text
    for name in ("ernie_requests_total", "ernie_time_to_first_token_seconds_bucket", "ernie_queue_depth",
                 "ernie_prompt_tokens_total", "ernie_completion_tokens_total", "ernie_batch_tokens_per_second"):
        assert name in text


def test_chat_stream_and_not_agree_with_python_api(client, api, reference):
    _, tok = api
    ids = tok.apply_chat_template(CHAT, tokenize=True)
    want_ids, want_text = reference(ids, 12)
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want_text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want_ids)
    assert r.choices[0].finish_reason == ("length" if len(want_ids) == 12 else "stop")
    stream = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    texts, finish, usage, _ = _stream_text(stream)
    assert texts == {0: want_text} and finish == {0: r.choices[0].finish_reason}
    assert usage.completion_tokens == len(want_ids) and usage.prompt_tokens == len(ids)


def test_completion_greedy_equals_python_api_and_generate_cli(client, api, reference, model_dir):
    _, tok = api
    prompt = "数据 模型"
    want_ids, want_text = reference(tok.encode(prompt), 16)
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].text == want_text and r.usage.completion_tokens == len(want_ids)
    texts, _, _, _ = _stream_text(client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16,
                                                            temperature=0, stream=True))
    assert texts == {0: want_text}
    cli = subprocess.run([sys.executable, "-m", "ernie_paddle", "generate", str(model_dir), "--prompt", prompt,
                          "--max-new-tokens", "16"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout == want_text + "\n"


def test_stop_sequences_cut_the_text(client, reference, api):
    _, tok = api
    prompt = "数据 模型"
    _, full = reference(tok.encode(prompt), 24)
    # the last 2-character piece of the greedy text that first occurs where it stands
    i = max(k for k in range(1, len(full) - 2) if full.find(full[k:k + 2]) == k)
    stop = full[i:i + 2]
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:i] and r.choices[0].finish_reason == "stop"
    texts, finish, _, _ = _stream_text(client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True))
    assert texts == {0: full[:i]} and finish == {0: "stop"}


def test_seeded_sampling_repeats(client):
    def sample(seed):
        r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=1.0,
                                           top_p=0.95, seed=seed, extra_body={"ignore_eos": True})
        return r.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first  # a near-uniform random model: equal 20-token samples are implausible


def test_logprobs_present(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-9  # greedy picks the top token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    c = client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=5, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == c.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    _, _, _, streamed = _stream_text(client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=1, stream=True))
    assert sum(len(x.content) for x in streamed[0]) == 4


def test_n_choices_and_batched_prompts(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=8, n=3, seed=7,
                                       temperature=1.0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 24
    texts, finish, usage, _ = _stream_text(client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=8, n=3, seed=7, temperature=1.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert texts == {c.index: c.message.content for c in r.choices}  # same seeds, same samples
    assert finish == {0: "length", 1: "length", 2: "length"} and usage.completion_tokens == 24
    c = client.completions.create(model=MODEL_NAME, prompt=["hello", "你好"], max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert sorted(ch.index for ch in c.choices) == [0, 1] and c.usage.completion_tokens == 8


def test_own_usage_route(server):
    r = httpx.get(server.base + "/v1/usage", headers={"Authorization": f"Bearer {USER_KEYS[0]}"})
    assert r.status_code == 200 and r.json()["requests"] >= 1
    r = httpx.get(server.base + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200 and r.json()["object"] == "list"
