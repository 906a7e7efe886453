"""Tensor- and expert-parallel runtime on Paddle's own distributed runtime (``paddle.distributed``).

One process per rank, started by ``python -m paddle.distributed.launch`` (gloo on CPU, NCCL on GPU); the
CLI's ``--tp N`` starts that job itself (``launcher``). Each rank builds the single-process layers with
its own shapes (``model``), loads only its slice (``loading``), and runs the unchanged generation loop:
every rank computes identical logits, so every rank picks the same tokens and the ranks stay in step.
A server is different: only rank 0 schedules and samples, and ``steps`` replays its batched steps on the
other ranks (``serve --tp``).

The embedding and LM head are replicated rather than vocab-parallel: the released pre-sharded checkpoints
(and ``ernie-paddle convert --tp``) replicate them, a replicated head needs no gather of [B, V] logits per
step (sampling stays rank-local and identical), and they are a small share of the large models that need
several devices (2 x 1.7 GB of 600 GB for 300B-A47B in bf16). The cost is on small models: the 0.3B
model's 106M-parameter tied embedding stays whole on every rank.

Names are imported lazily, so the launching process (``launcher``) does not import Paddle.
"""

import importlib

_EXPORTS = {"Comm": "comm", "PeerLost": "comm", "get_comm": "comm", "launched_world": "runinfo",
            "TPRuntime": "rank_runtime", "is_split_folder": "rank_runtime", "load": "rank_runtime", "rank_slice": "rank_runtime",
            "MOE_MODES": "model", "TPErnieForCausalLM": "model", "RankShard": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
