"""Per-rank status files shared by the launching process and its workers (one run folder per job).

The launching process sets ``$ERNIE_PADDLE_TP_RUN_DIR``; each worker writes ``rank{r}.json`` with state
"running" when it starts and "exited" (code, reason) when it ends in any way it can observe. A rank whose
file still says "running" after the job ended died without a word (killed, or crashed in native code).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_DIR_ENV = "ERNIE_PADDLE_TP_RUN_DIR"
PEER_LOST_EXIT = 3  # exit status of a rank that saw a peer rank die or hang


def launched_world() -> tuple[int, int]:
    """(rank, world size) from the environment paddle.distributed.launch sets; (0, 1) outside a job."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def write_status(state: str, code: int | None = None, reason: str = "") -> None:
    """Record this rank's state (no-op outside a job started by ``ernie_paddle.runtime.distributed.launcher``)."""
    folder = run_dir()
    if folder is None:
        return
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    path = folder / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "pid": os.getpid(), "state": state, "code": code,
                               "reason": reason}))
    os.replace(tmp, path)


def read_statuses(folder: Path) -> dict[int, dict]:
    """rank -> last recorded status, for the ranks that ran on this host."""
    out = {}
    for path in sorted(Path(folder).glob("rank*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out[int(data["rank"])] = data
    return out
