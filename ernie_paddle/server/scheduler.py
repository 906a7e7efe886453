"""Continuous batching: one worker thread runs decode steps for every live sequence together.

New sequences are prefilled between steps and joined to the running batch; finished or cancelled ones
leave it at the next step, so a disconnected client frees its slot at once. Other model work (scoring a
prompt) is handed to the same thread with ``call`` and runs between steps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ernie_paddle.runtime.protocols import StepEngine
from ernie_paddle.server.sampling import RowSampler, SamplingParams, TokenChoice, sample_rows

log = logging.getLogger("ernie_paddle.server")


@dataclass(eq=False)
class Sequence:
    """One generation; ``sink`` receives ("token", TokenChoice), then ("end", reason) or ("error", msg)."""

    prompt: list[int]
    params: SamplingParams
    sink: Callable[[tuple], None]
    vocab_limit: int | None = None
    cancelled: bool = False
    generated: int = 0
    sampler: RowSampler = field(init=False)
    last: int = -1

    def __post_init__(self):
        self.sampler = RowSampler(self.params, self.vocab_limit, self.prompt)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Owns the model: ``submit`` sequences from any thread; events go back through each sink.

    ``engine``: a ``StepEngine`` (``ernie_paddle.runtime.protocols``): ``activate()`` runs first in the worker
    thread, ``idle()`` between steps while nothing is running and ``close()`` when the worker stops.
    """

    def __init__(self, engine: StepEngine, max_batch: int = 32, on_step: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.max_batch = max_batch
        self.on_step = on_step
        self._waiting: queue.Queue[Sequence] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()
        self._active: list[Sequence] = []
        self._cache = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ernie-scheduler", daemon=True)

    @property
    def queue_depth(self) -> int:
        return self._waiting.qsize()

    @property
    def running(self) -> int:
        return len(self._active)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # not yet started when the app stops during startup
            self._thread.join(timeout=10)
        while not self._calls.empty():  # nobody will run them any more
            _, future = self._calls.get_nowait()
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the server is stopping"))

    def submit(self, seq: Sequence) -> None:
        self._waiting.put(seq)

    def call(self, fn: Callable[[], object]) -> Future:
        """Run ``fn()`` in the worker thread between two steps; its result (or exception) in the future."""
        future: Future = Future()
        self._calls.put((fn, future))
        return future

    # -- worker --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        self.engine.activate()
        try:
            self._loop()
        finally:
            self.engine.close()

    def _loop(self) -> None:
        """Run steps until ``stop``; a failed step ends the sequences it held."""
        while not self._stop.is_set():
            self._run_calls()
            try:
                self._step()
            except Exception as exc:  # a model failure ends the affected sequences, not the server
                log.exception("generation step failed")
                for seq in self._active:
                    seq.sink(("error", f"generation failed: {exc}"))
                self._active, self._cache = [], None

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # handed to the caller
                    future.set_exception(exc)

    def _emit(self, seq: Sequence, choice: TokenChoice) -> bool:
        """Send a token; return True when the sequence is finished."""
        seq.generated += 1
        seq.last = choice.id
        seq.sink(("token", choice))
        if choice.id in seq.params.stop_token_ids and seq.generated > seq.params.min_tokens:
            seq.sink(("end", "stop"))
            return True
        if seq.generated >= seq.params.max_tokens:
            seq.sink(("end", "length"))
            return True
        return False

    def _step(self) -> None:
        if self._active:
            t0 = time.perf_counter()
            logits = self.engine.decode(self._cache, np.array([s.last for s in self._active]))
            choices = sample_rows([s.sampler for s in self._active], logits)
            done = [s.cancelled or self._emit(s, c) for s, c in zip(self._active, choices)]
            if self.on_step:
                self.on_step(len(self._active), time.perf_counter() - t0)
            keep = [r for r, d in enumerate(done) if not d]
            if len(keep) < len(self._active):
                self._cache = self.engine.select(self._cache, keep)
                self._active = [self._active[r] for r in keep]
        self._admit()

    def _admit(self) -> None:
        new: list[Sequence] = []
        block = not self._active
        while len(self._active) + len(new) < self.max_batch:
            try:
                seq = self._waiting.get(timeout=0.05) if block and not new else self._waiting.get_nowait()
            except queue.Empty:
                break
            if not seq.cancelled:
                new.append(seq)
        if not new:
            if not self._active:
                self.engine.idle()
            return
        try:
            cache, logits = self.engine.prefill([s.prompt for s in new])
        except Exception as exc:
            log.exception("prefill failed")
            for seq in new:
                seq.sink(("error", f"prefill failed: {exc}"))
            return
        choices = sample_rows([s.sampler for s in new], logits)
        done = [s.cancelled or self._emit(s, c) for s, c in zip(new, choices)]
        keep = [r for r, d in enumerate(done) if not d]
        if keep:
            cache = self.engine.select(cache, keep) if len(keep) < len(new) else cache
            self._cache = self.engine.merge(self._cache, cache)
            self._active += [new[r] for r in keep]
