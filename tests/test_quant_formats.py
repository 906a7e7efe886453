"""Quantized formats: dequantizers against independent reference arithmetic (plain loops written here)."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import paddle
import pytest

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant import (
    QuantLinear,
    dequantize_weight,
    fp8,
    online,
    parse,
    quantize_weight,
    read,
    weight_only,
    wint2,
)

BF16, E4M3 = ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn


def bits(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns, so that -0.0 != +0.0 and NaN == NaN in comparisons."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------- independent references (no module code)
def ref_e4m3(byte: int) -> float:
    """Spec 2.3: sign bit 7, exponent bits 6..3 (bias 7), mantissa bits 2..0; E=0 subnormal; 0x7F NaN."""
    sign = -1.0 if byte & 0x80 else 1.0
    e, m = (byte >> 3) & 0xF, byte & 7
    if e == 15 and m == 7:
        return math.nan
    if e == 0:
        return sign * (m / 8) * 2.0**-6
    return sign * (1 + m / 8) * 2.0 ** (e - 7)


def ref_fp8_dequant(q_bytes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = np.empty(q_bytes.shape, np.float32)
    with np.errstate(over="ignore"):
        for k in range(q_bytes.shape[0]):
            for n in range(q_bytes.shape[1]):
                # the exact double product rounded once to float32 == one float32 multiply
                out[k, n] = np.float32(ref_e4m3(int(q_bytes[k, n])) * float(scale[k // 128, n // 128]))
    return out


def ref_wint2_dequant(qw, ls, sup, cs, zp) -> np.ndarray:
    """Spec 3.4 steps 1-6, one element at a time, float32 scalar arithmetic."""
    k_total, n_total = qw.shape[0] * 4, qw.shape[1]
    out = np.empty((k_total, n_total), np.float32)
    for n in range(n_total):
        s32, c32, z32 = np.float32(sup[n]), np.float32(cs[n]), np.float32(zp[n])
        for k in range(k_total):
            b = np.float32(int(qw[k // 4, n]))
            c = int(np.floor(b * c32 + z32 + np.float32(0.5)))
            v6 = (c >> (9, 6, 3, 0)[k % 4]) & 0x3F
            q = v6 - 32
            g = k // 64
            byte = int(ls[g // 2, n])
            nib = (byte >> 4) & 0xF if g % 2 == 0 else byte & 0xF
            out[k, n] = np.float32(q) * (np.float32(nib) * s32)
    return out


def ref_round_half_away(x: float) -> float:
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def ref_weight_only(w_bf16: np.ndarray, bound: int) -> np.ndarray:
    """Paddle's per-channel formula: scale = bf16(amax / bound), q = clip(round(w / scale)), W = q * scale."""
    k_total, n_total = w_bf16.shape
    out = np.empty((k_total, n_total), np.float32)
    for n in range(n_total):
        col = [float(w_bf16[k, n]) for k in range(k_total)]
        scale = float(np.float32(np.float32(max(abs(v) for v in col)) / np.float32(bound)).astype(BF16))
        for k in range(k_total):
            q = 0 if scale == 0 else max(-bound, min(bound, ref_round_half_away(float(np.float32(col[k]) /
                                                                                     np.float32(scale)))))
            out[k, n] = np.float32(q) * np.float32(scale)
    return out


# ---------------------------------------------------------------- FP8
def test_e4m3_codes_match_the_bit_formula():
    codes = np.array([b for b in range(256) if b & 0x7F != 0x7F], np.uint8)
    got = fp8.dequantize(codes.reshape(1, -1), np.ones((1, 2), np.float32))
    want = np.array([ref_e4m3(int(b)) for b in codes], np.float32)
    assert np.array_equal(bits(got[0]), bits(want))
    assert ref_e4m3(0x38) == 1.0 and ref_e4m3(0x01) == 2.0**-9 and ref_e4m3(0x7E) == 448.0


@pytest.mark.parametrize("shape", [(256, 384), (200, 136)])  # whole blocks, and partial edge blocks
def test_fp8_dequant_bit_exact_with_scale_edge_cases(shape):
    rng = np.random.default_rng(1)
    k, n = shape
    q = rng.integers(0, 256, shape).astype(np.uint8)
    q[(q & 0x7F) == 0x7F] = 0x7E  # no NaN codes
    q[0, :4] = [0x7E, 0xFE, 0x80, 0x00]  # +448, -448, -0, +0
    grid = fp8.grid_shape(k, n)
    s = rng.uniform(1e-4, 1e-2, grid).astype(np.float32)
    s[0, 0], s[-1, -1] = np.finfo(np.float32).max, 0.0  # overflow to +-inf; zero scale
    s[0, -1] = -0.0  # negative zero flips the sign of zeros
    want = ref_fp8_dequant(q, s)
    with np.errstate(over="ignore"):
        got = fp8.dequantize(q.view(E4M3), s)
        lin = QuantLinear.from_tensors("fp8", {"quant_weight": q.view(E4M3), "weight_scale": s}, k, n)
        got_paddle = lin.dequantize().numpy()
    assert np.isinf(want[0, 0]) and np.signbit(want[0, 2])
    assert np.array_equal(bits(got), bits(want))
    assert np.array_equal(bits(got_paddle), bits(want))


def test_fp8_quantize_error_bound_and_zero_block():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((200, 300)) * 0.05).astype(np.float32)
    w[:128, 128:256] = 0.0  # one all-zero block
    w[5, 7] = 0.9  # an outlier sets its block's amax
    q, s = fp8.quantize(w)
    assert q.dtype == E4M3 and q.shape == w.shape and s.dtype == np.float32 and s.shape == (2, 3)
    assert s[0, 0] == np.float32(np.float32(0.9) / np.float32(448.0))
    assert float(q.astype(np.float32)[5, 7]) == 448.0
    assert not q.astype(np.float32)[:128, 128:256].any()
    deq = ref_fp8_dequant(q.view(np.uint8), s)
    per_elem_scale = np.repeat(np.repeat(s, 128, 0), 128, 1)[:200, :300]
    bound = np.abs(w) * 2.0**-4 + per_elem_scale * 2.0**-10  # half an e4m3 step, normal or subnormal
    assert (np.abs(deq - w) <= bound).all()
    assert not deq[:128, 128:256].any()


def test_hf_fp8_round_trip_and_block_split():
    rng = np.random.default_rng(3)
    k, n_q, n_kv = 256, 384, 128
    w = rng.standard_normal((k, n_q + 2 * n_kv)).astype(np.float32)
    qw, ws = fp8.quantize(w)
    hw, hs = fp8.paddle_to_hf(qw, ws)
    assert hw.shape == (n_q + 2 * n_kv, k) and hs.shape == (5, 2)
    assert np.array_equal(fp8.dequantize(hw, hs), fp8.dequantize(qw, ws).T)
    parts = fp8.split(hw, hs, [n_q, n_kv, n_kv], axis=0, name="qkv_proj")
    assert [p[0].shape for p in parts] == [(384, 256), (128, 256), (128, 256)]
    assert [p[1].shape for p in parts] == [(3, 2), (1, 2), (1, 2)]
    fused_w, fused_s = fp8.concat(parts, axis=0)
    back_w, back_s = fp8.hf_to_paddle(fused_w, fused_s)
    assert back_w.dtype == E4M3 and np.array_equal(back_w.view(np.uint8), qw.view(np.uint8))
    assert np.array_equal(bits(back_s), bits(ws))
    with pytest.raises(ErnieError, match="qkv_proj.*cut"):
        fp8.split(hw, hs, [320, 192, 128], axis=0, name="qkv_proj")
    with pytest.raises(ErnieError, match="up_gate_proj"):
        fp8.concat([(hw[:100], hs[:1]), (hw[100:], hs[:4])], axis=0, name="up_gate_proj")


# ---------------------------------------------------------------- WINT2
def test_wint2_worked_examples_from_the_spec():
    one = np.ones(1, np.float32)
    c = wint2.codes(np.array([[171]], np.uint8), one * 128, one * 0)
    assert int(c[0, 0]) == 21888
    assert wint2.decode(np.array([[171]], np.uint8), one * 128, one * 0)[:, 0].tolist() == [10, -10, 16, -32]
    c = wint2.codes(np.array([[0x5A]], np.uint8), one * np.float32(100.25), one * 37)
    assert int(c[0, 0]) == 9060
    got = wint2.decode(np.array([[0x5A]], np.uint8), one * np.float32(100.25), one * 37)[:, 0].tolist()
    assert got == [-15, -19, 12, 4]


def test_wint2_dequant_bit_exact_with_edge_cases():
    rng = np.random.default_rng(4)
    k, n = 256, 12
    qw = rng.integers(0, 256, (k // 4, n)).astype(np.uint8)
    qw[0, :3] = [0, 255, 171]
    ls = rng.integers(0, 256, (k // 128, n)).astype(np.uint8)
    ls[0, 0], ls[1, 1] = 0x0F, 0xF0  # a zero nibble zeroes group 0 of column 0 and group 3 of column 1
    sup = rng.uniform(1e-3, 1e-1, n).astype(BF16)
    cs = rng.uniform(20, 128, n).astype(np.float32)
    zp = rng.uniform(-500, 500, n).astype(np.float32)  # negative codes use two's-complement bits
    cs[0], zp[0] = 128.0, 0.0
    cs[1], zp[1] = 100.25, 37.0
    t = {"quant_weight": qw, "weight_scale": ls, "super_scales": sup, "code_scale": cs, "code_zp": zp}
    want = ref_wint2_dequant(qw, ls, sup.astype(np.float32), cs, zp)
    assert not want[:64, 0].any() and not want[192:, 1].any()
    assert np.array_equal(bits(wint2.dequantize(t)), bits(want))
    assert np.array_equal(bits(dequantize_weight("wint2", t, k, n)), bits(want))
    lin = QuantLinear.from_tensors("wint2", t, k, n)
    assert np.array_equal(bits(lin.dequantize().numpy()), bits(want))
    assert lin.weight_t.dtype == paddle.uint8 and lin.weight_t.shape == [n, k // 4]  # the kernel form: [N, K/4]


def test_wint2_encoder_makes_valid_tensors():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((128, 32)) * 0.02).astype(np.float32)
    t = wint2.encode(w)
    assert {s: (t[s].dtype, t[s].shape) for s in wint2.SUFFIXES} == {
        "quant_weight": (np.uint8, (32, 32)), "weight_scale": (np.uint8, (1, 32)), "super_scales": (BF16, (32,)),
        "code_scale": (np.float32, (32,)), "code_zp": (np.float32, (32,))}
    codes = np.floor(t["quant_weight"].astype(np.float32) * t["code_scale"] + t["code_zp"] + np.float32(0.5))
    assert codes.min() >= 0 and codes.max() <= 32767
    deq = ref_wint2_dequant(*(t[s] for s in wint2.SUFFIXES[:2]), t["super_scales"].astype(np.float32),
                            t["code_scale"], t["code_zp"])
    rel = np.sqrt(((deq - w) ** 2).mean() / (w**2).mean())
    assert rel < 0.5  # 2 bits per weight: a 4-level Gaussian quantizer is ~0.34 at best


# ---------------------------------------------------------------- weight-only int8 / int4
@pytest.mark.parametrize("method,algo", [("wint8", "weight_only_int8"), ("wint4", "weight_only_int4")])
def test_weight_only_matches_paddle_weight_quantize(method, algo):
    rng = np.random.default_rng(6)
    k, n = 128, 64
    w = (rng.standard_normal((k, n)) * 0.05).astype(BF16)
    w[3, 5] = -0.5  # a negative column max
    pq, ps = paddle.nn.quant.weight_quantize(paddle.to_tensor(w.astype(np.float32)).astype("bfloat16"),
                                             algo=algo, arch=80)
    released = {"quant_weight": pq.numpy(), "weight_scale": ps.astype("float32").numpy().astype(BF16)}
    want = ref_weight_only(w, 127 if method == "wint8" else 7)
    assert np.array_equal(bits(dequantize_weight(method, released, k, n)), bits(want))
    lin = QuantLinear.from_tensors(method, released, k, n)
    assert np.array_equal(bits(lin.dequantize().numpy()), bits(want))
    mine = quantize_weight(method, w)
    assert np.array_equal(mine["quant_weight"].view(np.uint8), pq.numpy().view(np.uint8))
    assert np.array_equal(bits(mine["weight_scale"].astype(np.float32)), bits(ps.astype("float32").numpy()))


def test_weight_only_plain_layout_and_detection():
    rng = np.random.default_rng(7)
    k = n = 64
    q8 = rng.integers(-127, 128, (k, n)).astype(np.int8)
    q8[0, 0] = 0
    scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
    want = np.array([[np.float32(q8[i, j]) * scale[j] for j in range(n)] for i in range(k)], np.float32)
    got = dequantize_weight("wint8", {"quant_weight": q8, "weight_scale": scale}, k, n)  # square: by content
    assert np.array_equal(bits(got), bits(want))
    q4 = rng.integers(-7, 8, (k, n))
    packed = np.zeros((k // 2, n), np.uint8)
    for i in range(k):
        for j in range(n):
            packed[i // 2, j] |= (int(q4[i, j]) & 0xF) << (4 * (i % 2))
    want4 = np.array([[np.float32(q4[i, j]) * scale[j] for j in range(n)] for i in range(k)], np.float32)
    got4 = dequantize_weight("wint4", {"quant_weight": packed.view(np.int8), "weight_scale": scale}, k, n,
                             layout="plain")
    assert np.array_equal(bits(got4), bits(want4))
    sm80 = weight_only.to_sm80(q8, 8)
    assert weight_only.detect_layout(sm80, 8, k, n) == "sm80"
    no_zero = np.abs(q8) % 127 + 1  # values 1..127: neither byte 0x00 nor 0x80 anywhere
    with pytest.raises(ErnieError, match="lin.quant_weight.*layout="):
        dequantize_weight("wint8", {"quant_weight": no_zero.astype(np.int8), "weight_scale": scale}, k, n,
                          name="lin")
    assert dequantize_weight("wint8", {"quant_weight": no_zero.astype(np.int8), "weight_scale": scale}, k, n,
                             layout="plain")[0, 0] == np.float32(no_zero[0, 0]) * scale[0]


# ---------------------------------------------------------------- QuantLinear
def test_quant_linear_forward_and_compact_storage():
    rng = np.random.default_rng(8)
    k, n = 128, 64
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    for method, nbytes in (("fp8", k * n), ("wint8", k * n), ("wint4", k * n // 2), ("wint2", k * n // 4)):
        t = quantize_weight(method, w)
        lin = QuantLinear.from_tensors(method, t, k, n)
        assert lin.weight_t.numel() * 1 == nbytes  # one byte per stored element
        ref = dequantize_weight(method, t, k, n)
        y = lin(paddle.to_tensor(x)).numpy()
        assert y.shape == (2, 3, n)
        assert np.abs(y - x @ ref).max() < 1e-4


# ---------------------------------------------------------------- bad input
def _fp8_tensors():
    q, s = fp8.quantize(np.ones((128, 128), np.float32))
    return {"quant_weight": q, "weight_scale": s}


@pytest.mark.parametrize("method,tensors,match", [
    ("fp8", {"quant_weight": _fp8_tensors()["quant_weight"]}, r"layers\.0\.o_proj\.weight_scale.*missing"),
    ("fp8", {**_fp8_tensors(), "weight_scale": np.ones((2, 1), np.float32)}, r"o_proj\.weight_scale.*shape"),
    ("fp8", {**_fp8_tensors(), "quant_weight": np.ones((128, 128), np.float32)}, r"o_proj\.quant_weight.*dtype"),
    ("fp8", {**_fp8_tensors(), "quant_weight": np.full((128, 128), 0x7F, np.uint8)}, r"o_proj\.quant_weight.*NaN"),
    ("fp8", {**_fp8_tensors(), "super_scales": np.ones(128, np.float32)}, r"o_proj\.super_scales.*fp8"),
    ("wint8", _fp8_tensors(), r"o_proj\.quant_weight.*dtype"),
    ("wint2", {"quant_weight": np.zeros((128, 128), np.int8), "weight_scale": np.ones(128, BF16)},
     r"o_proj\.super_scales.*missing"),
    ("wint2", {**wint2.encode(np.ones((128, 128), np.float32)), "weight_scale": np.zeros((2, 128), np.uint8)},
     r"o_proj\.weight_scale.*shape"),
    ("wint4", {"quant_weight": np.zeros((64, 64), np.int8), "weight_scale": np.ones(128, BF16)},
     r"o_proj\.quant_weight.*shape"),
    ("wint8", {"quant_weight": np.zeros((128, 128), np.int8)}, r"o_proj\.weight_scale.*missing"),
    ("int3", {}, "unknown quantization method"),
])
def test_bad_tensors_raise_ernie_error_naming_the_tensor(method, tensors, match):
    with pytest.raises(ErnieError, match=match):
        QuantLinear.from_tensors(method, tensors, 128, 128, name="ernie.layers.0.o_proj")


def test_wrong_linear_shape_is_refused():
    with pytest.raises(ErnieError, match=r"q\.quant_weight.*expected \[128, 256\]"):
        QuantLinear.from_tensors("fp8", _fp8_tensors(), 128, 256, name="q")


# ---------------------------------------------------------------- quantization_config
WINT2_DOC = {"dense_quant_type": "wint8", "moe_quant_type": "w4w2", "quantization": "wint2",
             "moe_quant_config": {"moe_w4_quant_config": {"quant_type": "wint4", "quant_granularity": "per_channel",
                                                          "quant_start_layer": 0, "quant_end_layer": 6},
                                  "moe_w2_quant_config": {"quant_type": "wint2", "quant_granularity": "pp_acc",
                                                          "quant_group_size": 64, "quant_start_layer": 7,
                                                          "quant_end_layer": 53}}}


def test_config_wint2_routes_layers():
    c = parse(WINT2_DOC)
    assert (c.dense, c.moe, c.wint4_end_layer) == ("wint8", "wint2", 6)
    assert c.method_for("ernie.layers.1.self_attn.qkv_proj.quant_weight") == "wint8"
    assert c.method_for("ernie.layers.0.mlp.up_gate_proj") == "wint8"
    assert c.method_for("ernie.layers.6.mlp.experts.3.up_gate_proj.weight_scale") == "wint4"
    assert c.method_for("ernie.layers.7.mlp.experts.63.down_proj") == "wint2"
    assert c.method_for("ernie.layers.7.mlp.shared_experts.down_proj") == "wint8"
    for key in ("ernie.layers.7.mlp.gate.weight", "lm_head.weight", "ernie.embed_tokens.weight",
                "ernie.layers.7.input_layernorm.weight", "ernie.norm.weight",
                "ernie.layers.7.mlp.moe_statics.e_score_correction_bias", "ernie.mtp_emb_norm.0.weight"):
        assert c.method_for(key) is None, key
    assert c.methods == {"wint8", "wint4", "wint2"}
    assert parse(c.to_dict()) == c


@pytest.mark.parametrize("qc,dense,moe,pre", [
    ({"quantization": "mix_quant", "dense_quant_type": "block_wise_fp8", "moe_quant_type": "block_wise_fp8",
      "kv_cache_quant_type": "float8_e4m3fn"}, "fp8", "fp8", False),
    ({"quantization": "mix_quant", "dense_quant_type": "block_wise_fp8", "moe_quant_type": "block_wise_fp8",
      "weight_block_size": [128, 128], "is_quantized": True}, "fp8", "fp8", True),
    ({"quantization": "block_wise_fp8"}, "fp8", "fp8", True),
    ({"quantization": "wint8"}, "wint8", "wint8", True),
    ({"quantization": "wint4", "is_quantized": False}, "wint4", "wint4", False),
    ({"quantization": "weight_only", "algo": "weight_only_int4"}, "wint4", "wint4", True),
    ({"quantization": "mix_quant", "dense_quant_type": "wint8", "moe_quant_type": "wint4"}, "wint8", "wint4", True),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, "fp8", "fp8", True),
])
def test_config_variants(qc, dense, moe, pre):
    c = parse(qc)
    assert (c.dense, c.moe, c.dense_prequantized, c.block_size) == (dense, moe, pre, 128)
    assert c.method_for("ernie.layers.2.mlp.experts.0.up_gate_proj") == moe
    assert c.method_for("model.layers.2.self_attn.o_proj.weight") == dense


def test_config_hf_skips_and_writer_dicts():
    c = parse({"quant_method": "fp8", "weight_block_size": [128, 128],
                "modules_to_not_convert": ["lm_head", "layers.1.self_attn"]})
    assert c.source == "hf" and c.method_for("model.layers.1.self_attn.q_proj") is None
    assert c.method_for("model.layers.2.self_attn.q_proj") == "fp8"
    fp8_cfg = online("fp8").to_dict()
    assert fp8_cfg["quantization"] == "mix_quant" and fp8_cfg["moe_quant_type"] == "block_wise_fp8"
    assert parse(fp8_cfg).methods == {"fp8"}
    assert parse(online("wint4").to_dict()).moe == "wint4"
    assert parse(online("wint8", "wint4").to_dict()).dense == "wint8"


@pytest.mark.parametrize("qc,match", [
    ({"quantization": "nonsense"}, "unknown quantization 'nonsense'"),
    ({"quantization": "w4a8"}, "does not support"),
    ({"quantization": "mix_quant", "dense_quant_type": "wint8"}, "moe_quant_type"),
    ({"quantization": "wint8", "quant_method": "fp8"}, "both"),
    ({"quant_method": "gptq"}, "gptq"),
    ({"quant_method": "fp8", "activation_scheme": "static"}, "static"),
    ({"quantization": "block_wise_fp8", "weight_block_size": [128, 64]}, "weight_block_size"),
    ({**WINT2_DOC, "moe_quant_config": {**WINT2_DOC["moe_quant_config"],
                                        "moe_w2_quant_config": {"quant_type": "wint2", "quant_start_layer": 9}}},
     "start at 9"),
    ({"is_quantized": True}, "neither"),
    ([1, 2], "expected an object"),
])
def test_bad_config_names_the_file(tmp_path, qc, match):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8, "quantization_config": qc}))
    with pytest.raises(ErnieError, match=match) as info:
        read(path)
    assert str(path) in str(info.value)


def test_config_without_quantization_is_none(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8}))
    assert read(path) is None
