"""The VL resampler: 2x2 spatial merge, temporal merge of frame pairs, MLP to the text hidden size, RMSNorm.

``spatial_linear`` / ``temporal_linear`` are Sequentials (Linear, GELU, Linear, LayerNorm) so their
parameters are named ``.0``, ``.2`` and ``.3`` like the checkpoint keys.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from ernie_paddle.config.vl import VisionSpec
from ernie_paddle.models.layers import RMSNorm
from ernie_paddle.models.vl.vision import linear


def _projector(in_dim: int, out_dim: int, eps: float) -> nn.Sequential:
    return nn.Sequential(linear(in_dim, out_dim), nn.GELU(), linear(out_dim, out_dim),
                         nn.LayerNorm(out_dim, epsilon=eps))


def temporal_pairs(grid_thw: np.ndarray, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the (even, odd) frame of each output token; an image (t == 1) pairs with itself."""
    first, second, offset = [], [], 0
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).tolist():
        per_frame = h * w // merge ** 2
        odd_start = 1 if t > 1 else 0
        for even, odd in zip(range(0, t, 2), range(odd_start, t, 2)):
            first.append(offset + even * per_frame + np.arange(per_frame))
            second.append(offset + odd * per_frame + np.arange(per_frame))
        offset += t * per_frame
    return np.concatenate(first), np.concatenate(second)


class Resampler(nn.Layer):
    """Patch features [N, d] -> one text-sized embedding per merged token [M, H]."""

    def __init__(self, spec: VisionSpec, text_hidden: int, text_eps: float):
        super().__init__()
        self.spec = spec
        sd = spec.spatial_dim
        self.spatial_linear = _projector(sd, sd, spec.eps)
        self.temporal_linear = _projector(sd * spec.temporal_merge, sd, spec.eps)
        self.mlp = linear(sd, text_hidden)
        self.after_norm = RMSNorm(text_hidden, text_eps)

    def forward(self, features: paddle.Tensor, grid_thw: np.ndarray) -> paddle.Tensor:
        if self.spec.temporal_merge != 2:
            raise ValueError("the resampler supports temporal_conv_size 2 only (as released)")
        x = features.reshape([-1, features.shape[-1] * self.spec.spatial_merge ** 2])
        x = self.spatial_linear(x)
        first, second = temporal_pairs(grid_thw, self.spec.spatial_merge)
        x = paddle.concat([paddle.gather(x, paddle.to_tensor(first)), paddle.gather(x, paddle.to_tensor(second))],
                          axis=-1)
        x = self.temporal_linear(x)
        return self.after_norm(self.mlp(x))
