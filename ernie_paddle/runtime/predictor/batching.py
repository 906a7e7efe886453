"""The server's step engine over a predictor: prefill, decode, and merging/selecting rows of KV buffers.

Same contract (``runtime.protocols.StepEngine``) as ``runtime.batching.EagerEngine``: rows of different lengths share one buffer by left padding;
the key mask hides the padding and positions count real tokens only. Merging and selecting copy the
buffer (they happen when the batch changes, not per token).
"""

from __future__ import annotations

import numpy as np
import paddle

from ernie_paddle.runtime.generation import pad_batch
from ernie_paddle.runtime.predictor.model import PredictorCache, PredictorModel


def _left_pad_kv(kv: paddle.Tensor, n: int, length: int, capacity: int) -> paddle.Tensor:
    """A [.., capacity, ..] buffer whose columns length-n .. length hold the first ``n`` columns of ``kv``."""
    shape = list(kv.shape)
    shape[4] = capacity
    out = paddle.zeros(shape, dtype=kv.dtype)
    out[:, :, :, :, length - n:length] = kv[:, :, :, :, :n]
    return out


class PredictorEngine:
    """Drives a ``PredictorModel`` one batched step at a time for the continuous-batching scheduler."""

    def __init__(self, model: PredictorModel):
        self.model = model
        self.device = model.predictor.device
        self.pad_id = int(model.config.pad_token_id or 0)

    def activate(self) -> None:
        paddle.set_device(self.device)

    def idle(self) -> None:
        """Nothing to do between steps."""

    def close(self) -> None:
        """Nothing to release: the runtime owns the predictor."""

    def prefill(self, prompts: list[list[int]], reserve: int = 64):
        ids, mask = pad_batch(prompts, self.pad_id)
        cache = self.model.new_cache(ids.shape[1] + reserve)
        return cache, self.model.logits(ids, cache, mask, last_only=True)[:, -1]

    def decode(self, cache: PredictorCache, tokens: np.ndarray) -> np.ndarray:
        return self.model.logits(np.asarray(tokens, dtype=np.int64)[:, None], cache, last_only=True)[:, -1]

    @staticmethod
    def merge(a: PredictorCache | None, b: PredictorCache) -> PredictorCache:
        """One cache holding the rows of ``a`` then ``b``, the shorter one left-padded and masked."""
        if a is None:
            return b
        length = max(a.length, b.length)
        width = length + max(a.kv.shape[4] - a.length, b.kv.shape[4] - b.length)
        a.kv = paddle.concat([_left_pad_kv(c.kv, c.length, length, width) for c in (a, b)], axis=2)
        pad = [np.zeros((c.key_mask.shape[0], length - c.length), np.int64) for c in (a, b)]
        a.advance(np.concatenate([np.concatenate([pad[0], a.key_mask], 1), np.concatenate([pad[1], b.key_mask], 1)]))
        a.capacity = width
        return a

    @staticmethod
    def select(cache: PredictorCache, rows: list[int]) -> PredictorCache | None:
        """Keep ``rows`` (in order) and drop leading columns that are padding for every kept row."""
        if not rows:
            return None
        mask = cache.key_mask[rows]
        real = np.flatnonzero(mask.any(axis=0))
        start = int(real[0]) if len(real) else cache.length
        idx = paddle.to_tensor(np.asarray(rows, dtype=np.int64))
        kept = paddle.index_select(cache.kv[:, :, :, :, start:], idx, axis=2)
        cache.kv = kept.contiguous() if hasattr(kept, "contiguous") else kept
        cache.advance(mask[:, start:])
        cache.capacity = cache.kv.shape[4]
        return cache
