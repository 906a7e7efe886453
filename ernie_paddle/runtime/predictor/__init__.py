"""Exported Paddle Inference programs (``export``) and the predictor that runs them (``Predictor``).

``ernie_paddle.load(export_folder)`` returns a ``PredictorRuntime``; ``load(checkpoint, engine="predictor")``
exports into the cache under ``$ERNIE_PADDLE_HOME/exports`` on first use.
"""

from ernie_paddle.runtime.predictor.export import export, supports
from ernie_paddle.runtime.predictor.export_cache import export_cached
from ernie_paddle.runtime.predictor.manifest import checkpoint_digest, is_export_folder, verify_export
from ernie_paddle.runtime.predictor.runner import Predictor
from ernie_paddle.runtime.predictor.runtime import PredictorRuntime, load_predictor
from ernie_paddle.runtime.predictor.support import resolve_engine

__all__ = ["Predictor", "PredictorRuntime", "checkpoint_digest", "export", "export_cached", "is_export_folder",
           "load_predictor", "resolve_engine", "supports", "verify_export"]
