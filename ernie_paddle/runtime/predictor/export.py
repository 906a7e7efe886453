"""Export a checkpoint to a self-describing Paddle Inference folder, and the export cache keyed by digest.

Folder layout::

    manifest.json        versions, program inputs/outputs, dtype, limits, source digest, sha256 of every file
    step.json            the PIR program: one step (prefill or decode) writing the KV buffer in place
    step.pdiparams       its parameters (CPU: linear weights transposed for the compiled operators, float32 or
                         bfloat16 as ``weight_formats`` in the manifest records, each weight by name)
    config.json          the normalized config (Paddle dialect) the program was built from
    generation_config.json, tokenizer files ...   copied from the checkpoint

Weights (``weights=``): a CPU export with the compiled operators keeps a bf16 checkpoint's linear, expert
and embedding weights in bfloat16 (``"auto"``, the default; ``"bfloat16"`` asks for it, rounding float32
weights; ``"float32"`` widens): the parameters are then the checkpoint's size. Norms and the MoE router stay
float32; a tied head is the bf16 embedding itself. The exporting process still loads the dygraph model in
float32 first (``runtime.text``), so its peak memory is that of the float32 model plus the bf16 copies.

Quantized checkpoints (and ``quantization=``) are dequantized at export: the program computes on the
float32 values of the quantized weights, so its logits are those of the quantized model, while its
memory and speed are those of a float32 model (the dygraph engine keeps the compact weights; ``auto``
picks it for quantized checkpoints). The export is written into a temporary sibling folder and renamed
into place only when complete.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import paddle

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.quant.linear import quantization_methods
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor.program import (
    INPUT_NAMES,
    PROGRAM_VERSION,
    WEIGHT_FORMATS,
    input_specs,
    save_program,
)
from ernie_paddle.runtime.predictor.support import unsupported_reason
from ernie_paddle.runtime.text import load_text
from ernie_paddle.version import __version__

DEFAULT_MAX_BATCH = 32


def supports(config: ErnieConfig) -> str | None:
    """None when the predictor can run ``config``, else the reason it cannot."""
    return unsupported_reason(config)


def native_ops(device: str, dtype: str):
    """The compiled CPU operators for a float32 CPU export (None elsewhere, or when they cannot be built)."""
    if device != "cpu" or dtype != "float32":
        return None

    return predictor_ops.get()


def checkpoint_weight_format(source, weights: str | None = "auto") -> str:
    """The format of the exported linear weights: ``weights`` when given, else (``"auto"``) bfloat16 when
    most of the checkpoint's bytes are bf16 (a bf16 release keeps only its router in float32), else
    float32 (float32 and quantized checkpoints)."""
    if weights not in (None, "auto"):
        name = {"bf16": "bfloat16", "fp32": "float32"}.get(weights, weights)
        if name not in WEIGHT_FORMATS:
            raise ErnieError(f"unknown weight format {weights!r} (auto, float32 or bfloat16)")
        return name
    ckpt = open_checkpoint(source)
    bf16 = sum(ckpt.specs[n].nbytes for n in ckpt.keys() if ckpt.dtype_code(n) == "BF16")
    return "bfloat16" if 2 * bf16 > ckpt.total_bytes else "float32"


def _copy_side_files(source: Path, dest: Path) -> list[str]:
    """Tokenizer, generation and other non-weight top-level files (config.json is rewritten)."""
    copied = []
    for path in sorted(source.iterdir()):
        name = path.name
        if (path.is_file() and name != "config.json" and not name.startswith(".")
                and not name.endswith(mf.WEIGHT_SUFFIXES)):
            shutil.copy2(path, dest / name)
            copied.append(name)
    return copied


def _program_io(config: ErnieConfig, dtype: str) -> dict:
    specs = input_specs(config, dtype)
    inputs = [{"name": s.name, "shape": list(s.shape), "dtype": dtype if s.name == "kv" else "int64"}
              for s in specs]
    return {"inputs": inputs, "outputs": [{"name": "logits", "shape": [-1, -1, config.vocab_size],
                                            "dtype": "float32"}]}


def export(source, out, max_seq_len: int | None = None, max_batch: int = DEFAULT_MAX_BATCH,
           dtype: str | None = None, device: str | None = "cpu", overwrite: bool = False,
           digest: str | None = None, quantization: str | None = None, weights: str | None = "auto") -> Path:
    """Export the checkpoint folder ``source`` (HF or Paddle layout) to the folder ``out``; ``quantization``
    quantizes on load (then dequantizes, like a quantized checkpoint: see the module docstring);
    ``weights``: the stored format of the linear weights (auto, float32 or bfloat16; module docstring)."""

    source, out = Path(source), Path(out)
    if mf.is_export_folder(source):
        raise ErnieError("this is already an export folder; export takes a checkpoint folder", source)
    if out.exists() and not overwrite and any(out.iterdir()):
        raise ErnieError("the destination exists and is not empty (choose another folder)", out)
    config = ErnieConfig.from_file(source)
    reason = supports(config)
    if reason:
        raise ErnieError(reason, source)
    if max_batch < 1 or (max_seq_len is not None and max_seq_len < 2):
        raise ErnieError("--max-batch must be >= 1 and --max-seq-len >= 2")
    digest = digest or mf.checkpoint_digest(source)
    fmt = checkpoint_weight_format(source, weights) if quantization is None else "float32"
    rt = load_text(source, dtype=dtype, device=device, quantization=quantization)
    config = rt.config
    method = quantization_methods(rt.model)
    max_seq_len = int(max_seq_len or config.max_position_embeddings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        native = native_ops(rt.device, rt.dtype)
        ops, formats = save_program(rt.model, str(tmp / "step"), rt.dtype, native,
                                    fmt if native is not None and method is None else "float32")
        config.replace(quantization_config=None).write(tmp, "paddle")  # the export's weights are float/bf16
        side = _copy_side_files(source, tmp)
        manifest = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"ernie_paddle": __version__, "paddle": paddle.__version__,
                         "python": platform.python_version(), "numpy": np.__version__},
            "source": {"path": str(source.resolve()), "format": open_checkpoint(source).format,
                       "digest": digest},
            "dtype": rt.dtype, "device": "gpu" if rt.device.startswith("gpu") else "cpu",
            "weights": {"quantization": method, "dequantized_at_export": method is not None},
            **mf.weight_formats_entry(formats),
            "max_seq_len": max_seq_len, "max_batch": int(max_batch),
            "program": {"file": mf.PROGRAM, "params": mf.PARAMS, "version": PROGRAM_VERSION, "ops": ops,
                        **_program_io(config, rt.dtype),
                        "kv_layout": "[layers, 2 (k, v), batch, kv_heads, capacity, head_dim]"},
            "model": {"family": config.family, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                      "vocab": config.vocab_size, "heads": config.num_attention_heads,
                      "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                      "moe_experts": config.moe_num_experts, "moe_k": config.moe_k,
                      "tied_head": config.tie_word_embeddings},
            "side_files": side,
        }
        assert [i["name"] for i in manifest["program"]["inputs"]] == list(INPUT_NAMES)
        mf.write_manifest(tmp, manifest)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same export first (export cache)
            if not mf.is_export_folder(out):
                raise ErnieError("cannot move the finished export into place", out) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_folder(digest: str, dtype: str, device: str = "cpu", weight_format: str = "float32") -> Path:
    """Where the export cache keeps the export of a checkpoint with ``digest`` (bf16 native exports are
    named apart from the float32 ones of earlier versions)."""
    ops = "native" if native_ops(device, dtype) is not None else "paddle"
    fmt = "-bf16" if ops == "native" and weight_format == "bfloat16" else ""
    return mf.home() / "exports" / f"{digest[:24]}-{dtype}-{ops}{fmt}-v{PROGRAM_VERSION}-paddle{paddle.__version__}"


def export_cached(source, dtype: str = "float32", device: str | None = "cpu") -> Path:
    """The cached export of ``source`` (exported on first use); a cached folder made from a different
    checkpoint than its name says is an error, never reused."""
    source = Path(source)
    digest = mf.checkpoint_digest(source)
    folder = cache_folder(digest, dtype, "gpu" if str(device).startswith("gpu") else "cpu",
                          checkpoint_weight_format(source))
    if not mf.is_export_folder(folder):
        export(source, folder, max_batch=1024, dtype=dtype, device=device, digest=digest)
    recorded = mf.read_manifest(folder).get("source", {}).get("digest")
    if recorded != digest:
        raise ErnieError(f"cached export was made from a checkpoint with digest {str(recorded)[:16]}..., not "
                         f"{digest[:16]}... (this folder's); delete the cached folder to re-export", folder)
    return folder
