"""Which engine runs a folder: the exported Paddle Inference predictor or eager (dygraph) Paddle.

``ernie_paddle.api.choose_engine`` asks ``resolve_engine`` after its own rules; the CLI default is "auto".
"""

from __future__ import annotations

import os
from pathlib import Path

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.predictor.manifest import MANIFEST

ENGINES = ("auto", "predictor", "dygraph")


def unsupported_reason(config) -> str | None:
    """None when the predictor can run ``config``, else the reason it cannot."""
    if config.family not in ("dense", "moe"):
        return f"the predictor runs ERNIE 4.5 text models, not {config.family} models"
    return None


def compiled_quantized(device: str | None) -> bool:
    """Whether an export for ``device`` keeps quantized linears compact: the compiled CPU operators (GPU
    exports, and CPU ones without a compiler, multiply by dequantized float32 copies)."""
    from ernie_paddle.kernels import predictor_ops
    from ernie_paddle.runtime.setup import resolve_device

    return resolve_device(device) == "cpu" and predictor_ops.get() is not None


def resolve_engine(path, engine: str | None, quantization: str | None = None, device: str | None = None) -> str:
    """"predictor" or "dygraph" for ``path`` and the requested ``engine``.

    None: ``$ERNIE_PADDLE_ENGINE``, else the predictor for an export folder and dygraph for a checkpoint.
    "auto": the predictor wherever it supports the model (the CLI default), else dygraph; a quantized
    checkpoint (or ``quantization``) goes to the predictor only where its export keeps the compact weights
    (``compiled_quantized`` on ``device``), else stays on dygraph.
    """
    engine = (engine or os.environ.get("ERNIE_PADDLE_ENGINE") or "").strip().lower() or None
    if engine is not None and engine not in ENGINES:
        raise ErnieError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    exported = Path(path, MANIFEST).is_file()
    if exported:
        if engine == "dygraph":
            raise ErnieError("an export folder runs only on the predictor engine; pass the checkpoint folder "
                             "for --engine dygraph", path)
        return "predictor"
    if engine == "auto":
        config = ErnieConfig.from_file(path)
        if unsupported_reason(config) is not None:
            return "dygraph"
        quantized = bool(config.quantization_config) or quantization is not None
        return "predictor" if not quantized or compiled_quantized(device) else "dygraph"
    return engine or "dygraph"
