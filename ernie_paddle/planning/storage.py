"""How weights are stored: the quantization schemes a plan can name, the bytes of one linear in each
format (as the checkpoint stores it, or in the CPU kernel form), and how each engine holds a model's weights
(``Holding``: see ``planning.memory`` for the rules)."""

from __future__ import annotations

from dataclasses import dataclass

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

QUANTIZATIONS = ("fp32", "bf16", "wint8", "wint4", "fp8", "wint2")


@dataclass(frozen=True)
class Scheme:
    """Storage of decoder linears: ``dense`` for attention/dense/shared MLP, ``moe`` for routed experts;
    routed experts in MoE layers <= ``moe_w4_end`` use wint4 (the WINT2 release recipe)."""

    dense: str
    moe: str
    moe_w4_end: int = -1

    @property
    def quantized(self) -> bool:
        return self.dense not in ("fp32", "bf16") or self.moe not in ("fp32", "bf16")

    @property
    def name(self) -> str:
        return self.dense if self.dense == self.moe else ("wint2" if self.moe == "wint2" else
                                                            f"{self.dense}+{self.moe}")


def scheme_for(quantization: str | None, cfg: ErnieConfig) -> Scheme:
    """The scheme a ``--quantization`` name means, or (None) what the config declares."""
    if quantization is None:
        return _scheme_from_config(cfg)
    if quantization not in QUANTIZATIONS:
        raise ErnieError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "wint2":
        return Scheme("wint8", "wint2", _w4_end(cfg.quantization_config or {}))
    return Scheme(quantization, quantization)


_QNAMES = {"block_wise_fp8": "fp8", "fp8": "fp8", "wint8": "wint8", "wint4": "wint4", "w4w2": "wint2",
           "wint2": "wint2"}


def _scheme_from_config(cfg: ErnieConfig) -> Scheme:
    qc = cfg.quantization_config
    if not qc:
        return Scheme(*(["fp32"] * 2)) if cfg.dtype == "float32" else Scheme("bf16", "bf16")
    q = qc.get("quantization") or qc.get("quant_method")
    if q == "wint2":
        return Scheme("wint8", "wint2", _w4_end(qc))
    if q == "mix_quant":
        dense, moe = _QNAMES.get(qc.get("dense_quant_type")), _QNAMES.get(qc.get("moe_quant_type"))
        if dense and moe:
            return Scheme(dense, moe, _w4_end(qc) if moe == "wint2" else -1)
    elif q in _QNAMES:
        return Scheme(_QNAMES[q], _QNAMES[q])
    raise ErnieError(f"quantization_config {qc} is not one the planner knows; pass --quantization")


def _w4_end(qc: dict) -> int:
    w4 = (qc.get("moe_quant_config") or {}).get("moe_w4_quant_config") or {}
    return int(w4.get("quant_end_layer", 6))


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b."""
    return -(-a // b)


def linear_bytes(k: int, n: int, q: str, hp: int, kernel: bool = False) -> int:
    """Bytes of one [k, n] linear stored as ``q`` (spec/quantized_formats.md): as the checkpoint stores it,
    or (``kernel``) in the CPU kernel form, which widens bf16 per-channel and super scales to float32;
    ``hp``: bytes per element of a bf16-scheme linear (the checkpoint's float dtype)."""
    scale = 4 if kernel else 2
    if q == "fp32":
        return 4 * k * n
    if q == "bf16":
        return hp * k * n
    if q == "wint8":
        return k * n + scale * n
    if q == "wint4":  # two 4-bit values per byte along k
        return cdiv(k, 2) * n + scale * n
    if q == "fp8":
        return k * n + 4 * cdiv(k, 128) * cdiv(n, 128)
    if q == "wint2":  # quant_weight [K/4,N] u8, local scales [K/128,N] u8, super scale, code scale/zp f32
        return cdiv(k, 4) * n + cdiv(k, 128) * n + scale * n + 8 * n
    raise ErnieError(f"unknown storage {q!r}")


@dataclass(frozen=True)
class Holding:
    """How one engine holds the weights: bytes per element of bf16-scheme linears, the embedding (and
    head), norms (and biases) and the vision tower; quantized linears in the CPU kernel form or as
    stored; whether MTP layers are held. Router tensors are float32 everywhere."""

    linear: int
    embed: int
    norm: int
    vision: int
    kernel: bool = False
    mtp: bool = True


ENGINES = ("auto", "predictor", "dygraph")


def engine_for(cfg: ErnieConfig, scheme: Scheme, device: str, tp: int, engine: str = "auto") -> str:
    """The engine a plan describes: ``auto`` (the CLI default) is the predictor for a text model on one
    rank (on GPU only unquantized), dygraph otherwise."""
    if engine not in ENGINES:
        raise ErnieError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    runs = cfg.family in ("dense", "moe") and tp == 1 and (device == "cpu" or not scheme.quantized)
    if engine == "predictor" and not runs:
        raise ErnieError(f"the predictor does not run this plan ({cfg.family} model, tp={tp}, {scheme.name} "
                         f"on {device}); plan it for the dygraph engine")
    return "predictor" if runs and engine != "dygraph" else "dygraph"


def holding(cfg: ErnieConfig, scheme: Scheme, device: str, engine: str) -> Holding:
    """How ``engine`` on ``device`` holds ``cfg``'s weights under ``scheme`` (the rules: ``planning.memory``)."""
    stored = 4 if cfg.dtype == "float32" else 2
    if device == "gpu":
        hp = 4 if scheme.dense == "fp32" else stored
        return Holding(hp, hp, hp, hp)
    if engine == "dygraph":
        return Holding(4, 4, 4, 4, kernel=True)
    linear = 4 if scheme.dense == "fp32" else 2
    return Holding(linear, stored if scheme.quantized else linear, 4, 4, kernel=True, mtp=False)
