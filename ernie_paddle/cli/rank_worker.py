"""Entry script of every rank: ``python -m paddle.distributed.launch ... rank_worker.py <ernie-paddle args>``.

It joins the process group, sends rank 0's console output to the launching process (through files in the
run folder), runs the ``ernie-paddle`` command line and records how the rank ended, so the launching
process can tell a rank that failed from one that died. Run as a script, it imports absolutely.
"""

from __future__ import annotations

import os
import sys
import traceback


def _fix_path() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)  # never let this folder's modules shadow others
    root = os.path.dirname(os.path.dirname(here))  # here is .../ernie_paddle/cli
    if root not in sys.path:
        sys.path.insert(0, root)


def run(argv: list[str]) -> int:
    from ernie_paddle.runtime.distributed import runinfo
    from ernie_paddle.runtime.distributed.comm import PEER_LOST_EXIT, PeerLost, get_comm

    runinfo.write_status("running")
    code, reason = 1, ""
    try:
        comm = get_comm()
        folder = runinfo.run_dir()
        if folder is not None and comm.rank == 0:  # only rank 0 speaks to the user
            sys.stdout = open(folder / "stdout", "w", buffering=1, encoding="utf-8")
            sys.stderr = open(folder / "stderr", "w", buffering=1, encoding="utf-8")
        from ernie_paddle.cli import main

        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except PeerLost as exc:
        code, reason = PEER_LOST_EXIT, str(exc)
        print(f"error: {exc}", file=sys.stderr)
    except BaseException as exc:  # noqa: B036 - report anything, then end the rank
        code, reason = 1, f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        runinfo.write_status("exited", code, reason)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    return code


if __name__ == "__main__":
    _fix_path()
    rc = run(sys.argv[1:])
    os._exit(rc)  # no teardown that could wait on a dead peer
