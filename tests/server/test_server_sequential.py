"""The sequential scheduler (VL / speculative serving): stop rules, cancellation, errors, options passed on."""

import threading

import numpy as np

from ernie_paddle.server.sampling import SamplingParams
from ernie_paddle.server.scheduler import Sequence
from ernie_paddle.server.sequential import SequentialScheduler


class _Runtime:
    """Yields 7, 8, 9, ... forever and records the options of each stream and whether it was closed."""

    device = None

    def __init__(self):
        self.calls, self.closed = [], threading.Event()

    def stream(self, prompt, **options):
        self.calls.append((prompt, options))
        if options.get("fail"):
            raise RuntimeError("boom")

        def steps():
            try:
                t = 7
                while True:
                    yield np.array([t])
                    t += 1
            finally:
                self.closed.set()

        return steps()


def _run(sched, params, prompt=(1, 2)):
    events, done = [], threading.Event()

    def sink(e):
        events.append(e)
        if e[0] != "token":
            done.set()
        elif e[1].id == 9 and params.max_tokens > 50:
            seq.cancel()

    seq = Sequence(list(prompt), params, sink)
    sched.submit(seq)
    return seq, events, done


def test_limits_stop_ids_cancellation_and_errors():
    rt = _Runtime()
    sched = SequentialScheduler(rt, lambda p: ("wrapped", p), None, speculative="mtp")
    sched.start()
    try:
        _, ev, done = _run(sched, SamplingParams(max_tokens=3, temperature=0.7, seed=-1))
        assert done.wait(10) and ev[-1] == ("end", "length") and [e[1].id for e in ev[:-1]] == [7, 8, 9]
        prompt, opts = rt.calls[-1]
        assert prompt == ("wrapped", [1, 2]) and opts["speculative"] == "mtp" and opts["do_sample"]
        assert opts["seed"] == 2**64 - 1 and opts["max_new_tokens"] == 3

        _, ev, done = _run(sched, SamplingParams(max_tokens=10, stop_token_ids=(8,)))
        assert done.wait(10) and ev[-1] == ("end", "stop") and len(ev) == 3

        rt.closed.clear()
        seq, ev, done = _run(sched, SamplingParams(max_tokens=1000))
        assert rt.closed.wait(10) and seq.cancelled and len(ev) == 3  # stopped right after the cancel

        sched.stream_options["fail"] = True
        _, ev, done = _run(sched, SamplingParams(max_tokens=3))
        assert done.wait(10) and ev == [("error", "generation failed: boom")]
        del sched.stream_options["fail"]
        _, ev, done = _run(sched, SamplingParams(max_tokens=2))
        assert done.wait(10) and ev[-1] == ("end", "length")  # still serving
    finally:
        sched.stop()
