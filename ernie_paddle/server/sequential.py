"""One sequence at a time through the runtime's own ``stream``: VL prompts and speculative decoding.

No continuous batching here: requests wait in the queue while one generates. Each sequence's sink gets
the same events as with the batching ``Scheduler``, whose queue, worker loop and stop rules this reuses.
With ``logprobs`` the stream yields (ids, raw logits) steps (speculative ones: the main model's row each
token was emitted from), scored by ``sampling.scored_choice`` as in the batching sampler.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable

import paddle

from ernie_paddle.server.sampling import TokenChoice, scored_choice
from ernie_paddle.server.scheduler import Scheduler, Sequence

log = logging.getLogger("ernie_paddle.server")


class SequentialScheduler(Scheduler):
    """``to_input`` turns a sequence's prompt into ``runtime.stream``'s first argument; ``on_done(runtime)``
    runs after every sequence (e.g. to read speculative counters); ``stream_options`` go to every stream."""

    def __init__(self, runtime, to_input: Callable, on_done: Callable | None = None, **stream_options):
        super().__init__(None, max_batch=1)  # no step engine: the runtime's own stream runs each sequence
        self.runtime, self.to_input, self.on_done, self.stream_options = runtime, to_input, on_done, stream_options

    def _run(self) -> None:
        if getattr(self.runtime, "device", None):
            paddle.set_device(self.runtime.device)  # per thread
        self._loop()

    def _step(self) -> None:
        try:
            seq = self._waiting.get(timeout=0.05)
        except queue.Empty:
            return
        if seq.cancelled:
            return
        self._active = [seq]
        try:
            self._generate(seq)
        except Exception as exc:  # ends this sequence, not the server
            log.exception("generation failed")
            seq.sink(("error", f"generation failed: {exc}"))
        finally:
            self._active = []

    def _generate(self, seq: Sequence) -> None:
        p = seq.params
        scored = {"output_logits": True} if p.logprobs is not None else {}  # (ids, raw logits) steps
        steps = self.runtime.stream(
            self.to_input(seq.prompt), max_new_tokens=p.max_tokens, min_new_tokens=p.min_tokens,
            do_sample=p.temperature > 0, temperature=p.temperature or 1.0, top_k=p.top_k, top_p=p.top_p,
            seed=None if p.seed is None else p.seed % 2**64, stop_token_ids=list(p.stop_token_ids),
            **p.controls(), **scored, **self.stream_options)
        try:
            for step in steps:
                choice = (scored_choice(step[1][0][:seq.vocab_limit], int(step[0][0]), p.logprobs) if scored
                          else TokenChoice(int(step[0])))
                if seq.cancelled or self._emit(seq, choice):
                    return
            seq.sink(("end", "length"))  # the runtime ended first (it applies the same limits)
        finally:
            getattr(steps, "close", lambda: None)()
            if self.on_done:
                self.on_done(self.runtime)
