"""Start a command as a paddle.distributed job and report how it ended, naming any rank that failed.

``relaunch(script, argv, nproc)`` runs ``python -m paddle.distributed.launch --nproc_per_node N SCRIPT ARGV``
(with ``--nnodes``/``--master`` for several hosts; the CLI passes its per-rank entry script), shows rank 0's stdout and stderr as they come, and
returns an exit status: 0; 2 when the ranks refused the input (the message was already shown); 1 with a
message naming the rank when a rank died or failed. Logs of every rank stay in the run folder on failure.
SIGTERM and SIGINT are passed on: a job they stop ends with 0 when every rank exits 0 (a server that shut
down), else with 130 ("aborted", as a single process ends on Ctrl-C).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ernie_paddle.runtime.distributed import runinfo
from ernie_paddle.runtime.distributed.runinfo import PEER_LOST_EXIT

ABORTED = 130  # exit status of a job stopped by a signal before its ranks ended cleanly
_FAILED = re.compile(r"Container rank (\d+) status failed .*? code (-?\d+)")


class _Tail:
    """Copy what is appended to ``path`` onto ``out`` (a binary stream)."""

    def __init__(self, path: Path, out):
        self.path, self.out, self.offset = path, out, 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.out.write(data)
            self.out.flush()


def launch_command(script: Path, argv: list[str], nproc: int, log_dir: Path, nnodes: int = 1,
                   master: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", str(log_dir)]
    if nnodes > 1 or master:
        cmd += ["--nnodes", str(nnodes)]
    if master:
        cmd += ["--master", master]
    return cmd + [str(script), *argv]


def relaunch(script: Path, argv: list[str], nproc: int, nnodes: int = 1, master: str | None = None) -> int:
    """Run ``script ARGV`` (one rank's entry script) on ``nproc`` local ranks (of ``nproc * nnodes``); the
    exit status."""
    run = Path(tempfile.mkdtemp(prefix="ernie-paddle-tp-"))
    env = {**os.environ, runinfo.RUN_DIR_ENV: str(run)}
    cmd = launch_command(script, argv, nproc, run / "logs", nnodes, master)
    tails = [_Tail(run / "stdout", sys.stdout.buffer), _Tail(run / "stderr", sys.stderr.buffer)]
    stopped = False

    def stop(signum, _frame=None):
        nonlocal stopped
        stopped = True
        proc.send_signal(signum)  # the launcher stops its ranks

    with open(run / "launcher.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            while proc.poll() is None:
                try:
                    for t in tails:
                        t.pump()
                    time.sleep(0.05)
                except KeyboardInterrupt:
                    stop(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, previous)
    for t in tails:
        t.pump()
    code, message = diagnose(run, proc.returncode, stopped)
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
    if code in (0, 2, ABORTED):  # success, a user error already explained, or a stop asked for: no logs kept
        shutil.rmtree(run, ignore_errors=True)
    return code


def _signal_name(code: int) -> str:
    try:
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    except ValueError:
        return f"exit code {code}"


def diagnose(run: Path, launcher_rc: int, stopped: bool = False) -> tuple[int, str]:
    """(exit status, message) for a finished job from its rank status files and the launcher's log.

    ``stopped``: the job was stopped by a signal passed on to it (the launcher then exits non-zero).
    """
    statuses = runinfo.read_statuses(run)
    log = (run / "launcher.log").read_text(errors="replace") if (run / "launcher.log").exists() else ""
    launcher_codes = {int(r): int(c) for r, c in _FAILED.findall(log)}
    exited = {r: s for r, s in statuses.items() if s["state"] == "exited"}
    if (launcher_rc == 0 or stopped) and statuses and all(s["code"] == 0 for s in exited.values()) \
            and len(exited) == len(statuses):
        return 0, ""
    if stopped:
        return ABORTED, "aborted"
    logs = run / "logs"
    died = sorted(r for r, s in statuses.items() if s["state"] != "exited")
    if died:
        parts = []
        for r in died:
            how = _signal_name(launcher_codes[r]) if r in launcher_codes else "killed, crashed or hung"
            parts.append(f"rank {r} died without finishing ({how}; log: {logs / f'workerlog.{r}'})")
        return 1, "tensor-parallel job failed: " + "; ".join(parts)
    failed = {r: s for r, s in exited.items() if s["code"] not in (0, PEER_LOST_EXIT)}
    if failed and all(s["code"] == 2 for s in failed.values()):
        return 2, ""  # a user error, already printed by rank 0 (every rank saw the same input)
    if failed:
        parts = [f"rank {r} failed with exit code {s['code']}" + (f": {s['reason']}" if s["reason"] else "")
                 + f" (log: {logs / f'workerlog.{r}'})" for r, s in sorted(failed.items())]
        return 1, "tensor-parallel job failed: " + "; ".join(parts)
    lost = {r: s for r, s in exited.items() if s["code"] == PEER_LOST_EXIT}
    if lost:
        return 1, ("tensor-parallel job failed: a rank on another host died or hung: "
                   + "; ".join(s["reason"] for _, s in sorted(lost.items())) + f" (logs: {logs})")
    tail = "\n".join(log.strip().splitlines()[-5:])
    return 1, f"the paddle.distributed job failed to start (launcher exit {launcher_rc}); logs: {run}\n{tail}"
