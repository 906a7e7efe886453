"""Log-probabilities of a prompt's own tokens (``echo`` with ``logprobs``, vLLM's ``prompt_logprobs``).

One teacher-forced forward over the prompt (the runtime's ``logits``) gives, for every token after the
first, its log-probability given the tokens before it; the first token has none (null, as OpenAI and vLLM
answer). The forward runs in the scheduler's worker thread between decode steps, never on the event loop.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ernie_paddle.server.sampling import TokenChoice


def score_tokens(logits: np.ndarray, ids: list[int], top: int) -> list[TokenChoice]:
    """TokenChoices for ``ids`` from teacher-forced ``logits`` [T, V]: logprob of each token given the ones
    before it and the ``top`` most likely tokens at that place; the first token gets neither."""
    out = [TokenChoice(ids[0])]
    if len(ids) < 2:
        return out
    x = logits[:len(ids) - 1].astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    logp = x - (peak + np.log(np.exp(x - peak).sum(axis=1, keepdims=True)))
    k = min(top, x.shape[1])
    for row, token in zip(logp, ids[1:]):
        best = []
        if k:
            idx = np.argpartition(-row, k - 1)[:k]
            idx = idx[np.argsort(-row[idx], kind="stable")]
            best = [(int(i), float(row[i])) for i in idx]
        out.append(TokenChoice(int(token), float(row[token]), best))
    return out


def ranks(logits: np.ndarray, ids: list[int]) -> list[int | None]:
    """vLLM's rank of each prompt token at its place (1 = the most likely); None for the first token."""
    rows = logits[:len(ids) - 1]
    return [None] + [int((row > row[t]).sum()) + 1 for row, t in zip(rows, ids[1:])]


async def prompt_logits(state, ids: list[int]) -> np.ndarray:
    """Float32 teacher-forced logits [T, V] of ``ids``, computed in the scheduler's thread."""
    future = state.scheduler.call(lambda: state.runtime.logits(np.array([ids], dtype=np.int64))[0])
    return await asyncio.wrap_future(future)


def vllm_prompt_logprobs(logits: np.ndarray, ids: list[int], top: int, text_of) -> list:
    """vLLM's ``prompt_logprobs``: None, then per token {id: {logprob, rank, decoded_token}} holding the
    token itself and the ``top`` most likely ones."""
    rank = ranks(logits, ids)
    out: list = [None]
    for pos, choice in enumerate(score_tokens(logits, ids, top)[1:], start=1):
        entries = {choice.id: (choice.logprob, rank[pos])}
        for r, (i, lp) in enumerate(choice.top or [], start=1):
            entries.setdefault(i, (lp, r))
        out.append({str(i): {"logprob": lp, "rank": r, "decoded_token": text_of(i)}
                    for i, (lp, r) in entries.items()})
    return out
