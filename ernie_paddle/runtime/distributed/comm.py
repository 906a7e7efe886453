"""The process group of a tensor-parallel job: paddle.distributed collectives with a watchdog.

Every collective runs under a deadline (``$ERNIE_PADDLE_TP_TIMEOUT`` seconds, default 300): when a peer
rank dies, gloo/NCCL usually fail at once ("connection reset by peer"), which becomes ``PeerLost``; when a
peer hangs instead, the watchdog ends this process after the deadline, naming the rank, so a job never
waits forever.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import paddle

from ernie_paddle.runtime.distributed import runinfo
from ernie_paddle.runtime.distributed.runinfo import PEER_LOST_EXIT, launched_world

__all__ = ["PEER_LOST_EXIT", "Comm", "PeerLost", "get_comm", "launched_world", "local_world_size"]


class PeerLost(RuntimeError):
    """A collective failed: some other rank of the job is gone. Not an ErnieError (exit 3, not 2)."""


def local_world_size() -> int:
    return int(os.environ.get("PADDLE_LOCAL_SIZE", "1"))


class Comm:
    """rank / world and the collectives the tensor-parallel model needs, each guarded by the watchdog."""

    def __init__(self, timeout: float | None = None):
        import paddle.distributed as dist

        self.rank, self.world = launched_world()
        if self.world > 1 and not dist.is_initialized():
            dist.init_parallel_env()
        if self.world > 1:
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._dist = dist
        self.timeout = float(timeout if timeout is not None else os.environ.get("ERNIE_PADDLE_TP_TIMEOUT", 300))
        self._busy: tuple[str, float] | None = None
        if self.world > 1:
            threading.Thread(target=self._watch, name="tp-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, x: paddle.Tensor) -> paddle.Tensor:
        """Sum ``x`` over all ranks, in place; returns ``x``."""
        if self.world > 1:
            self._run("all_reduce", self._dist.all_reduce, x)
        return x

    def broadcast_int(self, value: int, src: int = 0) -> int:
        """Rank ``src``'s ``value`` on every rank (e.g. a sampling seed)."""
        if self.world == 1:
            return value
        t = paddle.to_tensor([value], dtype="int64")
        self._run("broadcast", self._dist.broadcast, t, src)
        return int(t.numpy()[0])

    def broadcast_ints(self, values=None, src: int = 0) -> np.ndarray:
        """Rank ``src``'s 1-D int64 array (any length) on every rank; the other ranks pass nothing."""
        if self.world == 1:
            return np.asarray(values, dtype=np.int64)
        n = self.broadcast_int(len(values) if self.rank == src else 0, src)
        if self.rank == src:
            t = paddle.to_tensor(np.asarray(values, dtype=np.int64))
        else:
            t = paddle.zeros([n], dtype="int64")
        self._run("broadcast", self._dist.broadcast, t, src)
        return t.numpy()

    def barrier(self) -> None:
        if self.world > 1:
            t = paddle.zeros([1], dtype="float32")
            self._run("barrier", self._dist.all_reduce, t)

    def _run(self, what: str, fn, *args) -> None:
        self._busy = (what, time.monotonic())
        try:
            fn(*args)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise PeerLost(f"rank {self.rank}: {what} failed, a peer rank of this {self.world}-rank job is "
                           f"gone ({detail})") from None
        finally:
            self._busy = None

    # ------------------------------------------------------------------ watchdog
    def _watch(self) -> None:
        step = min(1.0, self.timeout / 10)
        while True:
            time.sleep(step)
            busy = self._busy
            if busy is not None and time.monotonic() - busy[1] > self.timeout:
                message = (f"rank {self.rank}: {busy[0]} did not complete within {self.timeout:g} s; a peer rank "
                           f"of this {self.world}-rank job hung or died (set ERNIE_PADDLE_TP_TIMEOUT to change)")
                fatal(message, PEER_LOST_EXIT)


def fatal(message: str, code: int) -> None:
    """Record ``message`` for the launching process, print it and end this process at once."""
    runinfo.write_status("exited", code, message)
    try:
        print(f"error: {message}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


_COMM: Comm | None = None


def get_comm() -> Comm:
    """The process-wide Comm (paddle.distributed is initialised on first use inside a launched job)."""
    global _COMM
    if _COMM is None:
        _COMM = Comm()
    return _COMM
