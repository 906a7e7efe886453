"""Parity harness: this runtime vs transformers' own ERNIE 4.5 classes on the same weights and token ids.

Both sides run in float32 on the CPU. Per prompt, and for all prompts as one left-padded batch, it reports
max / mean absolute logit difference, the worst cosine similarity, KL(reference || ours), top-1 agreement
and the length of the identical greedy continuation. Torch is imported only by this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from converters.tensor_groups import iter_hf_tensors
from ernie_paddle.api import load
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.runtime.generation import pad_batch

DEFAULT_ATOL = 1e-4


# ------------------------------------------------------------------ reference side
def load_reference(model_dir, reference_dir=None):
    """transformers' Ernie4_5ForCausalLM / Ernie4_5_MoeForCausalLM in float32 with eager attention.

    With no ``reference_dir``, an HF ``model_dir`` is loaded directly and a Paddle one is mapped to the HF
    layout in memory (transformers then applies its own load-time conversions).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {"dtype": torch.float32, "attn_implementation": "eager"}
    folder = Path(reference_dir or model_dir)
    ckpt = open_checkpoint(folder)
    if ckpt.config.family not in ("dense", "moe"):
        raise ErnieError("parity covers the ERNIE 4.5 text models only", folder)
    if ckpt.format == "hf":
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    else:
        raw = ckpt.config.to_dict("hf")
        cls = getattr(transformers, raw["architectures"][0])
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in iter_hf_tensors(ckpt, "float32")}
        model = cls.from_pretrained(None, config=cls.config_class(**raw), state_dict=state, **kwargs)
    return model.eval()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def reference_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=_positions(mask_t))
    return out.logits.float().numpy()


@torch.no_grad()
def reference_greedy(model, ids: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """Greedy new ids [B, steps] with transformers' cache; never stops early."""
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=_positions(mask_t), use_cache=True,
                logits_to_keep=1)
    new = []
    for _ in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        mask_t = torch.cat([mask_t, torch.ones_like(nxt)], dim=1)
        pos = mask_t.sum(-1, keepdim=True) - 1
        out = model(input_ids=nxt, attention_mask=mask_t, position_ids=pos, cache=out.cache, use_cache=True)
    return torch.cat(new, dim=1).numpy() if new else np.zeros((len(ids), 0), dtype=np.int64)


# ------------------------------------------------------------------ metrics
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, ours: np.ndarray) -> dict:
    """Metrics over positions of two [N, V] logit arrays."""
    ref, ours = ref.astype(np.float64), ours.astype(np.float64)
    diff = np.abs(ref - ours)
    cos = (ref * ours).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(ours, axis=-1) + 1e-30)
    lp, lq = _log_softmax(ref), _log_softmax(ours)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"positions": int(len(ref)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "cosine_min": float(cos.min()), "kl_max": float(max(kl.max(), 0.0)),
            "top1_agreement": float((ref.argmax(-1) == ours.argmax(-1)).mean())}


def greedy_match(ref_new: np.ndarray, ours_new: np.ndarray) -> int:
    """Length of the identical prefix of two new-token sequences."""
    n = min(len(ref_new), len(ours_new))
    differ = np.nonzero(ref_new[:n] != ours_new[:n])[0]
    return int(differ[0]) if len(differ) else n


def default_prompts(vocab_size: int, count: int = 4, seed: int = 0) -> list[list[int]]:
    """Deterministic random prompts of different lengths (ids avoid the first few special ids)."""
    rng = np.random.default_rng(seed)
    lengths = [5, 11, 16, 8, 13, 7][:count] + [9] * max(0, count - 6)
    return [rng.integers(3, vocab_size, size=n).tolist() for n in lengths]


# ------------------------------------------------------------------ the run
def _entry(ref_logits, our_logits, ref_new, our_new, steps) -> dict:
    entry = compare_logits(ref_logits, our_logits)
    entry.update(greedy_match=greedy_match(ref_new, our_new), greedy_len=steps)
    return entry


def run_parity(model_dir, reference_dir=None, prompts=None, max_new_tokens: int = 32,
               atol: float = DEFAULT_ATOL, batched: bool = True, engine: str | None = None,
               runtime=None) -> dict:
    """Compare both runtimes; returns per-prompt, batched and overall metrics plus ``passed``.

    ``runtime``: an already loaded runtime of ``model_dir`` to use instead of loading one (e.g. a
    tensor-parallel rank's, fp32 on the CPU). Quantized linears run in the exact activation mode (float32):
    parity checks the conversion and the kernels, not the int8 mode's rounding.
    """

    ours = runtime or load(model_dir, dtype="float32", device="cpu", engine=engine, activations="float32")
    ref = load_reference(model_dir, reference_dir)
    prompts = prompts or default_prompts(ours.config.vocab_size)
    no_stop = {"max_new_tokens": max_new_tokens, "stop_token_ids": []}
    entries = []
    for prompt in prompts:
        ids, mask = pad_batch([prompt])
        ref_new = reference_greedy(ref, ids, mask, max_new_tokens)[0]
        our_new = ours.generate(ids, **no_stop)[0, ids.shape[1]:]
        entries.append(_entry(reference_logits(ref, ids, mask)[0], ours.logits(ids)[0], ref_new, our_new,
                              max_new_tokens))
    result = {"model": str(model_dir), "reference": str(reference_dir or model_dir), "prompts": entries}
    if batched and len(prompts) > 1:
        ids, mask = pad_batch(prompts)
        real = mask.astype(bool)
        ref_new = reference_greedy(ref, ids, mask, max_new_tokens)
        our_new = ours.generate(ids, attention_mask=mask, **no_stop)[:, ids.shape[1]:]
        batch = _entry(reference_logits(ref, ids, mask)[real], ours.logits(ids, mask)[real],
                       ref_new.reshape(-1), our_new.reshape(-1), max_new_tokens)
        batch["greedy_match"] = min(greedy_match(r, o) for r, o in zip(ref_new, our_new))
        result["batched"] = batch
    rows = entries + ([result["batched"]] if "batched" in result else [])
    overall = {"max_abs_diff": max(r["max_abs_diff"] for r in rows),
               "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in rows])),
               "cosine_min": min(r["cosine_min"] for r in rows), "kl_max": max(r["kl_max"] for r in rows),
               "top1_agreement": min(r["top1_agreement"] for r in rows),
               "greedy_match": min(r["greedy_match"] for r in rows), "greedy_len": max_new_tokens}
    failures = []
    if overall["max_abs_diff"] > atol:
        failures.append(f"max abs logit diff {overall['max_abs_diff']:.3g} > atol {atol:g}")
    if overall["top1_agreement"] < 1.0:
        failures.append(f"top-1 agreement {overall['top1_agreement']:.4f} < 1")
    if overall["greedy_match"] < max_new_tokens:
        failures.append(f"greedy continuations diverge after {overall['greedy_match']} tokens")
    result.update(overall=overall, atol=atol, failures=failures, passed=not failures)
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the per-prompt, batched and overall rows."""
    cols = ("max_abs_diff", "mean_abs_diff", "cosine_min", "kl_max", "top1_agreement", "greedy_match")
    head = f"{'prompt':<10}" + "".join(f"{c:>16}" for c in cols)
    lines = [head, "-" * len(head)]
    named = [(str(i), e) for i, e in enumerate(result["prompts"])]
    named += [("batched", result["batched"])] if "batched" in result else []
    named += [("overall", result["overall"])]
    for name, row in named:
        cells = [f"{row[c]:>16.3e}" if c in ("max_abs_diff", "mean_abs_diff", "kl_max") else
                 f"{row[c]:>16.6f}" if isinstance(row[c], float) else f"{row[c]:>11}/{row['greedy_len']:<4}"
                 for c in cols]
        lines.append(f"{name:<10}" + "".join(cells))
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
    return "\n".join(lines)
