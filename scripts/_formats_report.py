"""bench_formats.py's arithmetic and printing: accuracy metrics of two logits arrays, the ratios of the
issue (ours / theirs at equal bits), and the human tables."""

from __future__ import annotations

import math
import re

import numpy as np

# (ratio key, our row, their row); "{act}" = the export's default activation mode
PAIRS = (("bf16_vs_llamacpp_bf16", "ours bfloat16", "llama.cpp BF16"),
         ("wint8_vs_llamacpp_q8_0", "ours wint8 {act}", "llama.cpp Q8_0"),
         ("wint4_vs_llamacpp_q4_0", "ours wint4 {act}", "llama.cpp Q4_0"),
         ("fp8_vs_our_wint8", "ours fp8", "ours wint8 {act}"),
         ("wint2_vs_our_wint4", "ours wint2", "ours wint4 {act}"),
         ("fp32_vs_llamacpp_f32", "ours float32", "llama.cpp F32"))
OTHER_MODE_PAIRS = ("wint8_vs_llamacpp_q8_0", "wint4_vs_llamacpp_q4_0")
ACT_MODES = ("float32", "int8")


def row_name(engine: str, fmt: str, act: str | None = None) -> str:
    return f"{engine} {fmt}" + (f" act-{act}" if act else "")


def accuracy(got: np.ndarray, want: np.ndarray) -> dict:
    """max |dlogit|, mean KL(want || got) and top-1 agreement of logits [T, V] against a reference."""
    got, want = got.astype(np.float64), want.astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(want), log_softmax(got)
    return {"max_abs_dlogit": float(np.abs(got - want).max()),
            "mean_kl": float((np.exp(lp) * (lp - lq)).sum(-1).mean()),
            "top1_agree": float((got.argmax(-1) == want.argmax(-1)).mean()), "positions": int(len(got))}


def _value(row: dict | None, key: str) -> float | None:
    v = None if row is None else row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _ratio(ours: dict | None, theirs: dict | None, key: str, invert: bool = False) -> float | None:
    a, b = _value(ours, key), _value(theirs, key)
    if a is None or b is None or (b if not invert else a) == 0:
        return None
    return b / a if invert else a / b


def ratios(by_name: dict[str, dict], default_act: str | None) -> dict:
    """{"decode_b1": {...}, "decode_b8": {...}, "prefill": {...}, "rss": {...}} of one shape: decode tok/s
    ours / theirs, prefill speed (their ms / our ms: > 1 is faster), peak RSS ours / theirs (< 1 is less);
    wint8/wint4 in the default activation mode, the other mode under ``KEY_act_MODE``."""
    act = default_act or "float32"
    pairs = [(k, o.format(act=f"act-{act}"), t.format(act=f"act-{act}")) for k, o, t in PAIRS]
    for other in (m for m in ACT_MODES if m != act):
        pairs += [(f"{k}_act_{other}", o.format(act=f"act-{other}"), t) for k, o, t in PAIRS
                  if k in OTHER_MODE_PAIRS]
    out = {"decode_b1": {}, "decode_b8": {}, "prefill": {}, "rss": {}}
    for key, ours, theirs in pairs:
        o, t = by_name.get(ours), by_name.get(theirs)
        out["decode_b1"][key] = _ratio(o, t, "decode_tok_s_b1")
        out["decode_b8"][key] = _ratio(o, t, "decode_tok_s_b8")
        out["prefill"][key] = _ratio(o, t, "prefill_ms", invert=True)
        out["rss"][key] = _ratio(o, t, "peak_rss_mb")
    return out


def _cell(v, fmt: str, missing: str = "-") -> str:
    width = int(re.match(r"\d*", fmt).group() or 0)
    return (missing.rjust(width) if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt))


def print_tables(result: dict, out) -> None:
    print(f"\nread bandwidth {result['bandwidth_gb_s']:.1f} GB/s ({result['threads']} threads); prompt "
          f"{result['prompt']} tokens, {result['new_tokens']} greedy tokens; ceiling = bandwidth / weight bytes "
          "read per batch-1 step in that format", file=out)
    print("peak RSS of an engine's process before any model: " + ", ".join(
        f"{k} {v:.0f} MB" for k, v in result.get("process_baseline_rss_mb", {}).items()), file=out)
    head = (f"{'shape':<10}{'engine':<28}{'b1 tok/s':>9}{'b8 tok/s':>9}{'prefill ms':>11}{'RSS MB':>8}"
            f"{'weights MB':>11}{'MB/step':>9}{'ceiling':>9}{'b1/ceil':>8}")
    print(head, file=out)
    for r in result["rows"]:
        if r.get("unavailable") or r.get("error"):
            why = r.get("unavailable") or r["error"].strip().splitlines()[-1]
            print(f"{r['shape']:<10}{r['name']:<28}  {'n/a' if r.get('unavailable') else 'FAILED'}: {why[:150]}",
                  file=out)
            continue
        ceil = r.get("ceiling_tok_s_b1")
        print(f"{r['shape']:<10}{r['name']:<28}{_cell(r.get('decode_tok_s_b1'), '9.1f')}"
              f"{_cell(r.get('decode_tok_s_b8'), '9.1f')}{_cell(r.get('prefill_ms'), '11.1f')}"
              f"{_cell(r.get('peak_rss_mb'), '8.0f')}{_cell(r.get('weights_mb'), '11.1f')}"
              f"{_cell(r.get('bytes_per_step', 0) / 1e6, '9.1f')}{_cell(ceil, '9.1f')}"
              f"{_cell(r['decode_tok_s_b1'] / ceil if ceil and r.get('decode_tok_s_b1') else None, '8.2f')}",
              file=out)
    print(f"\naccuracy over {result['positions']} positions against transformers float32: (a) on the exactly "
          "dequantized weights of the format, (b) on the original bf16 weights", file=out)
    print(f"{'shape':<10}{'engine':<28}{'(a) max|dl|':>12}{'KL':>10}{'top1':>7}{'(b) max|dl|':>12}{'KL':>10}"
          f"{'top1':>7}", file=out)
    for r in result["rows"]:
        acc = r.get("accuracy")
        if not acc:
            continue
        cells = ""
        for ref in ("dequantized", "bf16"):
            a = acc.get(ref) or {}
            cells += (f"{_cell(a.get('max_abs_dlogit'), '12.4f')}{_cell(a.get('mean_kl'), '10.2e')}"
                      f"{_cell(a.get('top1_agree'), '7.3f')}")
        print(f"{r['shape']:<10}{r['name']:<28}{cells}", file=out)
    print("\nratios (decode: tok/s ours/theirs; prefill: their ms / our ms; rss: ours/theirs, lower is better)",
          file=out)
    for shape, per in result["ratios"].items():
        for key in per["decode_b1"]:
            cells = "  ".join(f"{what}=" + ("n/a" if per[what][key] is None else f"{per[what][key]:.2f}x")
                              for what in per)
            print(f"{shape:<10}{key:<40}{cells}", file=out)
