"""The peak memory of a streaming CPU export, from the config alone.

A streaming export builds the program without weights and writes the weight file one tensor group at a
time, so its peak is the process baseline, the small tensors kept for the program's parameter file
(norms, biases, MoE routers and correction biases, all float32), and the largest group in flight: its
source bytes (as the checkpoint stores them), its stored bytes (the CPU kernel form the export writes) and,
when it quantizes on the fly, one float32 copy of the group.

Groups are the memory planner's inventory (``planning.memory.inventory``, itself the rule table's tensors),
one tensor each: a routed expert is written at its slice of the layer's stack in the weight file, so no stack
is ever in memory; the embedding (a tied head is the same table) is one tensor. MTP layers and the vision tower are not
exported (the predictor runs text models without MTP).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from converters.rules import EXPERT, FP32, LINEAR, NORM
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.memory import inventory, tensor_bytes
from ernie_paddle.planning.storage import Holding, Scheme, engine_for, holding, scheme_for

# RSS of the exporting process before any weight: 288 MiB measured after ``import paddle; import
# ernie_paddle``, 301 MiB with ``ernie_paddle.runtime.predictor.export`` imported and the compiled
# operators loaded (Paddle 3 CPU, Python 3.10, this project's VM).
EXPORT_BASELINE_BYTES = 300 << 20
WEIGHT_FORMATS = {"auto": None, "bfloat16": 2, "bf16": 2, "float32": 4, "fp32": 4}


@dataclass(frozen=True)
class ExportPeak:
    """The parts of a streaming export's peak RSS, in bytes; ``group`` names the largest group."""

    baseline: int
    kept: int
    group: str
    source: int
    stored: int
    float32: int

    @property
    def total(self) -> int:
        return self.baseline + self.kept + self.source + self.stored + self.float32


def export_peak(cfg: ErnieConfig, quantization: str | None = None, weights_format: str = "auto") -> ExportPeak:
    """The peak of exporting ``cfg``'s checkpoint for the CPU predictor, ``quantization`` applied on the fly
    (None: the checkpoint's own format); float linears and the embedding in ``weights_format`` (auto: as
    the predictor holds them, see ``planning.memory``; or bfloat16 / float32)."""
    if weights_format not in WEIGHT_FORMATS:
        raise ErnieError(f"unknown weight format {weights_format!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    source = scheme_for(None, cfg)
    target = scheme_for(quantization, cfg)
    if source.quantized and target != source:
        raise ErnieError(f"a {source.name} checkpoint exports in its own format, not {target.name}; "
                         "quantize the unquantized checkpoint instead")
    engine_for(cfg, target, "cpu", 1, "predictor")  # refuses what the predictor does not run (VL)
    on_the_fly = target.quantized and not source.quantized
    stored_b = 4 if cfg.dtype == "float32" else 2
    disk = Holding(stored_b, stored_b, stored_b, stored_b)
    held = holding(cfg, target, "cpu", "predictor")
    width = WEIGHT_FORMATS[weights_format]
    if width is not None:
        held = replace(held, linear=width, embed=width)
        target = target if target.quantized else Scheme("bf16", "bf16")  # bf16 linears take ``linear`` bytes
    kept, best = 0, None
    for t in inventory(cfg):
        if t.mtp:
            continue
        if t.kind in (NORM, FP32):
            kept += tensor_bytes(t, target, held)
            continue
        # one tensor at a time: an expert is written at its slice of the layer's stack, never stacked in memory
        widened = 4 * t.k * t.n if on_the_fly and t.kind in (LINEAR, EXPERT) else 0
        group = ExportPeak(EXPORT_BASELINE_BYTES, 0, t.name, tensor_bytes(t, source, disk, 1),
                           tensor_bytes(t, target, held, 1), widened)
        if best is None or group.total > best.total:
            best = group
    return replace(best, kept=kept)


def export_peak_bytes(cfg: ErnieConfig, quantization: str | None = None, weights_format: str = "auto") -> int:
    """``export_peak(...).total``."""
    return export_peak(cfg, quantization, weights_format).total
