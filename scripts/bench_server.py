#!/usr/bin/env python
"""Server throughput at concurrency 1, 8 and 32 against the Python API on the same prompts (ratio), and
with constrained decoding: half of the requests of each level under a JSON schema, the other half plain, in
the same run (per-request tok/s of each half).

Usage: python scripts/bench_server.py [--model DIR] [--small] [--max-tokens 32] [--json]

Without --model a 0.3B-shaped random checkpoint (release dims, demo tokenizer) is made once under
$ERNIE_PADDLE_HOME/bench; --small uses the tiny test shape instead. Each level runs the server and then the
baseline back to back (these machines drift), greedy with ``ignore_eos`` so every request makes exactly
--max-tokens tokens. Baseline: the same prompts through ``runtime.generate`` in batches of the same size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def bench_model(small: bool) -> Path:
    from ernie_paddle.config.presets import PRESETS
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint
    from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer

    root = Path(os.environ.get("ERNIE_PADDLE_HOME") or Path.home() / ".cache" / "ernie-paddle") / "bench"
    folder = root / ("tiny-dense" if small else "ernie-0.3b-shaped")
    if not (folder / "tokenizer_config.json").exists():
        dims = {} if small else {k: PRESETS["0.3B"][k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")}
        print(f"making {folder} ...", file=sys.stderr)
        make_tiny_hf_checkpoint(folder, "dense", **dims)
        write_demo_tokenizer(folder, 1024)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "ernie_paddle", "serve", str(model), "--port", str(port),
                             "--data-dir", str(data_dir), "--model-name", "bench", "--log-level", "warning"])
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not start")


def long_json(max_tokens: int) -> dict:
    """A response_format whose string cannot end within ``max_tokens``: every constrained request makes
    exactly ``max_tokens`` tokens, like the plain ones under ``ignore_eos``."""
    schema = {"type": "object", "required": ["text"], "additionalProperties": False,
              "properties": {"text": {"type": "string", "minLength": 8 * max_tokens}}}
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}


async def run_clients(base: str, prompts: list[str], concurrency: int, max_tokens: int,
                      constrained: bool = False) -> tuple[float, int, list[tuple[bool, int, float]]]:
    """Wall time, total tokens and (constrained, tokens, seconds) per request; with ``constrained`` every
    other prompt goes with a JSON schema."""
    import openai

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(i, prompt):
        json_row = constrained and i % 2 == 1
        extra = {"response_format": long_json(max_tokens)} if json_row else {"ignore_eos": True}
        async with gate:
            t = time.perf_counter()
            r = await client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens,
                                                temperature=0, extra_body=extra)
            return json_row, r.usage.completion_tokens, time.perf_counter() - t

    t0 = time.perf_counter()
    per_request = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed, sum(n for _, n, _ in per_request), per_request


def per_request_rate(results, constrained: bool) -> float:
    rates = [n / s for c, n, s in results if c == constrained]
    return float(np.mean(rates)) if rates else float("nan")


def run_api(runtime, tok, prompts: list[str], batch: int, max_tokens: int) -> tuple[float, int]:
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), batch):
        ids = [tok.encode(p) for p in prompts[i:i + batch]]
        out = runtime.generate(ids, max_new_tokens=max_tokens, stop_token_ids=[])
        tokens += (out.shape[1] - max(map(len, ids))) * len(ids)
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--small", action="store_true", help="tiny test shape instead of the 0.3B shape")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import logging

    import ernie_paddle
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    model = args.model or bench_model(args.small)
    port = free_port()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-server-{os.getpid()}"
    proc = start_server(model, port, data_dir)
    base = f"http://127.0.0.1:{port}"
    runtime, tok = ernie_paddle.load(model), ErnieTokenizer.from_folder(model)
    for name in ("httpx", "httpx2", "openai"):  # after Paddle has set up logging
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = []
    try:
        asyncio.run(run_clients(base, ["warm up"] * 2, 2, 4, constrained=True))
        run_api(runtime, tok, ["warm up"] * 2, 2, 4)
        for level in map(int, args.levels.split(",")):
            prompts = [f"数据 模型 request {i} hello world" for i in range(max(4, 2 * level))]
            s_time, s_tokens, _ = asyncio.run(run_clients(base, prompts, level, args.max_tokens))
            a_time, a_tokens = run_api(runtime, tok, prompts, level, args.max_tokens)
            m_time, m_tokens, mixed = asyncio.run(run_clients(base, prompts, level, args.max_tokens,
                                                              constrained=True))
            rows.append({"concurrency": level, "requests": len(prompts),
                         "server_req_per_s": len(prompts) / s_time, "server_tok_per_s": s_tokens / s_time,
                         "api_tok_per_s": a_tokens / a_time,
                         "ratio_server_over_api": (s_tokens / s_time) / (a_tokens / a_time),
                         "mixed_tok_per_s": m_tokens / m_time,
                         "mixed_plain_req_tok_per_s": per_request_rate(mixed, False),
                         "mixed_json_req_tok_per_s": per_request_rate(mixed, True)})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.json:
        print(json.dumps({"model": str(model), "max_tokens": args.max_tokens, "levels": rows}, indent=2))
        return
    print(f"model {model}  max_tokens {args.max_tokens}")
    print(f"{'conc':>5} {'reqs':>5} {'server req/s':>13} {'server tok/s':>13} {'api tok/s':>10} {'ratio':>6} "
          f"{'mixed tok/s':>12} {'plain/req':>10} {'json/req':>9}")
    for r in rows:
        print(f"{r['concurrency']:>5} {r['requests']:>5} {r['server_req_per_s']:>13.2f} "
              f"{r['server_tok_per_s']:>13.1f} {r['api_tok_per_s']:>10.1f} {r['ratio_server_over_api']:>6.2f} "
              f"{r['mixed_tok_per_s']:>12.1f} {r['mixed_plain_req_tok_per_s']:>10.1f} "
              f"{r['mixed_json_req_tok_per_s']:>9.1f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
