"""Write a quantized Paddle checkpoint (release tensor names, dtypes and layouts) from any checkpoint.

Each linear that the method covers (attention, dense and expert MLPs) is stored as ``P.quant_weight`` +
``P.weight_scale`` instead of ``P.weight``; embeddings, the head, norms, routers and the correction bias
stay high precision. ``config.json`` gets the matching Paddle ``quantization_config``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.convert import check_paths, copy_side_files
from converters.rules import is_linear_weight
from converters.tensor_groups import plan_groups
from ernie_paddle.config.text import PADDLE
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.io.shard_writer import ShardAccumulator, atomic_folder
from ernie_paddle.progress import progress_bar
from ernie_paddle.quant.config import ONLINE_METHODS, online
from ernie_paddle.quant.tensors import quantize_weight


def quantize(src, dst, method: str, overwrite: bool = False, max_shard_size="5GB",
             quiet: bool = False) -> dict:
    """Quantize ``src`` (HF or Paddle, unquantized) into a Paddle checkpoint at ``dst``; returns counts."""

    if method not in ONLINE_METHODS:
        raise ErnieError(f"unknown method {method!r}; expected one of {', '.join(ONLINE_METHODS)}")
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    check_paths(src, dst)
    if ckpt.config.quantization_config:
        raise ErnieError("the checkpoint is already quantized; quantize an unquantized one", src / "config.json")
    qc = online(method)
    groups = plan_groups(ckpt, PADDLE)
    counts = {"quantized": 0, "kept": 0}
    with atomic_folder(dst, overwrite) as tmp:
        out = ShardAccumulator(tmp, "paddle", max_shard_size)
        with progress_bar(ckpt.total_bytes, f"quantize {method}", quiet) as bar:
            for group in groups:
                for spec, arr in zip(group.outputs, group.compute(ckpt)):
                    if is_linear_weight(spec.name) and qc.method_for(spec.name):
                        base = spec.name[: -len("weight")]
                        parts = quantize_weight(qc.method_for(spec.name), np.asarray(arr, np.float32),
                                                name=base[:-1])
                        for suffix, value in parts.items():
                            out.add(base + suffix, value)
                        counts["quantized"] += 1
                    else:
                        out.add(spec.name, arr)
                        counts["kept"] += 1
                    bar.update(arr.nbytes)
        out.close()
        cfg = ckpt.config.replace(quantization_config=qc.to_dict(ckpt.config.num_hidden_layers))
        cfg.write(tmp, PADDLE)
        copy_side_files(src, tmp)
    return counts
