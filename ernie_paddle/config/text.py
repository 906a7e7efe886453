"""One normalized ERNIE 4.5 config, parsed from and written back to the HF or the Paddle dialect.

HF dialect: ``Ernie4_5ForCausalLM`` / ``Ernie4_5_MoeForCausalLM``, ``torch_dtype`` or ``dtype``,
``rope_parameters.rope_theta`` (older files: flat ``rope_theta``).
Paddle dialect: ``Ernie4_5_ForCausalLM`` / ``Ernie4_5_MoeForCausalLM``, ``dtype``, flat ``rope_theta`` and
Paddle-only training keys (kept in ``extra`` and written back only in the Paddle dialect).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ernie_paddle.config import vl as vl_config
from ernie_paddle.errors import ErnieError

HF, PADDLE = "hf", "paddle"
DENSE, MOE, VL = "dense", "moe", "vl"

ARCHITECTURES = {
    (HF, DENSE): "Ernie4_5ForCausalLM",
    (PADDLE, DENSE): "Ernie4_5_ForCausalLM",
    (HF, MOE): "Ernie4_5_MoeForCausalLM",
    (PADDLE, MOE): "Ernie4_5_MoeForCausalLM",
    (HF, VL): "Ernie4_5_VLMoeForConditionalGeneration",
    (PADDLE, VL): "Ernie4_5_VLMoeForConditionalGeneration",
}
MODEL_TYPES = {DENSE: "ernie4_5", MOE: "ernie4_5_moe", VL: "ernie4_5_moe_vl"}
_FAMILY_BY_ARCH = {
    "Ernie4_5ForCausalLM": DENSE,
    "Ernie4_5_ForCausalLM": DENSE,
    "Ernie4_5_MoeForCausalLM": MOE,
    "Ernie4_5_VLMoeForConditionalGeneration": VL,
    "Ernie4_5_VL_MoeForConditionalGeneration": VL,
}
_FAMILY_BY_MODEL_TYPE = {"ernie4_5": DENSE, "ernie4_5_moe": MOE, "ernie4_5_moe_vl": VL, "ernie4_5_vl_moe": VL}

# Paddle-only training keys the official Paddle->torch converter drops from an HF config.
PADDLE_ONLY_KEYS = frozenset(
    "add_tail_layers compression_ratio fuse_gate_detach_matmul fuse_linear fuse_ln fuse_rms_norm fuse_rope "
    "fuse_swiglu global_aux_loss moe_aux_loss_lambda moe_group_orthogonal_loss moe_orthogonal_loss_lambda "
    "moe_z_loss_lambda use_fast_ln use_flash_attention use_rmsnorm max_sequence_length model_name "
    "paddlenlp_version".split()
)
# Keys this module owns: they are parsed into fields or rebuilt on output, never carried in ``extra``.
_OWNED_KEYS = frozenset(
    "architectures model_type dtype torch_dtype rope_theta rope_parameters rope_scaling transformers_version "
    "head_dim".split()
)
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32", "float": "float32"}


@dataclass
class ErnieConfig:
    """Normalized model hyper-parameters; ``extra`` keeps every key it does not model, verbatim."""

    family: str = DENSE
    vocab_size: int = 103424
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 18
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    use_bias: bool = False
    dtype: str = "bfloat16"
    hidden_act: str = "silu"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    moe_num_experts: int = 0
    moe_k: int = 0
    moe_intermediate_size: int = 0
    moe_num_shared_experts: int = 0
    moe_layer_start_index: int = 0
    moe_layer_end_index: int = -1
    moe_layer_interval: int = 1
    moe_norm_min: float = 1e-12
    moe_gate_act: str = "softmax"
    moe_use_aux_free: bool = True
    num_nextn_predict_layers: int = 0
    quantization_config: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source_dialect: str | None = None

    # ----------------------------------------------------------------- derived
    @property
    def is_moe(self) -> bool:
        return self.family in (MOE, VL) and self.moe_num_experts > 0

    @property
    def moe_end(self) -> int:
        """Last MoE layer index with -1 resolved to the last layer."""
        return self.num_hidden_layers - 1 if self.moe_layer_end_index < 0 else self.moe_layer_end_index

    def is_moe_layer(self, i: int) -> bool:
        """Layer i is MoE iff (i+1) % interval == 0 and start <= i <= end."""
        if not self.is_moe:
            return False
        interval = max(1, self.moe_layer_interval)
        return (i + 1) % interval == 0 and self.moe_layer_start_index <= i <= self.moe_end

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def shared_intermediate_size(self) -> int:
        return self.moe_intermediate_size * self.moe_num_shared_experts

    # ----------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, raw: dict, path: object | None = None) -> ErnieConfig:
        """Parse either dialect. Raises ErnieError naming ``path`` on anything inconsistent."""
        if not isinstance(raw, dict):
            raise ErnieError("config is not a JSON object", path)
        d = vl_config.flatten_native(raw, path) if vl_config.is_native(raw) else dict(raw)
        family = _family_of(d, path)
        dialect = _dialect_of(d)
        cfg = cls(family=family, source_dialect=dialect)
        names = {f.name for f in fields(cls)} - {"family", "extra", "source_dialect", "dtype", "head_dim",
                                                  "rope_theta", "quantization_config"}
        try:
            for name in names:
                if name in d and d[name] is not None:
                    setattr(cfg, name, _coerce(name, d[name], getattr(cfg, name)))
            cfg.quantization_config = d.get("quantization_config")
            cfg.dtype = _dtype_of(d, path)
            cfg.rope_theta = float(_rope_theta_of(d))
            heads = int(cfg.num_attention_heads)
            cfg.num_key_value_heads = int(d.get("num_key_value_heads") or heads)
            hd = d.get("head_dim")
            cfg.head_dim = int(hd) if hd else cfg.hidden_size // heads
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise ErnieError(f"invalid config value: {exc}", path) from None
        if family == DENSE:
            cfg.moe_num_experts = 0
        if family != DENSE and isinstance(d.get("moe_num_experts"), list):
            # VL: [text, vision]; keep the lists verbatim in extra and expose the text values.
            for key in ("moe_num_experts", "moe_intermediate_size", "moe_layer_start_index",
                        "moe_layer_end_index"):
                if isinstance(d.get(key), list):
                    cfg.extra[f"{key}_list"] = d[key]
                    setattr(cfg, key, int(d[key][0]))
        cfg.extra.update({k: v for k, v in d.items() if k not in names and k not in _OWNED_KEYS
                          and k != "quantization_config"})
        cfg.validate(path)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> ErnieConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ErnieError("config.json not found (every checkpoint folder needs one)", path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ErnieError(f"config.json is not valid JSON: {exc}", path) from None
        return cls.from_dict(raw, path)

    def validate(self, path: object | None = None) -> None:
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive")
        if self.num_key_value_heads > 0 and self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if self.family != DENSE:
            if self.moe_num_experts <= 0 or self.moe_k <= 0 or self.moe_intermediate_size <= 0:
                problems.append("an MoE config needs moe_num_experts, moe_k and moe_intermediate_size > 0")
            elif self.moe_k > self.moe_num_experts:
                problems.append("moe_k exceeds moe_num_experts")
        if self.moe_gate_act not in ("softmax", "sigmoid"):
            problems.append(f"moe_gate_act {self.moe_gate_act!r} is not supported (softmax or sigmoid)")
        if problems:
            raise ErnieError("invalid config: " + "; ".join(problems), path)

    # ----------------------------------------------------------------- writing
    def to_dict(self, dialect: str) -> dict:
        """Render in ``dialect`` (``"hf"`` or ``"paddle"``) with that dialect's architecture name."""
        if dialect not in (HF, PADDLE):
            raise ValueError(f"unknown dialect {dialect!r}")
        if dialect == HF and self.family == VL:  # transformers-native nested text/vision config
            return vl_config.to_native(self)
        out: dict[str, Any] = {"architectures": [ARCHITECTURES[(dialect, self.family)]],
                               "model_type": MODEL_TYPES[self.family]}
        skip = {"family", "extra", "source_dialect", "dtype", "rope_theta", "quantization_config"}
        if self.family == DENSE:
            skip |= {f.name for f in fields(self) if f.name.startswith("moe_")}
        for f in fields(self):
            if f.name not in skip:
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        for key, value in self.extra.items():
            if key.endswith("_list") and key[:-5] in out:
                out[key[:-5]] = copy.deepcopy(value)
            elif dialect == PADDLE or key not in PADDLE_ONLY_KEYS:
                out[key] = copy.deepcopy(value)
        if dialect == HF:
            out["torch_dtype"] = self.dtype
            out["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
            out.pop("_attn_implementation", None)
        else:
            out["dtype"] = self.dtype
            out["rope_theta"] = self.rope_theta
        if self.quantization_config is not None:
            out["quantization_config"] = copy.deepcopy(self.quantization_config)
        return out

    def write(self, folder: str | Path, dialect: str) -> Path:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(self.to_dict(dialect), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def replace(self, **changes) -> ErnieConfig:
        new = copy.deepcopy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        return new


def _family_of(d: dict, path) -> str:
    archs = d.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    fam_arch = {_FAMILY_BY_ARCH[a] for a in archs if a in _FAMILY_BY_ARCH}
    unknown = [a for a in archs if a not in _FAMILY_BY_ARCH]
    fam_type = _FAMILY_BY_MODEL_TYPE.get(d.get("model_type"))
    if unknown and not fam_arch:
        raise ErnieError(f"unknown architecture {unknown[0]!r}; expected one of "
                         f"{sorted(set(_FAMILY_BY_ARCH))}", path)
    if d.get("model_type") is not None and fam_type is None and not fam_arch:
        raise ErnieError(f"unknown model_type {d.get('model_type')!r}; this runtime reads ERNIE 4.5 "
                         f"({sorted(_FAMILY_BY_MODEL_TYPE)})", path)
    if len(fam_arch) > 1:
        raise ErnieError(f"architectures {archs} name different model families", path)
    family = next(iter(fam_arch), None) or fam_type
    if family is None:
        raise ErnieError("config.json names no ERNIE 4.5 architecture or model_type", path)
    if fam_type is not None and fam_type != family:
        raise ErnieError(f"architectures {archs} and model_type {d.get('model_type')!r} disagree", path)
    return family


def _dialect_of(d: dict) -> str | None:
    archs = d.get("architectures") or []
    if "Ernie4_5_ForCausalLM" in archs or "rope_theta" in d and "rope_parameters" not in d and "dtype" in d:
        return PADDLE
    if "Ernie4_5ForCausalLM" in archs or "torch_dtype" in d or "rope_parameters" in d:
        return HF
    if PADDLE_ONLY_KEYS & set(d):
        return PADDLE
    return None


def _dtype_of(d: dict, path) -> str:
    raw = d.get("dtype") or d.get("torch_dtype") or "bfloat16"
    if isinstance(raw, str) and raw.startswith("torch."):
        raw = raw[len("torch."):]
    if raw not in _DTYPES:
        raise ErnieError(f"unsupported dtype {raw!r} (bfloat16, float16 or float32)", path)
    return _DTYPES[raw]


def _rope_theta_of(d: dict) -> float:
    for key in ("rope_parameters", "rope_scaling"):
        params = d.get(key)
        if isinstance(params, dict) and params.get("rope_theta") is not None:
            return params["rope_theta"]
    return d.get("rope_theta") or 500000.0


def _coerce(name: str, value, default):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, list):
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value
