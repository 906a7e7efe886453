"""Run by tests/test_distributed.py under ``python -m paddle.distributed.launch --nproc_per_node 2``.

usage: tp_job.py OUT_DIR NAME:FOLDER:MOE_MODE ... — for each case, every rank loads its part, computes
logits of a left-padded batch and greedy continuations, and saves them with its parameter counts.
"""

import sys

import numpy as np

from ernie_paddle.distributed import get_comm, load

PROMPTS = [[5, 9, 100, 7, 33, 250], [8, 1000, 3]]


def main(out_dir: str, cases: list[str]) -> None:
    comm = get_comm()
    for case in cases:
        name, folder, moe = case.split(":")
        rt = load(folder, moe=moe)
        logits = rt.logits(*_padded())
        gen = rt.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
        params = {n: int(np.prod(p.shape)) for n, p in rt.model.named_parameters()}
        experts = sorted({n.split(".experts.")[1].split(".")[0] for n in params if ".experts." in n})
        np.savez(f"{out_dir}/{name}.rank{comm.rank}.npz", logits=logits, gen=gen,
                 numel=sum(params.values()), experts=len(experts),
                 qkv=np.array(rt.model.ernie.layers[0].self_attn.qkv_proj.weight.shape))


def _padded():
    from ernie_paddle.generation import pad_batch

    ids, mask = pad_batch(PROMPTS)
    return ids, mask


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
