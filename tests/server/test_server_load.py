"""Many clients at once, disconnects, and per-key usage that survives a restart."""

import asyncio
import json
import re
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
from server_env import ADMIN_KEY, MODEL_NAME, USER_KEYS


def _metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1))


def _admin_usage(base: str) -> dict:
    r = httpx.get(base + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200
    return {row["key_id"]: row for row in r.json()["data"]}


def test_32_concurrent_streams_get_the_right_tokens(server, api, reference):
    _, tok = api
    prompts = [f"模型 {i} data {i * 3}" for i in range(32)]
    want = [reference(tok.encode(p), 12) for p in prompts]
    big_batches = _metric(server.base, 'ernie_decode_batch_size_bucket{le="+Inf"}') - \
        _metric(server.base, 'ernie_decode_batch_size_bucket{le="8"}')

    async def one(client, prompt):
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"return_token_ids": True})
        text, usage, ids = "", None, []
        async for chunk in stream:
            usage = chunk.usage or usage
            text += "".join(c.text for c in chunk.choices)
            ids += [i for c in chunk.choices for i in (c.model_extra or {}).get("token_ids", [])]
        return text, usage, ids

    async def main():
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=USER_KEYS[1], max_retries=0,
                                    timeout=120)
        try:
            return await asyncio.gather(*(one(client, p) for p in prompts))
        finally:
            await client.close()

    results = asyncio.run(main())
    for prompt, (text, usage, ids), (want_ids, want_text) in zip(prompts, results, want):
        assert usage.completion_tokens == len(ids) and text == tok.decode(ids, skip_special_tokens=True)
        assert ids == want_ids, (prompt, text, want_text)  # exact: batching never changes a greedy token
    after = _metric(server.base, 'ernie_decode_batch_size_bucket{le="+Inf"}') - \
        _metric(server.base, 'ernie_decode_batch_size_bucket{le="8"}')
    assert after > big_batches, "concurrent requests must be decoded in shared batches"


def test_random_join_leave_stress_equals_single_request_outputs(server, api):
    """220 streams with varied prompt and output lengths join and leave a running batch at random times (at
    most 40 in flight); one in six disconnects mid-stream. Every finished stream equals its single-request
    greedy output, and what a disconnected one received is a prefix of it; every fourth stream asks for
    logprobs, which equal the teacher-forced ones of the single-request model (so a batching error shows even
    where it does not flip a token)."""
    runtime, tok = api
    rng = np.random.default_rng(18)
    vocab = len(tok)
    jobs = []
    for k in range(220):
        length = int(rng.choice([rng.integers(1, 6), rng.integers(6, 40), rng.integers(40, 100)]))
        jobs.append(([int(t) for t in rng.integers(3, vocab, size=length)], int(rng.integers(1, 21)),
                     int(rng.integers(1, 4)) if k % 6 == 5 else None, float(rng.random()) * 0.02))
    want = [runtime.generate(np.array([ids], dtype=np.int64), max_new_tokens=n,
                             stop_token_ids=[])[0, len(ids):].tolist() for ids, n, _, _ in jobs]

    async def one(client, gate, k, ids, n, leave_after, delay):
        await asyncio.sleep(delay)
        async with gate:
            got, logprobs = [], []
            stream = await client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=n, temperature=0,
                                                     stream=True, logprobs=0 if k % 4 == 3 else None,
                                                     extra_body={"ignore_eos": True, "return_token_ids": True})
            async for chunk in stream:
                got += [i for c in chunk.choices for i in (c.model_extra or {}).get("token_ids", [])]
                logprobs += [x for c in chunk.choices if c.logprobs for x in c.logprobs.token_logprobs]
                if leave_after is not None and len(got) >= leave_after:
                    await stream.close()  # the client disconnects mid-stream
                    return got, False, logprobs
            return got, True, logprobs

    async def main():
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=USER_KEYS[1], max_retries=0,
                                    timeout=120)
        gate = asyncio.Semaphore(40)
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(client, gate, k, *job)
                                                           for k, job in enumerate(jobs))), 420)
        finally:
            await client.close()

    results = asyncio.run(main())
    finished = scored = 0
    for (ids, *_), (got, complete, logprobs), ref in zip(jobs, results, want):
        if complete:
            finished += 1
            assert got == ref, (ids, got, ref)
        else:
            assert got == ref[:len(got)] and got, (ids, got, ref)
        if logprobs:
            x = runtime.logits(np.array([ids + got], dtype=np.int64))[0, len(ids) - 1:-1].astype(np.float64)
            lse = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
            assert np.abs(np.array(logprobs) - (x[np.arange(len(got)), got] - lse)).max() <= 1e-4
            scored += 1
    assert finished >= 180 and scored >= 40
    deadline = time.time() + 10
    while _metric(server.base, "ernie_running_sequences") > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert _metric(server.base, "ernie_running_sequences") == 0  # the disconnected ones left the batch


def test_disconnect_frees_its_slot(server, client):
    before = _admin_usage(server.base).get("anonymous")
    assert before is None  # every request in this session carries a key
    with httpx.stream("POST", server.base + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {USER_KEYS[0]}"},
                      json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 2000, "stream": True, "ignore_eos": True, "temperature": 0}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    deadline = time.time() + 10
    while _metric(server.base, "ernie_running_sequences") > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert _metric(server.base, "ernie_running_sequences") == 0  # 2000 tokens would take far longer
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "again"}],
                                       max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1


def test_usage_per_key_equals_sum_of_responses_and_survives_restart(server):
    keys = USER_KEYS[2:]
    before = _admin_usage(server.base)
    sums = {k: [0, 0, 0] for k in keys}
    for n, key in enumerate(keys * 3):
        c = openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=60)
        if n % 2:
            r = c.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": f"q{n}"}],
                                          max_tokens=3 + n, temperature=0.7, seed=n)
            usage = r.usage
        else:
            usage = None
            for chunk in c.completions.create(model=MODEL_NAME, prompt=f"p{n} 模型", max_tokens=2 + n,
                                              stream=True, stream_options={"include_usage": True}):
                usage = chunk.usage or usage
        sums[key][0] += 1
        sums[key][1] += usage.prompt_tokens
        sums[key][2] += usage.completion_tokens
    after = _admin_usage(server.base)
    by_id = {}
    for key in keys:
        mine = httpx.get(server.base + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        kid = mine["key_id"]
        by_id[kid] = key
        old = before.get(kid, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        got = [after[kid][f] - old[f] for f in ("requests", "prompt_tokens", "completion_tokens")]
        assert got == sums[key]
        assert mine["requests"] == after[kid]["requests"]
    server.restart()
    assert _admin_usage(server.base) == after  # the SQLite file outlives the process
    cli = subprocess.run([sys.executable, "-m", "ernie_paddle", "usage", "--data-dir", str(server.data_dir),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    table = json.loads(cli.stdout)
    for kid in by_id:
        assert table[kid] == {k: v for k, v in after[kid].items() if k != "key_id"}
