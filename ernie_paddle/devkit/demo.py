"""The built-in demo: tiny ERNIE 4.5 checkpoints made here, converted both ways, checked and inspected.

Each step is a small function ``step(ctx, echo)``; later features add their steps to ``STEPS``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ernie_paddle.devkit.demo_models import make_tiny_hf_checkpoint

KINDS = ("dense", "moe")


def default_cache() -> Path:
    root = os.environ.get("ERNIE_PADDLE_HOME") or Path.home() / ".cache" / "ernie-paddle"
    return Path(root) / "demo"


@dataclass
class DemoContext:
    cache: Path
    quiet: bool = True
    folders: dict[str, Path] = field(default_factory=dict)  # "dense-hf", "dense-paddle", ...


def step_make(ctx: DemoContext, echo) -> None:
    """Write the tiny HF checkpoints with transformers (fixed seeds)."""
    for kind in KINDS:
        dst = ctx.cache / f"{kind}-hf"
        if dst.exists():
            shutil.rmtree(dst)
        make_tiny_hf_checkpoint(dst, kind, seed=0, mtp=1 if kind == "moe" else 0, bias_scale=0.05)
        ctx.folders[f"{kind}-hf"] = dst
        echo(f"made      {dst}  (transformers {kind} checkpoint, seed 0)")


def step_convert(ctx: DemoContext, echo) -> None:
    """HF -> Paddle -> HF, then check the round trip is bit-identical."""
    from converters.convert import convert
    from ernie_paddle.io.checkpoint import open_checkpoint

    for kind in KINDS:
        hf, pd, back = (ctx.cache / f"{kind}-{s}" for s in ("hf", "paddle", "hf-roundtrip"))
        r1 = convert(hf, pd, overwrite=True, quiet=ctx.quiet)
        r2 = convert(pd, back, overwrite=True, quiet=ctx.quiet)
        a, b = open_checkpoint(hf), open_checkpoint(back)
        same = set(a.keys()) == set(b.keys()) and all(
            a.get(k).tobytes() == b.get(k).tobytes() and a.get(k).dtype == b.get(k).dtype for k in a.keys())
        if not same:
            raise RuntimeError(f"round trip of {hf} is not bit-identical")
        ctx.folders[f"{kind}-paddle"] = pd
        echo(f"converted {kind}: hf -> paddle ({r1.tensors_in} -> {r1.tensors_out} tensors) -> hf "
             f"({r2.tensors_out} tensors): bit-identical round trip")


def step_inspect(ctx: DemoContext, echo) -> None:
    from converters.inspect import format_report, inspect_checkpoint

    for kind in KINDS:
        echo(format_report(inspect_checkpoint(ctx.folders[f"{kind}-paddle"])))


def step_generate(ctx: DemoContext, echo) -> None:
    """Load each Paddle folder with this runtime and continue a chat prompt (random weights: noise)."""
    from ernie_paddle.api import load
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    for kind in KINDS:
        folder = ctx.folders[f"{kind}-paddle"]
        tok = ErnieTokenizer.from_folder(folder)
        prompt = tok.apply_chat_template([{"role": "user", "content": "你好, ERNIE!"}])
        ids = np.array([tok.encode(prompt, add_special_tokens=False)], dtype=np.int64)
        out = load(folder).generate(ids, max_new_tokens=12, stop_token_ids=[])
        echo(f"generated {kind}: {prompt!r} -> {tok.decode(out[0, ids.shape[1]:].tolist())!r} "
             f"(ids {out[0, ids.shape[1]:].tolist()})")


def step_parity(ctx: DemoContext, echo) -> None:
    """Logits of this runtime vs transformers' own ERNIE 4.5 classes on the same weights."""
    from converters.parity import run_parity

    for kind in KINDS:
        r = run_parity(ctx.folders[f"{kind}-paddle"], max_new_tokens=16)
        o = r["overall"]
        echo(f"parity    {kind} (paddle folder vs transformers): max |dlogit| {o['max_abs_diff']:.2e}, "
             f"top-1 {o['top1_agreement']:.0%}, greedy {o['greedy_match']}/{o['greedy_len']} identical, "
             f"KL {o['kl_max']:.1e} -> {'PASS' if r['passed'] else 'FAIL'}")
        if not r["passed"]:
            raise RuntimeError(f"parity failed for the {kind} demo model: {r['failures']}")


def step_thinking(ctx: DemoContext, echo) -> None:
    """The trained Thinking demo model: its greedy answers parsed into reasoning, content and a tool call."""
    from ernie_paddle.api import load
    from ernie_paddle.devkit.thinking_demo import DEMO_CHATS, make_thinking_demo
    from ernie_paddle.server.reasoning import parse_output, starts_in_reasoning
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    folder = make_thinking_demo(ctx.cache / "thinking-hf")
    ctx.folders["thinking-hf"] = folder
    runtime, tok = load(folder), ErnieTokenizer.from_folder(folder)
    echo(f"thinking  {folder}  (trained to answer its chats; serve it with: ernie-paddle serve {folder})")
    for messages, tools, _ in DEMO_CHATS:
        prompt = tok.apply_chat_template(messages, tools=tools)
        ids = np.array([tok.encode(prompt, add_special_tokens=False)], dtype=np.int64)
        out = runtime.generate(ids, max_new_tokens=160, stop_token_ids=tok.stop_token_ids)[0, ids.shape[1]:]
        got = parse_output(tok.decode(out.tolist(), skip_special_tokens=True), starts_in_reasoning(prompt))
        last = messages[-1]
        echo(f"  {last['role']:>9}: {last['content']}" + ("   (tools: get_weather)" if tools else ""))
        echo(f"  reasoning: {got.reasoning}")
        for call in got.tool_calls:
            echo(f"  tool call: {call['function']['name']}({call['function']['arguments']})")
        if got.content:
            echo(f"    content: {got.content}")


STEPS = [step_make, step_convert, step_inspect, step_generate, step_parity, step_thinking]


def run_demo(cache: Path | None = None, echo=print, quiet: bool = True) -> DemoContext:
    ctx = DemoContext(Path(cache) if cache else default_cache(), quiet)
    ctx.cache.mkdir(parents=True, exist_ok=True)
    for step in STEPS:
        step(ctx, echo)
    return ctx
