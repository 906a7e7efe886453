"""Preallocated per-layer key/value cache with the padding mask and per-row positions of what it holds."""

from __future__ import annotations

import paddle


class LayerCache:
    """Keys and values of one layer, [B, nkv, capacity, hd]; ``update`` appends at the shared length."""

    def __init__(self, owner: KVCache):
        self.owner = owner
        self.k: paddle.Tensor | None = None
        self.v: paddle.Tensor | None = None

    def update(self, k: paddle.Tensor, v: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Store k/v [B, nkv, T, hd] after the cached tokens; return all keys and values so far."""
        start = self.owner.length
        end = start + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            self._grow(k, max(end, self.owner.capacity, 2 * (0 if self.k is None else self.k.shape[2])))
        self.k[:, :, start:end, :] = k
        self.v[:, :, start:end, :] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, like: paddle.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        k = paddle.zeros([b, h, capacity, d], dtype=like.dtype)
        v = paddle.zeros([b, h, capacity, d], dtype=like.dtype)
        if self.k is not None and self.owner.length:
            n = self.owner.length
            k[:, :, :n, :] = self.k[:, :, :n]
            v[:, :, :n, :] = self.v[:, :, :n]
        self.k, self.v = k, v
        self.owner.capacity = max(self.owner.capacity, capacity)


class KVCache:
    """Cache for a whole decoder stack: layer caches, length, key padding mask and real-token counts."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.capacity = capacity
        self.length = 0
        self.layers = [LayerCache(self) for _ in range(num_layers)]
        self.key_mask: paddle.Tensor | None = None  # bool [B, length]; None while every token is real
        self.seen: paddle.Tensor | None = None  # int64 [B, 1] real tokens per row; None while unpadded

    def positions_and_mask(self, batch: int, t: int, mask: paddle.Tensor | None):
        """Positions [B, T] for ``t`` new tokens and the key mask [B, length + t] (None if all real).

        Positions count real tokens only, so a left-padded row continues exactly as its unpadded twin.
        """
        if mask is None and self.key_mask is None:
            pos = paddle.arange(self.length, self.length + t, dtype="int64").unsqueeze(0).expand([batch, t])
            return pos, None
        new = paddle.ones([batch, t], dtype="bool") if mask is None else mask.astype("bool")
        seen = self.seen if self.seen is not None else paddle.full([batch, 1], self.length, dtype="int64")
        pos = seen + paddle.cumsum(new.astype("int64"), axis=1) - 1
        pos = paddle.clip(pos, min=0)
        old = self.key_mask if self.key_mask is not None else paddle.ones([batch, self.length], dtype="bool")
        return pos, paddle.concat([old, new], axis=1)

    def advance(self, t: int, key_mask: paddle.Tensor | None) -> None:
        """Record that ``t`` tokens were written; ``key_mask`` is the mask returned by positions_and_mask."""
        self.length += t
        self.key_mask = key_mask
        if key_mask is not None:
            self.seen = key_mask.astype("int64").sum(axis=1, keepdim=True)
