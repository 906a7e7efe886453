#!/usr/bin/env python
"""Benchmark streaming conversion on a generated checkpoint of >= 2 GB, both directions.

Prints conversion time as a ratio to a plain copy of the same bytes (measured in this invocation) and
each conversion's peak RSS (measured in a child process) against the largest tensor group.
Targets from the issue: time <= 2x copy; peak RSS <= 3x largest group + 600 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from converters.tensor_groups import plan_groups
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.io.dtypes import BY_CODE
from ernie_paddle.io.shard_writer import OutSpec, ShardedWriter, plan_shards
from ernie_paddle.progress import progress_bar

MB = 1024 * 1024


def bench_config(layers: int) -> ErnieConfig:
    """A 0.3B-wide MoE shape whose size is set by the layer count (about 0.23 GB of bf16 per layer)."""
    return ErnieConfig(family="moe", vocab_size=103424, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=2, head_dim=128,
                       tie_word_embeddings=False, dtype="bfloat16", moe_num_experts=64, moe_k=6,
                       moe_intermediate_size=576, moe_num_shared_experts=2, moe_layer_start_index=1,
                       source_dialect="hf")


def make_source(folder: Path, layers: int, quiet: bool) -> None:
    """Write an HF-layout bf16 checkpoint by converting a synthetic Paddle plan's shapes back to HF."""
    from converters.expected import expected_tensors
    from converters.layout_ops import hf_shapes
    from converters.rules import is_fp32_key, match_paddle

    cfg = bench_config(layers)
    specs = []
    for key, exp in expected_tensors(cfg).items():
        m = match_paddle(key)
        code = "F32" if is_fp32_key(key) else "BF16"
        specs.append([OutSpec(n, code, s) for n, s in zip(m.hf_keys(), hf_shapes(m.rule.op, exp.shape, cfg))])
    pool = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32) * 0.02
    folder.mkdir(parents=True)
    writer = ShardedWriter(folder, plan_shards(specs, 2 * 1000**3), "pt")
    total = sum(o.nbytes for g in specs for o in g)
    with progress_bar(total, "make source", quiet) as bar:
        for group in specs:
            for o in group:
                n = int(np.prod(o.shape))
                reps = -(-n // pool.size)
                data = np.tile(pool, reps)[:n] if reps > 1 else pool[:n]
                bar.update(writer.write(o.name, data.astype(BY_CODE[o.dtype]).reshape(o.shape)))
    writer.close()
    cfg.write(folder, "hf")


def copy_baseline(src: Path, dst: Path) -> float:
    """Seconds to copy the files of ``src`` (page cache flushed before, copy removed after)."""
    os.sync()
    dst.mkdir()
    start = time.perf_counter()
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    os.sync()
    return seconds


def convert_in_child(src: Path, dst: Path) -> dict:
    """Run one conversion in a fresh process; return its time and peak RSS."""
    # VmHWM is this process's own high-water mark (ru_maxrss would include the forking parent's).
    code = ("import json,re,time;from converters.convert import convert;t=time.perf_counter();"
            f"convert({str(src)!r},{str(dst)!r},quiet=True);s=time.perf_counter()-t;"
            "hwm=int(re.search(r'VmHWM:\\s+(\\d+)',open('/proc/self/status').read()).group(1))*1024;"
            "print(json.dumps({'seconds':s,'peak_rss':hwm}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_group(folder: Path, target: str) -> int:
    ckpt = open_checkpoint(folder)
    return max(sum(o.nbytes for o in g.outputs) for g in plan_groups(ckpt, target))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=10, help="layers of the generated model (10 = about 2.3 GB)")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "src-hf"
        make_source(src, args.layers, args.quiet)
        size = sum(f.stat().st_size for f in src.iterdir())
        rows = {}
        for name, a, b, target in (("hf->paddle", src, work / "pd", "paddle"),
                                   ("paddle->hf", work / "pd", work / "back", "hf")):
            copy_s = copy_baseline(a, work / "copy")  # back to back with the conversion it is compared to
            rows[name] = convert_in_child(a, b)
            rows[name].update(copy_seconds=copy_s, largest_group=largest_group(a, target))
        result = {"bytes": size, "rows": rows}
        print(f"checkpoint {size / 1e9:.2f} GB")
        for name, r in rows.items():
            budget = 3 * r["largest_group"] + 600 * MB
            r["time_vs_copy"] = r["seconds"] / r["copy_seconds"]
            r["rss_vs_budget"] = r["peak_rss"] / budget
            print(f"{name}: {r['seconds']:.2f} s = {r['time_vs_copy']:.2f}x a plain copy of {r['copy_seconds']:.2f} s "
                  f"(target <= 2.0); peak RSS "
                  f"{r['peak_rss'] / MB:.0f} MiB vs budget {budget / MB:.0f} MiB (3x largest group "
                  f"{r['largest_group'] / MB:.0f} MiB + 600) = {r['rss_vs_budget']:.2f}x (target <= 1.0)")
        print(f"this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
