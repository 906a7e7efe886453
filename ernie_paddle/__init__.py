"""ernie-paddle: a PaddlePaddle-native runtime for ERNIE 4.5 with a bridge to Hugging Face PyTorch."""

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.version import __version__

__all__ = ["ErnieConfig", "ErnieError", "__version__", "load"]


def load(path, dtype=None, device=None, **kwargs):
    """Load a Paddle, HF or exported folder; returns a model with ``logits``, ``generate``, ``stream``,
    ``config`` and ``close`` (see ``ernie_paddle.api.load``)."""
    from ernie_paddle.api import load as _load  # lazy: keeps Paddle out of the CLI's start-up

    return _load(path, dtype=dtype, device=device, **kwargs)
