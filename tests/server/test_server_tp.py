"""``serve --tp 2``: rank 0 serves HTTP and batches, rank 1 replays each step (2 processes over 127.0.0.1)."""

import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from server_env import ADMIN_KEY, MODEL_NAME, USER_KEYS, ServerProcess

from ernie_paddle.runtime.batching import EagerEngine
from ernie_paddle.runtime.distributed import runinfo
from ernie_paddle.runtime.distributed.steps import DECODE, HEARTBEAT, STOP, LeaderEngine, follow

CHAT = [{"role": "user", "content": "数据 模型 hello"}]
PROMPTS = [f"模型 {i} data {i * 3}" for i in range(6)]


@pytest.fixture(scope="module")
def tp_models(tiny_ckpts):
    """Tiny dense (kv heads split) and MoE (one kv head, replicated) models with demo tokenizers."""
    return {"dense": tiny_ckpts("tp-serve-dense", "dense", initializer_range=0.1),
            "moe": tiny_ckpts("tp-serve-moe", "moe", num_key_value_heads=1, bias_scale=0.1, initializer_range=0.1)}


def _reference(folder):
    """greedy(ids, n) -> new ids from the single-process runtime, stopping at the tokenizer's stop ids."""
    from ernie_paddle.api import load
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    runtime, tok = load(folder, engine="dygraph"), ErnieTokenizer.from_folder(folder)

    def greedy(ids, n):
        return runtime.generate(np.array([ids], dtype=np.int64), max_new_tokens=n,
                                stop_token_ids=tok.stop_token_ids)[0, len(ids):].tolist()

    return greedy, tok


def _serve_tp(folder, root, *extra) -> ServerProcess:
    keys, admin = root / "keys.txt", root / "admin.txt"
    keys.write_text(USER_KEYS[0] + "\n")
    admin.write_text(ADMIN_KEY + "\n")
    proc = ServerProcess(folder, root / "data", keys, admin, root / "server.log", ["--tp", "2", *extra],
                         env={"TMPDIR": str(root), "ERNIE_PADDLE_TP_TIMEOUT": "20"})
    proc.start()
    return proc


def _concurrent_token_ids(base: str, prompts: list[str], n: int) -> list[list[int]]:
    """Stream greedy completions of every prompt at once; the token ids each one got."""

    async def one(client, prompt):
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=n, temperature=0,
                                                 stream=True, extra_body={"return_token_ids": True})
        return [i async for chunk in stream for c in chunk.choices for i in (c.model_extra or {}).get("token_ids", [])]

    async def main():
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(client, p) for p in prompts))
        finally:
            await client.close()

    return asyncio.run(main())


def _largest_batch_seen(base: str) -> bool:
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    count = float(re.search(r"^ernie_decode_batch_size_count ([0-9.e+]+)$", text, re.M).group(1))
    ones = float(re.search(r'^ernie_decode_batch_size_bucket\{le="1"\} ([0-9.e+]+)$', text, re.M).group(1))
    return count > ones  # some decode step ran more than one sequence


def test_tp2_server_equals_single_process_and_stops_cleanly(tp_models, tmp_path):
    """Chat (plain and streamed) and concurrent streamed completions give the single-process greedy tokens;
    SIGTERM stops every rank and the job exits 0."""
    greedy, tok = _reference(tp_models["dense"])
    server = _serve_tp(tp_models["dense"], tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)
        want = greedy(tok.apply_chat_template(CHAT, tokenize=True), 12)
        want_text = tok.decode(want, skip_special_tokens=True)
        r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == want_text and r.usage.completion_tokens == len(want)
        stream = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want_text
        got = _concurrent_token_ids(server.base, PROMPTS, 10)
        assert got == [greedy(tok.encode(p), 10) for p in PROMPTS]
        assert len({tuple(g) for g in got}) > 1 and _largest_batch_seen(server.base)
    finally:
        started = time.monotonic()
        code = server.stop(timeout=40)
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert time.monotonic() - started < 30
    assert not list(tmp_path.glob("ernie-paddle-tp-*"))  # a clean end leaves no run folder behind


def test_tp2_moe_server_equals_single_process_and_a_dead_rank_ends_it(tp_models, tmp_path):
    """Expert-parallel MoE: concurrent greedy completions match; SIGKILL of rank 1 then makes the job exit
    non-zero within seconds, naming rank 1."""
    greedy, tok = _reference(tp_models["moe"])
    server = _serve_tp(tp_models["moe"], tmp_path, "--moe-parallel", "ep")
    try:
        assert _concurrent_token_ids(server.base, PROMPTS[:4], 8) == [greedy(tok.encode(p), 8) for p in PROMPTS[:4]]
        (run,) = tmp_path.glob("ernie-paddle-tp-*")
        os.kill(runinfo.read_statuses(run)[1]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        server.proc.wait(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        code = server.stop()
    log = (tmp_path / "server.log").read_text()
    assert code not in (0, None) and elapsed < 30
    assert "rank 1 died" in log and "workerlog.1" in log


def test_serve_tp_refuses_speculative_and_predictor(tp_models):
    for extra, message in ((["--speculative", "mtp"], "does not combine with --tp"),
                           (["--engine", "predictor"], "not --engine predictor")):
        r = subprocess.run([sys.executable, "-m", "ernie_paddle", "serve", str(tp_models["dense"]), "--tp", "2",
                            *extra], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and message in r.stderr, r.stderr


class _RecordingComm:
    """Rank 0's side of the step messages: keeps what would be broadcast."""

    rank, world, timeout = 0, 2, 300.0

    def __init__(self):
        self.sent = []

    def broadcast_ints(self, values=None, src=0):
        self.sent.append(np.asarray(values, dtype=np.int64))
        return self.sent[-1]


class _ReplayComm(_RecordingComm):
    """A follower's side: receives the recorded messages in order."""

    rank = 1

    def __init__(self, messages):
        super().__init__()
        self.messages = list(messages)

    def broadcast_ints(self, values=None, src=0):
        return self.messages.pop(0)


class _LogitsEngine(EagerEngine):
    def __init__(self, runtime):
        super().__init__(runtime)
        self.logits = []

    def decode(self, cache, tokens):
        self.logits.append(super().decode(cache, tokens))
        return self.logits[-1]


def test_follower_replays_prefill_merge_select_and_drops(tp_models):
    """In one process: a follower fed rank 0's messages computes the same decode logits at every step,
    across prefills, a merge, row selection and a dropped cache, and stops on STOP."""
    from ernie_paddle.api import load

    runtime = load(tp_models["dense"], engine="dygraph")
    comm = _RecordingComm()
    leader = LeaderEngine(_LogitsEngine(runtime), comm, heartbeat=0.0)
    running, _ = leader.prefill([[5, 9, 100, 7], [8, 3]])
    leader.decode(running, [11, 12])
    fresh, _ = leader.prefill([[40, 41, 42], [43], [44, 45]])
    fresh = leader.select(fresh, [0, 2])
    running = leader.merge(running, fresh)
    leader.decode(running, [1, 2, 3, 4])
    running = leader.select(running, [1, 3])
    del fresh
    gc.collect()  # the merged-in cache is gone on rank 0 ...
    leader.decode(running, [7, 8])
    leader.idle()
    leader.close()
    assert comm.sent[-3][:3].tolist() == [DECODE, 1, 1]  # ... and the next message drops its handle (1)
    assert [int(m[0]) for m in comm.sent[-2:]] == [HEARTBEAT, STOP]
    assert [int(m[0]) for m in comm.sent].count(DECODE) == 3

    follower = _LogitsEngine(runtime)
    follow(follower, _ReplayComm(comm.sent))
    assert len(follower.logits) == 3
    for got, want in zip(follower.logits, leader.engine.logits):
        np.testing.assert_array_equal(got, want)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # follow restored the handlers
