"""llama.cpp rows for bench_generate.py: write a GGUF (F32 or Q8_0) of an HF ERNIE 4.5 folder, time it.

Needs the ``gguf`` and ``llama-cpp-python`` packages (not dependencies of ernie-paddle); ``available()``
says whether both import. The GGUF follows llama.cpp's own converter for ``Ernie4_5ForCausalLM`` /
``Ernie4_5_MoeForCausalLM`` (q/k/v and gate/up split as in HF, experts stacked per layer, router, norms
and the correction bias kept in F32) with a placeholder SentencePiece-style vocabulary, since the random
bench models have no tokenizer; only token ids are fed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "mlp.gate": "ffn_gate_inp", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
          "mlp.shared_experts.up_proj": "ffn_up_shexp", "mlp.shared_experts.down_proj": "ffn_down_shexp"}
_KEEP_F32 = ("_norm.weight", "ffn_gate_inp.weight", "exp_probs_b.bias")


def _gguf_name(hf: str) -> str | None:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"]:
        return None  # MTP tensors: not used by llama.cpp
    rest = ".".join(parts[3:])
    if rest == "mlp.moe_statics.e_score_correction_bias":
        return f"blk.{parts[2]}.exp_probs_b.bias"
    stem = rest.removesuffix(".weight")
    return f"blk.{parts[2]}.{_NAMES[stem]}.weight" if stem in _NAMES else None


def write_gguf(folder: Path, out: Path, qtype: str = "F32") -> Path:
    """Write ``out`` from the HF checkpoint ``folder`` with weights in F32 or Q8_0."""
    import json

    import gguf
    from safetensors import safe_open

    cfg = json.loads((folder / "config.json").read_text())
    moe = cfg.get("moe_num_experts", 0) > 0
    w = gguf.GGUFWriter(str(out), "ernie4_5-moe" if moe else "ernie4_5")
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 500000.0))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    q8 = qtype.upper() == "Q8_0"
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32)
    if moe:
        w.add_expert_count(cfg["moe_num_experts"])
        w.add_expert_used_count(cfg["moe_k"])
        w.add_interleave_moe_layer_step(cfg.get("moe_layer_interval", 1))
        w.add_leading_dense_block_count(cfg.get("moe_layer_start_index", 0))
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        shared = cfg.get("moe_num_shared_experts", 0)
        w.add_expert_shared_count(shared)
        w.add_expert_shared_feed_forward_length(shared * cfg["moe_intermediate_size"])
    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))
    w.add_add_bos_token(False)

    def add(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if q8 and arr.ndim >= 2 and not name.endswith(_KEEP_F32) and arr.shape[-1] % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)

    experts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if ".mlp.experts." in key:  # model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
                    p = key.split(".")
                    experts.setdefault((p[2], p[6]), {})[int(p[5])] = f.get_tensor(key).float().numpy()
                    continue
                name = _gguf_name(key)
                if name is not None:
                    arr = f.get_tensor(key).float().numpy()
                    add(name, arr.reshape(-1) if name.endswith("exp_probs_b.bias") else arr)
    for (layer, proj), parts in sorted(experts.items()):
        kind = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}[proj]
        add(f"blk.{layer}.{kind}.weight", np.stack([parts[e] for e in sorted(parts)]))
    experts.clear()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def time_llamacpp(path: Path, prompt: np.ndarray, new_tokens: int, repeats: int, threads: int) -> dict:
    """Prefill ms (median of ``repeats``) and greedy batch-1 decode tokens/s through llama-cpp-python."""
    from llama_cpp import Llama

    ids = [int(t) for t in prompt.reshape(-1)]
    llm = Llama(model_path=str(path), n_ctx=len(ids) + new_tokens + 8, n_batch=max(len(ids), 8),
                n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.eval(ids[:4])  # warm-up
    prefill = []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prefill.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode = new_tokens / (time.perf_counter() - start)
    llm.close() if hasattr(llm, "close") else None
    return {"prefill_ms": 1000 * statistics.median(prefill), "decode_tok_s_b1": decode}
