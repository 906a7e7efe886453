"""Tiny ERNIE 4.5 checkpoints (fixed seeds, HF layout, written by ``transformers``) for the demo and tests.

The HF side is produced by transformers' own classes so the files are exactly what its
``save_pretrained`` writes; torch is imported only inside these functions.
"""

from __future__ import annotations

from pathlib import Path

from converters.expected import tensor_entries
from converters.layout_ops import hf_shapes
from converters.rules import NORM, is_correction_bias, is_fp32_key, match_paddle
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.devkit.tokenizer_files import MAX_VOCAB, MIN_VOCAB, write_demo_tokenizer

TINY_DENSE = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                  tie_word_embeddings=True)
TINY_MOE = dict(TINY_DENSE, num_hidden_layers=3, moe_num_experts=8, moe_k=2, moe_intermediate_size=64,
                moe_num_shared_experts=1, moe_layer_start_index=1, moe_layer_end_index=-1,
                moe_layer_interval=1, tie_word_embeddings=False)


def hf_config(kind: str = "dense", **overrides):
    """A transformers config object for a tiny dense or MoE model."""
    from transformers import Ernie4_5_MoeConfig, Ernie4_5Config

    if kind == "dense":
        return Ernie4_5Config(**{**TINY_DENSE, **overrides})
    if kind == "moe":
        return Ernie4_5_MoeConfig(**{**TINY_MOE, **overrides})
    raise ValueError(f"unknown kind {kind!r} (dense or moe)")


def make_hf_model(kind: str = "dense", seed: int = 0, dtype: str = "float32", bias_scale: float = 0.0,
                  **overrides):
    """A randomly initialised transformers ERNIE 4.5 model (fixed seed)."""
    import torch
    from transformers import Ernie4_5_MoeForCausalLM, Ernie4_5ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    cfg = hf_config(kind, **overrides)
    cls = Ernie4_5ForCausalLM if kind == "dense" else Ernie4_5_MoeForCausalLM
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # non-trivial norms so a mix-up shows in logits
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif is_correction_bias(name) and bias_scale:
                p.copy_(bias_scale * torch.randn_like(p))
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
        for name, p in model.named_parameters():  # routers stay fp32, as in the releases
            if is_fp32_key(name):
                p.data = p.data.float()
    return model


def make_tiny_hf_checkpoint(folder: str | Path, kind: str = "dense", seed: int = 0, dtype: str = "float32",
                            mtp: int = 0, bias_scale: float = 0.0, tokenizer: bool = True, **overrides) -> Path:
    """Write a tiny HF-layout checkpoint with transformers; ``mtp`` adds that many MTP layers (HF names).

    ``tokenizer`` also writes a small SentencePiece tokenizer trained here, sized to the vocabulary.
    """
    folder = Path(folder)
    model = make_hf_model(kind, seed, dtype, bias_scale, **overrides)
    model.save_pretrained(folder)
    if mtp:
        _add_hf_mtp(folder, model, mtp, seed)
    if tokenizer:

        if MIN_VOCAB <= model.config.vocab_size <= MAX_VOCAB:
            write_demo_tokenizer(folder, model.config.vocab_size, seed=seed)
    return folder


def _add_hf_mtp(folder: Path, model, layers: int, seed: int) -> None:
    """Append MTP tensors in the HF naming (names and shapes from the rule table) to the written checkpoint."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    cfg = ErnieConfig.from_file(folder)
    gen = torch.Generator().manual_seed(seed + 1000)
    dtype = next(model.parameters()).dtype
    extra = {}
    for e in tensor_entries(cfg, mtp_layers=layers):
        if not e.mtp:
            continue
        names = match_paddle(e.key).hf_keys()
        for name, shape in zip(names, hf_shapes(e.rule.op, e.shape, cfg)):
            norm = e.rule.kind == NORM and not e.rule.bias  # non-trivial norms, small weights
            extra[name] = 1 + 0.1 * torch.randn(shape, generator=gen) if norm else \
                0.05 * torch.randn(shape, generator=gen)
    single = folder / "model.safetensors"
    tensors = load_file(single)
    tensors.update({k: v.to(dtype).contiguous() for k, v in extra.items()})
    save_file(tensors, single, metadata={"format": "pt"})
    conf = json.loads((folder / "config.json").read_text())
    conf["num_nextn_predict_layers"] = layers
    (folder / "config.json").write_text(json.dumps(conf, indent=2))
