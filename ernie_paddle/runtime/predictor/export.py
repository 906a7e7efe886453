"""Export a checkpoint to a self-describing Paddle Inference folder (the cache of exports: ``export_cache``).

Folder layout::

    manifest.json        versions, program inputs/outputs, dtype, limits, source digest, sha256 of every file,
                         ``weight_formats`` (each stored weight's format) and ``weight_file`` (its tensors)
    step.json            the PIR program: one step (prefill or decode) writing the KV buffer in place
    step.pdiparams       its parameters: on CPU with the compiled operators only norms, router and bias;
                         with Paddle's operators (GPU, no compiler) every weight
    weights.bin          CPU native programs: every stored linear and the embedding, program inputs read
                         resident or memory-mapped at load (``weight_file``)
    config.json          the normalized config (Paddle dialect) the program was built from
    generation_config.json, tokenizer files ...   copied from the checkpoint

Weights: a CPU export with the compiled operators stores every linear in its own format (the manifest's
``weight_formats``, each weight by name): a quantized linear (a quantized checkpoint, or ``quantization=``)
as its compact kernel form (wint8, wint4, fp8, wint2: the checkpoint's bytes, transposed); float linears, the
embedding and a tied head in bfloat16 for a bf16 checkpoint (``weights="auto"``, the default: most of the
checkpoint's float bytes are bf16; ``"bfloat16"`` asks for it, rounding float32 weights; ``"float32"``
widens), else float32. Norms and the MoE router stay float32. That export streams: the program is traced
over a model built without weights and the weights are written one checkpoint tensor group at a time
(``weight_stream``), so its peak memory is about one tensor group, at any model size. Paddle's op set loads
the dygraph model (``runtime.text``) and saves its weights with the program.

``activations`` ("auto", "float32" or "int8"; default ``DEFAULT_ACTIVATIONS``): "int8" runs the wint8/wint4
linears on int8-quantized activations (the operators' ``int8_act`` mode: integer dot products, logits within
the mode's documented error of the float32 ones, as llama.cpp runs Q8_0/Q4_0); "float32" is the exact mode
(the dequantized weights' logits, what ``parity`` and the dygraph engine compute); "auto" is int8 when the
compiled CPU operators run the export and it has wint8/wint4 linears, else float32. The manifest records the
mode. Paddle's op set (GPU, or no compiler) has no quantized operators: it multiplies by float32 dequantized
copies, and the manifest says ``dequantized_at_export``. The export is written into a temporary sibling folder and renamed into place
only when complete.
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
from ernie_paddle.quant import config as quant_config
from ernie_paddle.quant.kernel_form import KERNEL_BLOCK
from ernie_paddle.quant.linear import quantization_methods
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor import weight_file
from ernie_paddle.runtime.predictor.program import (
    INPUT_NAMES,
    PROGRAM_VERSION,
    StepProgram,
    input_specs,
    save_program,
)
from ernie_paddle.runtime.predictor.stored_weights import ACTIVATIONS, FLOAT_FORMATS, INT8_ACT_FORMATS
from ernie_paddle.runtime.predictor.support import unsupported_reason
from ernie_paddle.runtime.predictor.weight_stream import skeleton, stream_weights
from ernie_paddle.runtime.setup import setup
from ernie_paddle.runtime.text import load_text
from ernie_paddle.version import __version__

DEFAULT_MAX_BATCH = 32
DEFAULT_ACTIVATIONS = "auto"  # of quantized wint8/wint4 linears (module docstring)
ACTIVATION_CHOICES = ("auto", *ACTIVATIONS)


def supports(config: ErnieConfig) -> str | None:
    """None when the predictor can run ``config``, else the reason it cannot."""
    return unsupported_reason(config)


def native_ops(device: str, dtype: str):
    """The compiled CPU operators for a float32 CPU export (None elsewhere, or when they cannot be built)."""
    if device != "cpu" or dtype != "float32":
        return None

    return predictor_ops.get()


def checkpoint_weight_format(source, weights: str | None = "auto") -> str:
    """The format of the exported float weights (linears that are not quantized, the embedding): ``weights``
    when given, else (``"auto"``) bfloat16 when the checkpoint holds more bf16 bytes than float32 ones (a
    bf16 release keeps only its router in float32; a quantized one its scales), else float32."""
    if weights not in (None, "auto"):
        name = {"bf16": "bfloat16", "fp32": "float32"}.get(weights, weights)
        if name not in FLOAT_FORMATS:
            raise ErnieError(f"unknown weight format {weights!r} (auto, float32 or bfloat16)")
        return name
    ckpt = open_checkpoint(source)
    nbytes = {"BF16": 0, "F32": 0}
    for n in ckpt.keys():
        if ckpt.dtype_code(n) in nbytes:
            nbytes[ckpt.dtype_code(n)] += ckpt.specs[n].nbytes
    return "bfloat16" if nbytes["BF16"] > nbytes["F32"] else "float32"


def has_int8_linears(source, quantization: str | None) -> bool:
    """Whether the export of ``source`` (quantized on load with ``quantization``) holds wint8/wint4 linears,
    by the quantization method or the checkpoint's ``quantization_config``."""
    if quantization is not None:
        return quantization in INT8_ACT_FORMATS
    qc = quant_config.read(Path(source) / "config.json")
    return qc is not None and bool(qc.methods & set(INT8_ACT_FORMATS))


def resolve_activations(activations: str | None, native: bool = False, int8_linears: bool = False) -> str:
    """``activations`` (or ``DEFAULT_ACTIVATIONS``) checked; "auto" becomes "int8" when the compiled
    operators run the export (``native``) and it has wint8/wint4 linears, else "float32"."""
    activations = activations or DEFAULT_ACTIVATIONS
    if activations not in ACTIVATION_CHOICES:
        raise ErnieError(f"unknown activations {activations!r} (one of {', '.join(ACTIVATION_CHOICES)})")
    if activations == "auto":
        return "int8" if native and int8_linears else "float32"
    return activations


def activations_of(source, activations: str | None, native: bool, quantization: str | None) -> str:
    """The resolved activation mode of an export of ``source`` (the checkpoint's config read only for "auto")."""
    auto = (activations or DEFAULT_ACTIVATIONS) == "auto"
    return resolve_activations(activations, native, auto and has_int8_linears(source, quantization))


def _write_native(ckpt, tmp: Path, native, fmt: str, activations: str, quantization: str | None,
                  quiet: bool, after_file=None) -> tuple:
    """The native program and its weights written into ``tmp`` from the checkpoint, streaming (no weight of
    the model is ever resident: ``weight_stream``); returns (config, quantization method, weight formats,
    the manifest's ``weight_file`` entry)."""
    model, qc, stubs = skeleton(ckpt, quantization)
    step = StepProgram(model, native, fmt, activations, qc.block_size if qc is not None else KERNEL_BLOCK)
    step.ops.stored.release_model_weights()
    entries = weight_file.layout(step.weight_specs)
    writer = weight_file.WeightFileWriter(tmp / weight_file.FILE, entries)
    try:
        stream_weights(ckpt, model, qc, stubs, step.ops.stored, writer, quiet=quiet, after_file=after_file)
    finally:
        writer.close()
    save_program(step, str(tmp / "step"), "float32")
    method = ",".join(sorted({stub.method for stub in stubs.values()})) or None
    table = {"file": weight_file.FILE, "tensors": [e.to_dict() for e in entries]}
    return model.config, method, dict(step.ops.formats), {"weight_file": table}


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
           digest: str | None = None, quantization: str | None = None, weights: str | None = "auto",
           activations: str | None = None, quiet: bool = True, after_file=None) -> Path:
    """Export the checkpoint folder ``source`` (HF or Paddle layout) to the folder ``out``; ``quantization``
    quantizes on load (exported compact, like a quantized checkpoint); ``weights``: the stored format of the
    float weights (auto, float32 or bfloat16); ``activations``: of wint8/wint4 linears (float32 or int8;
    see the module docstring); ``after_file``: see ``weight_stream.stream_weights`` (benchmarks only: it
    lets the caller delete the checkpoint as it streams)."""

    source, out = Path(source), Path(out)
    resolve_activations(activations)  # an unknown mode fails first
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
    fmt = checkpoint_weight_format(source, weights)
    place = setup(device, dtype, None)
    native = native_ops(place.device, place.dtype)
    activations = activations_of(source, activations, native is not None, quantization)
    if native is None and activations != "float32":
        raise ErnieError(f"activations={activations!r} needs the compiled CPU operators, which this export "
                         f"does not use ({predictor_ops.build_error() or 'device ' + place.device})", source)
    max_seq_len = int(max_seq_len or config.max_position_embeddings)
    ckpt = open_checkpoint(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        if native is not None:
            config, method, formats, extra = _write_native(ckpt, tmp, native, fmt, activations, quantization,
                                                           quiet, after_file)
            ops = "native"
        else:
            rt = load_text(source, dtype=dtype, device=device, quantization=quantization)
            config, method, formats, extra = rt.config, quantization_methods(rt.model), {}, {}
            ops = "paddle"
            save_program(StepProgram(rt.model), str(tmp / "step"), rt.dtype)
            del rt
        int8_act = activations == "int8" and bool(set(formats.values()) & set(INT8_ACT_FORMATS))
        config.replace(quantization_config=None).write(tmp, "paddle")  # formats: the manifest's weight_formats
        side = _copy_side_files(source, tmp)
        manifest = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"ernie_paddle": __version__, "paddle": paddle.__version__,
                         "python": platform.python_version(), "numpy": np.__version__},
            "source": {"path": str(source.resolve()), "format": ckpt.format,
                       "digest": digest},
            "dtype": place.dtype, "device": "gpu" if place.device.startswith("gpu") else "cpu",
            "weights": {"quantization": method, "dequantized_at_export": method is not None and ops != "native",
                        "activations": "int8" if int8_act else "float32"},
            **mf.weight_formats_entry(formats),
            "max_seq_len": max_seq_len, "max_batch": int(max_batch),
            "program": {"file": mf.PROGRAM, "params": mf.PARAMS, "version": PROGRAM_VERSION, "ops": ops,
                        **_program_io(config, place.dtype),
                        "kv_layout": "[layers, 2 (k, v), batch, kv_heads, capacity, head_dim]"},
            "model": {"family": config.family, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                      "vocab": config.vocab_size, "heads": config.num_attention_heads,
                      "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                      "moe_experts": config.moe_num_experts, "moe_k": config.moe_k,
                      "tied_head": config.tie_word_embeddings},
            "side_files": side, **extra,
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
        else:
            mf.carry_digests(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
