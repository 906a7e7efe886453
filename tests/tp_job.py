"""Run by tests/test_distributed.py under ``python -m paddle.distributed.launch --nproc_per_node 2``.

usage: tp_job.py OUT_DIR NAME:FOLDER:MOE_MODE[:QUANTIZATION] ... — for each case, every rank loads its
part, computes logits of a left-padded batch and greedy continuations, and saves them with its parameter
counts.
"""

import sys

import numpy as np

from ernie_paddle.runtime.distributed import get_comm, load

PROMPTS = [[5, 9, 100, 7, 33, 250], [8, 1000, 3]]


def main(out_dir: str, cases: list[str]) -> None:
    comm = get_comm()
    for case in cases:
        name, folder, moe, *quantization = case.split(":")
        rt = load(folder, moe=moe, quantization=(quantization or [None])[0])
        logits = rt.logits(*_padded())
        gen = rt.generate(PROMPTS, max_new_tokens=12, stop_token_ids=[])
        params = {n: int(np.prod(p.shape)) for n, p in rt.model.named_parameters()}
        experts = sorted({n.split(".experts.")[1].split(".")[0] for n in params if ".experts." in n})
        qkv = getattr(rt.model.ernie.layers[0].self_attn.qkv_proj, "weight", None)  # None when quantized
        np.savez(f"{out_dir}/{name}.rank{comm.rank}.npz", logits=logits, gen=gen,
                 numel=sum(params.values()), nbytes=state_bytes(rt.model), experts=len(experts),
                 qkv=np.array([] if qkv is None else qkv.shape))


def state_bytes(model) -> int:
    """Bytes of every parameter and buffer (quantized linears keep their weights as buffers)."""
    return sum(int(np.prod(t.shape)) * t.element_size() for t in model.state_dict().values())


def _padded():
    from ernie_paddle.runtime.generation import pad_batch

    ids, mask = pad_batch(PROMPTS)
    return ids, mask


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
