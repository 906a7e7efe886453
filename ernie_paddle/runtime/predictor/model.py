"""The predictor behind ``ErnieForCausalLM``'s call interface: ``PredictorModel`` and its KV buffer.

The KV buffer is a Paddle tensor allocated once per generation (grown by doubling when it fills).
``PredictorModel`` gives the predictor the call signature of ``ErnieForCausalLM`` so that sampling,
batching and streaming are the very code dygraph uses.
"""

from __future__ import annotations

import numpy as np
import paddle

from ernie_paddle.runtime.predictor.runner import Predictor


class PredictorCache:
    """The KV buffer of one batch plus, like ``KVCache``, the key padding mask and real-token counts."""

    def __init__(self, predictor: Predictor, capacity: int = 0):
        self.predictor = predictor
        self.capacity = capacity
        self.length = 0
        self.kv: paddle.Tensor | None = None
        self.key_mask: np.ndarray | None = None  # int64 [B, length], 1 = real token
        self.seen: np.ndarray | None = None  # int64 [B, 1]

    def positions_and_mask(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions [B, T] for new tokens with padding ``mask`` [B, T], and the key mask [B, length + T].

        Positions count real tokens only, exactly as ``KVCache.positions_and_mask``.
        """
        b, t = mask.shape
        end = self.length + t
        if self.kv is None:
            self.kv = self.predictor.new_kv(b, max(end, self.capacity))
            self.key_mask, self.seen = np.zeros((b, 0), np.int64), np.zeros((b, 1), np.int64)
        elif end > self.kv.shape[4]:
            self._grow(max(end, 2 * self.kv.shape[4]))
        pos = np.clip(self.seen + np.cumsum(mask, axis=1) - 1, 0, None)
        return pos, np.concatenate([self.key_mask, mask], axis=1)

    def advance(self, key_mask: np.ndarray) -> None:
        self.key_mask = key_mask
        self.length = key_mask.shape[1]
        self.seen = key_mask.sum(axis=1, keepdims=True)

    def _grow(self, capacity: int) -> None:
        kv = self.predictor.new_kv(self.kv.shape[2], capacity)
        kv[:, :, :, :, :self.length] = self.kv[:, :, :, :, :self.length]
        self.kv = kv
        self.capacity = capacity


class PredictorModel:
    """``ErnieForCausalLM``'s call interface (``config``, ``new_cache``, ``__call__``) over a Predictor."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.config = predictor.config

    def new_cache(self, capacity: int = 0) -> PredictorCache:
        return PredictorCache(self.predictor, capacity)

    def __call__(self, input_ids, cache: PredictorCache | None = None, attention_mask=None,
                 last_only: bool = False) -> paddle.Tensor:
        return paddle.to_tensor(self.logits(input_ids, cache, attention_mask, last_only))

    def logits(self, input_ids, cache: PredictorCache | None = None, attention_mask=None,
               last_only: bool = False) -> np.ndarray:
        """Float32 logits [B, T, V] (or [B, 1, V]) as numpy; ``cache`` None means a one-off forward."""
        ids = np.asarray(input_ids.numpy() if isinstance(input_ids, paddle.Tensor) else input_ids, np.int64)
        b, t = ids.shape
        if attention_mask is None:
            mask = np.ones((b, t), np.int64)
        else:
            m = attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor) else attention_mask
            mask = np.asarray(m, dtype=np.int64).reshape(b, t)
        state = cache if cache is not None else PredictorCache(self.predictor, t)
        step = self.predictor.tokens_per_run() or t
        outs = []
        for c0 in range(0, t, step):  # mapped experts bigger than their budget: one token's experts per run
            c1 = min(t, c0 + step)
            start = state.length
            positions, key_mask = state.positions_and_mask(mask[:, c0:c1])
            index = np.array([c1 - c0 - 1] if last_only else np.arange(c1 - c0), dtype=np.int64)
            outs.append(self.predictor.run(ids[:, c0:c1], positions, key_mask, start, index, state.kv))
            state.advance(key_mask)
        return outs[-1] if last_only or len(outs) == 1 else np.concatenate(outs, axis=1)
