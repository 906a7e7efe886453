"""Decode measurements of bench_scale.py, run inside a child step: ours and llama.cpp on one prompt.

Both engines: load, a 4-token warm-up, then the prompt and ``new_tokens`` greedy tokens (no stop token).
``prefill_ms`` is the time to the first new token; ``tok_s`` the rate of the tokens after it;
``disk_read_mb_per_token`` the storage reads (``/proc/self/io`` read_bytes, page-cache misses) per
decoded token, which is what a memory-mapped run pays when the weights do not fit in RAM.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _scale_steps import MB, read_bytes


def _row(load_s: float, stamps: list[float], start: float, reads: list[int]) -> dict:
    steps = len(stamps) - 1
    return {"load_s": load_s, "prefill_ms": 1000 * (stamps[0] - start),
            "tok_s": steps / (stamps[-1] - stamps[0]) if steps else float("nan"), "tokens": len(stamps),
            "disk_read_mb_per_token": (reads[1] - reads[0]) / MB / max(steps, 1),
            "disk_read_mb_load": reads[0] / MB}


def ours(folder: Path, ids: list[int], new_tokens: int, threads: int, options: dict) -> dict:
    """``ernie_paddle.api.load(folder, **options)`` (what ``generate`` runs), then ``stream``."""
    from ernie_paddle.api import load

    start = time.perf_counter()
    rt = load(folder, num_threads=threads, **options)
    load_s = time.perf_counter() - start
    rt.generate([ids[:4]], max_new_tokens=1, stop_token_ids=[])
    stamps, reads = [], []
    start = time.perf_counter()
    for _ in rt.stream([ids], max_new_tokens=new_tokens, stop_token_ids=[]):
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            reads.append(read_bytes())
    reads.append(read_bytes())
    return {**_row(load_s, stamps, start, reads), "runtime": getattr(rt, "engine", type(rt).__name__)}


def llamacpp(path: Path, ids: list[int], new_tokens: int, threads: int, options: dict) -> dict:
    """llama-cpp-python on the GGUF ``path``; ``options["use_mmap"]`` maps the file instead of reading it
    into process memory (bench_llamacpp.open_llama's choice)."""
    import bench_llamacpp as bl

    n_ctx = len(ids) + new_tokens + 8
    start = time.perf_counter()
    if options.get("use_mmap"):
        from llama_cpp import Llama

        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=len(ids), n_threads=threads,
                    n_threads_batch=threads, use_mmap=True, verbose=False)
    else:
        llm = bl.open_llama(path, threads, n_ctx=n_ctx, n_batch=len(ids))
    load_s = time.perf_counter() - start
    llm.eval(ids[:4])
    llm.reset()
    stamps, reads = [], []
    start = time.perf_counter()
    llm.eval(ids)
    for _ in range(new_tokens):
        token = int(np.argmax(bl.last_logits(llm)))
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            reads.append(read_bytes())
        if len(stamps) < new_tokens:
            llm.eval([token])
    reads.append(read_bytes())
    llm.close()
    runtime = "llama.cpp mmap" if options.get("use_mmap") else "llama.cpp"
    return {**_row(load_s, stamps, start, reads), "runtime": runtime}
