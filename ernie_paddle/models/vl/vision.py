"""The VL vision tower (DFN-RoPE ViT): patch Linear, 2-D rotary, blocks with fused qkv, quick_gelu MLP.

Parameters are named like the checkpoint's ``vision_model.*`` keys; Linear weights are [in, out].
Attention runs separately over each frame's patches (no mask across images), in float32 softmax.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ernie_paddle.config.vl import VisionSpec


def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A Paddle ``nn.Linear`` (weight [in, out]) initialised to zeros: weights always come from a file."""
    zero = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
    return nn.Linear(in_features, out_features, weight_attr=zero,
                     bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False)


def patch_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """(h, w) patch coordinates [N, 2] in the processor's order: merge-block major, frames repeated."""
    out = []
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).tolist():
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hh, ww], axis=-1), (t, 1)))
    return np.concatenate(out, axis=0)


def rotary_2d(positions: np.ndarray, head_dim: int, theta: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    """cos/sin [N, 1, head_dim] (float32): the first half of each head rotates by height, then width.

    ``head_dim / 4`` frequencies per axis; angles laid out [h | w] and repeated for the rotate-half form.
    """
    spatial = head_dim // 2
    exponent = paddle.arange(0, spatial, 2, dtype="float32") / spatial
    inv_freq = 1.0 / paddle.pow(paddle.to_tensor(theta, dtype="float32"), exponent)
    pos = paddle.to_tensor(positions.astype(np.float32))
    freqs = pos.unsqueeze(-1) * inv_freq  # [N, 2, hd/4]
    angles = paddle.concat([freqs[:, 0], freqs[:, 1]], axis=-1)
    angles = paddle.concat([angles, angles], axis=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


def _rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


class VisionAttention(nn.Layer):
    """Fused ``qkv`` [d, 3d] (+bias) and ``proj``; non-causal attention within each frame."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = linear(dim, 3 * dim)
        self.proj = linear(dim, dim)

    def forward(self, x, cos, sin, seqlens: list[int]):
        n, dim = x.shape
        qkv = self.qkv(x).reshape([n, 3, self.heads, self.head_dim])
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        dtype = q.dtype
        q = (q.astype("float32") * cos + _rotate_half(q.astype("float32")) * sin).astype(dtype)
        k = (k.astype("float32") * cos + _rotate_half(k.astype("float32")) * sin).astype(dtype)
        outs, start = [], 0
        for length in seqlens:
            qs, ks, vs = (a[start:start + length].transpose([1, 0, 2]) for a in (q, k, v))
            scores = paddle.matmul(qs, ks, transpose_y=True) * (self.head_dim ** -0.5)
            probs = F.softmax(scores.astype("float32"), axis=-1).astype(dtype)
            outs.append(paddle.matmul(probs, vs).transpose([1, 0, 2]))
            start += length
        return self.proj(paddle.concat(outs, axis=0).reshape([n, dim]))


class VisionMLP(nn.Layer):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        if act != "quick_gelu":
            raise ValueError(f"vision hidden_act {act!r} is not supported (quick_gelu)")
        self.fc1 = linear(dim, hidden)
        self.fc2 = linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * F.sigmoid(1.702 * h))


class VisionBlock(nn.Layer):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.hidden, epsilon=spec.eps)
        self.norm2 = nn.LayerNorm(spec.hidden, epsilon=spec.eps)
        self.attn = VisionAttention(spec.hidden, spec.heads)
        self.mlp = VisionMLP(spec.hidden, spec.intermediate, spec.act)

    def forward(self, x, cos, sin, seqlens):
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Layer):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.proj = linear(spec.patch_dim, spec.hidden, bias=False)

    def forward(self, x):
        return self.proj(x.astype(self.proj.weight.dtype))


class VisionTransformer(nn.Layer):
    """Flattened patches [N, C*p*p] + ``grid_thw`` [n, 3] -> patch features [N, d] (final LayerNorm)."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec)
        self.blocks = nn.LayerList([VisionBlock(spec) for _ in range(spec.depth)])
        self.ln = nn.LayerNorm(spec.hidden, epsilon=spec.eps)

    def forward(self, pixel_values: paddle.Tensor, grid_thw: np.ndarray) -> paddle.Tensor:
        grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
        cos, sin = rotary_2d(patch_positions(grid, self.spec.spatial_merge), self.spec.hidden // self.spec.heads,
                             self.spec.rope_theta)
        seqlens = [int(h * w) for t, h, w in grid.tolist() for _ in range(t)]
        x = self.patch_embed(pixel_values)
        for block in self.blocks:
            x = block(x, cos, sin, seqlens)
        return self.ln(x)
