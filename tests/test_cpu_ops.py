"""The compiled CPU operators of the predictor program (``predictor_ops.cc``) against numpy references."""

import numpy as np
import paddle
import pytest


def _t(a):
    return paddle.to_tensor(np.ascontiguousarray(a))


def _scales():
    """The four unused scale inputs of a float32 or bf16 weight (tests/test_kernel_formats.py: the others)."""
    return [paddle.zeros([1], dtype="float32") for _ in range(4)]


def _fmt(wt):
    return 1 if wt.dtype == paddle.bfloat16 else 0


def linear(ops, x, wt):
    return ops.ernie_linear(x, wt, *_scales(), _fmt(wt), False)


def linear_add(ops, x, wt, residual, swiglu):
    return ops.ernie_linear_add(x, wt, *_scales(), residual, _fmt(wt), False, swiglu)


def moe_experts(ops, x, ids, weights, up_gate, down):
    return ops.ernie_moe_experts(x, ids, weights, up_gate, *_scales(), down, *_scales(), _fmt(up_gate), False)


@pytest.mark.parametrize("shape,n", [((1, 1024), 6144), ((1, 37), 13), ((2, 100), 67), ((3, 64), 96),
                                     ((8, 72), 260), ((9, 64), 96), ((2, 5, 48), 30), ((1, 1, 3072), 1024)])
def test_linear_matches_numpy(ops, shape, n):
    """GEMV (up to 8 rows; odd K, N and row counts hit every tail) and the MKL path (more rows), any
    leading shape."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((n, shape[-1])).astype(np.float32)
    y = linear(ops, _t(x), _t(wt)).numpy()
    assert y.shape == shape[:-1] + (n,)
    np.testing.assert_allclose(y, x @ wt.T, rtol=1e-5, atol=2e-5 * np.sqrt(shape[-1]))


def test_rms_norm_matches_numpy(ops):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 200)).astype(np.float32), rng.random(200).astype(np.float32)
    ref = w * (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6))
    np.testing.assert_allclose(ops.ernie_rms_norm(_t(x), _t(w), 1e-6).numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_moe_experts_match_numpy(ops, tokens):
    """Weighted SwiGLU experts of each token's chosen ids; 40 tokens over 4 experts puts more than 8 rows
    on an expert (the MKL path); experts nobody chose are skipped."""
    rng = np.random.default_rng(tokens)
    h, inter, experts, k = 48, 24, 6, 2
    x = rng.standard_normal((tokens, h)).astype(np.float32)
    ids = np.stack([rng.choice(4, k, replace=False) for _ in range(tokens)]).astype(np.int64)
    weights = rng.random((tokens, k)).astype(np.float32)
    up_gate = (0.2 * rng.standard_normal((experts, 2 * inter, h))).astype(np.float32)
    down = (0.2 * rng.standard_normal((experts, h, inter))).astype(np.float32)
    ref = np.zeros((tokens, h), np.float32)
    for t in range(tokens):
        for j in range(k):
            e = ids[t, j]
            gate, up = np.split(up_gate[e] @ x[t], 2)
            ref[t] += weights[t, j] * (down[e] @ (gate / (1 + np.exp(-gate)) * up))
    out = moe_experts(ops, _t(x), _t(ids), _t(weights), _t(up_gate), _t(down)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_moe_experts_reject_bad_ids(ops):
    x, w = paddle.zeros([1, 8]), paddle.ones([1, 1])
    with pytest.raises(Exception, match="expert id out of range"):
        moe_experts(ops, x, paddle.to_tensor([[5]], dtype="int64"), w, paddle.zeros([2, 4, 8]), paddle.zeros([2, 8, 2]))


@pytest.mark.parametrize("start,tokens", [(0, 5), (6, 1), (4, 3)])
def test_attention_matches_numpy(ops, start, tokens):
    """Grouped-query attention over the first start + T cached columns of one layer, with a left-padded row
    (key mask) and the causal limit; columns past start + T are ignored."""
    rng = np.random.default_rng(start + tokens)
    b, nh, nkv, hd, cap, layers, layer = 2, 4, 2, 16, 12, 2, 1
    s = start + tokens
    q = rng.standard_normal((b, tokens, nh, hd)).astype(np.float32)
    kv = rng.standard_normal((layers, 2, b, nkv, cap, hd)).astype(np.float32)
    key_mask = np.ones((b, s), np.int64)
    key_mask[1, :2] = 0  # row 1 is left-padded by two tokens
    ref = np.zeros((b, tokens, nh, hd), np.float32)
    for bi in range(b):
        for h in range(nh):
            keys, vals = kv[layer, 0, bi, h // (nh // nkv), :s], kv[layer, 1, bi, h // (nh // nkv), :s]
            for t in range(tokens):
                visible = (np.arange(s) <= start + t) & (key_mask[bi] > 0)
                # a pad query that sees nothing averages all columns, as the traced program's finite NEG_INF
                scores = np.where(visible, keys @ q[bi, t, h] / np.sqrt(hd), np.finfo(np.float32).min)
                p = np.exp(scores - scores.max())
                ref[bi, t, h] = (p / p.sum()) @ vals
    out = ops.ernie_attention(_t(q), _t(kv), _t(key_mask), paddle.to_tensor([start], dtype="int64"), layer)
    np.testing.assert_allclose(out.numpy(), ref.reshape(b, tokens, nh * hd), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,swiglu", [(1, False), (3, True), (12, True)])
def test_linear_add_matches_numpy(ops, rows, swiglu):
    """residual + f(x) @ W^T with f SwiGLU of the [gate | up] halves or the identity; GEMV and MKL rows."""
    rng = np.random.default_rng(rows)
    k, n = 40, 24
    x = rng.standard_normal((1, rows, 2 * k if swiglu else k)).astype(np.float32)
    wt, res = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((1, rows, n)).astype(np.float32)
    act = x[..., :k] / (1 + np.exp(-x[..., :k])) * x[..., k:] if swiglu else x
    out = linear_add(ops, _t(x), _t(wt), _t(res), swiglu).numpy()
    np.testing.assert_allclose(out, res + act @ wt.T, rtol=1e-5, atol=1e-4)


def _bf16(rng, shape, scale=1.0):
    """(raw bf16 bits as uint16, their exact float32 values) of random weights."""
    bits = ((scale * rng.standard_normal(shape)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("rows,k,n", [(1, 100, 67), (3, 64, 96), (8, 72, 260), (33, 48, 30), (33, 2048, 200)])
def test_bf16_linear_matches_widened(ops, portable, rows, k, n):
    """bf16 weights: equal to numpy (and within fp32 rounding of the float32 operator) on the exactly widened
    weights; decode rows and 33 prefill rows (the register kernel over row blocks; MKL for float32); the
    portable backend gives identical bits."""
    rng = np.random.default_rng(rows * k)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    bits, w = _bf16(rng, (n, k))
    wt = paddle.to_tensor(bits)
    assert wt.dtype == paddle.bfloat16
    y = linear(ops, _t(x), wt).numpy()
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5,
                               atol=1e-5 * np.sqrt(k))
    ref32 = linear(ops, _t(x), _t(w)).numpy()
    if rows <= 8:  # the same kernel on both formats: the same bits
        np.testing.assert_array_equal(y, ref32)
    np.testing.assert_allclose(y, ref32, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    np.testing.assert_array_equal(portable(linear, ops, _t(x), wt), y)


@pytest.mark.parametrize("rows,swiglu", [(1, False), (3, True), (8, False), (33, True)])
def test_bf16_linear_add_matches_widened(ops, portable, rows, swiglu):
    rng = np.random.default_rng(rows)
    k, n = 40, 24
    x = rng.standard_normal((1, rows, 2 * k if swiglu else k)).astype(np.float32)
    bits, w = _bf16(rng, (n, k))
    res = rng.standard_normal((1, rows, n)).astype(np.float32)
    act = x[..., :k] / (1 + np.exp(-x[..., :k])) * x[..., k:] if swiglu else x
    out = linear_add(ops, _t(x), paddle.to_tensor(bits), _t(res), swiglu).numpy()
    np.testing.assert_allclose(out, res + act @ w.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out, linear_add(ops, _t(x), _t(w), _t(res), swiglu).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(portable(linear_add, ops, _t(x), paddle.to_tensor(bits), _t(res), swiglu), out)


@pytest.mark.parametrize("tokens", [1, 3, 8, 33])
def test_bf16_moe_experts_match_widened(ops, portable, tokens):
    """The experts operator over bf16 expert stacks equals numpy and the float32 operator on the widened
    stacks (33 tokens over 4 experts: more than 8 rows on an expert, the prefill path)."""
    rng = np.random.default_rng(tokens)
    h, inter, experts, k = 48, 24, 6, 2
    x = rng.standard_normal((tokens, h)).astype(np.float32)
    ids = np.stack([rng.choice(4, k, replace=False) for _ in range(tokens)]).astype(np.int64)
    weights = rng.random((tokens, k)).astype(np.float32)
    up_bits, up_gate = _bf16(rng, (experts, 2 * inter, h), 0.2)
    down_bits, down = _bf16(rng, (experts, h, inter), 0.2)
    ref = np.zeros((tokens, h), np.float64)
    for t in range(tokens):
        for j in range(k):
            gate, up = np.split(up_gate[ids[t, j]].astype(np.float64) @ x[t], 2)
            ref[t] += weights[t, j] * (down[ids[t, j]] @ (gate / (1 + np.exp(-gate)) * up))
    args = (_t(x), _t(ids), _t(weights), paddle.to_tensor(up_bits), paddle.to_tensor(down_bits))
    out = moe_experts(ops, *args).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, moe_experts(ops, *args[:3], _t(up_gate), _t(down)).numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(portable(moe_experts, ops, *args), out)


def test_portable_backend_matches_for_float32(ops, portable):
    rng = np.random.default_rng(5)
    x, wt = rng.standard_normal((3, 77)).astype(np.float32), rng.standard_normal((41, 77)).astype(np.float32)
    np.testing.assert_array_equal(portable(linear, ops, _t(x), _t(wt)), linear(ops, _t(x), _t(wt)).numpy())


def test_linear_rejects_other_weight_dtypes(ops):
    with pytest.raises(Exception, match=r"ernie_linear \(float32\) WT must be float32 \[4, 8\]; got int32"):
        linear(ops, paddle.zeros([1, 8]), paddle.zeros([4, 8], dtype="int32"))
