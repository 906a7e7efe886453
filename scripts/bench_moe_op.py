"""Micro-benchmark of the MoE experts operator (``ernie_moe_experts``, issue 16) in every stored format.

On the bench's MoE shape (``bench_predictor.SHAPE_MOE``: hidden 1024, moe_intermediate 512, 64 experts,
k = 6), at 1 and 8 token rows, per format (float32, bf16, wint8, wint4, fp8, wint2; wint8/wint4 also with
int8 activations), three ways of doing the same step, timed in this one process:

* ``op``: one ``ernie_moe_experts`` call;
* ``per-expert``: the baseline, one ``ernie_linear`` call per chosen expert (up_gate; SwiGLU in Paddle;
  down; weighted and added into the output with ``index_add``);
* ``big``: the streaming reference, one ``ernie_linear`` of one token row over the same number of experts'
  up_gate rows (contiguous experts, as one matrix) and one over their down rows: the same bytes as the
  call at the bandwidth of one big linear (one row at every row count: with 8 rows over ~35 experts an
  expert sees ~1.4 rows, so the experts' work stays streaming, while 8 rows over every byte would not).

GB/s counts the weight bytes a call streams (each chosen expert's stored up_gate and down with their
scales, once per call). The weights are random bytes in kernel form (decode cost does not depend on the
values) in several stacks of 64 experts, ``--min-mb`` in all so nothing stays in the L3 cache; the calls
cycle through the stacks with fresh random routing. Each figure is the median over ``--repeats`` runs of
``--calls`` calls (the three ways interleaved per run); ``op/big best`` is the ratio of the fastest runs
(less sensitive to other load). Timings on a shared or small machine are noisy: compare figures of one
invocation, and rerun.

    python scripts/bench_moe_op.py --threads 2
    python scripts/bench_moe_op.py --format bfloat16 --rows 1 --quiet
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_predictor import SHAPE_MOE  # noqa: E402

FORMATS = ("float32", "bfloat16", "wint8", "wint4", "fp8", "wint2")
INT8_FORMATS = ("wint8", "wint4")  # also run with int8 activations
PER_BYTE = {"wint4": 2, "wint2": 4}  # k values per stored byte


def stored_stack(fmt: str, experts: int, n: int, k: int, rng) -> list[np.ndarray]:
    """Random kernel-form arrays [WT, S0..] of a stack of ``experts`` matrices W^T [n, k] in ``fmt``."""
    kb, nb = -(-k // 128), -(-n // 128)
    if fmt == "float32":
        return [(0.02 * rng.standard_normal((experts, n, k), np.float32))]
    if fmt == "bfloat16":
        return [(rng.standard_normal((experts, n, k), np.float32).view(np.uint32) >> 16).astype(np.uint16)]
    scale = (0.01 * rng.random((experts, n)) + 1e-3).astype(np.float32)
    if fmt == "wint8":
        return [rng.integers(-127, 128, (experts, n, k), np.int8), scale]
    if fmt == "wint4":
        return [rng.integers(0, 256, (experts, n, k // 2), np.uint8), scale]
    if fmt == "fp8":
        q = rng.integers(0, 256, (experts, n, k), np.uint8)
        q[(q & 0x7F) == 0x7F] ^= 1  # no NaN codes
        return [q, (1e-3 * rng.random((experts, nb, kb)) + 1e-4).astype(np.float32)]
    local = rng.integers(0, 256, (experts, n, kb), np.uint8)
    code_scale = np.full((experts, n), 1.0, np.float32)
    return [rng.integers(0, 256, (experts, n, k // 4), np.uint8), local, scale, code_scale,
            np.zeros((experts, n), np.float32)]


class Stacks:
    """``layers`` stacks of 64 experts of one format: up_gate W^T [2I, H] and down W^T [H, I] per expert."""

    def __init__(self, fmt: str, min_bytes: float, seed: int = 0):
        import paddle

        self.fmt, self.h, self.inter = fmt, SHAPE_MOE["hidden_size"], SHAPE_MOE["moe_intermediate_size"]
        self.experts, self.top = SHAPE_MOE["moe_num_experts"], SHAPE_MOE["moe_k"]
        rng = np.random.default_rng(seed)
        one = [stored_stack(fmt, 1, 2 * self.inter, self.h, rng), stored_stack(fmt, 1, self.h, self.inter, rng)]
        self.expert_bytes = sum(a.nbytes for part in one for a in part)  # one expert's stored bytes
        self.layers = max(1, int(np.ceil(min_bytes / (self.expert_bytes * self.experts))))
        total = self.layers * self.experts
        ug = stored_stack(fmt, total, 2 * self.inter, self.h, rng)
        dn = stored_stack(fmt, total, self.h, self.inter, rng)
        dummy = paddle.zeros([1], dtype="float32")
        self.ug = [paddle.to_tensor(a) for a in ug] + [dummy] * (5 - len(ug))
        self.dn = [paddle.to_tensor(a) for a in dn] + [dummy] * (5 - len(dn))

    def _part(self, tensors, lo: int, hi: int, flat: bool):
        """Experts lo .. hi of a stack's inputs as views (flat: as one matrix [(hi - lo) n, k])."""
        out = []
        for t in tensors:
            if t.shape == [1]:
                out.append(t)
                continue
            v = t[lo:hi]
            out.append(v.reshape([-1, *v.shape[2:]]) if flat else v)
        return out

    def layer(self, i: int):
        lo = (i % self.layers) * self.experts
        return self._part(self.ug, lo, lo + self.experts, False), self._part(self.dn, lo, lo + self.experts, False)

    def expert(self, i: int, e: int):
        lo = (i % self.layers) * self.experts + e
        return [t if t.shape == [1] else t[lo] for t in self.ug], [t if t.shape == [1] else t[lo] for t in self.dn]

    def contiguous(self, i: int, count: int):
        lo = (i % self.layers) * self.experts + (i * 7) % (self.experts - count + 1)
        return self._part(self.ug, lo, lo + count, True), self._part(self.dn, lo, lo + count, True)


def make_calls(stacks: Stacks, rows: int, count: int, seed: int):
    """``count`` calls: (x [rows, H], ids [rows, k], weights [rows, k], distinct experts, groups), groups =
    [(expert, row indices, row weights)] for the per-expert baseline (its routing work done beforehand)."""
    import paddle

    rng = np.random.default_rng(seed)
    calls = []
    for _ in range(count):
        x = rng.standard_normal((rows, stacks.h)).astype(np.float32)
        ids = np.stack([rng.choice(stacks.experts, stacks.top, replace=False) for _ in range(rows)]).astype(np.int64)
        w = rng.random((rows, stacks.top)).astype(np.float32)
        groups = []
        for e in np.unique(ids):
            r, j = np.nonzero(ids == e)
            groups.append((int(e), paddle.to_tensor(r.astype(np.int64)), paddle.to_tensor(w[r, j][:, None])))
        calls.append((paddle.to_tensor(x), paddle.to_tensor(ids), paddle.to_tensor(w), len(groups), groups))
    return calls


def run_op(ops, stacks: Stacks, code: int, int8_act: bool, calls) -> None:
    for i, (x, ids, w, _, _) in enumerate(calls):
        ug, dn = stacks.layer(i)
        ops.ernie_moe_experts(x, ids, w, *ug, *dn, code, int8_act)


def run_per_expert(ops, stacks: Stacks, code: int, int8_act: bool, calls) -> None:
    import paddle
    import paddle.nn.functional as F

    for i, (x, _, _, _, groups) in enumerate(calls):
        y = paddle.zeros_like(x)
        for e, rows, weights in groups:
            ug, dn = stacks.expert(i, e)
            h = ops.ernie_linear(paddle.gather(x, rows), *ug, code, int8_act)
            out = ops.ernie_linear(F.swiglu(h), *dn, code, int8_act)
            y = paddle.index_add(y, rows, 0, out * weights)


def run_big(ops, stacks: Stacks, code: int, int8_act: bool, calls) -> None:
    import paddle

    act = paddle.zeros([1, stacks.inter])
    for i, (x, _, _, distinct, _) in enumerate(calls):
        ug, dn = stacks.contiguous(i, distinct)
        ops.ernie_linear(x[:1], *ug, code, int8_act)
        ops.ernie_linear(act, *dn, code, int8_act)


def time_ms(fns: dict, calls, repeats: int) -> dict:
    """{name: (median, fastest) ms per call} over ``repeats`` rounds, each round timing every fn once (interleaved, so
    a noisy moment hits all of them alike)."""
    for fn in fns.values():
        fn(calls[:2])  # warm up (first-call allocations)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(calls)
            times[name].append((time.perf_counter() - t0) / len(calls) * 1e3)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def bench(ops, fmt: str, int8_act: bool, rows_list, args, say) -> list[dict]:
    from ernie_paddle.kernels.predictor_ops import FORMAT_CODES

    code = FORMAT_CODES[fmt]
    stacks = Stacks(fmt, args.min_mb * 2**20)
    say(f"{fmt}{' int8-act' if int8_act else ''}: {stacks.layers} stack(s) of 64 experts, "
        f"{stacks.expert_bytes / 2**20:.2f} MiB per expert")
    out = []
    for rows in rows_list:
        calls = make_calls(stacks, rows, args.calls, seed=rows)
        streamed = np.mean([c[3] for c in calls]) * stacks.expert_bytes
        row = {"format": fmt, "int8_act": int8_act, "rows": rows, "experts_per_call": streamed / stacks.expert_bytes}
        fns = {name: (lambda cs, fn=fn: fn(ops, stacks, code, int8_act, cs))
               for name, fn in (("op", run_op), ("per_expert", run_per_expert), ("big", run_big))}
        for name, (ms, best) in time_ms(fns, calls, args.repeats).items():
            row[f"{name}_ms"], row[f"{name}_gbs"], row[f"{name}_best_gbs"] = ms, streamed / ms / 1e6, streamed / best / 1e6
            say(f"  rows {rows} {name}: {ms:.3f} ms, {streamed / ms / 1e6:.1f} GB/s")
        out.append(row)
    return out


def print_table(results: list[dict]) -> None:
    print(f"{'format':<16} {'rows':>4} {'experts':>7} {'op ms':>8} {'op GB/s':>8} {'per-exp GB/s':>12} "
          f"{'op/per-exp':>10} {'big GB/s':>8} {'op/big':>6} {'op/big best':>11}")
    print("(big: one big linear of one token row over the same bytes)")
    for r in results:
        name = r["format"] + (" int8-act" if r["int8_act"] else "")
        print(f"{name:<16} {r['rows']:>4} {r['experts_per_call']:>7.1f} {r['op_ms']:>8.3f} {r['op_gbs']:>8.1f} "
              f"{r['per_expert_gbs']:>12.1f} {r['op_gbs'] / r['per_expert_gbs']:>10.2f} {r['big_gbs']:>8.1f} "
              f"{r['op_gbs'] / r['big_gbs']:>6.2f} {r['op_best_gbs'] / r['big_best_gbs']:>11.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", action="append", choices=FORMATS, help="formats (default: all)")
    ap.add_argument("--rows", type=int, action="append", help="token rows per call (default: 1 and 8)")
    ap.add_argument("--no-int8-act", action="store_true", help="skip the int8-activation runs of wint8/wint4")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable cores)")
    ap.add_argument("--calls", type=int, default=24, help="calls per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per figure (medians; and the fastest)")
    ap.add_argument("--min-mb", type=float, default=400, help="MiB of weights per format (beyond the L3 cache)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    args = ap.parse_args(argv)

    from ernie_paddle.kernels import predictor_ops
    from ernie_paddle.runtime.setup import setup

    placement = setup("cpu", num_threads=args.threads)
    ops = predictor_ops.get()
    if ops is None:
        print(f"no compiled operators: {predictor_ops.build_error()}", file=sys.stderr)
        return 1

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    say(f"{placement.threads} thread(s); MoE shape H={SHAPE_MOE['hidden_size']} "
        f"I={SHAPE_MOE['moe_intermediate_size']} E={SHAPE_MOE['moe_num_experts']} k={SHAPE_MOE['moe_k']}")
    results = []
    for fmt in args.format or FORMATS:
        modes = (False, True) if fmt in INT8_FORMATS and not args.no_int8_act else (False,)
        for int8_act in modes:
            results += bench(ops, fmt, int8_act, args.rows or [1, 8], args, say)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
