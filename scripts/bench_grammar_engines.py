#!/usr/bin/env python
"""Per-token cost of constrained decoding on CPU: llguidance against outlines-core (when installed).

Usage: python scripts/bench_grammar_engines.py [--vocab 1024 7200] [--steps 200] [--json]

For each demo-tokenizer size, each engine compiles one JSON schema and then decodes from random logits
(seeded): every step computes the allowed-token mask, applies it, takes the argmax and advances the engine.
Reported: compile ms, and mean mask+advance microseconds per token (the overhead a constrained row adds).
xgrammar is not measured here: it pulls triton (~300 MB) and apache-tvm-ffi.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}}}


def run_llguidance(tok, steps: int, rng) -> dict:
    from ernie_paddle.server.structured_output import Grammar, GrammarEngine

    t0 = time.perf_counter()
    engine = GrammarEngine(tok, tok.stop_token_ids)
    engine.ll_tokenizer  # noqa: B018 - build the vocabulary once (cached by the server)
    t1 = time.perf_counter()
    c = engine.constraint(Grammar("json_schema", json.dumps(SCHEMA)))
    t2 = time.perf_counter()
    n, spent = 0, 0.0
    for _ in range(steps):
        row = rng.standard_normal(len(tok)).astype(np.float32)
        s = time.perf_counter()
        token = int(np.argmax(c.apply(row)))
        c.accept(token)
        spent += time.perf_counter() - s
        n += 1
        if token in tok.stop_token_ids:
            break
    return {"engine": "llguidance", "vocab_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3,
            "us_per_token": spent / n * 1e6, "tokens": n}


def run_outlines(tok, steps: int, rng) -> dict | None:
    try:
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError:
        return None
    from ernie_paddle.server.structured_output import SPECIAL_PREFIX, vocabulary_bytes

    eos = tok.stop_token_ids[0]
    t0 = time.perf_counter()
    table: dict[bytes, list[int]] = {}
    for i, b in enumerate(vocabulary_bytes(tok)):
        if b and not b.startswith(SPECIAL_PREFIX) and i != eos:
            table.setdefault(b, []).append(i)
    vocab = Vocabulary(eos, table)
    t1 = time.perf_counter()
    guide = Guide(Index(build_regex_from_schema(json.dumps(SCHEMA)), vocab))
    t2 = time.perf_counter()
    n, spent = 0, 0.0
    for _ in range(steps):
        row = rng.standard_normal(len(tok)).astype(np.float32)
        s = time.perf_counter()
        allowed = np.asarray(guide.get_tokens(), dtype=np.int64)
        masked = np.full_like(row, -np.inf)
        masked[allowed] = row[allowed]
        token = int(np.argmax(masked))
        if token != eos:
            guide.advance(token)
        spent += time.perf_counter() - s
        n += 1
        if token == eos:
            break
    return {"engine": "outlines-core", "vocab_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3,
            "us_per_token": spent / n * 1e6, "tokens": n}


def main() -> None:
    from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--vocab", type=int, nargs="+", default=[1024, 7200])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.vocab:
            tok = ErnieTokenizer.from_folder(write_demo_tokenizer(f"{tmp}/v{size}", size))
            for run in (run_llguidance, run_outlines):
                r = run(tok, args.steps, np.random.default_rng(0))
                if r:
                    rows.append({"vocab": size, **r})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'vocab':>6} {'engine':<14} {'vocab ms':>9} {'compile ms':>11} {'us/token':>9} {'tokens':>7}")
    for r in rows:
        print(f"{r['vocab']:>6} {r['engine']:<14} {r['vocab_ms']:>9.1f} {r['compile_ms']:>11.1f} "
              f"{r['us_per_token']:>9.1f} {r['tokens']:>7}")


if __name__ == "__main__":
    main()
