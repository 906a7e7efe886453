"""The compiled linear operators over every stored weight format (``weight_formats.h``) against the numpy
reference dequantizers of ``ernie_paddle.quant``: decode and prefill rows, the residual-add and experts
operators, the portable backend, and malformed inputs."""

import contextlib
import ctypes
from pathlib import Path

import numpy as np
import paddle
import pytest

from ernie_paddle.kernels import predictor_ops
from ernie_paddle.quant import tensors as qt

CODE = predictor_ops.FORMAT_CODES
FORMATS = tuple(CODE)



def _t(a):
    return paddle.to_tensor(np.ascontiguousarray(a))


def _dummy():
    return paddle.zeros([1], dtype="float32")


def kernel_form(fmt: str, w_in_out: np.ndarray):
    """(the kernel-form arrays [WT, S0, S1, S2, S3] of W [K, N] quantized as ``fmt``, the float32 W [K, N]
    the reference dequantizer gives)."""
    k, n = w_in_out.shape
    if fmt == "float32":
        return [w_in_out.T], w_in_out
    if fmt == "bfloat16":
        bits = (w_in_out.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return [bits.T], (bits.astype(np.uint32) << 16).view(np.float32)
    stored = qt.quantize_weight(fmt, w_in_out, layout="plain")
    c = qt.compact(fmt, stored, k, n, layout="plain")
    ref = qt.dequantize_weight(fmt, stored, k, n, layout="plain")
    if fmt == "wint2":
        arrays = [c["quant_weight"].T, c["weight_scale"].T, c["super_scales"], c["code_scale"], c["code_zp"]]
    else:
        arrays = [c["quant_weight"].T, c["weight_scale"].T if fmt == "fp8" else c["weight_scale"]]
    return arrays, ref


def as_inputs(arrays):
    """The operator's WT, S0..S3 tensors (unused scales: a dummy float32 [1])."""
    ts = [paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays]
    return ts + [_dummy() for _ in range(5 - len(ts))]


def _weights(fmt, k, n, seed):
    rng = np.random.default_rng(seed)
    return kernel_form(fmt, rng.standard_normal((k, n)).astype(np.float32))


def _close(y, ref, k):
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6 * np.sqrt(k) * np.abs(ref).max())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [320, 200])
def test_linear_matches_dequantized(ops, portable, fmt, k):
    """y = x @ dequantize(W) for decode rows (1, 3, 8) and prefill rows (9, 70), an odd N over two fp8 block
    rows, K with a partial fp8 block (320) and a row tail (200); the portable backend gives the same bits."""
    if fmt == "wint2" and k % 64:
        k = 192  # WINT2 needs whole 64-groups (an odd number of them here)
    n = 131
    arrays, w = _weights(fmt, k, n, seed=k + CODE[fmt])
    inputs = as_inputs(arrays)
    rng = np.random.default_rng(7)
    for rows in (1, 3, 8, 9, 70):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        y = ops.ernie_linear(_t(x), *inputs, CODE[fmt], False).numpy()
        assert y.shape == (rows, n)
        _close(y, x.astype(np.float64) @ w.astype(np.float64), k)
        if fmt != "float32" or rows <= 8:  # float32 prefill is MKL's
            np.testing.assert_array_equal(portable(ops.ernie_linear, _t(x), *inputs, CODE[fmt], False), y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_rows_do_not_depend_on_their_batch(ops, fmt):
    """Up to 3 token rows share each weight row's decode (dot_rows) with each row's own arithmetic: a row
    gives the same bits alone, in 2 rows and in 3 (K with a row tail; an odd N)."""
    k = 192 if fmt == "wint2" else 200
    arrays, _ = _weights(fmt, k, 37, seed=11)
    inputs = as_inputs(arrays)
    x = np.random.default_rng(11).standard_normal((3, k)).astype(np.float32)
    ys = [ops.ernie_linear(_t(x[:m]), *inputs, CODE[fmt], False).numpy() for m in (1, 2, 3)]
    np.testing.assert_array_equal(ys[1][0], ys[0][0])
    np.testing.assert_array_equal(ys[2][:2], ys[1])


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "float32"])  # float32 prefill is MKL's
def test_prefill_rows_do_not_depend_on_their_batch(ops, fmt):
    """Prefill (more than 8 rows: the packed-panel GEMM, and in the int8 mode the 4 x 4 integer tiles) gives
    each row the same bits whichever rows come with it: rows 1 .. 13 alone equal the same rows inside 20, in
    both activation modes (N = 37: two full panels and a remainder; K with a row tail)."""
    k = 192 if fmt == "wint2" else 200
    arrays, _ = _weights(fmt, k, 37, seed=12)
    inputs = as_inputs(arrays)
    x = np.random.default_rng(12).standard_normal((20, k)).astype(np.float32)
    for int8_act in (False, True) if fmt in ("wint8", "wint4") else (False,):
        full = ops.ernie_linear(_t(x), *inputs, CODE[fmt], int8_act).numpy()
        part = ops.ernie_linear(_t(x[1:14]), *inputs, CODE[fmt], int8_act).numpy()
        np.testing.assert_array_equal(part, full[1:14])


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_keeps_leading_axes(ops, fmt):
    arrays, w = _weights(fmt, 128, 40, seed=3)
    x = np.random.default_rng(3).standard_normal((2, 3, 128)).astype(np.float32)
    y = ops.ernie_linear(_t(x), *as_inputs(arrays), CODE[fmt], False).numpy()
    assert y.shape == (2, 3, 40)
    _close(y, x @ w, 128)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows,swiglu", [(1, True), (3, False), (9, True)])
def test_linear_add_matches_dequantized(ops, portable, fmt, rows, swiglu):
    k, n = 128, 67
    arrays, w = _weights(fmt, k, n, seed=rows)
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((1, rows, 2 * k if swiglu else k)).astype(np.float32)
    res = rng.standard_normal((1, rows, n)).astype(np.float32)
    act = x[..., :k] / (1 + np.exp(-x[..., :k])) * x[..., k:] if swiglu else x
    args = (_t(x), *as_inputs(arrays), _t(res), CODE[fmt], False, swiglu)
    out = ops.ernie_linear_add(*args).numpy()
    np.testing.assert_allclose(out, res + act @ w, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(portable(ops.ernie_linear_add, *args), out)


def _expert_stacks(fmt, experts, h, inter, rng):
    """Kernel-form stacks [E, ...] of up_gate (W [H, 2I]) and down (W [I, H]) and their float32 references."""
    ug, dn, ug_ref, dn_ref = [], [], [], []
    for _ in range(experts):
        a, wa = kernel_form(fmt, (0.2 * rng.standard_normal((h, 2 * inter))).astype(np.float32))
        b, wb = kernel_form(fmt, (0.2 * rng.standard_normal((inter, h))).astype(np.float32))
        ug.append(a), dn.append(b), ug_ref.append(wa), dn_ref.append(wb)
    stack = [np.stack(parts) for parts in zip(*ug)], [np.stack(parts) for parts in zip(*dn)]
    return stack, np.stack(ug_ref), np.stack(dn_ref)


@pytest.mark.parametrize("fmt", FORMATS)
def test_moe_experts_match_dequantized(ops, portable, fmt):
    """Weighted SwiGLU experts per token over stacked stored experts (per-expert scales); 1 and 3 tokens
    (decode) and 40 tokens over 4 of 6 experts (more than 8 rows on an expert: the prefill path)."""
    rng = np.random.default_rng(CODE[fmt])
    h, inter, experts, top = 128, 64, 6, 2
    (ug, dn), ug_ref, dn_ref = _expert_stacks(fmt, experts, h, inter, rng)
    for tokens in (1, 3, 40):
        x = rng.standard_normal((tokens, h)).astype(np.float32)
        ids = np.stack([rng.choice(4, top, replace=False) for _ in range(tokens)]).astype(np.int64)
        weights = rng.random((tokens, top)).astype(np.float32)
        ref = _moe_reference(x, ids, weights, ug_ref, dn_ref)
        args = (_t(x), _t(ids), _t(weights), *as_inputs(ug), *as_inputs(dn), CODE[fmt], False)
        out = ops.ernie_moe_experts(*args).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(portable(ops.ernie_moe_experts, *args), out)


@contextlib.contextmanager
def omp_threads(n: int):
    """The compiled operators run with n OpenMP threads inside the block (restored after it)."""
    iomp = Path(paddle.__file__).parent / "libs" / "libiomp5.so"
    before = ctypes.CDLL(str(iomp)).omp_get_max_threads() if iomp.is_file() else 1
    paddle.base.core.set_num_threads(n)
    try:
        yield
    finally:
        paddle.base.core.set_num_threads(before)


def _moe_reference(x, ids, weights, ug_ref, dn_ref):
    ref = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            gate, up = np.split(x[t].astype(np.float64) @ ug_ref[ids[t, j]], 2)
            ref[t] += weights[t, j] * ((gate / (1 + np.exp(-gate)) * up) @ dn_ref[ids[t, j]])
    return ref


@pytest.mark.parametrize("fmt", FORMATS)
def test_moe_experts_in_passes_on_any_thread_count(ops, portable, fmt):
    """150 tokens x 4 choices (600 routed rows: more than one pass of 512) over 10 of 12 experts, four
    popular (tens of rows each; float32: Paddle's matmul) and six rare (a few rows: the streamed items):
    within 1e-5 of the dequantized reference, and the same bits with 1, 2 and 3 threads (the work items
    split differently; float32's matmul excepted) and on the portable backend; wint8/wint4 also in the
    int8 mode."""
    rng = np.random.default_rng(40 + CODE[fmt])
    h, inter, experts, top, tokens = 128, 64, 12, 4, 150
    (ug, dn), ug_ref, dn_ref = _expert_stacks(fmt, experts, h, inter, rng)
    ids = np.stack([rng.permutation(4) for _ in range(tokens)]).astype(np.int64)
    ids[rng.choice(tokens, 12, replace=False), rng.integers(0, top, 12)] = 4 + np.arange(12) % 6
    rows = np.bincount(ids.ravel(), minlength=experts)
    assert rows[:4].min() > 8 and 0 < rows[4:10].max() <= 8 and rows[10:].sum() == 0
    x = rng.standard_normal((tokens, h)).astype(np.float32)
    weights = rng.random((tokens, top)).astype(np.float32)
    ref = _moe_reference(x, ids, weights, ug_ref, dn_ref)
    for int8_act in (False, True) if fmt in ("wint8", "wint4") else (False,):
        args = (_t(x), _t(ids), _t(weights), *as_inputs(ug), *as_inputs(dn), CODE[fmt], int8_act)
        with omp_threads(1):
            out = ops.ernie_moe_experts(*args).numpy()
            np.testing.assert_array_equal(portable(ops.ernie_moe_experts, *args), out)
        if not int8_act:
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        for n in (2, 3):
            with omp_threads(n):
                again = ops.ernie_moe_experts(*args).numpy()
            if fmt == "float32":  # MKL's matmul (the popular experts) splits its sums by thread count
                np.testing.assert_allclose(again, out, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_moe_token_output_does_not_depend_on_its_batch(ops, fmt):
    """8 tokens, at most 3 on an expert: each token's output has the same bits as the token alone (each
    expert's rows computed independently, its sum in expert order)."""
    rng = np.random.default_rng(60 + CODE[fmt])
    (ug, dn), _, _ = _expert_stacks(fmt, 16, 128, 64, rng)
    ids = np.stack([rng.permutation(16)[:2] for _ in range(8)]).astype(np.int64)
    while np.bincount(ids.ravel()).max() > 3:
        ids = np.stack([rng.permutation(16)[:2] for _ in range(8)]).astype(np.int64)
    x = rng.standard_normal((8, 128)).astype(np.float32)
    weights = rng.random((8, 2)).astype(np.float32)
    stacks = (*as_inputs(ug), *as_inputs(dn), CODE[fmt], False)
    batch = ops.ernie_moe_experts(_t(x), _t(ids), _t(weights), *stacks).numpy()
    for t in range(8):
        alone = ops.ernie_moe_experts(_t(x[t:t + 1]), _t(ids[t:t + 1]), _t(weights[t:t + 1]), *stacks).numpy()
        np.testing.assert_array_equal(batch[t:t + 1], alone)


def _linear(ops, fmt, arrays, k=128, rows=1):
    return ops.ernie_linear(paddle.zeros([rows, k]), *as_inputs(arrays), CODE[fmt], False)


@pytest.mark.parametrize("fmt,edit,message", [
    ("wint8", lambda a: [a[0], a[1][:-1]], r"S0 \(per-row scale\) must be float32 \[40\]; got float32 \[39\]"),
    ("wint4", lambda a: [a[0][:, :-1], a[1]], r"WT must be uint8 or int8 \[40, 64\]; got int8 \[40, 63\]"),
    ("wint4", lambda a: [np.ascontiguousarray(a[0]).view(np.uint16), a[1]], r"WT must be uint8 or int8"),
    ("fp8", lambda a: [a[0], a[1][:, :0]], r"S0 \(block scales\) must be float32 \[1, 1\]"),
    ("wint2", lambda a: [a[0], a[1], a[2][:-1], a[3], a[4]], r"S1 \(super scales\) must be float32 \[40\]"),
    ("wint2", lambda a: [a[0], a[1].astype(np.float32), *a[2:]], r"S0 \(local scales\) must be uint8 or int8"),
    ("wint8", lambda a: [a[0].astype(np.float32), a[1]], r"ernie_linear \(wint8\) WT must be int8"),
    ("bfloat16", lambda a: [np.ascontiguousarray(a[0]).view(np.int16)], r"WT must be bfloat16 or uint16"),
])
def test_malformed_weights_fail_clearly(ops, fmt, edit, message):
    """A truncated WT, a wrong scale shape or dtype, or a format/dtype mismatch names the input and what
    was expected."""
    arrays, _ = _weights(fmt, 128, 40, seed=1)
    with pytest.raises(Exception, match=message):
        _linear(ops, fmt, edit(arrays))


def test_format_code_and_k_are_checked(ops):
    arrays, _ = _weights("wint2", 128, 40, seed=1)
    with pytest.raises(Exception, match="unknown weight format code 9"):
        ops.ernie_linear(paddle.zeros([1, 128]), *as_inputs(arrays), 9, False)
    with pytest.raises(Exception, match="K = 96 must be a multiple of 64"):
        ops.ernie_linear(paddle.zeros([1, 96]), *as_inputs(arrays), CODE["wint2"], False)
    with pytest.raises(Exception, match=r"WT must be uint8 or int8 \[40, 48\]; got uint8 \[40, 32\]"):  # X says K = 192
        _linear(ops, "wint2", arrays, k=128 + 64)


def test_moe_experts_check_each_stack(ops):
    rng = np.random.default_rng(0)
    (ug, dn), _, _ = _expert_stacks("wint8", 3, 64, 32, rng)
    x, ids, w = paddle.zeros([2, 64]), paddle.to_tensor([[0], [2]], dtype="int64"), paddle.ones([2, 1])
    bad = [dn[0], dn[1][:2]]  # scales of two experts for three
    with pytest.raises(Exception, match=r"D \(wint8\) S0 \(per-row scale\) must be float32 \[3, 64\]"):
        ops.ernie_moe_experts(x, ids, w, *as_inputs(ug), *as_inputs(bad), CODE["wint8"], False)
    with pytest.raises(Exception, match="expert id out of range"):
        ops.ernie_moe_experts(x, paddle.to_tensor([[0], [3]], dtype="int64"), w, *as_inputs(ug), *as_inputs(dn),
                              CODE["wint8"], False)


def quantize_activations(x):
    """numpy model of the int8 activation mode: per row and block of 32 values scale = absmax / 127 and
    q = round-half-even(x * (1 / scale)), float32 math; returns (q as float64 [rows, k], scales [rows, blocks])."""
    blocks = -(-x.shape[1] // 32)
    q, scales = np.zeros(x.shape), np.zeros((x.shape[0], blocks), np.float32)
    for b in range(blocks):
        part = x[:, 32 * b: 32 * b + 32]
        d = np.abs(part).max(axis=1) / np.float32(127)
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
        q[:, 32 * b: 32 * b + 32] = np.clip(np.rint(part * inv[:, None]), -127, 127)
        scales[:, b] = d
    return q, scales


def _blockwise(scales, values):
    """sum_b scales[:, b] * values_b, values_b the [rows, n] terms of the 32-row blocks of a [k, ...] product."""
    return sum(scales[:, b: b + 1].astype(np.float64) * v for b, v in enumerate(values))


@pytest.mark.parametrize("fmt", ["wint8", "wint4"])
@pytest.mark.parametrize("k", [320, 200])
def test_int8_activations_within_bound(ops, portable, fmt, k):
    """int8_act: equal (up to float32 summation) to the model of per-32 int8 activations times the exact
    integer dots, within the documented bound |y - x W| <= sum_b 0.5 xs_b sum_{k in b} |W[k, n]| of the exact
    result, not equal to the float32 mode, decode and prefill rows alike; portable gives the same bits."""
    n = 131
    arrays, w = _weights(fmt, k, n, seed=k)
    inputs = as_inputs(arrays)
    w64 = w.astype(np.float64)
    rng = np.random.default_rng(k)
    for rows in (1, 3, 9, 70):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        y = ops.ernie_linear(_t(x), *inputs, CODE[fmt], True).numpy()
        q, xs = quantize_activations(x)
        blocks = range(0, k, 32)
        _close(y, _blockwise(xs, [q[:, b: b + 32] @ w64[b: b + 32] for b in blocks]), k)
        bound = 0.5 * _blockwise(xs, [np.abs(w64[b: b + 32]).sum(0)[None, :] for b in blocks])
        exact = x.astype(np.float64) @ w64
        assert (np.abs(y - exact) <= bound * (1 + 1e-4) + 1e-5 * np.abs(exact).max()).all()
        assert np.abs(y - exact).max() > 0.1 * bound.max()  # the int8 mode, not the float32 one
        np.testing.assert_array_equal(portable(ops.ernie_linear, _t(x), *inputs, CODE[fmt], True), y)


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "fp8", "wint2"])
def test_int8_act_is_ignored_by_other_formats(ops, fmt):
    arrays, _ = _weights(fmt, 128, 40, seed=2)
    x = _t(np.random.default_rng(2).standard_normal((3, 128)).astype(np.float32))
    np.testing.assert_array_equal(ops.ernie_linear(x, *as_inputs(arrays), CODE[fmt], True).numpy(),
                                  ops.ernie_linear(x, *as_inputs(arrays), CODE[fmt], False).numpy())


@pytest.mark.parametrize("fmt", ["wint8", "wint4"])
def test_int8_activations_in_linear_add_and_experts(ops, portable, fmt):
    """The residual-add operator (after SwiGLU) and the experts operator run the same int8 mode: the model of
    the mode for linear_add; experts near the float32 mode (1 and 40 tokens); portable gives the same bits."""
    rng = np.random.default_rng(5)
    k, n = 128, 67
    arrays, w = _weights(fmt, k, n, seed=5)
    x = rng.standard_normal((1, 3, 2 * k)).astype(np.float32)
    res = rng.standard_normal((1, 3, n)).astype(np.float32)
    act = (x[..., :k] / (1 + np.exp(-x[..., :k])) * x[..., k:])[0]
    args = (_t(x), *as_inputs(arrays), _t(res), CODE[fmt], True, True)
    out = ops.ernie_linear_add(*args).numpy()
    q, xs = quantize_activations(act.astype(np.float32))
    model = _blockwise(xs, [q[:, b: b + 32] @ w[b: b + 32].astype(np.float64) for b in range(0, k, 32)])
    np.testing.assert_allclose(out[0], res[0] + model, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(portable(ops.ernie_linear_add, *args), out)
    (ug, dn), _, _ = _expert_stacks(fmt, 6, 128, 64, rng)
    for tokens in (1, 40):
        x = rng.standard_normal((tokens, 128)).astype(np.float32)
        ids = np.stack([rng.choice(4, 2, replace=False) for _ in range(tokens)]).astype(np.int64)
        weights = rng.random((tokens, 2)).astype(np.float32)
        base = (_t(x), _t(ids), _t(weights), *as_inputs(ug), *as_inputs(dn), CODE[fmt])
        out = ops.ernie_moe_experts(*base, True).numpy()
        ref = ops.ernie_moe_experts(*base, False).numpy()
        assert not np.array_equal(out, ref)
        np.testing.assert_allclose(out, ref, rtol=0, atol=0.05 * np.abs(ref).max())
        np.testing.assert_array_equal(portable(ops.ernie_moe_experts, *base, True), out)
