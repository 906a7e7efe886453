"""Run an export folder with ``paddle.inference``: the ``Predictor``, its KV buffer, and a runtime.

``Predictor`` wraps ``paddle.inference.Config`` + ``create_predictor`` (oneDNN and a thread count on CPU,
the GPU when Paddle has CUDA). The KV buffer is a Paddle tensor allocated once per generation (grown by
doubling when it fills) and handed to the predictor with ``share_external_data``: the program writes each
step's keys/values into it in place, so nothing copies the cache between steps; the other inputs are a
few int64 values per token. ``PredictorModel`` gives the predictor the call signature of
``ErnieForCausalLM`` so that sampling, batching and streaming are the very code dygraph uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.inference as pdi

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.generation import read_generation_config
from ernie_paddle.runtime.loading import (
    ErnieRuntime,
    available_cores,
    resolve_device,
    resolve_dtype,
    tune_cpu_math,
)
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor.program import INPUT_NAMES

ONEDNN_NOTE = """oneDNN is off by default on CPU: with it, every decode step changes the key length, so each op
re-creates its oneDNN primitive (about 1 ms per op); decode of the 0.3B shape ran several times slower than
Paddle's plain CPU kernels (MKL sgemm). ``onednn=True`` or ERNIE_PADDLE_ONEDNN=1 turns it back on."""


@contextlib.contextmanager
def _quiet_stdout():
    """Paddle's oneDNN passes print debug lines on the C stdout; keep them out of command output."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _load_native_ops(folder: Path, device: str, version) -> None:
    """Register the compiled CPU operators that a "native" program calls (before the predictor exists);
    a program traced by another version may call operators this version no longer has."""
    from ernie_paddle.kernels import predictor_ops
    from ernie_paddle.runtime.predictor.program import PROGRAM_VERSION

    if version != PROGRAM_VERSION:
        raise ErnieError(f"this export's program (version {version}) calls compiled operators of another "
                         f"ernie-paddle (program version {PROGRAM_VERSION}); export the checkpoint again", folder)
    if not device.startswith("cpu"):
        raise ErnieError("this export was made for CPU (compiled CPU operators); export again on the GPU host",
                         folder)
    if predictor_ops.get() is None:
        raise ErnieError("this export calls ernie-paddle's compiled CPU operators, which cannot be built here "
                         f"({predictor_ops.build_error()}); export again with ERNIE_PADDLE_NATIVE_OPS=0", folder)


class Predictor:
    """One ``paddle.inference`` predictor over ``step.json``/``step.pdiparams`` of a verified export."""

    def __init__(self, folder, device: str | None = None, num_threads: int | None = None,
                 onednn: bool | None = None):
        self.folder = Path(folder)
        self.manifest = mf.verify_export(self.folder)
        self.config = ErnieConfig.from_file(self.folder)
        self.dtype = self.manifest["dtype"]
        self.max_seq_len = int(self.manifest["max_seq_len"])
        self.max_batch = int(self.manifest["max_batch"])
        self.device = resolve_device(device)
        if self.device == "cpu" and self.dtype != "float32":
            raise ErnieError(f"this export computes in {self.dtype}, which Paddle cannot run on CPU; export "
                             "again with --dtype float32 for CPU", self.folder)
        self.ops = self.manifest["program"].get("ops", "paddle")
        if self.ops == "native":
            _load_native_ops(self.folder, self.device, self.manifest["program"].get("version"))
        cfg = pdi.Config(str(self.folder / mf.PROGRAM), str(self.folder / mf.PARAMS))
        if self.device.startswith("gpu"):
            cfg.enable_use_gpu(256, int(self.device.partition(":")[2] or 0))
            paddle.set_device(self.device)
        else:
            tune_cpu_math()  # MKL's AVX2 kernels on AMD: must happen before the process's first matmul
            cfg.disable_gpu()
            if onednn if onednn is not None else os.environ.get("ERNIE_PADDLE_ONEDNN", "") == "1":
                cfg.enable_onednn()
            else:  # measured: oneDNN re-creates primitives as the cached length changes (see ONEDNN_NOTE)
                cfg.disable_onednn()
            cfg.set_cpu_math_library_num_threads(num_threads or available_cores())
            paddle.set_device("cpu")
        cfg.disable_glog_info()
        cfg.switch_ir_optim(True)
        with _quiet_stdout():
            self._pred = pdi.create_predictor(cfg)
        names = self._pred.get_input_names()
        if sorted(names) != sorted(INPUT_NAMES):
            raise ErnieError(f"the program's inputs {names} are not {list(INPUT_NAMES)}; re-export", self.folder)
        self._in = {n: self._pred.get_input_handle(n) for n in names}
        self._out = self._pred.get_output_handle(self._pred.get_output_names()[0])
        self._first = True

    def new_kv(self, batch: int, capacity: int) -> paddle.Tensor:
        c = self.config
        return paddle.zeros([c.num_hidden_layers, 2, batch, c.num_key_value_heads, capacity, c.head_dim],
                            dtype=self.dtype)

    def run(self, ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray, start: int,
            logit_index: np.ndarray, kv: paddle.Tensor) -> np.ndarray:
        """Logits [B, K, V] float32; writes the keys/values of ``ids`` into ``kv`` columns start..start+T."""
        b, t = ids.shape
        if b > self.max_batch:
            raise ErnieError(f"batch of {b} exceeds this export's --max-batch {self.max_batch}", self.folder)
        if start + t > self.max_seq_len:
            raise ErnieError(f"sequence of {start + t} tokens exceeds this export's --max-seq-len "
                             f"{self.max_seq_len}", self.folder)
        self._in["input_ids"].copy_from_cpu(np.ascontiguousarray(ids, dtype=np.int64))
        self._in["positions"].copy_from_cpu(np.ascontiguousarray(positions, dtype=np.int64))
        self._in["key_mask"].copy_from_cpu(np.ascontiguousarray(key_mask, dtype=np.int64))
        self._in["start"].copy_from_cpu(np.array([start], dtype=np.int64))
        self._in["logit_index"].copy_from_cpu(np.ascontiguousarray(logit_index, dtype=np.int64))
        self._in["kv"].share_external_data(kv)
        if self._first:  # the first run builds oneDNN primitives, which print to stdout
            with _quiet_stdout():
                self._pred.run()
            self._first = False
        else:
            self._pred.run()
        return self._out.copy_to_cpu()


class PredictorCache:
    """The KV buffer of one batch plus, like ``KVCache``, the key padding mask and real-token counts."""

    def __init__(self, predictor: Predictor, capacity: int = 0):
        self.predictor = predictor
        self.capacity = capacity
        self.length = 0
        self.kv: paddle.Tensor | None = None
        self.key_mask: np.ndarray | None = None  # int64 [B, length], 1 = real token
        self.seen: np.ndarray | None = None  # int64 [B, 1]

    def prepare(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions [B, T] for new tokens with padding ``mask`` [B, T], and the key mask [B, length + T].

        Positions count real tokens only, exactly as ``KVCache.positions_and_mask``.
        """
        b, t = mask.shape
        end = self.length + t
        if self.kv is None:
            self.kv = self.predictor.new_kv(b, max(end, self.capacity))
            self.key_mask, self.seen = np.zeros((b, 0), np.int64), np.zeros((b, 1), np.int64)
        elif end > self.kv.shape[4]:
            self._grow(max(end, 2 * self.kv.shape[4]))
        pos = np.clip(self.seen + np.cumsum(mask, axis=1) - 1, 0, None)
        return pos, np.concatenate([self.key_mask, mask], axis=1)

    def advance(self, key_mask: np.ndarray) -> None:
        self.key_mask = key_mask
        self.length = key_mask.shape[1]
        self.seen = key_mask.sum(axis=1, keepdims=True)

    def _grow(self, capacity: int) -> None:
        kv = self.predictor.new_kv(self.kv.shape[2], capacity)
        kv[:, :, :, :, :self.length] = self.kv[:, :, :, :, :self.length]
        self.kv = kv
        self.capacity = capacity


class PredictorModel:
    """``ErnieForCausalLM``'s call interface (``config``, ``new_cache``, ``__call__``) over a Predictor."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.config = predictor.config

    def new_cache(self, capacity: int = 0) -> PredictorCache:
        return PredictorCache(self.predictor, capacity)

    def __call__(self, input_ids, cache: PredictorCache | None = None, attention_mask=None,
                 last_only: bool = False) -> paddle.Tensor:
        return paddle.to_tensor(self.logits(input_ids, cache, attention_mask, last_only))

    def logits(self, input_ids, cache: PredictorCache | None = None, attention_mask=None,
               last_only: bool = False) -> np.ndarray:
        """Float32 logits [B, T, V] (or [B, 1, V]) as numpy; ``cache`` None means a one-off forward."""
        ids = np.asarray(input_ids.numpy() if isinstance(input_ids, paddle.Tensor) else input_ids, np.int64)
        b, t = ids.shape
        if attention_mask is None:
            mask = np.ones((b, t), np.int64)
        else:
            m = attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor) else attention_mask
            mask = np.asarray(m, dtype=np.int64).reshape(b, t)
        state = cache if cache is not None else PredictorCache(self.predictor, t)
        start = state.length
        positions, key_mask = state.prepare(mask)
        index = np.array([t - 1] if last_only else np.arange(t), dtype=np.int64)
        out = self.predictor.run(ids, positions, key_mask, start, index, state.kv)
        state.advance(key_mask)
        return out


class PredictorRuntime(ErnieRuntime):
    """``ErnieRuntime``'s interface (``config``, ``logits``, ``generate``, ``stream``) backed by a Predictor."""

    engine = "predictor"

    def __init__(self, predictor: Predictor):
        super().__init__(PredictorModel(predictor), predictor.folder, predictor.device, predictor.dtype,
                         read_generation_config(predictor.folder))
        self.predictor = predictor
        self.manifest = predictor.manifest

    def logits(self, ids, attention_mask=None) -> np.ndarray:
        from ernie_paddle.runtime.generation import pad_batch

        ids, mask = pad_batch(ids)
        if attention_mask is not None:
            m = attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor) else attention_mask
            mask = np.asarray(m, dtype=np.int64).reshape(ids.shape)
        return self.model.logits(ids, None, mask)

    def make_engine(self):
        """The server's step engine (prefill / decode / merge / select) over this predictor."""
        from ernie_paddle.runtime.predictor.engine import PredictorEngine

        return PredictorEngine(self.model)


def load_predictor(path, dtype: str | None = None, device: str | None = None,
                   num_threads: int | None = None) -> PredictorRuntime:
    """A PredictorRuntime for an export folder, or for a checkpoint via the export cache (exported on
    first use)."""
    from ernie_paddle.runtime.predictor.export import export_cached, supports

    folder = Path(path)
    dev = resolve_device(device)
    want = resolve_dtype(dtype, dev)
    if not mf.is_export_folder(folder):
        reason = supports(ErnieConfig.from_file(folder))
        if reason:
            raise ErnieError(reason, folder)
        folder = export_cached(folder, want, dev)
    elif dtype is not None and want != mf.read_manifest(folder)["dtype"]:
        raise ErnieError(f"this export computes in {mf.read_manifest(folder)['dtype']}, not {want}; export "
                         "again for that dtype", folder)
    return PredictorRuntime(Predictor(folder, dev, num_threads))
