"""The interfaces runtimes and the server meet at: a loaded ``Model`` and the batching ``StepEngine``.

Every folder ``ernie_paddle.load`` returns satisfies ``Model`` (dygraph text, VL, predictor, tensor-parallel
rank); runtimes that support continuous batching are also ``BatchingModel`` and hand out a ``StepEngine``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Model(Protocol):
    """A loaded model: ``config``, ``logits(ids)``, ``generate(ids, ...)``, ``stream(ids, ...)``, ``close()``.

    ``ids``: int64 token ids [B, T] (a list of lists or an array; rows of a list may differ in length
    where the runtime pads). ``generate`` returns prompt plus new ids [B, T + N]; ``stream`` yields the
    new ids [B] one step at a time; ``logits`` returns float32 [B, T, V]. ``generation_defaults``: the
    folder's generation_config.json values that ``generate`` and ``stream`` start from.
    """

    config: Any
    generation_defaults: dict

    def logits(self, ids, *args, **kwargs) -> np.ndarray: ...

    def generate(self, ids, max_new_tokens: int | None = None, **options) -> np.ndarray: ...

    def stream(self, ids, max_new_tokens: int | None = None, **options) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class StepEngine(Protocol):
    """One batched step at a time for the server's continuous-batching scheduler.

    Rows of different lengths share one cache by left padding. ``activate`` runs first in the worker
    thread, ``idle`` between steps while nothing runs, ``close`` when the worker stops.
    """

    def activate(self) -> None: ...

    def prefill(self, prompts: list[list[int]], reserve: int = 64) -> tuple[Any, np.ndarray]: ...

    def decode(self, cache, tokens: np.ndarray) -> np.ndarray: ...

    def merge(self, a, b): ...

    def select(self, cache, rows: list[int]): ...

    def idle(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchingModel(Model, Protocol):
    """A ``Model`` that the server can batch continuously: ``step_engine()`` drives it step by step."""

    def step_engine(self) -> StepEngine: ...
