"""The child-process roles of bench_formats.py: each runs in a fresh process (so peak RSS is that engine's
own VmHWM) and returns a JSON-able dict; ``in_child`` starts one and reads its result.

Roles: ``hf`` (the random bf16 checkpoint), ``quantize`` (a quantized checkpoint + dequantized twin),
``gguf`` (a GGUF + its dequantized twin), ``probe`` (what this checkout's export supports), ``baseline``
(an engine's RSS before any model), ``export``,
``ours`` / ``llamacpp`` (timing), ``ours-logits`` / ``llamacpp-logits`` / ``reference`` (logits of every
position of the accuracy sequence, saved as .npy).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ACCURACY_SEED, TIMING_SEED = 1, 0


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timing_ids(vocab: int, batch: int, prompt: int) -> np.ndarray:
    return np.random.default_rng(TIMING_SEED).integers(3, vocab, size=(batch, prompt))


def accuracy_ids(vocab: int, positions: int) -> np.ndarray:
    return np.random.default_rng(ACCURACY_SEED).integers(3, vocab, size=positions)


def probe() -> dict:
    """Whether export() writes compact quantized weights with an activation mode, and its default mode."""
    import importlib
    import inspect

    mod = importlib.import_module("ernie_paddle.runtime.predictor.export")
    params = inspect.signature(mod.export).parameters
    if "activations" not in params:
        return {"compact": False, "default_activations": None}
    default = params["activations"].default
    if not isinstance(default, str):  # None: the export's one constant
        default = getattr(mod, "DEFAULT_ACTIVATIONS", "float32")
    if default == "auto":  # what a CPU export with the compiled operators resolves it to, for wint8/wint4
        default = mod.resolve_activations("auto", native=mod.native_ops("cpu", "float32") is not None,
                                          int8_linears=True)
    return {"compact": True, "default_activations": default}


def baseline(engine: str) -> dict:
    """Peak RSS of a process that has imported an engine and nothing else (ours: paddle, the package and
    its compiled operators; llama.cpp: llama-cpp-python with its backend initialised)."""
    if engine == "ours":
        import paddle.inference  # noqa: F401

        from ernie_paddle.api import load  # noqa: F401
        from ernie_paddle.kernels import predictor_ops

        predictor_ops.get()
    else:
        import llama_cpp

        llama_cpp.llama_backend_init()
    return {"peak_rss_mb": vm_hwm_mb()}


def export(source: str, out: str, max_seq_len: int, options: dict) -> dict:
    from ernie_paddle.runtime.predictor import export
    from ernie_paddle.runtime.predictor.manifest import read_manifest

    start = time.perf_counter()
    export(source, out, max_seq_len=max_seq_len, max_batch=8, overwrite=True, **options)
    manifest = read_manifest(out)
    return {"export_s": time.perf_counter() - start, "export_peak_rss_mb": vm_hwm_mb(),
            "weights_mb": sum((Path(out) / name).stat().st_size for name in ("step.pdiparams", "weights.bin")
                              if (Path(out) / name).exists()) / 1e6,
            "weight_formats": manifest.get("weight_formats", {}), "manifest_weights": manifest.get("weights", {})}


def ours(out: str, threads: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    from ernie_paddle.api import load

    rt = load(out, num_threads=threads)
    model = rt.model
    ids = timing_ids(rt.config.vocab_size, 8, prompt)
    model.logits(ids[:1], model.new_cache(prompt), last_only=True)  # warm-up
    prefill = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.logits(ids[:1], model.new_cache(prompt), last_only=True)
        prefill.append(time.perf_counter() - start)
    row = {"prefill_ms": 1e3 * statistics.median(prefill)}
    for batch in (1, 8):
        best = 0.0
        for _ in range(repeats):
            stamps = [time.perf_counter() for _ in rt.stream(ids[:batch], max_new_tokens=new_tokens,
                                                             stop_token_ids=[])]
            best = max(best, batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]))
        row[f"decode_tok_s_b{batch}"] = best
    row["peak_rss_mb"] = vm_hwm_mb()
    return row


def ours_logits(out: str, threads: int, positions: int, npy: str) -> dict:
    from ernie_paddle.api import load

    rt = load(out, num_threads=threads)
    ids = accuracy_ids(rt.config.vocab_size, positions)[None]
    np.save(npy, rt.model.logits(ids, rt.model.new_cache(positions))[0].astype(np.float32))
    return {}


def llamacpp(path: str, vocab: int, threads: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    import bench_llamacpp

    row = bench_llamacpp.time_llamacpp(Path(path), timing_ids(vocab, 8, prompt), new_tokens, repeats, threads)
    return {**row, "peak_rss_mb": vm_hwm_mb()}


def llamacpp_logits(path: str, vocab: int, threads: int, positions: int, npy: str) -> dict:
    import bench_llamacpp

    np.save(npy, bench_llamacpp.logits_llamacpp(Path(path), accuracy_ids(vocab, positions), threads))
    return {}


def reference(folder: str, vocab: int, threads: int, positions: int, npy: str) -> dict:
    """transformers (Ernie4_5ForCausalLM / Ernie4_5_MoeForCausalLM, float32, eager) on ``folder``."""
    import torch

    from converters.parity import load_reference, reference_logits

    torch.set_num_threads(threads)
    ids = accuracy_ids(vocab, positions)[None]
    np.save(npy, reference_logits(load_reference(folder), ids, np.ones_like(ids))[0].astype(np.float32))
    return {}


def hf(folder: str, shape: str) -> dict:
    from _formats_prep import make_hf_checkpoint

    make_hf_checkpoint(Path(folder), shape)
    return {}


def quantize(source: str, out: str, twin: str, method: str) -> dict:
    from _formats_prep import write_quantized

    start = time.perf_counter()
    write_quantized(Path(source), Path(out), Path(twin), method)
    return {"seconds": time.perf_counter() - start}


def gguf(folder: str, path: str, qtype: str, embedding: str | None, twin: str | None) -> dict:
    import bench_llamacpp

    start = time.perf_counter()
    bench_llamacpp.write_gguf(Path(folder), Path(path), qtype, embedding)
    if twin:
        bench_llamacpp.write_dequantized_twin(Path(folder), Path(path), Path(twin))
    return {"seconds": time.perf_counter() - start}


ROLES = {"hf": hf, "baseline": baseline, "quantize": quantize, "gguf": gguf, "probe": probe, "export": export,
         "ours": ours, "ours-logits": ours_logits, "llamacpp": llamacpp, "llamacpp-logits": llamacpp_logits,
         "reference": reference}


def child_main(spec: str) -> None:
    """Run one role (``spec``: JSON {"role": name, "args": [...]}) and print its result as the last line."""
    call = json.loads(spec)
    print(json.dumps(ROLES[call["role"]](*call["args"])), flush=True)


def in_child(script: str, role: str, *args) -> dict:
    """Run ``role`` in a fresh ``python script --child``; a failure raises with the child's stderr tail."""
    spec = json.dumps({"role": role, "args": list(args)})
    proc = subprocess.run([sys.executable, script, "--child", spec], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {role} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
