"""Predictor and llama.cpp rows for bench_generate.py, the read-bandwidth ceiling, and the MoE shape.

Rows are one per shape, engine and batch; ratios (batch-1 decode unless named otherwise) are measured in
the same invocation:

* ``predictor_vs_transformers``, ``predictor_vs_llamacpp_f32``, ``predictor_vs_dygraph``: tokens/s ratios;
* ``predictor_vs_ceiling``: predictor tokens/s over bandwidth / fp32 weight bytes read per token;
* ``predictor_prefill_vs_transformers``: transformers prefill ms / predictor prefill ms (> 1: faster);
* ``predictor_b8_vs_b1``: aggregate batch-8 decode tokens/s over batch-1.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SHAPE_MOE = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=128, intermediate_size=3072, vocab_size=103424, max_position_embeddings=131072,
                 moe_num_experts=64, moe_k=6, moe_intermediate_size=512, moe_num_shared_experts=2,
                 moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1,
                 tie_word_embeddings=True)


def _scan(part: np.ndarray) -> int:
    return int(part.view(np.int32).sum(dtype=np.int32))  # integer SIMD adds: limited by memory, not ALUs


def measure_bandwidth(threads: int, mib: int = 1024, repeats: int = 7) -> float:
    """Read bandwidth in GB/s: ``threads`` threads summing (as int32) disjoint parts of a ``mib`` MiB array,
    best of ``repeats`` (float sums and max are slower than memory here)."""
    data = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_scan, parts))
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(_scan, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def weight_bytes_per_token(config, itemsize: int = 4) -> int:
    """Bytes of weights one batch-1 decode step reads: every layer's attention and (routed + shared)
    MLP weights, the norms, the LM head; the embedding row and the KV cache are negligible."""
    h = config.hidden_size
    attn = h * (config.q_size + 2 * config.kv_size) + config.q_size * h + 2 * h
    total = config.vocab_size * h + h
    for i in range(config.num_hidden_layers):
        if config.is_moe_layer(i):
            mlp = h * config.moe_num_experts + config.moe_k * 3 * h * config.moe_intermediate_size
            mlp += 3 * h * config.shared_intermediate_size
        else:
            mlp = 3 * h * config.intermediate_size
        total += attn + mlp
    return total * itemsize


def make_moe_model(folder: Path, log) -> Path:
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

    if not (folder / "config.json").exists():
        log(f"writing a random MoE-shaped checkpoint (bf16) to {folder} ...")
        make_tiny_hf_checkpoint(folder, "moe", seed=0, dtype="bfloat16", tokenizer=False, **SHAPE_MOE)
    return folder


class Predictor:
    """The exported program through ``paddle.inference``: prefill = one step over the prompt."""

    name = "predictor"

    def __init__(self, folder: Path, workdir: Path):
        from ernie_paddle.api import load
        from ernie_paddle.runtime.predictor import checkpoint_digest, export, is_export_folder
        from ernie_paddle.runtime.predictor.manifest import read_manifest
        from ernie_paddle.runtime.predictor.program import PROGRAM_VERSION

        out = workdir / f"{folder.name}-export"
        digest = checkpoint_digest(folder)
        made = read_manifest(out) if is_export_folder(out) else {}
        if (made.get("source", {}).get("digest"), made.get("program", {}).get("version")) != (digest,
                                                                                             PROGRAM_VERSION):
            export(folder, out, overwrite=True, digest=digest)
        self.rt = load(out)

    def prefill(self, ids: np.ndarray) -> float:
        model = self.rt.model
        start = time.perf_counter()
        model.logits(ids, model.new_cache(ids.shape[1]), last_only=True)
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, new_tokens: int) -> float:
        stamps = [time.perf_counter() for _ in self.rt.stream(ids, max_new_tokens=new_tokens, stop_token_ids=[])]
        return len(ids) * (len(stamps) - 1) / (stamps[-1] - stamps[0])


class LlamaCpp:
    """llama.cpp through llama-cpp-python on a GGUF of the same weights (batch 1 only)."""

    def __init__(self, folder: Path, workdir: Path, qtype: str, threads: int, log):
        import bench_llamacpp

        self.name = f"llamacpp_{qtype.lower()}"
        path = workdir / f"{folder.name}-{qtype}.gguf"
        newest = max(p.stat().st_mtime for p in folder.glob("*.safetensors"))
        if not path.exists() or path.stat().st_mtime < newest:
            log(f"writing {path.name} ...")
            bench_llamacpp.write_gguf(folder, path, qtype)
        self.threads = threads
        self.llm = bench_llamacpp.open_llama(path, threads)

    def prefill(self, ids: np.ndarray) -> float:
        import bench_llamacpp

        return bench_llamacpp.prefill_seconds(self.llm, ids[0])

    def decode(self, ids: np.ndarray, new_tokens: int) -> float:
        import bench_llamacpp

        if len(ids) > 1:
            return bench_llamacpp.decode_batch(self.llm.model, ids, new_tokens, self.threads)
        return bench_llamacpp.decode_b1(self.llm, ids[0], new_tokens)


def bench_llamacpp_available() -> bool:
    import bench_llamacpp

    return bench_llamacpp.available()


def extra_engines(folder: Path, workdir: Path, threads: int, log, llamacpp: bool = True) -> list:
    """The predictor and, when gguf + llama-cpp-python import, llama.cpp F32 and Q8_0 engines."""
    import bench_llamacpp

    engines = [Predictor(folder, workdir)]
    if llamacpp and bench_llamacpp.available():
        engines += [LlamaCpp(folder, workdir, q, threads, log) for q in ("F32", "Q8_0")]
    elif llamacpp:
        log("llama.cpp rows skipped: pip install gguf llama-cpp-python to add them")
    return engines


def rows_for(shape: str, results: dict) -> list[dict]:
    """One row per engine and batch from ``measure``'s {engine: {prefill_ms, decode_tok_s_bN}}."""
    rows = []
    for engine, r in results.items():
        for key, value in r.items():
            if key.startswith("decode_tok_s_b") and not math.isnan(value):
                rows.append({"shape": shape, "engine": engine, "batch": int(key.rsplit("b", 1)[1]),
                             "prefill_ms": r["prefill_ms"], "decode_tok_s": value})
    return rows


def ratios_for(results: dict, ceiling: float) -> dict:
    p = results.get("predictor", {})

    def over(engine: str, key: str = "decode_tok_s_b1") -> float | None:
        other = results.get(engine, {}).get(key)
        return None if other is None or not p.get(key) or math.isnan(other) else p[key] / other

    tf_prefill = results.get("transformers", {}).get("prefill_ms")
    return {"predictor_vs_transformers": over("transformers"), "predictor_vs_llamacpp_f32": over("llamacpp_f32"),
            "predictor_vs_llamacpp_q8_0": over("llamacpp_q8_0"), "predictor_vs_dygraph": over("ernie-paddle"),
            "predictor_vs_ceiling": p.get("decode_tok_s_b1", math.nan) / ceiling if ceiling else None,
            "predictor_prefill_vs_transformers": tf_prefill / p["prefill_ms"] if tf_prefill and p else None,
            "predictor_b8_vs_b1": (p["decode_tok_s_b8"] / p["decode_tok_s_b1"]
                                   if "decode_tok_s_b8" in p and "decode_tok_s_b1" in p else None)}


def shape_info(folder: Path, bandwidth: float) -> dict:
    from ernie_paddle.config.text import ErnieConfig

    config = ErnieConfig.from_file(folder)
    per_token = weight_bytes_per_token(config)
    return {"fp32_weight_bytes_per_token": per_token, "ceiling_tok_s": bandwidth * 1e9 / per_token}


def measure_sequential(factories: list, measure, prompts: dict, new_tokens: int, repeats: int, quiet) -> dict:
    """Build, time and free one engine at a time (for shapes whose engines do not fit in memory together)."""
    import gc

    results = {}
    for make in factories:
        engine = make()
        results.update(measure([engine], prompts, new_tokens, repeats, quiet))
        del engine
        gc.collect()
    return results


def print_tables(shapes: dict, rows: list[dict], ratios: dict, bandwidth: float, threads: int) -> None:
    print(f"\nread bandwidth {bandwidth:.1f} GB/s ({threads} threads); ceiling = bandwidth / fp32 weight bytes "
          "per token")
    print(f"{'shape':<6}{'engine':<16}{'batch':>6}{'prefill ms':>12}{'decode tok/s':>14}")
    for r in rows:
        print(f"{r['shape']:<6}{r['engine']:<16}{r['batch']:>6}{r['prefill_ms']:>12.1f}{r['decode_tok_s']:>14.2f}")
    for shape, info in shapes.items():
        print(f"{shape}: ceiling {info['ceiling_tok_s']:.2f} tok/s "
              f"({info['fp32_weight_bytes_per_token'] / 1e9:.2f} GB per token)")
    for name, per_shape in ratios.items():
        cells = "  ".join(f"{s}={'n/a' if v is None else f'{v:.2f}x'}" for s, v in per_shape.items())
        print(f"{name:<36}{cells}")


def by_ratio(per_shape: dict[str, dict]) -> dict[str, dict]:
    """{shape: {ratio: v}} -> {ratio: {shape: v}} (the JSON's ``ratios`` layout)."""
    names = next(iter(per_shape.values())).keys() if per_shape else []
    return {n: {s: (None if r[n] is None or (isinstance(r[n], float) and math.isnan(r[n])) else r[n])
                for s, r in per_shape.items()} for n in names}
