#!/usr/bin/env python
"""Prefill and decode speed of this runtime vs transformers (fp32, CPU) on a 0.3B-shaped random model.

Both run in the same invocation, back to back, on the same weights and thread count; ratios are
ours / transformers for tokens/s and transformers / ours for prefill time (so > 1 means we are faster).
The same invocation also times the exported Paddle Inference predictor and, when ``gguf`` and
``llama-cpp-python`` are installed, llama.cpp F32 and Q8_0 of the same weights, measures the read
bandwidth and the resulting ceiling, and repeats all of it on an MoE-shaped model
(``scripts/bench_predictor.py``). JSON: ``rows`` (one per shape, engine and batch), ``ratios``
(``predictor_vs_transformers``, ``predictor_vs_llamacpp_f32``, ``predictor_vs_ceiling``, ... per shape),
``metrics`` (the dygraph-vs-transformers table).

    .venv/bin/python scripts/bench_generate.py [--json OUT] [--quiet] [--model FOLDER] [--shapes 0.3b,moe]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPE_03B = dict(hidden_size=1024, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=128, intermediate_size=3072, vocab_size=103424, max_position_embeddings=131072)


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def make_model(folder: Path, quiet: bool) -> Path:
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

    if not (folder / "config.json").exists():
        log(f"writing a random 0.3B-shaped checkpoint to {folder} ...", quiet)
        make_tiny_hf_checkpoint(folder, "dense", seed=0, dtype="bfloat16", tokenizer=False, **SHAPE_03B)
    return folder


class Ours:
    """This runtime: prefill = one cached forward over the prompt; decode = the streaming generator."""

    name = "ernie-paddle"

    def __init__(self, folder: Path):
        from ernie_paddle.api import load

        self.rt = load(folder, device="cpu")

    def prefill(self, ids: np.ndarray) -> float:
        import paddle

        model = self.rt.model
        with paddle.no_grad():
            start = time.perf_counter()
            model(paddle.to_tensor(ids), model.new_cache(ids.shape[1]), last_only=True).numpy()
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, new_tokens: int) -> float:
        stamps = [time.perf_counter() for _ in self.rt.stream(ids, max_new_tokens=new_tokens, stop_token_ids=[])]
        return len(ids) * (len(stamps) - 1) / (stamps[-1] - stamps[0])


class _Stamps:
    """A transformers streamer that records when each step's tokens arrive (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class Transformers:
    """transformers fp32 (its default attention), decoding with its own ``generate`` loop."""

    name = "transformers"

    def __init__(self, folder: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def prefill(self, ids: np.ndarray) -> float:
        with self.torch.no_grad():
            start = time.perf_counter()
            self.model(input_ids=self.torch.from_numpy(ids), use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, new_tokens: int) -> float:
        from transformers import GenerationConfig

        gen = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               pad_token_id=0, eos_token_id=None)
        stamps = _Stamps()
        ids_t = self.torch.from_numpy(ids)
        with self.torch.no_grad():
            self.model.generate(ids_t, attention_mask=self.torch.ones_like(ids_t), generation_config=gen,
                                streamer=stamps)
        first, last = stamps.times[1], stamps.times[-1]  # times[0]: the prompt
        return len(ids) * (len(stamps.times) - 2) / (last - first)


def _settle() -> None:
    """Let the other engine's OpenMP threads stop spin-waiting before timing this one."""
    time.sleep(0.5)


def measure(engines, prompts: dict[int, np.ndarray], new_tokens: int, repeats: int, quiet: bool) -> dict:
    """Interleave the engines measurement by measurement, so load from other processes hits both alike."""
    results = {e.name: {} for e in engines}
    for e in engines:
        log(f"{e.name}: warm-up", quiet)
        e.prefill(prompts[1])
        e.decode(prompts[1], 4)
    times = {e.name: [] for e in engines}
    for _ in range(repeats):
        for e in engines:
            _settle()
            times[e.name].append(e.prefill(prompts[1]))
    for e in engines:
        results[e.name]["prefill_ms"] = 1000 * statistics.median(times[e.name])
    for batch, ids in prompts.items():
        for e in engines:
            log(f"{e.name}: decode {new_tokens} tokens at batch {batch}", quiet)
            _settle()
            results[e.name][f"decode_tok_s_b{batch}"] = e.decode(ids, new_tokens)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="Checkpoint folder (a random 0.3B-shaped one is written there if it is empty).")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5, help="Prefill repetitions (median reported).")
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true", help="Only the result table.")
    ap.add_argument("--speculative", default=None, metavar="K,...",
                    help="Also time MTP speculative decoding (num_draft K,...) vs none on the same weights "
                         "(scripts/bench_speculative.py; batch 1).")
    ap.add_argument("--shapes", default="0.3b,moe", help="0.3b and/or moe (the MoE shape of issue 4).")
    ap.add_argument("--moe-model", type=Path, default=None, help="MoE-shaped checkpoint folder (written if empty).")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="Keep exports and GGUF files here between runs (default: a temporary folder).")
    ap.add_argument("--no-llamacpp", action="store_true", help="Skip the llama.cpp rows.")
    args = ap.parse_args(argv)
    import bench_predictor as bp

    shapes = [s.strip().lower() for s in args.shapes.split(",") if s.strip()]

    from ernie_paddle.runtime.setup import available_cores

    threads = available_cores()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench03b-") as tmp:
        folder = make_model(args.model or Path(tmp) / "model", args.quiet)
        from ernie_paddle.config.text import ErnieConfig

        vocab = ErnieConfig.from_file(folder).vocab_size
        prompts = {b: rng.integers(3, vocab, size=(b, args.prompt_len)).astype(np.int64)
                   for b in map(int, args.batches.split(","))}
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bandwidths = [bp.measure_bandwidth(threads)]  # measured again after each shape; the best counts
        all_results, shape_infos = {}, {}
        if "0.3b" in shapes:
            log("loading the runtimes ...", args.quiet)
            engines = [Ours(folder), Transformers(folder, threads)] + bp.extra_engines(
                folder, work, threads, lambda m: log(m, args.quiet), not args.no_llamacpp)
            all_results["0.3b"] = measure(engines, prompts, args.new_tokens, args.repeats, args.quiet)
            shape_infos["0.3b"] = folder
            del engines
            bandwidths.append(bp.measure_bandwidth(threads))
        if "moe" in shapes:  # one engine in memory at a time: each holds ~4 GB of fp32 weights
            moe = bp.make_moe_model(args.moe_model or work / "moe-model", lambda m: log(m, args.quiet))
            factories = [lambda: Ours(moe), lambda: Transformers(moe, threads), lambda: bp.Predictor(moe, work)]
            if not args.no_llamacpp and bp.bench_llamacpp_available():
                factories += [lambda q=q: bp.LlamaCpp(moe, work, q, threads, lambda m: log(m, args.quiet))
                              for q in ("F32", "Q8_0")]
            all_results["moe"] = bp.measure_sequential(factories, measure, prompts, args.new_tokens,
                                                       args.repeats, args.quiet)
            shape_infos["moe"] = moe
            bandwidths.append(bp.measure_bandwidth(threads))
        bandwidth = max(bandwidths)
        shape_infos = {s: bp.shape_info(f, bandwidth) for s, f in shape_infos.items()}
        results = all_results.get("0.3b", {})
        speculative = None
        if args.speculative:
            import bench_speculative

            speculative = bench_speculative.run(folder, args.prompt_len, args.new_tokens,
                                                [int(k) for k in args.speculative.split(",")], 3, args.quiet,
                                                show=False)
    ours, ref = results.get("ernie-paddle", {}), results.get("transformers", {})
    metrics = []
    for key in ours:
        ratio = ref[key] / ours[key] if key == "prefill_ms" else ours[key] / ref[key]
        metrics.append({"metric": key, "ernie_paddle": ours[key], "transformers": ref[key], "speedup": ratio})
    rows = [row for shape, res in all_results.items() for row in bp.rows_for(shape, res)]
    ratios = bp.by_ratio({s: bp.ratios_for(res, shape_infos[s]["ceiling_tok_s"]) for s, res in all_results.items()})
    result = {"threads": threads, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "model": str(args.model or "random 0.3B-shaped"), "bandwidth_gb_s": bandwidth,
              "bandwidth_samples_gb_s": bandwidths,
              "shapes": shape_infos, "rows": rows, "ratios": ratios, "metrics": metrics}
    if metrics:
        print(f"{'metric':<18}{'ernie-paddle':>14}{'transformers':>14}{'speedup':>10}   ({threads} threads, fp32)")
    for r in metrics:
        print(f"{r['metric']:<18}{r['ernie_paddle']:>14.2f}{r['transformers']:>14.2f}{r['speedup']:>9.2f}x")
    bp.print_tables(shape_infos, rows, ratios, bandwidth, threads)
    if speculative is not None:
        bench_speculative.print_result(speculative)
        result["speculative"] = speculative
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
