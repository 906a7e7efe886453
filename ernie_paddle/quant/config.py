"""``quantization_config`` of config.json (Paddle and HF dialects) -> which method each linear uses.

Methods: ``"fp8"`` (block-wise e4m3), ``"wint8"``/``"wint4"`` (weight-only per channel), ``"wint2"`` (CCQ)
and None (high precision). Embeddings, lm_head, norms, the router and its correction bias are never
quantized. Whether a given checkpoint stores a linear quantized is decided by its tensor names
(``P.quant_weight`` vs ``P.weight``); the ``*_prequantized`` flags record what FastDeploy would expect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.rules import match_hf, match_paddle, quantizable
from ernie_paddle.errors import ErnieError

METHODS = ("fp8", "wint8", "wint4", "wint2")
ONLINE_METHODS = ("wint8", "wint4", "fp8")  # what a float checkpoint can be quantized to (no WINT2 encoder)
_PADDLE_TYPES = {"block_wise_fp8": "fp8", "wint8": "wint8", "wint4": "wint4",
                 "weight_only_int8": "wint8", "weight_only_int4": "wint4"}
_PADDLE_NAME = {"fp8": "block_wise_fp8", "wint8": "wint8", "wint4": "wint4"}
_UNSUPPORTED = ("tensor_wise_fp8", "w4a8", "w4afp8", "w8a8", "wfp8afp8", "nvfp4", "mxfp4")
_SUFFIXES = (".quant_weight", ".weight_scale_inv", ".weight_scale", ".super_scales", ".code_scale", ".code_zp",
             ".activation_scale", ".weight", ".bias")


@dataclass(frozen=True)
class QuantConfig:
    """A normalized quantization config; ``method_for(key)`` answers per linear."""

    source: str  # "paddle" or "hf"
    dense: str | None  # attention, dense MLP and shared-expert linears
    moe: str | None  # routed experts (wint2 configs: MoE layers after ``wint4_end_layer``)
    wint4_end_layer: int | None = None  # wint2 configs: MoE layers <= this use wint4
    image_moe: str | None = None  # VL image experts, where they differ
    block_size: int = 128
    dense_prequantized: bool = True
    moe_prequantized: bool = True
    kv_cache_quant_type: str | None = None
    modules_to_not_convert: tuple[str, ...] = ()
    path: str | None = None
    raw: dict = field(default_factory=dict, compare=False)

    def method_for(self, key: str, image: bool = False) -> str | None:
        """The method for the linear ``key`` (a prefix or a tensor name, Paddle or HF names)."""
        for suffix in _SUFFIXES:
            if key.endswith(suffix):
                key = key[: -len(suffix)]
                break
        if not quantizable(key):
            return None
        if any(m in key for m in self.modules_to_not_convert):
            return None
        m = match_paddle(f"{key}.weight") or match_hf(f"{key}.weight")
        if m is None or m.expert is None:
            return self.dense
        if image and self.image_moe is not None:
            return self.image_moe
        if self.moe == "wint2" and self.wint4_end_layer is not None and m.layer is not None \
                and m.layer <= self.wint4_end_layer:
            return "wint4"
        return self.moe

    @property
    def methods(self) -> set[str]:
        used = {self.dense, self.moe, self.image_moe} | ({"wint4"} if self.moe == "wint2" else set())
        return {m for m in used if m}

    def to_dict(self, num_layers: int | None = None) -> dict[str, Any]:
        """A ``quantization_config`` for config.json in this config's dialect (a parsed one is returned as read)."""
        if self.raw:
            return json.loads(json.dumps(self.raw))
        b = [self.block_size, self.block_size]
        if self.source == "hf":
            return {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": b,
                    "modules_to_not_convert": list(self.modules_to_not_convert)}
        if self.dense is None or self.moe is None:
            raise ErnieError("a Paddle quantization_config needs both a dense and a MoE method")
        if self.moe == "wint2":
            end = 6 if self.wint4_end_layer is None else self.wint4_end_layer
            w2 = {"quant_type": "wint2", "quant_granularity": "pp_acc", "quant_group_size": 64,
                  "quant_start_layer": end + 1}
            if num_layers is not None:
                w2["quant_end_layer"] = num_layers - 1
            w4 = {"quant_type": "wint4", "quant_granularity": "per_channel", "quant_start_layer": 0,
                  "quant_end_layer": end}
            return {"dense_quant_type": self.dense, "moe_quant_type": "w4w2", "quantization": "wint2",
                    "moe_quant_config": {"moe_w4_quant_config": w4, "moe_w2_quant_config": w2}}
        dense, moe = _PADDLE_NAME[self.dense], _PADDLE_NAME[self.moe]
        if dense == moe and self.moe != "fp8":
            out: dict[str, Any] = {"quantization": dense}
        else:  # FastDeploy loads prequantized FP8 experts only through mix_quant's moe_quant_type
            out = {"quantization": "mix_quant", "dense_quant_type": dense, "moe_quant_type": moe}
        if "fp8" in (self.dense, self.moe):
            out["weight_block_size"] = b
        out["is_quantized"] = True
        return out


def _fail(msg: str, path) -> ErnieError:
    return ErnieError(f"quantization_config: {msg}", path)


def _block(qc: dict, path) -> int:
    b = qc.get("weight_block_size", [128, 128])
    if (not isinstance(b, list | tuple) or len(b) != 2 or not all(isinstance(x, int) and x > 0 for x in b)
            or b[0] != b[1]):
        raise _fail(f"weight_block_size {b!r} is not supported; expected two equal positive ints like [128, 128]",
                    path)
    return b[0]


def _paddle_type(name: Any, key: str, path) -> str:
    if name in _PADDLE_TYPES:
        return _PADDLE_TYPES[name]
    if name in _UNSUPPORTED:
        raise _fail(f"{key} {name!r} is a known Paddle scheme that this runtime does not support", path)
    raise _fail(f"unknown {key} {name!r}; expected one of {sorted(_PADDLE_TYPES)}", path)


def _wint2(qc: dict, path) -> dict:
    dense = {qc[k] for k in ("dense_quant_type", "dense_quant_config") if k in qc} or {"wint8"}
    if len(dense) != 1:
        raise _fail(f"dense_quant_type and dense_quant_config disagree: {sorted(map(str, dense))}", path)
    dense_m = _paddle_type(dense.pop(), "dense_quant_type", path)
    if dense_m not in ("wint8", "wint4"):
        raise _fail(f"wint2 configs need a wint8/wint4 dense type, got {dense_m!r}", path)
    moe_cfg = qc.get("moe_quant_config", {})
    if not isinstance(moe_cfg, dict):
        raise _fail("moe_quant_config must be an object", path)
    for k, v in (("moe_quant_type", qc.get("moe_quant_type")), ("moe_quant_config.quant_type",
                                                                 moe_cfg.get("quant_type"))):
        if v not in (None, "w4w2"):
            raise _fail(f"{k} {v!r} is not supported with quantization 'wint2' (expected 'w4w2')", path)
    w4, w2 = moe_cfg.get("moe_w4_quant_config", {}), moe_cfg.get("moe_w2_quant_config", {})
    if not isinstance(w4, dict) or not isinstance(w2, dict):
        raise _fail("moe_w4_quant_config and moe_w2_quant_config must be objects", path)
    checks = ((w4, "quant_type", "wint4"), (w4, "quant_granularity", "per_channel"), (w2, "quant_type", "wint2"),
              (w2, "quant_group_size", 64), (w2, "quant_granularity", "pp_acc"))
    for d, k, want in checks:
        if d.get(k, want) != want:
            raise _fail(f"moe_w{'4' if d is w4 else '2'}_quant_config.{k} is {d[k]!r}; only {want!r} is "
                        f"supported", path)
    end = w4.get("quant_end_layer", 6)
    if not isinstance(end, int) or ("quant_start_layer" in w2 and w2["quant_start_layer"] != end + 1):
        raise _fail(f"wint4 MoE layers end at {end!r} but wint2 layers start at {w2.get('quant_start_layer')!r}; "
                    f"expected the next layer", path)
    return {"dense": dense_m, "moe": "wint2", "wint4_end_layer": end}


def _flags(qc: dict) -> tuple[bool, bool]:
    """FastDeploy's rule: is_quantized, else is_moe_quantized, else quantized unless a KV-cache type is set."""
    if "is_quantized" in qc:
        return bool(qc["is_quantized"]), bool(qc["is_quantized"])
    if "is_moe_quantized" in qc:
        return False, bool(qc["is_moe_quantized"])
    on = "kv_cache_quant_type" not in qc
    return on, on


def parse(qc: Any, path: str | Path | None = None) -> QuantConfig | None:
    """Normalize one ``quantization_config`` value (None -> None); ``path`` names the file in errors."""
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise _fail(f"expected an object, got {type(qc).__name__}", path)
    path = None if path is None else str(path)
    if "quantization" in qc and "quant_method" in qc:
        raise _fail("has both 'quantization' (Paddle) and 'quant_method' (HF); expected one dialect", path)
    if "quant_method" in qc:
        if qc["quant_method"] != "fp8":
            raise _fail(f"quant_method {qc['quant_method']!r} is not supported (only HF block-wise 'fp8')", path)
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise _fail(f"activation_scheme {qc['activation_scheme']!r} is not supported (only 'dynamic')", path)
        skip = qc.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise _fail("modules_to_not_convert must be a list of strings", path)
        return QuantConfig("hf", "fp8", "fp8", block_size=_block(qc, path), modules_to_not_convert=tuple(skip),
                           path=path, raw=qc)
    if "quantization" not in qc:
        raise _fail("has neither 'quantization' (Paddle) nor 'quant_method' (HF)", path)
    name = qc["quantization"]
    if name == "wint2":
        kinds = _wint2(qc, path)
    elif name == "mix_quant":
        missing = [k for k in ("dense_quant_type", "moe_quant_type") if k not in qc]
        if missing:
            raise _fail(f"mix_quant needs {' and '.join(missing)}", path)
        kinds = {"dense": _paddle_type(qc["dense_quant_type"], "dense_quant_type", path),
                 "moe": _paddle_type(qc["moe_quant_type"], "moe_quant_type", path)}
        if qc.get("image_moe_quant_type") is not None:
            kinds["image_moe"] = _paddle_type(qc["image_moe_quant_type"], "image_moe_quant_type", path)
    elif name == "weight_only":
        m = _paddle_type(qc.get("algo"), "algo", path)
        kinds = {"dense": m, "moe": m}
    else:
        m = _paddle_type(name, "quantization", path)
        kinds = {"dense": m, "moe": m}
    dense_pre, moe_pre = _flags(qc)
    kv = qc.get("kv_cache_quant_type")
    return QuantConfig("paddle", block_size=_block(qc, path), dense_prequantized=dense_pre,
                       moe_prequantized=moe_pre, kv_cache_quant_type=kv, path=path, raw=qc, **kinds)


def online(method: str, moe_method: str | None = None) -> QuantConfig:
    """The config for quantizing a high-precision model on load / for ``quantize --method``."""
    for m in (method, moe_method):
        if m is not None and m not in ("fp8", "wint8", "wint4"):
            raise ErnieError(f"unknown quantization method {m!r}; expected fp8, wint8 or wint4")
    return QuantConfig("paddle", method, moe_method or method)


def read(config_json: str | Path) -> QuantConfig | None:
    """The normalized ``quantization_config`` of a config.json file (None when absent)."""
    try:
        data = json.loads(Path(config_json).read_text())
    except (OSError, ValueError) as e:
        raise ErnieError(f"cannot read config: {e}", config_json) from None
    if not isinstance(data, dict):
        raise ErnieError("config.json is not a JSON object", config_json)
    return parse(data.get("quantization_config"), config_json)
