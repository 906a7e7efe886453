"""Every stored weight format side by side (issue 16): our predictor (float32, bf16, wint8 and wint4 in both
activation modes, fp8, wint2) and llama.cpp (F32, BF16, Q8_0, Q4_0) on the same random bf16 weights.

Per shape, one random bf16 HF checkpoint (seed 0); quantized Paddle checkpoints of it (release tensor
names; WINT2: the release mix on MoE shapes, routed experts WINT2 and the other linears wint4), each with
its exactly dequantized float32 twin; GGUFs written with ``gguf`` from the same HF folder (bench_llamacpp).
Every export and every engine runs in its own child process; peak RSS is that child's VmHWM. The timing
processes of a shape's engines run in ``--rounds`` interleaved rounds (A B C .. C B A ..), so the machine's
slow spells fall on every engine alike. Measured: prefill ms (the best round's median of ``--repeats``,
``--prompt`` tokens), greedy decode tok/s at batch 1 and 8 (best of ``--repeats`` x ``--rounds``,
``--new-tokens`` tokens), the bandwidth ceiling (measured read bandwidth / weight bytes a
batch-1 step reads in that format), and accuracy over ``--positions`` positions of one random sequence
against transformers (float32) on (a) the exactly dequantized weights of the format and (b) the original
bf16 weights: max |dlogit|, mean KL(ref || engine), top-1 agreement.

    python scripts/bench_formats.py --shape 0.3B --shape moe --json /tmp/formats.json

The JSON holds ``rows`` (one per engine and shape) and ``ratios`` = {shape: {"decode_b1", "decode_b8",
"prefill", "rss": {bf16_vs_llamacpp_bf16, wint8_vs_llamacpp_q8_0, wint4_vs_llamacpp_q4_0, fp8_vs_our_wint8,
wint2_vs_our_wint4, fp32_vs_llamacpp_f32, and the non-default activation mode's wint8/wint4 ratios as
``..._act_MODE``}}} (decode: ours/theirs tok/s; prefill: their ms / our ms; rss: ours/theirs, lower is
better). Checkpoints, GGUFs and reference logits are cached under ``--workdir``; exports are redone.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _formats_children import child_main, in_child  # noqa: E402
from _formats_prep import QUANT_METHODS, SHAPES, bytes_per_step, unavailable_reason  # noqa: E402
from _formats_report import accuracy, print_tables, ratios, row_name  # noqa: E402

OURS = (("float32", None), ("bfloat16", None), ("wint8", "float32"), ("wint8", "int8"), ("wint4", "float32"),
        ("wint4", "int8"), ("fp8", None), ("wint2", None))  # (format, activation mode; None: the default)
LLAMACPP = ("F32", "BF16", "Q8_0", "Q4_0")
QUANTIZED_GGUF = ("Q8_0", "Q4_0")  # their dequantized twin is an accuracy reference
MAX_SEQ_LEN = 512


def _fresh(path: Path, source: Path) -> bool:
    """``path`` exists and is not older than ``source`` when that exists (caches are rebuilt when the
    checkpoint is)."""
    return path.exists() and (not source.exists() or path.stat().st_mtime >= source.stat().st_mtime)


class Bench:
    def __init__(self, args):
        self.args = args
        self.script = str(Path(__file__).resolve())
        self.probe = None

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def child(self, role: str, *args) -> dict:
        return in_child(self.script, role, *args)

    # ---------------------------------------------------------------- inputs, cached under the workdir
    def checkpoint(self, shape: str) -> Path:
        folder = self.args.workdir / shape / "hf-bf16"
        if not (folder / "config.json").exists():
            self.log(f"{shape}: writing the random bf16 checkpoint")
            self.child("hf", str(folder), shape)
        return folder

    def quantized(self, root: Path, hf: Path, method: str) -> tuple[Path, Path]:
        out, twin = root / f"q-{method}", root / f"twin-{method}"
        made = out / "config.json"
        if not (_fresh(made, hf / "config.json") and self._twin_done(root, method, twin, made)):
            self.log(f"{root.name}: writing the {method} checkpoint and its dequantized twin")
            self.child("quantize", str(hf), str(out), str(twin), method)
        return out, twin

    def gguf(self, root: Path, hf: Path, qtype: str) -> tuple[Path, Path | None]:
        wanted = self.args.llamacpp_embedding
        embedding = wanted if qtype in QUANTIZED_GGUF and wanted not in ("same", qtype) else None
        stem = qtype if embedding is None else f"{qtype}-embd-{embedding}"
        path, twin = root / f"{stem}.gguf", (root / f"twin-{stem}" if qtype in QUANTIZED_GGUF else None)
        if not (_fresh(path, hf / "config.json") and (twin is None or self._twin_done(root, stem, twin, path))):
            self.log(f"{root.name}: writing {path.name}" + (" and its dequantized twin" if twin else ""))
            self.child("gguf", str(hf), str(path), qtype, embedding, None if twin is None else str(twin))
        return path, twin

    def _ref_npy(self, root: Path, name: str) -> Path:
        return root / "logits" / f"ref-{name}-{self.args.positions}.npy"

    def _twin_done(self, root: Path, name: str, twin: Path, made: Path) -> bool:
        """The twin of the file ``made`` exists, or its reference logits do (twins are deleted after use)."""
        return made.exists() and (_fresh(twin / "config.json", made) or _fresh(self._ref_npy(root, name), made))

    def reference(self, root: Path, name: str, folder: Path, vocab: int) -> np.ndarray:
        npy = self._ref_npy(root, name)
        if not _fresh(npy, folder / "config.json"):
            self.log(f"{root.name}: transformers logits on {folder.name}")
            npy.parent.mkdir(parents=True, exist_ok=True)
            self.child("reference", str(folder), vocab, self.args.threads, self.args.positions, str(npy))
        return np.load(npy)

    def accuracy(self, root: Path, name: str, got: Path, refs: dict[str, Path], vocab: int) -> dict:
        """{"dequantized": ..., "bf16": ...} metrics of the logits in ``got`` against each reference."""
        out, logits = {}, np.load(got)
        for ref, folder in refs.items():
            out[ref] = accuracy(logits, self.reference(root, ref if ref == "bf16" else name, folder, vocab))
        got.unlink()
        return out

    # ---------------------------------------------------------------- rows
    def ours(self, shape: str, config, hf: Path, fmt: str, act: str | None) -> dict:
        a, root = self.args, self.args.workdir / shape
        row = {"shape": shape, "engine": "ours", "format": fmt, "name": row_name("ours", fmt, act)}
        refs = {"bf16": hf}
        if fmt in QUANT_METHODS:
            reason = unavailable_reason(fmt, config)
            if reason is None and not self.probe["compact"]:
                reason = ("not available: this checkout's export() has no activations= option, i.e. no compact "
                          "quantized export yet (it would dequantize to float32 at export)")
            if reason:
                return {**row, "unavailable": reason}
            source, twin = self.quantized(root, hf, fmt)
            refs["dequantized"] = twin
            row["activations"] = act or self.probe["default_activations"]
            options = {"activations": row["activations"]}
        else:
            source, options = hf, {"weights": fmt}
        out = root / f"export-{fmt}-{act}"
        try:
            self.log(f"{shape}: {row['name']}: export")
            row.update(self.child("export", str(source), str(out), MAX_SEQ_LEN, options))
            formats = row.pop("weight_formats")
            row["stored_formats"] = sorted(set(formats.values()))
            row["bytes_per_step"] = bytes_per_step(config, formats, fmt)
            row["_timing"], row["_export"] = ("ours", str(out), a.threads, a.prompt, a.new_tokens, a.repeats), out
            if a.positions:
                self.log(f"{shape}: {row['name']}: logits of {a.positions} positions")
                npy = root / "logits" / f"{row['name'].replace(' ', '_')}.npy"
                npy.parent.mkdir(parents=True, exist_ok=True)
                self.child("ours-logits", str(out), a.threads, a.positions, str(npy))
                row["accuracy"] = self.accuracy(root, fmt, npy, refs, config.vocab_size)
        except RuntimeError as e:
            row["error"] = str(e)
            row.pop("_timing", None)
            shutil.rmtree(out, ignore_errors=True)
        return row

    def llamacpp(self, shape: str, config, hf: Path, qtype: str) -> dict:
        import bench_llamacpp

        a, root = self.args, self.args.workdir / shape
        row = {"shape": shape, "engine": "llama.cpp", "format": qtype, "name": row_name("llama.cpp", qtype)}
        if not bench_llamacpp.available():
            return {**row, "unavailable": "gguf and llama-cpp-python are not installed"}
        try:
            path, twin = self.gguf(root, hf, qtype)
            types = bench_llamacpp.gguf_types(path)
            row["weights_mb"], row["embedding_format"] = path.stat().st_size / 1e6, types["token_embd.weight"]
            row["bytes_per_step"] = bytes_per_step(config, types, qtype)
            row["_timing"] = ("llamacpp", str(path), config.vocab_size, a.threads, a.prompt, a.new_tokens, a.repeats)
            if a.positions:
                self.log(f"{shape}: {row['name']}: logits of {a.positions} positions")
                npy = root / "logits" / f"{row['name'].replace(' ', '_')}.npy"
                npy.parent.mkdir(parents=True, exist_ok=True)
                self.child("llamacpp-logits", str(path), config.vocab_size, a.threads, a.positions, str(npy))
                refs = {"bf16": hf, **({"dequantized": twin} if twin else {})}
                row["accuracy"] = self.accuracy(root, path.stem, npy, refs, config.vocab_size)
        except RuntimeError as e:
            row["error"] = str(e)
        return row

    def time_rows(self, shape: str, rows: list[dict]) -> None:
        """The timing children of every engine in ``--rounds`` interleaved rounds (the order reversed every
        other round), so a slow spell of the machine falls on every engine alike; per engine the best round
        (decode: most tok/s; prefill: fewest ms) and the largest peak RSS."""
        for rnd in range(self.args.rounds):
            for row in rows if rnd % 2 == 0 else rows[::-1]:
                self.log(f"{shape}: {row['name']}: timing, round {rnd + 1} of {self.args.rounds}")
                try:
                    merge_timing(row, self.child(*row["_timing"]))
                except RuntimeError as e:
                    row["error"] = str(e)

    def shape(self, shape: str, bandwidth: float) -> list[dict]:
        from ernie_paddle.config.text import ErnieConfig

        hf = self.checkpoint(shape)
        config = ErnieConfig.from_file(hf)
        rows = [self.ours(shape, config, hf, f, act) for f, act in OURS]
        rows += [self.llamacpp(shape, config, hf, q) for q in LLAMACPP]
        self.time_rows(shape, [r for r in rows if "_timing" in r])
        for row in rows:
            row.pop("_timing", None)
            shutil.rmtree(row.pop("_export", ""), ignore_errors=True)
        for row in rows:
            if row.get("bytes_per_step"):
                row["ceiling_tok_s_b1"] = bandwidth * 1e9 / row["bytes_per_step"]
        if not self.args.keep_twins:  # their logits are cached; a full-size float32 copy each
            for twin in (self.args.workdir / shape).glob("twin-*"):
                shutil.rmtree(twin, ignore_errors=True)
        return rows


def merge_timing(row: dict, timing: dict) -> None:
    """Fold one timing child's results into ``row``: the best decode and prefill, the largest peak RSS."""
    for key, value in timing.items():
        if key not in row or not isinstance(value, (int, float)):
            row[key] = value
        elif key.startswith("decode_tok_s"):
            row[key] = max(row[key], value)
        elif key == "prefill_ms":
            row[key] = min(row[key], value)
        elif key == "peak_rss_mb":
            row[key] = max(row[key], value)
        else:
            row[key] = value


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), action="append", help="repeatable (default: small)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timings per engine process (prefill: median)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every engine's timing process")
    parser.add_argument("--positions", type=int, default=256, help="accuracy positions (0: no accuracy table)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_formats"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--llamacpp-embedding", choices=("same", "BF16", "Q8_0"), default="same",
                        help="type of llama.cpp's embedding/tied head in Q8_0/Q4_0 files (same: quantized too)")
    parser.add_argument("--keep-twins", action="store_true", help="keep the dequantized float32 twins")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.positions > MAX_SEQ_LEN:
        parser.error(f"--positions must be <= {MAX_SEQ_LEN}")
    import bench_llamacpp
    from bench_predictor import measure_bandwidth

    bench = Bench(args)
    bench.probe = bench.child("probe")
    bandwidth = measure_bandwidth(args.threads)
    baseline = {"ours": bench.child("baseline", "ours")["peak_rss_mb"]}
    if bench_llamacpp.available():
        baseline["llama.cpp"] = bench.child("baseline", "llama.cpp")["peak_rss_mb"]
    bench.log(f"read bandwidth {bandwidth:.1f} GB/s; export probe {bench.probe}")
    rows, per_shape = [], {}
    for shape in args.shape or ["small"]:
        shape_rows = bench.shape(shape, bandwidth)
        rows += shape_rows
        per_shape[shape] = ratios({r["name"]: r for r in shape_rows if "decode_tok_s_b1" in r},
                                  bench.probe["default_activations"])
    result = {"threads": args.threads, "cpu": _cpu(), "bandwidth_gb_s": bandwidth, "prompt": args.prompt,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "rounds": args.rounds, "positions": args.positions,
              "default_activations": bench.probe["default_activations"], "process_baseline_rss_mb": baseline,
              "llamacpp_embedding": args.llamacpp_embedding,
              "rows": rows, "ratios": per_shape}
    print_tables(result, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
