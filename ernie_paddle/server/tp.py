"""``serve --tp N``: rank 0 serves HTTP over the tensor-parallel model; every other rank replays its steps.

Runs on every rank of the job that ``cli._tp.run_distributed`` starts. Each rank loads its part of the
model; rank 0 runs the app and the batching scheduler as the single-process server does, over a
``LeaderEngine`` that sends each step to the others, which ``follow`` it until rank 0 says stop.
"""

from __future__ import annotations

import signal

from ernie_paddle.errors import ErnieError
from ernie_paddle.server.state import Settings


def serve_tp(settings: Settings, moe: str, host: str = "127.0.0.1", port: int = 8000,
             log_level: str = "info") -> None:
    """Serve ``settings.model_path`` from this rank's part of the model until rank 0 is stopped."""
    from ernie_paddle.api import load
    from ernie_paddle.runtime.distributed import get_comm
    from ernie_paddle.runtime.distributed.steps import LeaderEngine, follow

    comm = get_comm()
    runtime = load(settings.model_path, device=settings.device, num_threads=settings.num_threads,
                   tp=comm.world, moe=moe)
    engine = runtime.step_engine()
    if comm.rank != 0:
        follow(engine, comm)
        return
    from ernie_paddle.server.app import run_server
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    leader = LeaderEngine(engine, comm)
    try:
        tokenizer = ErnieTokenizer.from_folder(settings.model_path)
        _absorb_stop_signals()
        run_server(settings, host, port, log_level, runtime=runtime, tokenizer=tokenizer, step_engine=leader)
    except SystemExit as exc:  # uvicorn did not start (e.g. the port is taken) and logged why
        if exc.code:
            raise ErnieError(f"the server did not start on {host}:{port}") from None
        raise
    finally:
        leader.close()  # a no-op when the scheduler already stopped the other ranks


def _absorb_stop_signals() -> None:
    """Make a stop by SIGTERM or SIGINT a clean end of rank 0: after its graceful shutdown uvicorn re-raises
    the signal it caught, which then meets these no-op handlers instead of killing the process."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
