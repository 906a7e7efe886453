"""The steps of bench_scale.py, each run in a child process that the parent watches.

Parent side (``run_step``): starts ``python _scale_steps.py RESULT KIND ARGS_JSON``, samples the child
tree's RSS every 0.2 s, kills the tree when it passes the RSS cap or the disk is nearly full, and returns
wall time, peak RSS (the larger of the child's own VmHWM, read at its exit, and the sampled peak of the
tree's summed VmRSS) and what the child reported. Child side: one function per KIND, run in-process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
MB = 1 << 20
POLL_S = 0.2


@dataclass
class StepRun:
    """What a child step did: ``status`` is ok, failed or killed (``reason`` says why)."""

    status: str
    wall_s: float
    peak_rss_mb: float
    reason: str = ""
    result: dict = field(default_factory=dict)


# ------------------------------------------------------------------ parent side
def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{key}:\s+(\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


def _kill_tree(pid: int) -> None:
    for p in reversed(_tree(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_step(kind: str, args: dict, result: Path, log: Path, cap_bytes: int, disk: Path,
             disk_reserve: int, env: dict, heartbeat=None) -> StepRun:
    """Run one child step; ``heartbeat(seconds, rss_bytes)`` is called about once a minute. The step is
    killed when its anonymous memory (RssAnon) passes ``cap_bytes``: mapped file pages also count in its RSS,
    which is reported, but the kernel reclaims them (a mapped run's RSS follows the page cache)."""
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(result), kind, json.dumps(args)],
                                cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT)
        peak, killed, beat = 0, "", start
        while proc.poll() is None:
            tree = _tree(proc.pid)
            rss = sum(_status_kb(p, "VmRSS") for p in tree) * 1024
            peak = max(peak, rss)
            if sum(_status_kb(p, "RssAnon") for p in tree) * 1024 > cap_bytes:
                killed = f"anonymous memory passed the cap of {cap_bytes / MB:.0f} MB"
            elif shutil.disk_usage(disk).free < disk_reserve:
                killed = f"free disk fell below {disk_reserve / MB:.0f} MB"
            if killed:
                _kill_tree(proc.pid)
                proc.wait()
                break
            if heartbeat and time.perf_counter() - beat > 60:
                beat = time.perf_counter()
                heartbeat(beat - start, rss)
            time.sleep(POLL_S)
    wall = time.perf_counter() - start
    report = json.loads(result.read_text()) if result.exists() else {}
    peak = max(peak, report.get("vmhwm_bytes", 0))
    if killed:
        return StepRun("killed", wall, peak / MB, killed)
    if proc.returncode != 0 or "error" in report:
        reason = report.get("error") or f"exit status {proc.returncode}"
        if reason.startswith("exit status"):  # a command's own one-line message says more
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            reason = tail[0] if tail else reason
        return StepRun("failed", wall, peak / MB, reason)
    return StepRun("ok", wall, peak / MB, result=report.get("result", {}))


# ------------------------------------------------------------------ child side
def read_bytes() -> int:
    """Bytes this process has had read from storage (page-cache misses), from /proc/self/io."""
    found = re.search(r"^read_bytes:\s+(\d+)", Path("/proc/self/io").read_text(), re.M)
    return int(found.group(1)) if found else 0


def _write(out: str, preset: str, layers: int | None, overrides: dict, seed: int, shard_size: str) -> dict:
    from ernie_paddle.devkit.scale_checkpoint import scaled_config, write_random_checkpoint

    report = write_random_checkpoint(out, scaled_config(preset, layers, **overrides), seed=seed,
                                     max_shard_size=shard_size, quiet=True)
    return {"bytes": report.bytes, "shards": report.shards, "tensors": report.tensors}


def _cli(argv: list[str]) -> dict:
    from ernie_paddle.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return {}


def _gguf(src: str, out: str, qtype: str, consume: bool, regenerate: dict | None = None,
          embedding: str | None = None) -> dict:
    from _scale_gguf import write_gguf_from_paddle

    write_gguf_from_paddle(Path(src), Path(out), qtype, consume=consume, quiet=True, regenerate=regenerate,
                           embedding=embedding)
    return {"bytes": Path(out).stat().st_size}


def _export(src: str, out: str, max_seq_len: int, consume: bool) -> dict:
    """``export`` of ``src`` (its float weights as stored); ``consume`` deletes each shard once streamed, so
    the export fits on a disk that cannot hold two copies (the checkpoint is gone afterwards)."""
    from ernie_paddle.runtime.predictor import export

    folder = export(src, out, max_seq_len=max_seq_len, max_batch=1, after_file=os.unlink if consume else None)
    return {"bytes": sum(p.stat().st_size for p in Path(folder).iterdir())}


def _decode(engine: str, path: str, ids: list[int], new_tokens: int, threads: int, options: dict) -> dict:
    import _scale_decode

    run = _scale_decode.ours if engine == "ours" else _scale_decode.llamacpp
    return run(Path(path), ids, new_tokens, threads, options)


KINDS = {"write": _write, "cli": _cli, "gguf": _gguf, "export": _export, "decode": _decode}


def _child(result: str, kind: str, args: str) -> int:
    sys.path.insert(0, str(SCRIPTS))
    out: dict = {}
    try:
        out["result"] = KINDS[kind](**json.loads(args))
        rc = 0
    except SystemExit as exc:
        out["error"] = f"exit status {exc.code}"
        rc = 1
    except Exception as exc:  # reported to the parent, which prints it in the step's row
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    out["vmhwm_bytes"] = _status_kb(os.getpid(), "VmHWM") * 1024
    Path(result).write_text(json.dumps(out))
    return rc


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
