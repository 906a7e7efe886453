"""Async streams of text deltas: one choice run through the scheduler, and several fanned into one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from ernie_paddle.server.api_errors import APIError
from ernie_paddle.server.sampling import SamplingParams, TokenChoice
from ernie_paddle.server.scheduler import Sequence
from ernie_paddle.server.textstream import ChoiceText


@dataclass
class Delta:
    """New text of choice ``index`` with the tokens that produced it; ``finish_reason`` on the last one."""

    index: int
    text: str
    tokens: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Tally:
    """Per-request counters shared by the choices."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    completion_tokens: int = 0


async def run_choice(state, index: int, prompt: list[int], params: SamplingParams, stop: list[str],
                     tally: Tally) -> AsyncIterator[Delta]:
    """Submit one sequence and yield its deltas; leaving early (disconnect, stop string) cancels it."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def deliver(event) -> None:  # runs in the scheduler thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            seq.cancel()

    seq = Sequence(prompt, params, deliver, vocab_limit=len(state.tokenizer))
    text = ChoiceText(state.tokenizer, stop)
    state.scheduler.submit(seq)
    try:
        while True:
            kind, value = await events.get()
            if kind == "token":
                tally.completion_tokens += 1
                if tally.first_token is None:
                    tally.first_token = time.perf_counter()
                    state.metrics.observe("time_to_first_token_seconds", tally.first_token - tally.started)
                delta = text.feed(value.id)
                if text.stopped:
                    yield Delta(index, delta, [value], "stop")
                    return
                yield Delta(index, delta, [value])
            elif kind == "end":
                tail = text.finish()
                yield Delta(index, tail, [], "stop" if text.stopped else value)
                return
            else:
                raise APIError(500, str(value), code="generation_failed")
    finally:
        seq.cancel()


async def fan_in(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
    """Interleave several choice streams as their deltas arrive; cancelling this cancels them all."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for d in only:
                yield d
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream):
        try:
            async with aclosing(stream) as it:
                async for d in it:
                    await queue.put(d)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()

