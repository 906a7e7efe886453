"""The ernie_moe operator (router + routed experts in one): its routing equals ``models.moe.route`` (the same
ids, ties included, weights within 1e-6) and its output equals ``ernie_moe_experts`` over those ids."""

import numpy as np
import paddle
import pytest

from ernie_paddle.models.moe import route

INTER = 3  # the experts' width: the routing tests need experts, not wide ones



def _t(a, dtype="float32"):
    return paddle.to_tensor(np.ascontiguousarray(a), dtype=dtype)


def _stacks(rng, h, e):
    """Float32 expert stacks up_gate [E, 2I, H] and down [E, H, I] (the operators' transposed form)."""
    return (_t(rng.standard_normal((e, 2 * INTER, h)) * 0.1), _t(rng.standard_normal((e, h, INTER)) * 0.1))


def _scales():
    return [paddle.zeros([1], dtype="float32") for _ in range(4)]


def fused(ops, x, gate, bias, k, act, stacks, norm_min=1e-12):
    """(out, ids, weights) of ernie_moe; ``bias`` None: a dummy and use_bias off."""
    up_gate, down = stacks
    b = paddle.zeros([1], dtype="float32") if bias is None else bias
    return ops.ernie_moe(x, gate, b, up_gate, *_scales(), down, *_scales(), k, norm_min, act, bias is not None, 0,
                         False)


def assert_routes_like_paddle(ops, x, gate, bias, k, act, stacks):
    """ids identical to ``route`` and weights within 1e-6; returns route's ids [N, k]."""
    _, ids, weights = fused(ops, x, gate, bias, k, act, stacks)
    flat = x.reshape([-1, x.shape[-1]])
    ref_ids, ref_w = route(flat, gate, bias, k, 1e-12, act)
    assert ids.shape == [*x.shape[:-1], k] and ids.dtype == paddle.int64
    np.testing.assert_array_equal(ids.numpy().reshape(-1, k), ref_ids.numpy())
    np.testing.assert_allclose(weights.numpy().reshape(-1, k), ref_w.numpy(), rtol=0, atol=1e-6)
    return ref_ids.numpy()


# (leading dims, H, E, k, act, bias): decode rows in one or several gate chunks, with and without a parallel
# region; prefill rows (more than 16: rows split among threads); k * 64 < E (Paddle's partial-sort path)
CASES = [((1,), 64, 8, 2, "softmax", True), ((3, 5), 200, 16, 4, "sigmoid", True),
         ((2, 1), 2560, 64, 8, "sigmoid", False), ((2, 20), 1024, 64, 6, "softmax", True),
         ((7,), 96, 130, 2, "softmax", True), ((1, 33), 130, 8, 8, "sigmoid", True)]


@pytest.mark.parametrize("lead,h,e,k,act,use_bias", CASES)
def test_routing_matches_route(ops, lead, h, e, k, act, use_bias):
    rng = np.random.default_rng(h * e + k)
    x = _t(rng.standard_normal((*lead, h)))
    gate = _t(rng.standard_normal((h, e)) * 0.05)
    bias = _t(rng.standard_normal((1, e)) * 0.05) if use_bias else None
    ids = assert_routes_like_paddle(ops, x, gate, bias, k, act, _stacks(rng, h, e))
    assert len(np.unique(ids)) > 1


@pytest.mark.parametrize("e,k", [(8, 2), (64, 6), (200, 3)])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_ties_pick_paddles_ids(ops, e, k, act):
    """Exact ties (one-hot tokens over an integer gate, repeated biases, an all-zero token): the ids of
    Paddle's topk, which are not the lower ids first (router_kernels.h)."""
    rng = np.random.default_rng(e + k)
    h = 16
    x = np.eye(h, dtype="float32")[rng.integers(0, h, 12)]
    x[0] = 0.0  # every expert's score equal
    gate = rng.integers(0, 3, (h, e)).astype("float32")
    bias = rng.choice([0.0, 0.25], (1, e)).astype("float32")
    logits = paddle.matmul(_t(x), _t(gate))  # exact: small integers
    probs = (paddle.nn.functional.softmax(logits, axis=-1) if act == "softmax" else
             paddle.nn.functional.sigmoid(logits)).numpy()
    stacks = _stacks(rng, h, e)
    for b in (None, bias):
        ids = assert_routes_like_paddle(ops, _t(x), _t(gate), None if b is None else _t(b), k, act, stacks)
        scores = probs if b is None else probs + b
        ranked = np.sort(scores, axis=-1)
        assert (ranked[:, -k] == ranked[:, -k - 1]).sum() >= 2  # the k-th choice was a tie in several tokens
        lower_first = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
        assert (ids != lower_first).any()  # Paddle's choice among equals is not the lower ids first


def test_rows_route_alike_in_every_split(ops):
    """The same token gives the same logits, ids and weights bit for bit whether it comes in a prefill of 40 rows
    (threads split the rows) or in decode batches of 8 or 1 (threads split the gate's chunks)."""
    rng = np.random.default_rng(4)
    h, e, k = 1024, 64, 6
    x = rng.standard_normal((40, h)).astype("float32")
    gate, bias = _t(rng.standard_normal((h, e)) * 0.05), _t(rng.standard_normal((1, e)) * 0.05)
    stacks = _stacks(rng, h, e)
    _, ids, weights = fused(ops, _t(x), gate, bias, k, "softmax", stacks)
    for rows in (8, 1):
        parts = [fused(ops, _t(x[i:i + rows]), gate, bias, k, "softmax", stacks) for i in range(0, 40, rows)]
        np.testing.assert_array_equal(np.concatenate([p[1].numpy() for p in parts]), ids.numpy())
        np.testing.assert_array_equal(np.concatenate([p[2].numpy() for p in parts]), weights.numpy())


def test_output_is_the_experts_of_its_routing(ops):
    """out [B, T, H] equals ernie_moe_experts over the operator's own ids and weights."""
    rng = np.random.default_rng(5)
    h, e, k = 48, 8, 2
    x = _t(rng.standard_normal((2, 3, h)))
    gate, bias = _t(rng.standard_normal((h, e))), _t(rng.standard_normal((1, e)) * 0.1)
    stacks = _stacks(rng, h, e)
    out, ids, weights = fused(ops, x, gate, bias, k, "softmax", stacks)
    ref = ops.ernie_moe_experts(x.reshape([-1, h]), ids.reshape([-1, k]), weights.reshape([-1, k]), stacks[0],
                                *_scales(), stacks[1], *_scales(), 0, False)
    assert out.shape == x.shape and np.abs(out.numpy()).max() > 0
    np.testing.assert_array_equal(out.numpy().reshape(-1, h), ref.numpy())


def test_norm_min_bounds_the_divisor(ops):
    """weights = probs / max(sum, norm_min): a norm_min above every sum divides by norm_min."""
    rng = np.random.default_rng(6)
    h, e = 32, 8
    x, gate = _t(rng.standard_normal((4, h))), _t(rng.standard_normal((h, e)))
    _, ids, weights = fused(ops, x, gate, None, 2, "softmax", _stacks(rng, h, e), norm_min=2.0)
    probs = paddle.nn.functional.softmax(paddle.matmul(x, gate), axis=-1).numpy()
    np.testing.assert_allclose(weights.numpy(), np.take_along_axis(probs, ids.numpy(), axis=-1) / 2.0, atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(k=9), "k must be 1 .. 8"),
    (dict(act="relu"), "act must be softmax or sigmoid"),
    (dict(gate=(16, 8)), "Gate must be float32 [32, E]"),
    (dict(gate=(32, 6)), "UG must stack the gate's 6 experts"),
    (dict(bias=(1, 5)), "Bias must be float32 with 8 values"),
])
def test_bad_inputs_fail_clearly(ops, change, message):
    rng = np.random.default_rng(7)
    h, e = 32, 8
    args = dict(k=2, act="softmax", gate=(h, e), bias=(1, e))
    args.update(change)
    x = _t(rng.standard_normal((2, h)))
    gate, bias = _t(rng.standard_normal(args["gate"])), _t(rng.standard_normal(args["bias"]))
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("(", r"\(")):
        fused(ops, x, gate, bias, args["k"], args["act"], _stacks(rng, h, e))
