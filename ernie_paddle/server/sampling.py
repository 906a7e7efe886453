"""Per-sequence sampling with its own options and random generator, so batching never changes a result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ernie_paddle.runtime.generation import LogitControls, Options, TokenHistory, choose_next


class Constraint(Protocol):
    """A per-row output constraint (``server.structured_output.TokenConstraint``): masks, then follows."""

    def apply(self, row: np.ndarray) -> np.ndarray: ...

    def accept(self, token: int) -> None: ...


@dataclass(kw_only=True)
class SamplingParams(LogitControls):
    """What one sequence asks for (OpenAI request fields plus vLLM-style extras)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token plus k alternatives
    constraint: Constraint | None = None  # structured output: only tokens its grammar allows

    @property
    def adjusts_logits(self) -> bool:
        """True when a penalty, bias or min-tokens ban changes the logits before the pick."""
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0 or self.presence_penalty != 0
                or bool(self.logit_bias) or self.min_tokens > 0)


@dataclass
class TokenChoice:
    """A sampled token and, when asked, its log-probability and the top alternatives."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class RowSampler:
    """Pick the next token of one sequence from its logits row; ``prompt`` counts for repetition_penalty."""

    def __init__(self, params: SamplingParams, vocab_limit: int | None = None, prompt=()):
        self.params = params
        self.vocab_limit = vocab_limit
        self.opts = Options(max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens,
                            do_sample=params.temperature > 0, temperature=params.temperature or 1.0,
                            top_k=params.top_k, top_p=params.top_p, stop_token_ids=params.stop_token_ids,
                            seed=params.seed, **params.controls())
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self.history = [TokenHistory(prompt if params.repetition_penalty != 1.0 else ())]
        self.step = 0
        self.plain_greedy = (params.temperature <= 0 and params.logprobs is None and not params.adjusts_logits
                             and params.constraint is None)

    def __call__(self, logits: np.ndarray) -> TokenChoice:
        row = logits[None, :]
        if self.vocab_limit is not None and row.shape[-1] > self.vocab_limit:
            row = row.copy()
            row[:, self.vocab_limit:] = -np.inf  # padded embedding rows are not tokens
        allowed = row if self.params.constraint is None else self.params.constraint.apply(row[0])[None, :]
        token = int(choose_next(allowed, self.opts, self.rng, self.history, self.step)[0])
        if self.params.constraint is not None:
            self.params.constraint.accept(token)
        self.step += 1
        self.history[0].add(token)
        if self.params.logprobs is None:
            return TokenChoice(token)
        return scored_choice(row[0], token, self.params.logprobs)


def scored_choice(row: np.ndarray, token: int, k: int) -> TokenChoice:
    """``token`` with its log-probability under the model's logits ``row`` [V] and the top ``k`` tokens."""
    x = row.astype(np.float64)
    lse = x.max() + np.log(np.exp(x - x.max()).sum())
    k = min(k, x.shape[0])
    top = []
    if k:
        idx = np.argpartition(-x, k - 1)[:k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        top = [(int(i), float(x[i] - lse)) for i in idx]
    return TokenChoice(token, float(x[token] - lse), top)


def sample_rows(samplers: list[RowSampler], logits: np.ndarray) -> list[TokenChoice]:
    """One choice per row of ``logits`` [B, V]; plain greedy rows share one vectorised argmax."""
    out: list[TokenChoice | None] = [None] * len(samplers)
    fast = [r for r, s in enumerate(samplers) if s.plain_greedy]
    if fast:
        limit = min(s.vocab_limit or logits.shape[-1] for s in (samplers[r] for r in fast))
        picks = logits[fast, :limit].argmax(axis=-1)
        for r, tok in zip(fast, picks.tolist()):
            out[r] = TokenChoice(int(tok))
            samplers[r].step += 1
    for r, s in enumerate(samplers):
        if out[r] is None:
            out[r] = s(logits[r])
    return out
