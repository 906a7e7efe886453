"""``ernie-paddle quantize``: release tensor names, dtypes and config; dequantized weights match."""

import numpy as np
import pytest
from helpers import run_cli

from converters.convert import convert
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.quant.config import read
from ernie_paddle.quant.tensors import dequantize_weight

LINEARS = ("qkv_proj", "o_proj", "up_gate_proj", "down_proj")


@pytest.fixture(scope="module")
def moe_paddle(moe_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "pd"
    convert(moe_hf, out, quiet=True)
    return out


def _reference_error_bound(method, w):
    """Largest error each method may make for W [in, out], computed independently of the code under test."""
    amax_col = np.abs(w).max(axis=0)
    if method == "wint8":
        return amax_col / 127 / 2 * 1.01 + 1e-7
    if method == "wint4":
        return amax_col / 7 / 2 * 1.01 + 1e-7
    return np.abs(w).max() / 448 * 32 / 2  # e4m3: 3 mantissa bits, step <= amax/448 * 2**5 near the top


@pytest.mark.parametrize("method", ["wint8", "wint4", "fp8"])
def test_quantize_writes_release_layout(moe_paddle, tmp_path, method):
    out = tmp_path / method
    r = run_cli("quantize", moe_paddle, out, "--method", method, "-q")
    assert r.returncode == 0, r.stderr
    src, q = open_checkpoint(moe_paddle), open_checkpoint(out)
    qc = read(out / "config.json")
    assert qc is not None and qc.methods == {method}
    cfg = src.config
    for key in src.keys():
        base = key[: -len("weight")]
        if key.endswith(".weight") and any(f".{lin}." in key for lin in LINEARS) and key.startswith("ernie.layers"):
            assert key not in q and base + "quant_weight" in q and base + "weight_scale" in q, key
            w = np.asarray(src.get(key), np.float32)
            tensors = {"quant_weight": q.get(base + "quant_weight"), "weight_scale": q.get(base + "weight_scale")}
            deq = dequantize_weight(method, tensors, w.shape[0], w.shape[1], name=base[:-1])
            assert np.all(np.abs(deq - w) <= _reference_error_bound(method, w)), key
        elif key.endswith(("embed_tokens.weight", "norm.weight", "mlp.gate.weight", "correction_bias")) or \
                key == "lm_head.weight":
            assert q.get(key).tobytes() == src.get(key).tobytes(), key  # high precision, untouched
    expected_dtype = {"wint8": "I8", "wint4": "I8", "fp8": "F8_E4M3"}[method]
    assert q.specs["ernie.layers.1.mlp.experts.0.up_gate_proj.quant_weight"].dtype == expected_dtype
    assert cfg.moe_num_experts == q.config.moe_num_experts


def test_quantize_refuses_quantized_input(moe_paddle, tmp_path):
    assert run_cli("quantize", moe_paddle, tmp_path / "a", "--method", "fp8", "-q").returncode == 0
    r = run_cli("quantize", tmp_path / "a", tmp_path / "b", "--method", "wint8")
    assert r.returncode == 2 and "already quantized" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
