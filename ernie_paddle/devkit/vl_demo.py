"""A tiny ERNIE 4.5 VL checkpoint written by transformers (fixed seed) with a VL tokenizer, for tests and demos.

torch and transformers are imported only inside these functions.
"""

from __future__ import annotations

import json
from pathlib import Path

from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
from ernie_paddle.tokenizer.vl_prompt import VL_CHAT_TEMPLATE

VL_TOKENS = ("<|IMAGE_PLACEHOLDER|>", "<|IMAGE_START|>", "<|IMAGE_END|>", "<|VIDEO_PLACEHOLDER|>",
             "<|VIDEO_START|>", "<|VIDEO_END|>", "<think>", "</think>")
_TOKEN_KEYS = ("image_token", "image_start_token", "image_end_token", "video_token", "video_start_token",
               "video_end_token")
BASE_VOCAB = 512  # demo SentencePiece vocabulary; the VL tokens follow it
TINY_TEXT = dict(vocab_size=BASE_VOCAB + 16, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=[24, 16], moe_k=2,
                 moe_num_experts=4, moe_num_shared_experts=1, max_position_embeddings=2048,
                 mlp_layer_types=["dense", "sparse", "sparse"],
                 rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [3, 3, 2]})
TINY_VISION = dict(depth=2, hidden_size=24, num_heads=2, intermediate_size=40, patch_size=14)


def token_ids() -> dict[str, int]:
    names = ("image_token_id", "image_start_token_id", "image_end_token_id", "video_token_id",
             "video_start_token_id", "video_end_token_id")
    return {name: BASE_VOCAB + i for i, name in enumerate(names)}


def make_vl_model(seed: int = 0, scale: float = 0.2):
    """A random transformers ``Ernie4_5_VLMoeForConditionalGeneration`` with non-trivial norms and biases."""
    import torch
    from transformers import Ernie4_5_VLMoeConfig, Ernie4_5_VLMoeForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Ernie4_5_VLMoeConfig(text_config=dict(TINY_TEXT, initializer_range=scale),
                               vision_config=dict(TINY_VISION, initializer_range=scale), **token_ids())
    model = Ernie4_5_VLMoeForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias") or p.dim() >= 2 and ("vision" in name or "resampler" in name):
                p.copy_(scale * torch.randn_like(p))
    return model


def write_vl_tokenizer(folder: Path) -> None:
    """The demo SentencePiece tokenizer plus the VL special tokens and the VL chat template."""
    write_demo_tokenizer(folder, vocab_size=BASE_VOCAB)
    ids = {tok: BASE_VOCAB + i for i, tok in enumerate(VL_TOKENS)}
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"].update({str(i): dict(entry, content=t) for t, i in ids.items()})
    cfg["additional_special_tokens"] = [*cfg["additional_special_tokens"], *VL_TOKENS]
    cfg.update(dict(zip(_TOKEN_KEYS, VL_TOKENS)), chat_template=VL_CHAT_TEMPLATE)
    smap = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))
    smap["additional_special_tokens"] = [*smap["additional_special_tokens"], *VL_TOKENS]
    added = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    for name, data in (("tokenizer_config.json", cfg), ("special_tokens_map.json", smap),
                       ("added_tokens.json", {**added, **ids})):
        (folder / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def make_tiny_vl_checkpoint(folder, seed: int = 0) -> Path:
    """Write a tiny HF VL checkpoint (weights, config, tokenizer, preprocessor_config.json) into ``folder``."""
    folder = Path(folder)
    make_vl_model(seed).save_pretrained(folder)
    write_vl_tokenizer(folder)
    pre = {"image_processor_type": "Ernie4_5_VLMoeImageProcessorPil", "patch_size": 14, "merge_size": 2,
           "temporal_patch_size": 1, "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")
    return folder
