"""llama.cpp for the benchmarks: write a GGUF (F32, BF16, Q8_0 or Q4_0) of an HF ERNIE 4.5 folder, the
exactly dequantized twin of a GGUF (an HF float32 folder, the accuracy reference), and drive llama.cpp
through llama-cpp-python (prefill, greedy decode at batch 1 and batch B, logits of every position).

Needs the ``gguf`` and ``llama-cpp-python`` packages (not dependencies of ernie-paddle); ``available()``
says whether both import. The GGUF follows llama.cpp's own converter for ``Ernie4_5ForCausalLM`` /
``Ernie4_5_MoeForCausalLM`` (q/k/v and gate/up split as in HF, experts stacked per layer, router, norms
and the correction bias kept in F32) with a placeholder SentencePiece-style vocabulary, since the random
bench models have no tokenizer; only token ids are fed. Q8_0/Q4_0 files are "pure" by default: every
other 2-D tensor with rows of a multiple of 32 values is quantized, the (tied) embedding included, with
``gguf.quants.quantize`` (llama-quantize would give a tied head Q6_K by default); ``embedding=`` keeps
the embedding and head in another type.

Logits: llama-cpp-python 0.3.x fills ``Llama.scores`` only with ``logits_all=True``; decode loops read the
last token's row with ``llama_get_logits_ith`` instead (no [n_ctx, vocab] buffer beside the model).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np

QTYPES = ("F32", "BF16", "Q8_0", "Q4_0")


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
_EXPERTS = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
_KEEP_F32 = ("_norm.weight", "ffn_gate_inp.weight", "exp_probs_b.bias")


def gguf_name(hf: str) -> tuple[str, int | None] | None:
    """The GGUF tensor holding HF tensor ``hf`` and, for a routed expert, its index in the stacked tensor
    (None: not used by llama.cpp, e.g. MTP tensors)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf], None
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"]:
        return None
    layer, rest = parts[2], ".".join(parts[3:])
    if rest == "mlp.moe_statics.e_score_correction_bias":
        return f"blk.{layer}.exp_probs_b.bias", None
    if rest.startswith("mlp.experts."):  # mlp.experts.E.{gate,up,down}_proj.weight
        return f"blk.{layer}.{_EXPERTS[parts[6]]}.weight", int(parts[5])
    stem = rest.removesuffix(".weight")
    return (f"blk.{layer}.{_NAMES[stem]}.weight", None) if stem in _NAMES else None


def _hf_tensors(folder: Path):
    """(name, float32 array) of every tensor of the HF folder, one at a time."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key).float().numpy()


def _add_config(w, cfg: dict, qtype: str) -> None:
    import gguf

    moe = cfg.get("moe_num_experts", 0) > 0
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
    ft = gguf.LlamaFileType
    w.add_file_type({"F32": ft.ALL_F32, "BF16": ft.MOSTLY_BF16, "Q8_0": ft.MOSTLY_Q8_0,
                     "Q4_0": ft.MOSTLY_Q4_0}[qtype])
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


def write_gguf(folder: Path, out: Path, qtype: str = "F32", embedding: str | None = None) -> Path:
    """Write ``out`` from the HF checkpoint ``folder`` with weights in ``qtype`` (one of ``QTYPES``); the
    embedding and head in ``embedding`` instead when given (llama-quantize's --token-embedding-type and
    --output-tensor-type)."""
    import gguf

    qtype, embedding = qtype.upper(), (embedding or qtype).upper()
    for t in (qtype, embedding):
        if t not in QTYPES:
            raise ValueError(f"unknown GGUF type {t!r}; expected one of {QTYPES}")
    cfg = json.loads((folder / "config.json").read_text())
    w = gguf.GGUFWriter(str(out), "ernie4_5-moe" if cfg.get("moe_num_experts", 0) > 0 else "ernie4_5")
    _add_config(w, cfg, qtype)

    def add(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        t = embedding if name in ("token_embd.weight", "output.weight") else qtype
        if t != "F32" and arr.ndim >= 2 and not name.endswith(_KEEP_F32) and arr.shape[-1] % 32 == 0:
            ggml = getattr(gguf.GGMLQuantizationType, t)
            w.add_tensor(name, gguf.quants.quantize(arr, ggml), raw_dtype=ggml)
        else:
            w.add_tensor(name, arr)

    experts: dict[str, dict[int, np.ndarray]] = {}
    for key, arr in _hf_tensors(folder):
        target = gguf_name(key)
        if target is None:
            continue
        name, expert = target
        if expert is not None:
            experts.setdefault(name, {})[expert] = arr
        else:
            add(name, arr.reshape(-1) if name.endswith("exp_probs_b.bias") else arr)
    for name, parts in sorted(experts.items()):
        add(name, np.stack([parts[e] for e in sorted(parts)]))
    experts.clear()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def gguf_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> its ggml type name (F32, BF16, Q8_0, Q4_0, ...)."""
    import gguf

    return {t.name: gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(str(path)).tensors}


def write_dequantized_twin(folder: Path, path: Path, out: Path) -> Path:
    """An HF float32 folder holding the GGUF ``path``'s weights exactly dequantized (tensors llama.cpp does
    not use are copied from ``folder``): transformers on it isolates llama.cpp's activation-side error."""
    import gguf
    from safetensors.numpy import save_file

    by_name = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}  # memory-mapped

    @functools.lru_cache(maxsize=4)  # the three stacked expert tensors of a layer alternate
    def dequantized(name: str) -> np.ndarray:
        t = by_name[name]
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)

    tensors = {}
    for key, arr in _hf_tensors(folder):
        target = gguf_name(key)
        if target is not None and target[0] in by_name:
            value = dequantized(target[0])
            arr = (value if target[1] is None else value[target[1]]).reshape(arr.shape)
        tensors[key] = np.ascontiguousarray(arr, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# ------------------------------------------------------------------ driving llama.cpp


def open_llama(path: Path, threads: int, n_ctx: int = 512, n_batch: int = 512, logits_all: bool = False):
    """A ``Llama`` on ``path`` with its weights in process memory (``use_mmap=False``: like the other
    engines; an idle mapped file gets paged out here and re-read from disk mid-run)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, n_threads_batch=threads,
                 use_mmap=False, logits_all=logits_all, verbose=False)


def last_logits(llm) -> np.ndarray:
    """The logits row of the last token ``llm.eval`` decoded (works without ``logits_all``)."""
    import llama_cpp as lc

    return np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def prefill_seconds(llm, ids: np.ndarray) -> float:
    """Wall time of one prefill of the row ``ids`` from an empty cache."""
    llm.reset()
    start = time.perf_counter()
    llm.eval([int(t) for t in ids])
    return time.perf_counter() - start


def decode_b1(llm, ids: np.ndarray, new_tokens: int) -> float:
    """Greedy batch-1 decode tokens/s after a prefill of the row ``ids``."""
    llm.reset()
    llm.eval([int(t) for t in ids])
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([int(np.argmax(last_logits(llm)))])
    return new_tokens / (time.perf_counter() - start)


def decode_batch(model, ids: np.ndarray, new_tokens: int, threads: int) -> float:
    """Greedy decode of ``len(ids)`` sequences together (one sequence id each, one ``llama_decode`` per
    step) through the low-level batch API in a context of its own; aggregate tokens/s."""
    import llama_cpp as lc

    b, t = ids.shape
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = b * (t + new_tokens + 8), b * t, b * t
    params.n_seq_max, params.n_threads, params.n_threads_batch = b, threads, threads
    ctx = lc.llama_init_from_model(model, params)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(b * t, 0, 1)

    def submit(tokens, positions, seqs, want) -> np.ndarray:
        batch.n_tokens = len(tokens)
        for i, (tok, pos, seq, keep) in enumerate(zip(tokens, positions, seqs, want)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(tok), int(pos), 1
            batch.seq_id[i][0], batch.logits[i] = int(seq), bool(keep)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(int(sum(want)), n_vocab))

    try:
        pos = np.tile(np.arange(t), b)
        logits = submit(ids.reshape(-1), pos, np.repeat(np.arange(b), t), pos == t - 1)
        start = time.perf_counter()
        for step in range(new_tokens):
            logits = submit(logits.argmax(-1), [t + step] * b, range(b), [True] * b)
        return b * new_tokens / (time.perf_counter() - start)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def time_llamacpp(path: Path, ids: np.ndarray, new_tokens: int, repeats: int, threads: int) -> dict:
    """Prefill ms of ``ids[0]`` (median of ``repeats``) and greedy decode tokens/s at batch 1 and at batch
    ``len(ids)`` (best of ``repeats``)."""
    llm = open_llama(path, threads, n_ctx=ids.shape[1] + new_tokens + 8, n_batch=max(ids.shape[1], 8))
    llm.eval([int(t) for t in ids[0, :4]])  # warm-up
    prefill = [prefill_seconds(llm, ids[0]) for _ in range(repeats)]
    row = {"prefill_ms": 1000 * statistics.median(prefill),
           "decode_tok_s_b1": max(decode_b1(llm, ids[0], new_tokens) for _ in range(repeats))}
    if len(ids) > 1:
        row[f"decode_tok_s_b{len(ids)}"] = max(decode_batch(llm.model, ids, new_tokens, threads)
                                               for _ in range(repeats))
    llm.close()
    return row


def logits_llamacpp(path: Path, ids: np.ndarray, threads: int) -> np.ndarray:
    """float32 logits [T, vocab] of every position of the row ``ids`` (``logits_all=True``)."""
    llm = open_llama(path, threads, n_ctx=len(ids) + 8, n_batch=len(ids), logits_all=True)
    llm.eval([int(t) for t in ids])
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out
