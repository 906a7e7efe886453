"""The op set the model's blocks compute with, and the switch that swaps it for tracing.

The decoder blocks (``Attention``, ``MLP``, ``SparseMoE``, ``DecoderLayer``) are written once, as calls on
the active op set: ``linear``, ``linear_add`` (residual + f(x) @ W), ``norm``, ``rope_kv`` (rotary embedding
and the key/value store), ``attention`` and ``routed_experts`` (an MoE layer's router and routed experts).
``EagerOps`` (the default) is dygraph: each ``Linear`` and ``RMSNorm`` runs its own forward, keys/values go
to a ``LayerCache``. The exported predictor program (``ernie_paddle.runtime.predictor.program``) traces the
same blocks under ``using(...)`` with op sets of Paddle's own operators or of the compiled CPU operators,
over a KV buffer written in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import paddle
import paddle.nn.functional as F

from ernie_paddle.models.kv_cache import LayerCache
from ernie_paddle.models.layers import apply_rope, causal_mask


class EagerOps:
    """Dygraph: the layers' own forwards, a growable ``LayerCache`` (or none), the shared MoE dispatch."""

    name = "eager"

    def linear(self, x, layer):
        return layer(x)

    def linear_add(self, x, layer, residual=None, swiglu=False):
        """residual + f(x) @ W, f SwiGLU of x's [gate | up] halves or the identity (no residual: f(x) @ W)."""
        if swiglu:
            half = x.shape[-1] // 2
            x = F.silu(x[..., :half]) * x[..., half:]
        y = layer(x)
        return y if residual is None else residual + y

    def norm(self, layer, x):
        return layer(x)

    def rope_kv(self, attn, qkv, cos, sin, cache: LayerCache | None):
        """(q [B, T, nh, hd] with rotary embedding, (keys, values) [B, nkv, S, hd] including the cache's)."""
        b, t, _ = qkv.shape
        hd, nkv, qs, kvs = attn.head_dim, attn.num_kv_heads, attn.q_size, attn.kv_size
        q = qkv[..., :qs].reshape([b, t, attn.num_heads, hd])
        k = qkv[..., qs: qs + kvs].reshape([b, t, nkv, hd])
        v = qkv[..., qs + kvs:].reshape([b, t, nkv, hd])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])  # [B, nkv, T, hd]
        return q, (cache.update(k, v) if cache is not None else (k, v))

    def attention(self, attn, q, kv, mask):
        """[B, T, nh * hd] for q [B, T, nh, hd]; mask additive [B, 1, T, S] or None (plain causal)."""
        k, v = kv
        b, t = q.shape[0], q.shape[1]
        hd, nkv = attn.head_dim, attn.num_kv_heads
        groups, s = attn.num_heads // nkv, k.shape[2]
        # Query heads j*g .. j*g+g-1 share kv head j: group them so K/V are never repeated.
        q = q.transpose([0, 2, 1, 3]).reshape([b, nkv, groups * t, hd])
        scores = paddle.matmul(q, k, transpose_y=True).astype("float32") * (1.0 / math.sqrt(hd))
        scores = scores.reshape([b, nkv, groups, t, s])
        if mask is not None:
            scores = scores + mask.unsqueeze(1)
        elif t > 1:
            scores = scores + causal_mask(t, s).reshape([1, 1, 1, t, s])
        probs = F.softmax(scores, axis=-1).astype(v.dtype).reshape([b, nkv, groups * t, s])
        out = paddle.matmul(probs, v).reshape([b, attn.num_heads, t, hd])
        return out.transpose([0, 2, 1, 3]).reshape([b, t, attn.q_size])

    def routed_experts(self, moe, x):
        """The routed experts' weighted sum for x [..., H] (``moe.routing`` and ``moe.routed`` over its rows)."""
        shape = x.shape
        flat = x.reshape([-1, shape[-1]])
        ids, weights = moe.routing(flat)
        return moe.routed(flat, ids, weights.astype(flat.dtype)).reshape(shape)


EAGER = EagerOps()
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("ernie_paddle_ops", default=None)


def active_ops():
    """The op set the blocks use now (``EAGER`` unless inside ``using``)."""
    ops = _ACTIVE.get()
    return EAGER if ops is None else ops


@contextlib.contextmanager
def using(ops):
    """Run the blocks with ``ops`` (the predictor traces its program inside this)."""
    token = _ACTIVE.set(ops)
    try:
        yield ops
    finally:
        _ACTIVE.reset(token)
