"""Run an export folder with ``paddle.inference``: the ``Predictor``, one step of the exported program.

``Predictor`` wraps ``paddle.inference.Config`` + ``create_predictor`` (oneDNN and a thread count on CPU,
the GPU when Paddle has CUDA). The KV buffer (``predictor.model.PredictorCache``) is handed to the
predictor with ``share_external_data``: the program writes each step's keys/values into it in place, so
nothing copies the cache between steps; the other inputs are a few int64 values per token.
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
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor import weight_file
from ernie_paddle.runtime.predictor.program import INPUT_NAMES, PROGRAM_VERSION, weight_input_name
from ernie_paddle.runtime.predictor.stored_weights import WEIGHT_FORMATS
from ernie_paddle.runtime.setup import setup

ONEDNN_NOTE = """oneDNN is off by default on CPU: with it, every decode step changes the key length, so each op
re-creates its oneDNN primitive (about 1 ms per op); decode of the 0.3B shape ran several times slower than
Paddle's plain CPU kernels (MKL sgemm). ``onednn=True`` or ERNIE_PADDLE_ONEDNN=1 turns it back on."""

# Paddle's executor frees each dead tensor through a task on its garbage-collector thread when
# FLAGS_eager_delete_tensor_gb is 0 (its default): a thread wake-up per freed tensor, hundreds per step. Freeing
# once 10 MB have piled up cut a decode step's fixed cost from about 1.8 ms to 0.95 ms (a tiny 8-layer MoE,
# 2 cores); the held garbage is at most that much. An explicit FLAGS_eager_delete_tensor_gb in the environment wins.
GC_THRESHOLD_GB = 0.01


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
                 onednn: bool | None = None, mmap: bool | None = False):
        """``mmap``: map the export's ``weights.bin`` instead of reading it into memory (see ``weight_file``;
        None: map it when it does not fit in the memory available)."""
        self.folder = Path(folder)
        self.manifest = mf.verify_export(self.folder)
        self.config = ErnieConfig.from_file(self.folder)
        self.dtype = self.manifest["dtype"]
        self.max_seq_len = int(self.manifest["max_seq_len"])
        self.max_batch = int(self.manifest["max_batch"])
        place = setup(device, None, num_threads)  # MKL's AVX2 kernels on AMD: before the first matmul
        self.device = place.device
        if self.device == "cpu" and self.dtype != "float32":
            raise ErnieError(f"this export computes in {self.dtype}, which Paddle cannot run on CPU; export "
                             "again with --dtype float32 for CPU", self.folder)
        self.ops = self.manifest["program"].get("ops", "paddle")
        unknown = mf.weight_formats(self.manifest) - set(WEIGHT_FORMATS)
        if unknown:
            raise ErnieError(f"this export stores weights as {', '.join(sorted(unknown))}, which this ernie-paddle "
                             f"cannot run (it knows {', '.join(WEIGHT_FORMATS)}); export the checkpoint again",
                             self.folder)
        if self.ops == "native":
            _load_native_ops(self.folder, self.device, self.manifest["program"].get("version"))
        cfg = pdi.Config(str(self.folder / mf.PROGRAM), str(self.folder / mf.PARAMS))
        if self.device.startswith("gpu"):
            cfg.enable_use_gpu(256, int(self.device.partition(":")[2] or 0))
        else:
            cfg.disable_gpu()
            if onednn if onednn is not None else os.environ.get("ERNIE_PADDLE_ONEDNN", "") == "1":
                cfg.enable_onednn()
            else:  # measured: oneDNN re-creates primitives as the cached length changes (see ONEDNN_NOTE)
                cfg.disable_onednn()
            cfg.set_cpu_math_library_num_threads(place.threads)
        cfg.disable_glog_info()
        cfg.switch_ir_optim(True)
        if "FLAGS_eager_delete_tensor_gb" not in os.environ:  # read when the predictor's executor is built
            paddle.set_flags({"FLAGS_eager_delete_tensor_gb": GC_THRESHOLD_GB})
        with _quiet_stdout():
            self._pred = pdi.create_predictor(cfg)
        entries = weight_file.entries_from_manifest(self.manifest, self.folder)
        expected = [*INPUT_NAMES, *map(weight_input_name, range(len(entries)))]
        names = self._pred.get_input_names()
        if sorted(names) != sorted(expected):
            raise ErnieError(f"the program's inputs {names} are not {expected}; re-export", self.folder)
        self._in = {n: self._pred.get_input_handle(n) for n in names}
        mmap = weight_file.should_map(weight_file.file_bytes(entries)) if mmap is None else mmap
        self._weights, self.weight_buffers = weight_file.open_weights(self.folder, entries, mmap)
        self.mmap = self.weight_buffers is not None and self.weight_buffers.mapped is not None
        for i, e in enumerate(entries):  # shared once: the predictor reads them in place at every run
            self._in[weight_input_name(i)].share_external_data(self._weights[e.name])
        self._out = self._pred.get_output_handle(self._pred.get_output_names()[0])
        self._first = True

    def tokens_per_run(self) -> int | None:
        """1 when the mapped experts exceed the mapped-page budget (a prompt then runs a token at a time, so
        that no run pages in more than one token's experts: the resident set stays bounded), else None (the
        whole prompt in one run)."""
        buffers = self.weight_buffers
        if self.mmap and buffers.mapped.nbytes > buffers.budget:
            return 1
        return None

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
        if self.mmap:
            self.weight_buffers.trim()
        return self._out.copy_to_cpu()
