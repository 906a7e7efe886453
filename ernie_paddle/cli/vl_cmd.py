"""``ernie-paddle generate MODEL --image PATH --prompt TEXT``: answer about images with an ERNIE 4.5 VL model.

``generate`` delegates here when given ``--image``. The prompt goes through the VL chat template as one
user turn: the images first, then the text.
"""

from __future__ import annotations

import click


def run_vl(model: str, prompt: str, images, options: dict, stream: bool = False, device=None, dtype=None,
           echo=click.echo, enable_thinking: bool = False) -> str:
    """Generate with images from local paths or ``data:`` URLs; echo and return the decoded text."""
    from ernie_paddle.runtime.vl import load_vl

    runtime = load_vl(model, dtype=dtype, device=device)
    tok = runtime.tokenizer
    inputs = runtime.inputs(prompt, list(images), **({"enable_thinking": True} if enable_thinking else {}))
    options = dict(options)
    if "stop_token_ids" not in options and tok.stop_token_ids:
        options["stop_token_ids"] = tok.stop_token_ids
    if stream:
        detok, parts = tok.detokenizer(), []
        for step in runtime.stream(inputs, **options):
            parts.append(detok.add([int(step[0])]))
            echo(parts[-1], nl=False)
        parts.append(detok.flush())
        echo(parts[-1])
        return "".join(parts)
    out = runtime.generate(inputs, **options)
    text = tok.decode(out[0, inputs.input_ids.shape[1]:].tolist(), skip_special_tokens=True)
    echo(text)
    return text
