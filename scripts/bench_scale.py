"""Issue 17's scale benchmark: real model sizes on one machine, each step in its own child process.

    python scripts/bench_scale.py [--preset 21B-A3B] [--layers N] [--set KEY=VALUE ...] [--workdir DIR]
                                  [--json OUT] [--direct] [--activations float32|int8]
                                  [--llamacpp-embedding BF16|same] [--quiet]

Steps, in this order (intermediates are deleted as soon as no later step needs them):
 1. write_bf16: a random checkpoint of the preset's dims in the release's Paddle layout (bf16, sharded,
    ``ernie_paddle.devkit.scale_checkpoint``), written piece by piece.
 2. quantize_wint4: ``ernie-paddle quantize --method wint4`` (skipped with ``--direct``).
 3. export_wint4: ``ernie-paddle export`` of that checkpoint (``--direct``: of the bf16 checkpoint with
    ``--quantization wint4``; ``--activations``: its wint4 linears' activation mode); the quantized
    checkpoint is deleted after it.
 4. generate_wint4: load the export as ``generate`` does and decode 64 greedy tokens; export deleted.
 5. gguf_q4_0 + llamacpp_q4_0: a llama.cpp Q4_0 GGUF of the same weights and the same decode; its embedding
    / tied head BF16 as in our export (equal bits; ``--llamacpp-embedding same``: Q4_0 too).
 6. export_bf16 + mmap_bf16: ``export`` of the bf16 checkpoint (its weights stay bf16), consuming the
    checkpoint's shards as it streams (a disk that holds one copy of the bf16 weights suffices), served with
    its weights memory-mapped (``load(..., mmap=True)``, what ``--mmap`` runs); export deleted.
 7. gguf_bf16 + llamacpp_bf16_mmap: a BF16 GGUF of the same weights, each tensor drawn again from the
    checkpoint's generator (the checkpoint is gone), decoded by llama.cpp with its file mapped.
A step the code cannot do yet is reported "not available" with the reason; a step whose anonymous memory
passes the cap (20 GB, or the machine's RAM - 2 GB) or that fills the disk is killed and reported "killed" (e.g. an
export that still materializes the float model). Free disk is checked first, against the fullest moment
of the plan. Peak RSS is the child's VmHWM (and the sampled peak of its process tree), in MB = 2^20 B.
``--json`` writes ``steps``, ``decode``, ``targets`` and ``targets_met`` (see ``_scale_report``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _scale_report import MB, RSS_LIMIT_MB, disk_phases, planner_figures, tables, targets  # noqa: E402
from _scale_steps import run_step  # noqa: E402

DISK_RESERVE = 2 << 30
GGUF_HEADER_SLACK = 64 * MB


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="21B-A3B", help="model family whose dims the checkpoint takes")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (fewer for a quick run)")
    ap.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                    metavar="KEY=VALUE", help="replace a config field, e.g. --set vocab_size=8192")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the files go (default: a temp folder, removed at the end; a given folder "
                         "keeps the step logs NAME.log)")
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    ap.add_argument("--direct", action="store_true", help="export wint4 straight from the bf16 checkpoint")
    ap.add_argument("--activations", choices=("float32", "int8"), default=None,
                    help="the wint4 export's activation mode (default: export's own)")
    ap.add_argument("--llamacpp-embedding", choices=("BF16", "same"), default="BF16",
                    help="type of the Q4_0 GGUF's embedding / tied head (BF16, the default: as our exports keep "
                         "it, equal bits; same: Q4_0 too)")
    ap.add_argument("--shard-size", default="4GB", help="shard size of the bf16 checkpoint")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-llamacpp", action="store_true", help="leave out the llama.cpp rows")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the final tables")
    return ap.parse_args(argv)


def llamacpp_missing() -> str:
    """Why the llama.cpp rows cannot run ("" when they can)."""
    try:
        import bench_llamacpp as bl
    except ImportError as exc:
        return f"cannot import scripts/bench_llamacpp.py: {exc}"
    if not bl.available():
        return "gguf and llama-cpp-python are not installed"
    used = ("gguf_name", "_add_config", "_KEEP_F32", "open_llama", "last_logits")  # the h-bench version's
    lacking = [n for n in used if not hasattr(bl, n)]
    return f"scripts/bench_llamacpp.py lacks {', '.join(lacking)}" if lacking else ""


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


class Bench:
    """Runs the steps and keeps their rows; a step whose input is missing is skipped with the reason."""

    def __init__(self, work: Path, planner: dict, args):
        self.work, self.planner, self.args = work, planner, args
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
        self.cap = min(RSS_LIMIT_MB * MB, mem_total - (2 << 30))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "ERNIE_PADDLE_HOME": str(work / "home")}
        self.steps: dict[str, dict] = {}
        self.decode: dict[str, dict] = {}

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def _row(self, name: str, status: str, reason: str = "", wall=None, peak=None) -> dict:
        figure, basis = self.planner.get(name, (None, "none: the planner has no figure for this step"))
        row = {"name": name, "status": status, "wall_s": wall, "peak_rss_mb": peak, "planner_mb": figure,
               "planner_basis": basis, "reason": reason}
        self.steps[name] = row
        return row

    def unavailable(self, name: str, reason: str, decode: str | None = None) -> None:
        self._row(name, "not available", reason)
        self.log(f"{name}: not available: {reason}")
        if decode:
            self.decode[decode] = {"engine": decode, "status": "not available", "reason": reason}

    def step(self, name: str, kind: str, args: dict, needs: tuple[str, ...] = (), decode: str | None = None):
        missing = [n for n in needs if self.steps.get(n, {}).get("status") != "ok"]
        if missing:
            reason = f"needs {missing[0]} ({self.steps.get(missing[0], {}).get('status', 'not run')})"
            self._row(name, "skipped", reason)
            if decode:
                self.decode[decode] = {"engine": decode, "status": "skipped", "reason": reason}
            return
        self.log(f"{name} ...")

        def beat(seconds: float, rss: int) -> None:
            free = shutil.disk_usage(self.work).free
            self.log(f"  {name}: {seconds:.0f} s, RSS {rss / MB:.0f} MB, disk free {free / MB:.0f} MB")

        run = run_step(kind, args, self.work / f"{name}.json", self.work / f"{name}.log", self.cap, self.work,
                       DISK_RESERVE, self.env, beat)
        row = self._row(name, run.status, run.reason, round(run.wall_s, 2), round(run.peak_rss_mb, 1))
        row["result"] = run.result
        self.log(f"{name}: {run.status} in {run.wall_s:.1f} s, peak RSS {run.peak_rss_mb:.0f} MB"
                 + (f" ({run.reason})" if run.reason else ""))
        if decode:
            self.decode[decode] = {"engine": decode, "status": run.status, "reason": run.reason,
                                   "peak_rss_mb": row["peak_rss_mb"], **run.result}


def main(argv=None) -> int:
    args = parse_args(argv)
    from _scale_gguf import data_bytes
    from _scale_gguf import plan as gguf_plan

    from ernie_paddle.devkit.scale_checkpoint import checkpoint_plan, scaled_config
    from ernie_paddle.io.shard_writer import parse_size

    cfg = scaled_config(args.preset, args.layers, **dict(args.overrides))
    shards = checkpoint_plan(cfg, args.shard_size)
    b_bytes = sum(s.nbytes for shard in shards for s in shard)
    llama_reason = "--no-llamacpp" if args.no_llamacpp else llamacpp_missing()
    ordered = [(s.name, s.shape) for shard in shards for s in shard]
    embedding = None if args.llamacpp_embedding == "same" else args.llamacpp_embedding
    gguf_sizes = {} if llama_reason else {q: data_bytes(gguf_plan(cfg, ordered, q, embedding)[0])
                                          + GGUF_HEADER_SLACK for q in ("Q4_0", "BF16")}
    phases = disk_phases(cfg, b_bytes, parse_size(args.shard_size), args.direct, gguf_sizes)
    need = max(phases.values()) + DISK_RESERVE
    own_work = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-scale-")) if own_work else args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need:
        fullest = max(phases, key=phases.get)
        print(f"bench_scale: needs {need / 1e9:.1f} GB free in {work} (fullest at {fullest}: "
              f"{phases[fullest] / 1e9:.1f} GB + {DISK_RESERVE / 1e9:.1f} GB reserve), has {free / 1e9:.1f} GB",
              file=sys.stderr)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    context = args.prompt_len + args.new_tokens
    bench = Bench(work, planner_figures(cfg, context, args.direct), args)
    bench.log(f"{args.preset} ({cfg.num_hidden_layers} layers): bf16 checkpoint {b_bytes / 1e9:.2f} GB in "
              f"{len(shards)} shards; disk needed {need / 1e9:.1f} GB of {free / 1e9:.1f} GB free in {work}")
    ids = np.random.default_rng(args.seed).integers(3, cfg.vocab_size, args.prompt_len).tolist()
    decode = dict(ids=ids, new_tokens=args.new_tokens, threads=args.threads)
    bf16, qckpt, export = work / "bf16", work / "wint4-checkpoint", work / "wint4-export"
    q4, bf16_gguf, offload = work / "q4_0.gguf", work / "bf16.gguf", work / "offload"
    try:
        bench.step("write_bf16", "write", dict(out=str(bf16), preset=args.preset, layers=args.layers,
                                               overrides=dict(args.overrides), seed=args.seed,
                                               shard_size=args.shard_size))
        export_args = ["export", str(bf16 if args.direct else qckpt), str(export), "--max-seq-len", str(context),
                       "--max-batch", "1", "-q"]
        if args.activations:
            export_args += ["--activations", args.activations]
        if args.direct:
            export_args += ["--quantization", "wint4"]
        else:
            bench.step("quantize_wint4", "cli", dict(argv=["quantize", str(bf16), str(qckpt), "--method", "wint4",
                                                           "-q", "--max-shard-size", args.shard_size]),
                       needs=("write_bf16",))
        bench.step("export_wint4", "cli", dict(argv=export_args),
                   needs=("write_bf16",) if args.direct else ("quantize_wint4",))
        remove(qckpt)
        bench.step("generate_wint4", "decode", dict(engine="ours", path=str(export), options={}, **decode),
                   needs=("export_wint4",), decode="ours wint4")
        remove(export)
        if llama_reason:
            for name, row in (("gguf_q4_0", None), ("llamacpp_q4_0", "llama.cpp Q4_0")):
                bench.unavailable(name, llama_reason, row)
        else:
            bench.step("gguf_q4_0", "gguf", dict(src=str(bf16), out=str(q4), qtype="Q4_0", consume=False,
                                                 embedding=embedding),
                       needs=("write_bf16",))
            bench.step("llamacpp_q4_0", "decode", dict(engine="llamacpp", path=str(q4), options={}, **decode),
                       needs=("gguf_q4_0",), decode="llama.cpp Q4_0")
            remove(q4)
        bench.step("export_bf16", "export", dict(src=str(bf16), out=str(offload), max_seq_len=context,
                                                 consume=True), needs=("write_bf16",))
        remove(bf16)
        bench.step("mmap_bf16", "decode", dict(engine="ours", path=str(offload), options={"mmap": True}, **decode),
                   needs=("export_bf16",), decode="ours bf16 mmap")
        remove(offload, work / "home")
        if llama_reason:
            for name, row in (("gguf_bf16", None), ("llamacpp_bf16_mmap", "llama.cpp BF16 mmap")):
                bench.unavailable(name, llama_reason, row)
        else:
            regenerate = dict(preset=args.preset, layers=args.layers, overrides=dict(args.overrides), seed=args.seed,
                              shard_size=args.shard_size)
            bench.step("gguf_bf16", "gguf", dict(src=str(bf16), out=str(bf16_gguf), qtype="BF16", consume=False,
                                                 regenerate=regenerate), needs=("write_bf16",))
            bench.step("llamacpp_bf16_mmap", "decode", dict(engine="llamacpp", path=str(bf16_gguf),
                                                            options={"use_mmap": True}, **decode),
                       needs=("gguf_bf16",), decode="llama.cpp BF16 mmap")
    finally:  # also the temporary folders of an interrupted or killed write
        remove(bf16, qckpt, export, q4, bf16_gguf, offload, work / "home", *work.glob(".*.tmp-*"))
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    goals = targets(bench.steps, bench.decode, parse_size(args.shard_size))
    report = {"preset": args.preset, "layers": cfg.num_hidden_layers, "overrides": dict(args.overrides),
              "direct": args.direct, "activations": args.activations,
              "llamacpp_embedding": args.llamacpp_embedding, "threads": args.threads, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "checkpoint_bytes": b_bytes, "rss_cap_mb": bench.cap / MB,
              "disk": {"free_mb": free / MB, "needed_mb": need / MB,
                       "phases_mb": {k: v / MB for k, v in phases.items()}},
              "steps": list(bench.steps.values()), "decode": list(bench.decode.values()),
              "targets": goals, "targets_met": all(t["met"] for t in goals)}
    print(tables(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
