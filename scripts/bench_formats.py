"""Our predictor per weight format: decode tok/s (batch 1 and 8), prefill ms, peak RSS, and the bandwidth
ceiling of each format, on one random bf16 checkpoint (first version: float32 and bf16; llama.cpp rows and
the quantized formats come later, issue 16).

Each export and each engine runs in its own child process; peak RSS is that child's VmHWM. The ceiling is
the measured read bandwidth over the weight bytes one batch-1 decode step reads in that format.

    python scripts/bench_formats.py --shape small --threads 2 --json /tmp/formats.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {  # make_tiny_hf_checkpoint arguments
    "small": dict(kind="dense", hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=64, intermediate_size=1536, vocab_size=32000, tie_word_embeddings=True),
    "0.3B": dict(kind="dense", hidden_size=1024, num_hidden_layers=18, num_attention_heads=16,
                 num_key_value_heads=2, head_dim=128, intermediate_size=3072, vocab_size=103424,
                 tie_word_embeddings=True),
    "moe-small": dict(kind="moe", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=64, intermediate_size=1536, vocab_size=32000,
                      moe_num_experts=16, moe_k=4, moe_intermediate_size=256, moe_num_shared_experts=1,
                      moe_layer_start_index=1, moe_layer_interval=1, tie_word_embeddings=True),
}
FORMATS = ("float32", "bfloat16")
ITEMSIZE = {"float32": 4, "bfloat16": 2}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_export(folder: Path, out: Path, fmt: str) -> dict:
    from ernie_paddle.runtime.predictor import export

    start = time.perf_counter()
    export(folder, out, max_seq_len=512, max_batch=8, overwrite=True, weights=fmt)
    return {"export_s": time.perf_counter() - start, "export_peak_rss_mb": vm_hwm_mb(),
            "params_mb": (out / "step.pdiparams").stat().st_size / 1e6}


def child_run(out: Path, threads: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    from ernie_paddle.api import load

    rt = load(out, num_threads=threads)
    model = rt.model
    rng = np.random.default_rng(0)
    ids = rng.integers(3, rt.config.vocab_size, size=(8, prompt))
    model.logits(ids[:1], model.new_cache(prompt), last_only=True)  # warm-up
    prefill = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.logits(ids[:1], model.new_cache(prompt), last_only=True)
        prefill.append(time.perf_counter() - start)
    row = {"prefill_ms": 1e3 * statistics.median(prefill)}
    for batch in (1, 8):
        best = 0.0
        for _ in range(repeats):
            stamps = [time.perf_counter() for _ in rt.stream(ids[:batch], max_new_tokens=new_tokens,
                                                             stop_token_ids=[])]
            best = max(best, batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]))
        row[f"decode_tok_s_b{batch}"] = best
    row["peak_rss_mb"] = vm_hwm_mb()
    return row


def in_child(*args: str) -> dict:
    """Run this script's ``--child`` role in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_formats"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "export":
            result = child_export(Path(rest[0]), Path(rest[1]), rest[2])
        else:
            result = child_run(Path(rest[0]), *map(int, rest[1:]))
        print(json.dumps(result))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_predictor import measure_bandwidth, weight_bytes_per_token

    from ernie_paddle.config.text import ErnieConfig
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint
    from ernie_paddle.io.checkpoint import open_checkpoint

    bandwidth = measure_bandwidth(args.threads)
    rows, ratios = [], {}
    for shape in args.shape or ["small"]:
        folder = args.workdir / f"{shape}-bf16"
        if not (folder / "config.json").exists():
            make_tiny_hf_checkpoint(folder, seed=0, dtype="bfloat16", tokenizer=False, **SHAPES[shape])
        config = ErnieConfig.from_file(folder)
        by_fmt = {}
        for fmt in FORMATS:
            out = args.workdir / f"{shape}-{fmt}-export"
            row = {"shape": shape, "engine": f"ours predictor {fmt}",
                   "checkpoint_mb": open_checkpoint(folder).total_bytes / 1e6,
                   **in_child("export", str(folder), str(out), fmt),
                   **in_child("run", str(out), str(args.threads), str(args.prompt), str(args.new_tokens),
                              str(args.repeats))}
            row["ceiling_tok_s_b1"] = bandwidth * 1e9 / weight_bytes_per_token(config, ITEMSIZE[fmt])
            rows.append(row)
            by_fmt[fmt] = row
            print(json.dumps(row), flush=True)
        bf, fp = by_fmt["bfloat16"], by_fmt["float32"]
        ratios[shape] = {"decode_b1": {"bf16_vs_our_fp32": bf["decode_tok_s_b1"] / fp["decode_tok_s_b1"]},
                         "decode_b8": {"bf16_vs_our_fp32": bf["decode_tok_s_b8"] / fp["decode_tok_s_b8"]},
                         "prefill": {"bf16_vs_our_fp32": fp["prefill_ms"] / bf["prefill_ms"]},
                         "rss": {"bf16_vs_our_fp32": bf["peak_rss_mb"] / fp["peak_rss_mb"]}}
    result = {"threads": args.threads, "bandwidth_gb_s": bandwidth, "prompt": args.prompt,
              "new_tokens": args.new_tokens, "rows": rows, "ratios": ratios}
    print(json.dumps(ratios, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
