"""Paddle FP8 (block-wise) <-> HF FP8 conversion without requantizing: bit-identical round trip."""

import json

import ml_dtypes
import numpy as np
import pytest
from helpers import run_cli

from converters.convert import convert
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.io.shard_writer import write_tensors
from ernie_paddle.quant import fp8

FP8_DIMS = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                intermediate_size=256, moe_intermediate_size=128, vocab_size=256)
QUANTIZED = ("qkv_proj.weight", "o_proj.weight", "up_gate_proj.weight", "down_proj.weight")


def _quantize_folder(src, dst):
    """A Paddle FP8 checkpoint in the release layout, made from a Paddle bf16/fp32 one."""
    ck = open_checkpoint(src)
    tensors = []
    for key in ck.keys():
        arr = ck.get(key)
        if key.endswith(QUANTIZED):
            q, s = fp8.quantize(np.asarray(arr, np.float32))
            base = key[: -len("weight")]
            tensors += [(base + "quant_weight", q), (base + "weight_scale", s)]
        else:
            tensors.append((key, np.asarray(arr)))
    dst.mkdir()
    write_tensors(dst, tensors, "paddle")
    raw = ck.config.to_dict("paddle")
    raw["quantization_config"] = {"quantization": "mix_quant", "dense_quant_type": "block_wise_fp8",
                                  "moe_quant_type": "block_wise_fp8", "weight_block_size": [128, 128],
                                  "is_quantized": True}
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


@pytest.fixture(scope="module")
def paddle_fp8(tiny_ckpts, tmp_path_factory):
    hf = tiny_ckpts("moe-fp8dims", "moe", mtp=1, bias_scale=0.1, **FP8_DIMS)
    root = tmp_path_factory.mktemp("fp8")
    convert(hf, root / "pd", quiet=True)
    return _quantize_folder(root / "pd", root / "pd-fp8")


def test_fp8_round_trip_bit_identical(paddle_fp8, tmp_path):
    r = run_cli("convert", paddle_fp8, tmp_path / "hf", "-q")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", tmp_path / "hf", tmp_path / "back", "-q")
    assert r.returncode == 0, r.stderr
    a, b = open_checkpoint(paddle_fp8), open_checkpoint(tmp_path / "back")
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert a.get(k).dtype == b.get(k).dtype and a.get(k).tobytes() == b.get(k).tobytes(), k
    assert ErnieConfig.from_file(tmp_path / "back").quantization_config["quantization"] == "mix_quant"


def test_hf_fp8_layout(paddle_fp8, tmp_path):
    convert(paddle_fp8, tmp_path / "hf", quiet=True)
    hf_ck, pd_ck = open_checkpoint(tmp_path / "hf"), open_checkpoint(paddle_fp8)
    hf = {k: hf_ck.get(k) for k in hf_ck.keys()}
    pd = {k: pd_ck.get(k) for k in pd_ck.keys()}
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8"
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == ml_dtypes.float8_e4m3fn and q.shape == (256, 128)  # [N, K]
    k_scale = hf["model.layers.0.self_attn.k_proj.weight_scale_inv"]
    assert k_scale.shape == (1, 1)
    np.testing.assert_array_equal(k_scale, pd["ernie.layers.0.self_attn.qkv_proj.weight_scale"][:, 2:3].T)
    np.testing.assert_array_equal(q.view(np.uint8),
                                  pd["ernie.layers.0.self_attn.qkv_proj.quant_weight"][:, :256].T.view(np.uint8))
    gate = hf["model.layers.1.mlp.experts.2.gate_proj.weight_scale_inv"]
    np.testing.assert_array_equal(gate, pd["ernie.layers.1.mlp.experts.2.up_gate_proj.weight_scale"][:, :1].T)
    assert hf["model.layers.1.mlp.gate.weight"].dtype == np.float32  # router stays high precision


def test_fp8_split_that_cuts_a_block_is_refused(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("moe-fp8-misaligned", "moe", **{**FP8_DIMS, "intermediate_size": 192})
    convert(hf, tmp_path / "pd", quiet=True)
    _quantize_folder(tmp_path / "pd", tmp_path / "pd-fp8")
    r = run_cli("convert", tmp_path / "pd-fp8", tmp_path / "hf")
    assert r.returncode == 2 and "cut" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "hf").exists()
