"""Checkpoints and byte counts for bench_formats.py.

* the shapes and their random bf16 HF checkpoint (fixed seed);
* quantized Paddle checkpoints (release tensor names) of that checkpoint, one per method, each written
  with its dequantized twin (a Paddle folder whose linears hold the exactly dequantized float32 weights:
  the accuracy reference that isolates the activation-side error); ``wint2`` is the release mix for MoE
  shapes (routed experts WINT2, attention, dense MLPs and shared experts wint4);
* the weight bytes a batch-1 decode step reads, per stored format (the bandwidth ceiling's denominator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_predictor import SHAPE_MOE

SHAPES = {  # make_tiny_hf_checkpoint arguments
    "small": dict(kind="dense", hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=64, intermediate_size=1536, vocab_size=32000, tie_word_embeddings=True),
    "moe-small": dict(kind="moe", hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=64, intermediate_size=1536, vocab_size=32000,
                      moe_num_experts=16, moe_k=4, moe_intermediate_size=256, moe_num_shared_experts=1,
                      moe_layer_start_index=1, moe_layer_interval=1, tie_word_embeddings=True),
    "0.3B": dict(kind="dense", hidden_size=1024, num_hidden_layers=18, num_attention_heads=16,
                 num_key_value_heads=2, head_dim=128, intermediate_size=3072, vocab_size=103424,
                 tie_word_embeddings=True),
    "moe": dict(kind="moe", **SHAPE_MOE),  # the MoE shape of the table
}
QUANT_METHODS = ("wint8", "wint4", "fp8", "wint2")
WINT2_DENSE = "wint4"  # the method of attention, dense MLP and shared-expert linears in the WINT2 mix


def make_hf_checkpoint(folder: Path, shape: str) -> Path:
    """The shape's random bf16 HF checkpoint (seed 0), written once."""
    from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

    if not (folder / "config.json").exists():
        make_tiny_hf_checkpoint(folder, seed=0, dtype="bfloat16", tokenizer=False, **SHAPES[shape])
    return folder


def quant_config(method: str):
    """The QuantConfig a method's checkpoint is written with (wint2: experts WINT2 in every MoE layer)."""
    from ernie_paddle.quant.config import QuantConfig, online

    if method == "wint2":
        return QuantConfig("paddle", WINT2_DENSE, "wint2", wint4_end_layer=0)
    return online(method)


def unavailable_reason(method: str, config) -> str | None:
    """Why ``method`` has no checkpoint for this shape (None: it has one)."""
    if method == "wint2" and not config.moe_num_experts:
        return ("dense model: WINT2 (CCQ) is the release's routed-expert format; a quantization_config "
                "cannot mark dense linears wint2, so there is no dense WINT2 checkpoint to load")
    return None


def write_quantized(source: Path, out: Path, twin: Path, method: str) -> None:
    """Write the Paddle checkpoint ``out`` quantized by ``method`` and its dequantized twin ``twin``."""
    from converters.rules import is_linear_weight
    from converters.tensor_groups import plan_groups
    from ernie_paddle.config.text import PADDLE
    from ernie_paddle.io.checkpoint import open_checkpoint
    from ernie_paddle.io.shard_writer import ShardAccumulator, atomic_folder
    from ernie_paddle.quant import wint2
    from ernie_paddle.quant.tensors import dequantize_weight, quantize_weight

    ckpt = open_checkpoint(source)
    qc = quant_config(method)
    with atomic_folder(out, overwrite=True) as tmp_q, atomic_folder(twin, overwrite=True) as tmp_t:
        quant, plain = ShardAccumulator(tmp_q, "paddle", "1GB"), ShardAccumulator(tmp_t, "paddle", "1GB")
        for group in plan_groups(ckpt, PADDLE):
            for spec, arr in zip(group.outputs, group.compute(ckpt)):
                m = qc.method_for(spec.name) if is_linear_weight(spec.name) else None
                if m is None:
                    quant.add(spec.name, arr)
                    plain.add(spec.name, arr)
                    continue
                w, base = np.asarray(arr, np.float32), spec.name[: -len(".weight")]
                parts = (wint2.encode(w, name=base, codebooks=wint2.CODEBOOKS[:1]) if m == "wint2"  # 4x faster
                         else quantize_weight(m, w, name=base))
                for suffix, value in parts.items():
                    quant.add(f"{base}.{suffix}", value)
                plain.add(spec.name, dequantize_weight(m, parts, *w.shape, name=base))
        quant.close()
        plain.close()
        ckpt.config.replace(quantization_config=qc.to_dict(ckpt.config.num_hidden_layers)).write(tmp_q, PADDLE)
        ckpt.config.replace(quantization_config=None).write(tmp_t, PADDLE)


# ------------------------------------------------------------------ bytes read per batch-1 step


def stored_bytes(fmt: str, k: int, n: int) -> float:
    """Bytes of a K x N weight (with its scales) stored in ``fmt`` (ours or ggml type names)."""
    kb, nb = -(-k // 128), -(-n // 128)
    per = {"float32": 4 * k * n, "bfloat16": 2 * k * n, "q8_0": k * n * 34 / 32, "q4_0": k * n * 18 / 32,
           "wint8": k * n + 4 * n, "wint4": k * n / 2 + 4 * n, "fp8": k * n + 4 * kb * nb,
           "wint2": k * n / 4 + n * kb + 12 * n}
    return per[_FORMAT_NAMES.get(fmt, fmt)]


_FORMAT_NAMES = {"F32": "float32", "BF16": "bfloat16", "Q8_0": "q8_0", "Q4_0": "q4_0"}


def kind_of(name: str) -> tuple[int | None, str]:
    """(layer, kind) of a stored weight named the Paddle, HF or GGUF way; kind is one of embed, head,
    attn, mlp, shared, experts, router, other."""
    parts = name.split(".")
    layer = next((int(p) for prev, p in zip(parts, parts[1:]) if prev in ("layers", "blk") and p.isdigit()), None)
    if name in ("lm_head.weight", "output.weight"):
        return layer, "head"
    checks = (("embed", ("embed_tokens", "token_embd")), ("shared", ("shared_experts", "_shexp")),
              ("experts", ("experts", "_exps")), ("router", ("mlp.gate.", "ffn_gate_inp")),
              ("attn", ("self_attn", "attn_q", "attn_k", "attn_v", "attn_output")),
              ("mlp", ("mlp.", "ffn_gate", "ffn_up", "ffn_down")))
    for kind, marks in checks:
        if any(m in name for m in marks):
            return layer, kind
    return layer, "other"


def bytes_per_step(config, formats: dict[str, str], default: str) -> int:
    """Weight bytes one batch-1 decode step reads: every attention and (chosen + shared) expert or dense
    MLP weight, the router and norms (float32) and the head; ``formats`` maps stored names to their format
    (missing kinds take ``default``; a tied head is the embedding)."""
    by_kind = {}
    for name, fmt in formats.items():
        by_kind[kind_of(name)] = fmt
        by_kind.setdefault((None, kind_of(name)[1]), fmt)

    def fmt(layer, kind):
        return by_kind.get((layer, kind), by_kind.get((None, kind), default))

    h, q, kv = config.hidden_size, config.q_size, config.kv_size
    head = "embed" if config.tie_word_embeddings else "head"
    total = stored_bytes(fmt(None, head), h, config.vocab_size) + 4 * h * (2 * config.num_hidden_layers + 1)
    for i in range(config.num_hidden_layers):
        total += stored_bytes(fmt(i, "attn"), h, q + 2 * kv) + stored_bytes(fmt(i, "attn"), q, h)
        if config.is_moe_layer(i):
            im, sh = config.moe_intermediate_size, config.shared_intermediate_size
            total += 4 * h * config.moe_num_experts + config.moe_k * (
                stored_bytes(fmt(i, "experts"), h, 2 * im) + stored_bytes(fmt(i, "experts"), im, h))
            if sh:
                total += stored_bytes(fmt(i, "shared"), h, 2 * sh) + stored_bytes(fmt(i, "shared"), sh, h)
        else:
            im = config.intermediate_size
            total += stored_bytes(fmt(i, "mlp"), h, 2 * im) + stored_bytes(fmt(i, "mlp"), im, h)
    return int(total)
