"""The dygraph step engine (``protocols.StepEngine``) for continuous batching: prefill, decode, merge, select.

Rows of different lengths share one KV cache by left padding: the cache's key mask hides the padding and
positions count real tokens only, so a row continues exactly as it would alone. ``merge`` joins a freshly
prefilled cache to the running one; ``select`` keeps only the rows still generating.
"""

from __future__ import annotations

import numpy as np
import paddle

from ernie_paddle.runtime.generation import pad_batch


def _left_pad(x: paddle.Tensor, extra: int, axis: int) -> paddle.Tensor:
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[axis] = extra
    return paddle.concat([paddle.zeros(shape, dtype=x.dtype), x], axis=axis)


def _key_mask(cache) -> paddle.Tensor:
    if cache.key_mask is not None:
        return cache.key_mask
    batch = cache.layers[0].k.shape[0]
    return paddle.ones([batch, cache.length], dtype="bool")


class EagerEngine:
    """Drives an ``ErnieForCausalLM`` (the ``model`` of a loaded runtime) one batched step at a time."""

    def __init__(self, runtime):
        self.model = runtime.model
        self.device = runtime.device
        self.pad_id = int(self.model.config.pad_token_id or 0)

    def activate(self) -> None:
        """Call in the worker thread: Paddle's current device is per thread."""
        paddle.set_device(self.device)

    def idle(self) -> None:
        """Nothing to do between steps."""

    def close(self) -> None:
        """Nothing to release: the runtime owns the model."""

    def prefill(self, prompts: list[list[int]], reserve: int = 64):
        """New cache for ``prompts`` (left-padded together) and float32 next-token logits [B, V]."""
        return self.prefill_padded(*pad_batch(prompts, self.pad_id), reserve)

    def prefill_padded(self, ids: np.ndarray, mask: np.ndarray, reserve: int = 64):
        """``prefill`` of prompts already left-padded: ids and mask int64 [B, T] (as ``pad_batch`` makes)."""
        cache = self.model.new_cache(ids.shape[1] + reserve)
        with paddle.no_grad():
            out = self.model(paddle.to_tensor(ids), cache, None if mask.all() else paddle.to_tensor(mask),
                             last_only=True)
        return cache, out[:, -1].numpy()

    def decode(self, cache, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; return logits [B, V]."""
        with paddle.no_grad():
            out = self.model(paddle.to_tensor(np.asarray(tokens, dtype=np.int64)[:, None]), cache,
                             last_only=True)
        return out[:, -1].numpy()

    @staticmethod
    def merge(a, b):
        """One cache holding the rows of ``a`` then ``b``; the shorter one is left-padded and masked."""
        if a is None:
            return b
        length = max(a.length, b.length)
        mask = paddle.concat([_left_pad(_key_mask(a), length - a.length, 1),
                              _left_pad(_key_mask(b), length - b.length, 1)], axis=0)
        for la, lb in zip(a.layers, b.layers):
            ka, va = (_left_pad(t[:, :, :a.length], length - a.length, 2) for t in (la.k, la.v))
            kb, vb = (_left_pad(t[:, :, :b.length], length - b.length, 2) for t in (lb.k, lb.v))
            la.k, la.v = paddle.concat([ka, kb], axis=0), paddle.concat([va, vb], axis=0)
        a.length, a.capacity = length, length
        a.key_mask = mask
        a.seen = mask.astype("int64").sum(axis=1, keepdim=True)
        return a

    @staticmethod
    def select(cache, rows: list[int]):
        """Keep ``rows`` (in order); drop leading columns that are padding for every kept row."""
        if not rows:
            return None
        mask = _key_mask(cache)
        idx = paddle.to_tensor(np.asarray(rows, dtype=np.int64))
        mask = paddle.index_select(mask, idx, axis=0)
        real_cols = np.flatnonzero(mask.numpy().any(axis=0))
        start = int(real_cols[0]) if len(real_cols) else cache.length
        for layer in cache.layers:
            layer.k = paddle.index_select(layer.k[:, :, start:cache.length], idx, axis=0)
            layer.v = paddle.index_select(layer.v[:, :, start:cache.length], idx, axis=0)
        cache.length -= start
        cache.capacity = cache.length
        cache.key_mask = mask[:, start:]
        cache.seen = cache.key_mask.astype("int64").sum(axis=1, keepdim=True)
        return cache
