#!/usr/bin/env python
"""Decode tokens/s and per-rank resident memory at tp 1 and tp 2 on a 0.3B-shaped random model (CPU).

Both runs happen in this invocation, back to back, on the same random bf16 checkpoint (written by
transformers into a temporary folder unless ``--model`` names one): tp 1 is the ordinary single-process
runtime with all the cores, tp 2 is ``python -m paddle.distributed.launch --nproc_per_node 2`` with the
cores shared between the ranks (gloo all_reduce over 127.0.0.1). Memory per process after decoding:
VmRSS, RssAnon (process-owned, i.e. not the checkpoint's file pages), VmHWM (peak), and the parameter
bytes held, split into tensor-parallel (cut across ranks) and replicated (embedding, norms, routers).
On 2 CPU cores no speed-up is expected; the split weights per rank should halve.

    .venv/bin/python scripts/bench_tp.py [--model FOLDER] [--tokens 32] [--json OUT] [--moe-parallel tp|ep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPE_03B = dict(hidden_size=1024, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=128, intermediate_size=3072, vocab_size=103424, max_position_embeddings=131072)
_REPLICATED = ("embed_tokens", "norm", "lm_head", "mlp.gate.", "moe_statics")


def _memory() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key + "_MiB"] = round(int(value.split()[0]) / 1024, 1)
    return out


def worker(model: str, tokens: int, tp: int, moe: str, out: str) -> None:
    import numpy as np

    start = time.perf_counter()
    if tp > 1:
        from ernie_paddle.runtime.distributed import load

        rt = load(model, moe=moe)
        rank = rt.comm.rank
    else:
        from ernie_paddle.api import load

        rt, rank = load(model, device="cpu", engine="dygraph"), 0
    load_s = time.perf_counter() - start
    ids = np.random.default_rng(0).integers(3, rt.config.vocab_size, size=(1, 16))
    rt.generate(ids, max_new_tokens=4, stop_token_ids=[])  # warm-up
    stamps = [time.perf_counter() for _ in rt.stream(ids, max_new_tokens=tokens + 1, stop_token_ids=[])]
    split = replicated = 0
    for name, p in rt.model.named_parameters():
        nbytes = int(np.prod(p.shape)) * p.element_size()
        if any(tag in name for tag in _REPLICATED):
            replicated += nbytes
        else:
            split += nbytes
    result = {"tp": tp, "rank": rank, "load_s": round(load_s, 2),
              "decode_tok_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2),
              "split_param_MiB": round(split / 2**20, 1), "replicated_param_MiB": round(replicated / 2**20, 1),
              **_memory()}
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(result))


def run(model: Path, tokens: int, moe: str, work: Path) -> list[dict]:
    me = [str(Path(__file__).resolve()), "--worker", "--model", str(model), "--tokens", str(tokens),
          "--moe-parallel", moe]
    rows = []
    for tp in (1, 2):
        out = work / f"tp{tp}"
        if tp == 1:
            cmd = [sys.executable, *me, "--tp", "1", "--out", str(out)]
        else:
            cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                   str(work / "logs"), *me, "--tp", "2", "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode:
            sys.exit(f"tp {tp} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        rows += [json.loads(p.read_text()) for p in sorted(work.glob(f"tp{tp}.rank*.json"))]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--moe-parallel", default="tp", choices=["tp", "ep"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(str(args.model), args.tokens, args.tp, args.moe_parallel, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

            print("writing a random 0.3B-shaped bf16 checkpoint ...", file=sys.stderr, flush=True)
            model = make_tiny_hf_checkpoint(work / "model", "dense", seed=0, dtype="bfloat16", tokenizer=False,
                                            **SHAPE_03B)
        rows = run(model, args.tokens, args.moe_parallel, work)
    cols = ["tp", "rank", "load_s", "decode_tok_s", "split_param_MiB", "replicated_param_MiB", "VmRSS_MiB",
            "RssAnon_MiB", "VmHWM_MiB"]
    print(" ".join(f"{c:>20}" for c in cols))
    for row in rows:
        print(" ".join(f"{row.get(c, ''):>20}" for c in cols))
    base = rows[0]
    tp2 = [r for r in rows if r["tp"] == 2]
    ratios = {"decode_tp2_vs_tp1": round(min(r["decode_tok_s"] for r in tp2) / base["decode_tok_s"], 3),
              "split_params_per_rank_vs_tp1": round(max(r["split_param_MiB"] for r in tp2)
                                                    / base["split_param_MiB"], 3),
              "rss_anon_per_rank_vs_tp1": round(max(r["RssAnon_MiB"] for r in tp2) / base["RssAnon_MiB"], 3),
              "cores": os.cpu_count()}
    print(json.dumps(ratios))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
