"""The compiled CPU operators of the predictor program (``predictor_ops.cc``) against numpy references."""

import numpy as np
import paddle
import pytest

from ernie_paddle.kernels import predictor_ops


@pytest.fixture(scope="module")
def ops():
    module = predictor_ops.get()
    if module is None:  # the predictor then exports Paddle's own operators (tests/test_predictor.py)
        pytest.skip(f"no compiled operators on this host: {predictor_ops.build_error()}")
    return module


def _t(a):
    return paddle.to_tensor(np.ascontiguousarray(a))


@pytest.mark.parametrize("shape,n", [((1, 1024), 6144), ((1, 37), 13), ((2, 100), 67), ((3, 64), 96),
                                     ((8, 72), 260), ((9, 64), 96), ((2, 5, 48), 30), ((1, 1, 3072), 1024)])
def test_linear_matches_numpy(ops, shape, n):
    """GEMV (up to 8 rows; odd K, N and row counts hit every tail) and the MKL path (more rows), any
    leading shape."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((n, shape[-1])).astype(np.float32)
    y = ops.ernie_linear(_t(x), _t(wt)).numpy()
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
    out = ops.ernie_moe_experts(_t(x), _t(ids), _t(weights), _t(up_gate), _t(down)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_moe_experts_reject_bad_ids(ops):
    x, w = paddle.zeros([1, 8]), paddle.ones([1, 1])
    with pytest.raises(Exception, match="expert id out of range"):
        ops.ernie_moe_experts(x, paddle.to_tensor([[5]], dtype="int64"), w, paddle.zeros([2, 4, 8]),
                              paddle.zeros([2, 8, 2]))


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
    out = ops.ernie_linear_add(_t(x), _t(wt), _t(res), swiglu).numpy()
    np.testing.assert_allclose(out, res + act @ wt.T, rtol=1e-5, atol=1e-4)
