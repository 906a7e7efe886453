"""Rank 0's step-engine calls replayed on the other ranks, so a batching server can drive a TP model.

The server's scheduler runs on rank 0 only. ``LeaderEngine`` wraps rank 0's step engine (prefill, decode,
merge, select; see ``ernie_paddle.runtime.protocols.StepEngine``): each call is first broadcast to the
other ranks as one int64 message, then made locally. ``follow`` runs on every other rank: it receives each message and makes
the same call on its own engine, so the collectives inside the tensor-parallel forward pair up and every
rank's KV caches evolve identically. Only rank 0 samples; the followers drop their logits.

A cache is named in messages by a handle that rank 0 gives it at prefill; when rank 0 drops a cache, its
handle rides on the next message so the followers drop their copy too. While nothing runs, rank 0 sends a
heartbeat every few seconds, which keeps the followers inside the collective deadline and finds a lost
rank even when the server is idle. A failed step cannot be undone on the other ranks, so on rank 0 it
ends the job (``comm.fatal``), as a lost peer does.

Message: ``[op, number of dropped handles, *dropped handles, *arguments]``.
"""

from __future__ import annotations

import signal
import threading
import time
import weakref
from collections import deque

import numpy as np

from ernie_paddle.runtime.distributed.comm import PEER_LOST_EXIT, Comm, PeerLost, fatal
from ernie_paddle.runtime.generation import pad_batch

HEARTBEAT, STOP, PREFILL, DECODE, SELECT, MERGE = range(6)
NO_CACHE = -1  # the handle of a missing cache (``merge`` into an empty batch)


class LeaderEngine:
    """Rank 0's step engine: tells the other ranks about every call, then makes it on ``engine``."""

    def __init__(self, engine, comm: Comm, heartbeat: float | None = None):
        self.engine, self.comm = engine, comm
        self.heartbeat = heartbeat if heartbeat is not None else min(5.0, comm.timeout / 4)
        self._handles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> handle
        self._dropped: deque[int] = deque()  # handles of caches gone since the last message (any thread adds)
        self._next_handle = 0
        self._last_sent = time.monotonic()
        self._lock = threading.Lock()  # one call at a time, message and forward together
        self._closed = False

    def activate(self) -> None:
        self.engine.activate()

    def prefill(self, prompts: list[list[int]], reserve: int = 64):
        ids, mask = pad_batch(prompts, self.engine.pad_id)  # a bad prompt fails here, before anyone is told
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        cache, logits = self._call(PREFILL, _pack(handle, reserve, ids.shape, ids, mask),
                                   self.engine.prefill_padded, ids, mask, reserve)
        self._handles[cache] = handle
        weakref.finalize(cache, self._dropped.append, handle)
        return cache, logits

    def decode(self, cache, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        return self._call(DECODE, _pack(self._handles[cache], tokens), self.engine.decode, cache, tokens)

    def select(self, cache, rows: list[int]):
        return self._call(SELECT, _pack(self._handles[cache], rows), self.engine.select, cache, rows)

    def merge(self, a, b):
        handle_a = NO_CACHE if a is None else self._handles[a]
        return self._call(MERGE, _pack(handle_a, self._handles[b]), self.engine.merge, a, b)

    def idle(self) -> None:
        """Send a heartbeat when nothing was sent for ``heartbeat`` seconds."""
        if time.monotonic() - self._last_sent >= self.heartbeat:
            self._call(HEARTBEAT)

    def close(self) -> None:
        """Tell the other ranks to stop (once, whichever thread calls first)."""
        with self._lock:
            closing, self._closed = not self._closed, True
        if closing:
            self._call(STOP)

    def _call(self, op: int, args: np.ndarray = (), fn=None, *fn_args):
        """Send ``op`` with its int ``args`` to the other ranks, then return ``fn(*fn_args)``."""
        with self._lock:
            dropped = [self._dropped.popleft() for _ in range(len(self._dropped))]
            try:
                self.comm.broadcast_ints(_pack(op, len(dropped), dropped, args))
                self._last_sent = time.monotonic()
                return fn(*fn_args) if fn is not None else None
            except PeerLost as exc:
                fatal(str(exc), PEER_LOST_EXIT)
            except Exception as exc:  # the other ranks made (or are making) this step: out of step now
                fatal(f"rank {self.comm.rank}: a tensor-parallel step failed, which ends the job "
                      f"({type(exc).__name__}: {exc})", 1)


def _pack(*parts) -> np.ndarray:
    """One int64 vector of ints, shapes and int arrays, in order."""
    return np.concatenate([np.asarray(p, dtype=np.int64).ravel() for p in parts])


def follow(engine, comm: Comm) -> None:
    """Make rank 0's calls on ``engine`` until it says stop. SIGTERM and SIGINT are ignored meanwhile:
    the job's launcher signals every rank, and rank 0 ends the followers once its server has stopped."""
    engine.activate()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    caches: dict[int, object] = {}
    try:
        while True:
            message = comm.broadcast_ints()
            op, n_dropped = int(message[0]), int(message[1])
            for handle in message[2:2 + n_dropped]:
                caches.pop(int(handle), None)
            args = message[2 + n_dropped:]
            if op == STOP:
                return
            if op == PREFILL:
                handle, reserve, b, t = (int(v) for v in args[:4])
                ids, mask = args[4:4 + b * t].reshape(b, t), args[4 + b * t:].reshape(b, t)
                caches[handle], _ = engine.prefill_padded(ids, mask, reserve)
            elif op == DECODE:
                engine.decode(caches[int(args[0])], args[1:])
            elif op == SELECT:
                engine.select(caches[int(args[0])], args[1:].tolist())
            elif op == MERGE:
                engine.merge(caches.get(int(args[0])), caches[int(args[1])])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
