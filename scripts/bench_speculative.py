#!/usr/bin/env python
"""Greedy decode speed with and without MTP speculative decoding on the same weights (fp32, CPU, batch 1).

A checkpoint with an MTP layer uses it as shipped. One without (like the random 0.3B-shaped benchmark
model) gets an MTP layer fitted to the main model by least squares (``ernie_paddle.devkit.mtp_fit``) on greedy
continuations of random prompts, so the acceptance rate is that of a fitted, not a trained, draft layer.
Both variants are timed end to end (prefill included) on the same prompt, alternating, median of repeats.

    .venv/bin/python scripts/bench_speculative.py --model FOLDER [--drafts 1,2,3] [--json OUT]
    .venv/bin/python scripts/bench_speculative.py --tiny-demo   # the tests' high-acceptance construction

``scripts/bench_generate.py --speculative 1,2,3`` prints the same table after its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def runtime_with_mtp(folder: Path, quiet: bool = False, fit_prompts: int = 16, fit_len: int = 128):
    """(runtime, how the MTP layer came to be) for ``folder``; fits one when the checkpoint has none."""
    import paddle

    from ernie_paddle.api import load
    from ernie_paddle.devkit.mtp_fit import fit_mtp
    from ernie_paddle.runtime.speculative import has_mtp
    from ernie_paddle.runtime.weights import build_model

    rt = load(folder, device="cpu", engine="dygraph")
    if has_mtp(rt.model):
        return rt, "shipped with the checkpoint"
    _log("no MTP layer in the checkpoint: fitting one by least squares ...", quiet)
    model = build_model(rt.config.replace(num_nextn_predict_layers=1))
    model.set_state_dict(rt.model.state_dict())
    model.cache_head_transpose()
    rt.model, rt.config = model, model.config
    rng = np.random.default_rng(1)
    prompts = rng.integers(3, rt.config.vocab_size, size=(fit_prompts, 16))
    seqs = rt.generate(prompts, max_new_tokens=fit_len - 16, stop_token_ids=[])
    with paddle.no_grad():
        agreement = fit_mtp(model, seqs)
    return rt, f"fitted by least squares ({fit_prompts}x{fit_len} tokens, top-1 agreement {agreement:.2f})"


def speculative_rows(rt, prompt: np.ndarray, new_tokens: int, drafts: list[int], repeats: int = 3,
                     quiet: bool = False) -> list[dict]:
    """One row per setting (num_draft 0 = no speculation): tok/s, acceptance, tokens per main forward."""
    settings = [0, *drafts]
    times: dict[int, list[float]] = {k: [] for k in settings}
    stats = {}
    outputs = {}
    for k in settings:  # warm-up
        rt.generate(prompt, max_new_tokens=4, stop_token_ids=[], **({"speculative": "mtp", "num_draft": k} if k else {}))
    for rep in range(repeats):
        for k in settings:
            _log(f"speculative bench: repeat {rep + 1}/{repeats}, num_draft {k}", quiet)
            extra = {"speculative": "mtp", "num_draft": k} if k else {}
            time.sleep(0.3)
            start = time.perf_counter()
            outputs[k] = rt.generate(prompt, max_new_tokens=new_tokens, stop_token_ids=[], **extra)
            times[k].append(time.perf_counter() - start)
            if k:
                stats[k] = rt.speculative_stats
    base = new_tokens / statistics.median(times[0])
    rows = []
    for k in settings:
        tok_s = new_tokens / statistics.median(times[k])
        rows.append({"num_draft": k, "tok_s": tok_s, "speedup": tok_s / base,
                     "acceptance_rate": stats[k].acceptance_rate if k else None,
                     "tokens_per_forward": stats[k].tokens_per_forward if k else 1.0,
                     "identical_to_greedy": bool(np.array_equal(outputs[k], outputs[0]))})
    return rows


def print_rows(rows: list[dict], origin: str, new_tokens: int) -> None:
    print(f"\nspeculative decoding (mtp, greedy, batch 1, {new_tokens} new tokens, end to end; MTP {origin})")
    print(f"{'num_draft':<12}{'tok/s':>10}{'speedup':>10}{'acceptance':>12}{'tok/forward':>13}{'same ids':>10}")
    for r in rows:
        acc = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        name = "off" if r["num_draft"] == 0 else str(r["num_draft"])
        print(f"{name:<12}{r['tok_s']:>10.2f}{r['speedup']:>9.2f}x{acc:>12}{r['tokens_per_forward']:>13.2f}"
              f"{str(r['identical_to_greedy']):>10}")


def run(folder: Path, prompt_len: int, new_tokens: int, drafts: list[int], repeats: int, quiet: bool,
        show: bool = True) -> dict:
    """Time the settings; print the table unless ``show`` is false (then call ``print_result``)."""
    rt, origin = runtime_with_mtp(folder, quiet)
    prompt = np.random.default_rng(0).integers(3, rt.config.vocab_size, size=(1, prompt_len)).astype(np.int64)
    result = {"mtp": origin, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "rows": speculative_rows(rt, prompt, new_tokens, drafts, repeats, quiet)}
    if show:
        print_result(result)
    return result


def print_result(result: dict) -> None:
    print_rows(result["rows"], result["mtp"], result["new_tokens"])


def tiny_demo(quiet: bool, new_tokens: int, drafts: list[int], repeats: int) -> dict:
    """The test suite's high-acceptance construction: a tiny 2-layer MoE with damped layer outputs and an
    MTP layer fitted to it (see tests/test_speculative.py)."""
    import tempfile

    from ernie_paddle.api import load
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint
    from ernie_paddle.devkit.mtp_fit import damp_main_layers, fit_mtp

    with tempfile.TemporaryDirectory(prefix="bench-spec-") as tmp:
        rt = load(make_tiny_hf_checkpoint(Path(tmp) / "m", "moe", mtp=1, num_hidden_layers=2, bias_scale=0.1),
                  device="cpu", engine="dygraph")
    damp_main_layers(rt.model, 0.1)
    seqs = rt.generate(np.random.default_rng(0).integers(3, 1024, size=(32, 4)), max_new_tokens=28,
                       stop_token_ids=[])
    origin = f"fitted to a damped tiny MoE (top-1 agreement {fit_mtp(rt.model, seqs, block_scale=0.5):.2f})"
    prompt = np.random.default_rng(1).integers(3, 1024, size=(1, 5)).astype(np.int64)
    result = {"mtp": origin, "prompt_len": 5, "new_tokens": new_tokens,
              "rows": speculative_rows(rt, prompt, new_tokens, drafts, repeats, quiet)}
    print_result(result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="Checkpoint folder (Paddle or HF layout).")
    ap.add_argument("--tiny-demo", action="store_true",
                    help="Instead of --model: the tests' tiny MoE with a well-fitted MTP layer.")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--drafts", default="1,2,3", help="num_draft values to time.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    drafts = [int(k) for k in args.drafts.split(",")]
    if args.tiny_demo:
        result = tiny_demo(args.quiet, args.new_tokens, drafts, args.repeats)
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.model is None:
        ap.error("give --model FOLDER or --tiny-demo")
    result = run(args.model, args.prompt_len, args.new_tokens, drafts, args.repeats, args.quiet)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
