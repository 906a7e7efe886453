"""Speculative decoding with the checkpoint's multi-token-prediction (MTP) layer.

Draft: the MTP layer maps the main model's final-normed hidden state h_i at position i and the embedding of
the token x_{i+1} to a guess for x_{i+2} (spec 4.7: linear_proj(concat[emb_norm(embed), hidden_norm(h)]),
embedding half first -> one dense decoder block with its own KV cache -> the shared final norm and head).
Drafts after the first feed the MTP its own output hidden state instead of the main model's, as FastDeploy
does; one MTP layer (``mtp_*.0``) drafts all k tokens.

Verify: the pending token and the k drafts run through the main model in one forward over its KV cache.
Greedy keeps the longest prefix of drafts equal to the main model's argmax, then the main model's token.
Sampling uses the standard rejection rule (accept draft d with probability min(1, p(d)/q(d)), otherwise
draw from norm(max(p - q, 0)); after k acceptances draw a bonus token from p), so the output follows
exactly the main model's distribution (Leviathan et al. 2023, Chen et al. 2023). ``p`` is the main model's
distribution after the usual processing (repetition penalty, min-new-tokens, temperature, top-k, top-p).

Rollback: columns of rejected drafts are cut from the end of both caches; when the rows of a batch accept
different counts, a row's rejected columns stay as masked holes (the cache's key mask hides them and
positions count real tokens only), so every row continues exactly as it would alone.

Logprobs: with ``output_logits`` every emitted token comes with the main model's raw logits row it was
checked against or drawn from (prefill, verify position or bonus), kept only when asked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import paddle

from ernie_paddle.errors import ErnieError
from ernie_paddle.models.kv_cache import KVCache
from ernie_paddle.models.layers import NEG_INF, causal_mask, rope_cos_sin
from ernie_paddle.runtime.generation import (
    Options,
    apply_repetition_penalty,
    filter_logits,
    pad_batch,
    penalties_in_use,
    resolve_options,
)

METHODS = ("mtp",)


@dataclass
class SpecStats:
    """Counters of one speculative run; forwards and tokens count per generating row."""

    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0
    main_forwards: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.main_forwards if self.main_forwards else 0.0

    def as_dict(self) -> dict:
        return {"drafted": self.drafted, "accepted": self.accepted, "new_tokens": self.new_tokens,
                "main_forwards": self.main_forwards, "acceptance_rate": self.acceptance_rate,
                "tokens_per_forward": self.tokens_per_forward}


def has_mtp(model) -> bool:
    ernie = getattr(model, "ernie", None)  # a VL model or a predictor has no ErnieModel, hence no MTP layer
    return ernie is not None and ernie.config.num_nextn_predict_layers > 0


def accept_draft(u: float, p_draft: float, q_draft: float) -> bool:
    """The rejection rule: keep a draft drawn from q with probability min(1, p / q) (``u`` ~ U[0, 1))."""
    return u * q_draft < p_draft


def check_method(model, method: str, num_draft: int) -> None:
    if method not in METHODS:
        raise ErnieError(f"unknown speculative method {method!r} (supported: {', '.join(METHODS)})")
    if int(num_draft) < 1:
        raise ErnieError(f"num_draft must be >= 1, got {num_draft}")
    if getattr(model, "ernie", None) is None:
        raise ErnieError("speculative decoding runs on the dygraph engine (load with engine='dygraph')")
    if not has_mtp(model):
        raise ErnieError("speculative decoding with 'mtp' needs a checkpoint with an MTP layer "
                         "(its MTP tensors); this one has none")


def _additive_mask(key_mask: paddle.Tensor | None, t: int) -> paddle.Tensor | None:
    if key_mask is None:
        return None
    s = key_mask.shape[1]
    allowed = (causal_mask(t, s) == 0).unsqueeze(0) & key_mask.unsqueeze(1)
    return paddle.where(allowed, paddle.zeros([1], "float32"),
                        paddle.full([1], NEG_INF, "float32")).unsqueeze(1)


def mtp_forward(model, ids: paddle.Tensor, prev_hidden: paddle.Tensor, cache: KVCache,
                attention_mask: paddle.Tensor | None = None) -> paddle.Tensor:
    """Final-normed MTP hidden states [B, T, H] (feed to ``model.head`` for draft logits).

    Column i pairs token ``ids[:, i]`` (x_{j+1}) with ``prev_hidden[:, i]`` (h_j) and sits at the position
    of h_j; ``cache`` is the MTP block's own one-layer KVCache.
    """
    ern, cfg = model.ernie, model.config
    b, t = ids.shape
    emb = ern.mtp_emb_norm[0](ern.embed_tokens(ids))
    x = ern.mtp_linear_proj[0](paddle.concat([emb, ern.mtp_hidden_norm[0](prev_hidden)], axis=-1))
    positions, key_mask = cache.positions_and_mask(b, t, attention_mask)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    x = ern.mtp_block[0](x, cos, sin, _additive_mask(key_mask, t), cache.layers[0])
    cache.advance(t, key_mask)
    return ern.norm(x)


def _set_mask(cache: KVCache, mask: np.ndarray) -> None:
    if mask.all():
        cache.key_mask = cache.seen = None
    else:
        cache.key_mask = paddle.to_tensor(mask)
        cache.seen = paddle.to_tensor(mask.sum(axis=1, keepdims=True).astype(np.int64))


def truncate(cache: KVCache, length: int) -> None:
    """Forget every column from ``length`` on (for all rows)."""
    cache.length = length
    if cache.key_mask is not None:
        _set_mask(cache, cache.key_mask.numpy()[:, :length])


def keep_columns(cache: KVCache, keep: np.ndarray) -> None:
    """``keep`` bool [B, t] (a prefix per row) for the cache's last t columns: cut the columns no row
    keeps, hide the rest of the rejected ones behind the key mask."""
    b, t = keep.shape
    width = int(keep.sum(axis=1).max())
    old = cache.length
    mask = (cache.key_mask.numpy() if cache.key_mask is not None else np.ones((b, old), dtype=bool))
    mask = mask[:, : old - t + width].copy()
    mask[:, old - t:] = keep[:, :width]
    cache.length = old - t + width
    _set_mask(cache, mask)


def _process(logits: np.ndarray, opts: Options, history: list[set[int]], steps: np.ndarray) -> np.ndarray:
    """What ``generation.choose_next`` does to logits [B, V] before picking, with a step per row."""
    logits = apply_repetition_penalty(logits, history, opts.repetition_penalty)
    early = steps < opts.min_new_tokens
    if opts.stop_token_ids and early.any():
        logits = logits.copy()
        stops = [t for t in opts.stop_token_ids if t < logits.shape[-1]]
        logits[np.ix_(np.flatnonzero(early), stops)] = -np.inf
    return logits


def _probs(logits: np.ndarray, opts: Options) -> np.ndarray:
    filtered = filter_logits(logits, opts.temperature, opts.top_k, opts.top_p)
    probs = np.exp(filtered - filtered.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


def _draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row of ``probs`` [B, V] with uniforms ``u`` [B]."""
    cdf = np.cumsum(probs, axis=-1)
    picks = np.array([np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u)], dtype=np.int64)
    return np.minimum(picks, probs.shape[-1] - 1)


class _Run:
    """State of one batched speculative generation (see the module docstring)."""

    def __init__(self, model, ids: np.ndarray, mask: np.ndarray, opts: Options, num_draft: int,
                 stats: SpecStats, output_logits: bool = False):
        self.model, self.opts, self.k, self.stats = model, opts, int(num_draft), stats
        self.output_logits = output_logits  # keep each emitted token's raw target logits row
        self.greedy = not opts.do_sample
        self.rng = np.random.default_rng(opts.seed)
        self.ids, self.mask = ids, mask
        b = len(ids)
        self.history = [set(row[m > 0].tolist()) for row, m in zip(ids, mask)]
        self.emitted = np.zeros(b, dtype=np.int64)
        self.done = np.zeros(b, dtype=bool)
        self.stops = set(opts.stop_token_ids)
        capacity = ids.shape[1] + opts.max_new_tokens + self.k + 1
        self.main = model.new_cache(capacity)
        self.mtp = KVCache(1, capacity)

    def _pick(self, logits: np.ndarray, history, steps) -> tuple[np.ndarray, np.ndarray | None]:
        """(tokens [B], probs [B, V] or None when greedy) from raw logits [B, V]."""
        proc = _process(logits, self.opts, history, steps)
        if self.greedy:
            return proc.argmax(axis=-1).astype(np.int64), None
        probs = _probs(proc, self.opts)
        return _draw(probs, self.rng.random(len(probs))), probs

    def _emit(self, tokens: list[list[int]], rows: list | None) -> tuple[list[list[int]], list | None]:
        """Cut each row's new tokens (and their logits ``rows``) at a stop id or the token budget; update
        counters."""
        out = []
        for r, toks in enumerate(tokens):
            kept = []
            if not self.done[r]:
                for tok in toks[: self.opts.max_new_tokens - self.emitted[r]]:
                    kept.append(int(tok))
                    if tok in self.stops:
                        self.done[r] = True
                        break
                self.emitted[r] += len(kept)
                self.history[r].update(kept)
                self.done[r] |= self.emitted[r] >= self.opts.max_new_tokens
            out.append(kept)
        self.stats.new_tokens += sum(map(len, out))
        return out, None if rows is None else [row[:len(kept)] for row, kept in zip(rows, out)]

    def _draft(self, g: paddle.Tensor, k: int) -> tuple[np.ndarray, list]:
        """k draft tokens [B, k] and their distributions from the MTP state ``g`` [B, 1, H]."""
        start, tokens, dists = self.mtp.length, [], []
        for j in range(k):
            logits = self.model.head(g)[:, -1].numpy()
            history = ([h | set(tokens_r) for h, tokens_r in zip(self.history, np.stack(tokens, 1).tolist())]
                       if tokens and self.opts.repetition_penalty != 1.0 else self.history)
            tok, probs = self._pick(logits, history, self.emitted + j)
            tokens.append(tok)
            dists.append(probs)
            if j < k - 1:
                g = mtp_forward(self.model, paddle.to_tensor(tok[:, None]), g, self.mtp)
        truncate(self.mtp, start)
        return np.stack(tokens, axis=1) if tokens else np.zeros((g.shape[0], 0), np.int64), dists

    def _target(self, hidden: paddle.Tensor, drafts: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(raw logits [B, V], the main model's choice (greedy: tokens [B]) or distribution [B, V]) after the
        pending token and drafts 1..j."""
        history = self.history
        if j and self.opts.repetition_penalty != 1.0:
            history = [h | set(d[:j].tolist()) for h, d in zip(self.history, drafts)]
        raw = self.model.head(hidden[:, j]).numpy()
        proc = _process(raw, self.opts, history, self.emitted + j)
        return raw, proc.argmax(axis=-1) if self.greedy else _probs(proc, self.opts)

    def _verify(self, hidden: paddle.Tensor, drafts: np.ndarray, dists: list) -> tuple[np.ndarray, list, list]:
        """Accepted draft counts [B], each row's new tokens (accepted drafts + one from the main model) and,
        with ``output_logits``, the raw target logits row [V] each of them came from (else None).

        The head runs position by position and stops once every row has rejected a draft (on CPU the
        vocabulary projection costs as much per row as several decoder layers).
        """
        b, k = drafts.shape
        if not self.greedy:
            u, extra = self.rng.random((b, k)), self.rng.random(b)
        accepted, last = np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64)
        alive = np.ones(b, dtype=bool)  # rows that accepted every draft so far
        raws = []
        for j in range(k + 1):
            raw, target = self._target(hidden, drafts, j)
            raws.append(raw if self.output_logits else None)
            for r in np.flatnonzero(alive):
                if j < k:
                    d = drafts[r, j]
                    ok = (d == target[r]) if self.greedy else accept_draft(u[r, j], target[r, d], dists[j][r, d])
                    if ok:
                        accepted[r] += 1
                        continue
                alive[r] = False
                if self.greedy:
                    last[r] = target[r]
                    continue
                dist = target[r]
                if j < k:  # rejected: draw from the residual max(p - q, 0)
                    residual = np.maximum(dist - dists[j][r], 0.0)
                    dist = residual if residual.sum() > 0 else dist
                last[r] = _draw(dist[None], extra[r: r + 1])[0]
            if not alive.any():
                break
        rows = [[raws[j][r] for j in range(a + 1)] for r, a in enumerate(accepted)] if self.output_logits else None
        return accepted, [[*drafts[r, :a].tolist(), int(last[r])] for r, a in enumerate(accepted)], rows

    def rounds(self) -> Iterator[tuple[list[list[int]], list | None]]:
        """Yield each row's new tokens per main-model forward (the first yield comes from the prefill), with
        their raw target logits rows when ``output_logits`` (else None)."""
        model, b = self.model, len(self.ids)
        with paddle.no_grad():
            step_mask = None if self.mask.all() else paddle.to_tensor(self.mask)
            hidden = model.ernie(paddle.to_tensor(self.ids), self.main, step_mask)
            self.stats.main_forwards += b
            raw = model.head(hidden[:, -1]).numpy()
            first, _ = self._pick(raw, self.history, self.emitted)
            yield self._emit([[t] for t in first.tolist()], [[row] for row in raw] if self.output_logits else None)
            if self.done.all():
                return
            mtp_ids = np.concatenate([self.ids[:, 1:], first[:, None]], axis=1)
            g = mtp_forward(model, paddle.to_tensor(mtp_ids), hidden, self.mtp, step_mask)[:, -1:]
            pending = first
            while not self.done.all():
                active = int((~self.done).sum())
                k = min(self.k, int(self.opts.max_new_tokens - self.emitted[~self.done].min()) - 1)
                drafts, dists = self._draft(g, k)
                hidden = model.ernie(paddle.to_tensor(np.concatenate([pending[:, None], drafts], 1)), self.main)
                accepted, new, rows = self._verify(hidden, drafts, dists)
                keep = np.arange(k + 1)[None, :] <= accepted[:, None]
                keep_columns(self.main, keep)
                self.stats.main_forwards += active
                self.stats.drafted += k * active
                self.stats.accepted += int(accepted[~self.done].sum())
                yield self._emit(new, rows)
                if self.done.all():
                    return
                width = int(accepted.max()) + 1
                catch_up = np.array([row + row[-1:] * (width - len(row)) for row in new], dtype=np.int64)
                cu_mask = keep[:, :width]
                g_all = mtp_forward(model, paddle.to_tensor(catch_up), hidden[:, :width], self.mtp,
                                    None if cu_mask.all() else paddle.to_tensor(cu_mask.astype(np.int64)))
                g = paddle.index_select(g_all.reshape([b * width, -1]),
                                        paddle.to_tensor(np.arange(b) * width + accepted), axis=0).unsqueeze(1)
                pending = np.array([row[-1] for row in new], dtype=np.int64)


def _setup(model, prompts, attention_mask, defaults, num_draft, method, options):
    check_method(model, method, num_draft)
    opts = resolve_options(defaults or {}, model.config, **options)
    if penalties_in_use(opts):
        raise ErnieError(f"speculative decoding does not implement {', '.join(penalties_in_use(opts))}")
    ids, mask = pad_batch(prompts, opts.pad_token_id)
    if attention_mask is not None:
        mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor)
                          else attention_mask, dtype=np.int64).reshape(ids.shape)
    return opts, ids, mask


def _steps(run: _Run) -> Iterator:
    """Token ids [B] per step, or (ids, raw logits [B, V]) with ``output_logits`` (finished rows: pad id,
    zero logits)."""
    buffers = [deque() for _ in range(len(run.ids))]
    for new, rows in run.rounds():
        for r, (buf, toks) in enumerate(zip(buffers, new)):
            buf.extend(zip(toks, rows[r] if rows is not None else [None] * len(toks)))
        while all(buf or run.done[r] for r, buf in enumerate(buffers)) and any(buffers):
            picks = [buf.popleft() if buf else (run.opts.pad_token_id, None) for buf in buffers]
            ids = np.array([tok for tok, _ in picks], dtype=np.int64)
            if not run.output_logits:
                yield ids
                continue
            width = next(row for _, row in picks if row is not None).shape[-1]
            yield ids, np.stack([np.zeros(width, np.float32) if row is None else row for _, row in picks])


def stream(model, prompts, attention_mask=None, defaults: dict | None = None, num_draft: int = 1,
           method: str = "mtp", stats: SpecStats | None = None, output_logits: bool = False,
           **options) -> Iterator:
    """Like ``generation.stream``: the next token ids [B] step by step (finished rows yield the pad id).

    ``output_logits``: (ids, logits [B, V]) pairs instead, each row the main model's raw logits (before
    penalties, temperature and filtering) at the place its token was emitted from, as without speculation.
    Pass a ``SpecStats`` to read the acceptance rate and tokens per main-model forward afterwards.
    """
    opts, ids, mask = _setup(model, prompts, attention_mask, defaults, num_draft, method, options)
    if opts.max_new_tokens == 0:
        return iter(())
    return _steps(_Run(model, ids, mask, opts, num_draft, stats if stats is not None else SpecStats(),
                       output_logits))


def generate(model, prompts, attention_mask=None, defaults: dict | None = None, num_draft: int = 1,
             method: str = "mtp", **options) -> tuple[np.ndarray, SpecStats]:
    """(prompt plus new ids int64 [B, T + n], stats); the ids match ``generation.generate``'s layout."""
    stats = SpecStats()
    opts, ids, mask = _setup(model, prompts, attention_mask, defaults, num_draft, method, options)
    steps = []
    if opts.max_new_tokens > 0:
        steps = [tok[:, None] for tok in _steps(_Run(model, ids, mask, opts, num_draft, stats))]
    return (np.concatenate([ids, *steps], axis=1) if steps else ids), stats
