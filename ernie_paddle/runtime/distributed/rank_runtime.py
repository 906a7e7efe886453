"""Load this rank's part of a checkpoint into the tensor-parallel model and wrap it as a runtime.

Two sources: a folder written by ``ernie-paddle convert SRC DST --tp N`` (``DST/rank{r}/`` holds exactly
this rank's tensors; ``tp_split.json`` names the degree), or a full checkpoint (Paddle or HF layout),
which is read one tensor group at a time and cut on the fly with ``converters.tp_split.rank_ranges`` —
the same rule the converter splits with. Under expert parallelism a rank never reads the experts that
other ranks own.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import paddle

from converters import tp_split
from converters.rules import QUANT_SUFFIXES
from converters.tensor_groups import plan_groups
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.runtime.distributed.comm import Comm, get_comm, local_world_size
from ernie_paddle.runtime.distributed.model import MOE_MODES, RankShard, TPErnieForCausalLM
from ernie_paddle.runtime.generation import read_generation_config
from ernie_paddle.runtime.quantized_weights import fill_quantized
from ernie_paddle.runtime.quantized_weights import resolve as resolve_quantization
from ernie_paddle.runtime.setup import resolve_device, setup
from ernie_paddle.runtime.text import TEXT_FAMILIES, ErnieRuntime
from ernie_paddle.runtime.weights import default_dtype, load_weights, mtp_layers


def rank_slice(key: str, arr: np.ndarray, config: ErnieConfig, tp: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s part of weight ``key`` [in, out] of the full model (itself when replicated)."""
    spec = tp_split.rank_ranges(key, config, tp, rank)
    if spec is None or tp == 1:
        return arr
    if arr.ndim != 2:
        raise ErnieError(f"tensor {key!r} of shape {list(arr.shape)}: only 2-D weights can be split for "
                         "tensor parallelism")
    axis = 1 if spec[0] == "N" else 0
    parts = [arr[:, a:b] if axis else arr[a:b] for a, b in spec[1]]
    return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis))


def is_split_folder(path) -> bool:
    return (Path(path) / tp_split.MANIFEST).is_file()


def _full_tensors(ckpt, config: ErnieConfig, plan: RankShard, dtype: str):
    """(parameter name, this rank's array) from a full checkpoint; unowned experts are never read."""
    for group in plan_groups(ckpt, "paddle", dtype):
        names = [plan.param_name(o.name, config) for o in group.outputs]
        if all(n is None for n in names):
            continue
        for out, name, arr in zip(group.outputs, names, group.compute(ckpt)):
            if name is not None:
                yield name, rank_slice(out.name, arr, config, plan.tp, plan.rank) if plan.sliced(out.name) else arr


def _split_tensors(ckpt):
    for key in ckpt.keys():
        if key.endswith(QUANT_SUFFIXES):
            raise ErnieError(f"tensor {key!r} is quantized; the tensor-parallel runtime loads float "
                             "weights only (load the unsplit checkpoint after dequantizing it)", ckpt.folder)
        yield key, ckpt.get(key)


def open_rank_source(path, plan: RankShard):
    """(config, checkpoint, tensor iterator factory) for this rank, from a split folder or a full one."""
    path = Path(path)
    if is_split_folder(path):
        degree = int(json.loads((path / tp_split.MANIFEST).read_text())["tp"])
        if degree != plan.tp:
            raise ErnieError(f"this folder is split for --tp {degree}, the job has {plan.tp} ranks", path)
        if plan.moe == "ep":
            raise ErnieError("a split folder holds every expert cut along its width (tensor-parallel "
                             "experts); expert parallelism needs the unsplit checkpoint, or use --moe tp", path)
        config = ErnieConfig.from_file(path)
        ckpt = open_checkpoint(path / f"rank{plan.rank}", config)
        return config, ckpt, lambda cfg, dtype: _split_tensors(ckpt)
    ckpt = open_checkpoint(path)
    config = ckpt.config.replace(num_nextn_predict_layers=mtp_layers(ckpt))
    return config, ckpt, lambda cfg, dtype: _full_tensors(ckpt, cfg, plan, dtype)


class TPRuntime(ErnieRuntime):
    """ErnieRuntime over the rank-local model; every rank must make the same calls in the same order.

    Sampling without a seed gets rank 0's random seed on every rank, so all ranks pick the same tokens.
    """

    def __init__(self, model: TPErnieForCausalLM, folder, device, dtype, generation_defaults=None):
        super().__init__(model, folder, device, dtype, generation_defaults)
        self.comm: Comm = model.comm
        self.plan: RankShard = model.plan

    def _seeded(self, sampling: dict) -> dict:
        if sampling.get("seed") is None:
            sampling = {**sampling, "seed": self.comm.broadcast_int(secrets.randbits(62))}
        return sampling

    def generate(self, ids, max_new_tokens=None, attention_mask=None, speculative=None, num_draft=1,
                 **sampling):
        return super().generate(ids, max_new_tokens, attention_mask, speculative, num_draft,
                                **self._seeded(sampling))

    def stream(self, ids, max_new_tokens=None, attention_mask=None, speculative=None, num_draft=1,
               **sampling):
        return super().stream(ids, max_new_tokens, attention_mask, speculative, num_draft,
                              **self._seeded(sampling))


def load(path, moe: str = "tp", dtype: str | None = None, device: str | None = None,
         num_threads: int | None = None, comm: Comm | None = None, quantization: str | None = None) -> TPRuntime:
    """This rank's part of the model in ``path`` inside a paddle.distributed job (one rank per process).

    ``moe``: "tp" cuts every expert along its width (the pre-sharded release layout), "ep" gives each rank
    whole experts. Call it on every rank; a single process (world size 1) works too and holds everything.
    ``quantization``: "wint8", "wint4" or "fp8" quantizes each rank's slices as they load (a row-parallel
    slice gets scales of its own rows, so results are close to, not equal to, the single-process ones).
    """
    if moe not in MOE_MODES:
        raise ErnieError(f"unknown MoE parallel mode {moe!r} ({' or '.join(MOE_MODES)})")
    comm = comm or get_comm()
    plan = RankShard(comm.world, comm.rank, moe)
    device = resolve_device(device)
    if device.startswith("gpu"):
        device = f"gpu:{paddle.distributed.ParallelEnv().device_id}"
    place = setup(device, dtype, num_threads, share=local_world_size())
    device, dtype = place.device, place.dtype
    config, ckpt, tensors = open_rank_source(path, plan)
    if config.family not in TEXT_FAMILIES:
        raise ErnieError(f"this runtime runs ERNIE 4.5 text models; the config is a {config.family} model",
                         Path(path) / "config.json")
    tp_split.check_degree(config, plan.tp, Path(path) / "config.json")
    quant = resolve_quantization(config, quantization, ckpt.folder)
    if quant is not None and quantization is None:
        raise ErnieError("the tensor-parallel runtime does not load checkpoints stored quantized; give it the "
                         "float checkpoint with --quantization wint8|wint4|fp8 instead", ckpt.folder)

    def build() -> TPErnieForCausalLM:
        with default_dtype(dtype):
            built = TPErnieForCausalLM(config, plan, comm)
        built.eval()
        return built

    rank_tensors = tensors(config, "float32" if dtype == "float32" else "keep")
    if quant is None:
        model = build()
        load_weights(model, rank_tensors, ckpt.folder)
        if device == "cpu":
            model.cache_head_transpose()
    else:
        with paddle.LazyGuard():
            model = build()
        model = fill_quantized(model, ckpt, quant, True, rank_tensors)
    return TPRuntime(model, Path(path), device, dtype, read_generation_config(path))
