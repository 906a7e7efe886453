"""Convert a checkpoint folder between the Paddle and HF layouts, streaming one tensor group at a time.

folder -> config (layer 0) -> validated plan (rule table) -> per-group ops -> preallocated shards in a
temporary sibling folder -> index + config + copied non-weight files -> atomic rename.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from converters.tensor_groups import plan_groups
from ernie_paddle.config.text import HF, PADDLE
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import SAFE_INDEX, open_checkpoint
from ernie_paddle.io.shard_writer import ShardedWriter, atomic_folder, parse_size, plan_shards
from ernie_paddle.progress import progress_bar
from ernie_paddle.quant.config import parse

SAFETENSORS_FORMAT = {HF: "pt", PADDLE: "paddle"}
_WEIGHT_SUFFIXES = (".safetensors", ".pdparams")
_WEIGHT_NAMES = {"config.json", SAFE_INDEX, "model_state.pdparams.index.json"}


@dataclass
class ConvertReport:
    source_format: str
    target_format: str
    tensors_in: int
    tensors_out: int
    bytes_out: int
    shards: int
    seconds: float


def check_paths(src: Path, dst: Path) -> None:
    """Refuse destinations that would touch the source."""
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise ErnieError("destination is the source folder; choose another folder", dst)
    if s in d.parents:
        raise ErnieError("destination lies inside the source folder; choose a folder outside it", dst)
    if d in s.parents:
        raise ErnieError("destination contains the source folder; choose another folder", dst)


def copy_side_files(src: Path, dst: Path, skip=frozenset()) -> list[str]:
    """Copy tokenizer, generation and other non-weight files unchanged (names in ``skip`` excepted)."""
    copied = []
    for item in sorted(src.iterdir()):
        name = item.name
        if name.startswith(".") or name in _WEIGHT_NAMES or name.endswith(_WEIGHT_SUFFIXES) or name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / name)
        else:
            shutil.copy2(item, dst / name)
        copied.append(name)
    return copied


def translate_quant_config(cfg, target: str, path) -> dict | None:
    """The ``quantization_config`` in the target dialect (Paddle block_wise_fp8 <-> HF ``fp8``)."""


    qc = parse(cfg.quantization_config, path)
    if qc is None or qc.source == target:
        return cfg.quantization_config
    if target == HF and qc.methods != {"fp8"}:
        raise ErnieError(f"quantization {sorted(qc.methods)} has no Hugging Face layout (only block-wise "
                         "FP8 does); convert the unquantized checkpoint instead", path)
    if target == PADDLE:
        qc = dataclasses.replace(qc, dense="fp8", moe="fp8")
    return dataclasses.replace(qc, source=target, raw={}).to_dict()


def convert(src: str | Path, dst: str | Path, to: str | None = None, dtype: str = "keep",
            max_shard_size: str | int = "5GB", overwrite: bool = False,
            quiet: bool = False) -> ConvertReport:
    """Convert ``src`` into ``dst`` (direction detected when ``to`` is None)."""
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    check_paths(src, dst)
    target = to or (HF if ckpt.format == PADDLE else PADDLE)
    if target not in (HF, PADDLE):
        raise ErnieError(f"unknown target layout {target!r} (paddle or hf)")
    start = time.perf_counter()
    groups = plan_groups(ckpt, target, dtype)
    shards = plan_shards([g.outputs for g in groups], parse_size(max_shard_size))
    total = sum(o.nbytes for g in groups for o in g.outputs)
    written = 0
    with atomic_folder(dst, overwrite) as tmp:
        writer = ShardedWriter(tmp, shards, SAFETENSORS_FORMAT[target])
        try:
            with progress_bar(total, f"{ckpt.format}->{target}", quiet) as bar:
                for group in groups:
                    for spec, arr in zip(group.outputs, group.compute(ckpt)):
                        n = writer.write(spec.name, arr)
                        written += n
                        bar.update(n)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        cfg = ckpt.config if dtype == "keep" else ckpt.config.replace(dtype=dtype)
        cfg = cfg.replace(quantization_config=translate_quant_config(cfg, target, src / "config.json"))
        cfg.write(tmp, target)
        copy_side_files(src, tmp)
    return ConvertReport(ckpt.format, target, len(ckpt.specs), sum(len(g.outputs) for g in groups),
                         written, len(shards), time.perf_counter() - start)
