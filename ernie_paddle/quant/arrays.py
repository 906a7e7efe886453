"""Input checks shared by the quantizers: which dtypes count as float, and a float32 weight matrix."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ernie_paddle.errors import ErnieError

FLOATS = (np.float32, np.float16, np.float64, ml_dtypes.bfloat16)


def float_matrix(w, name: str, action: str) -> np.ndarray:
    """``w`` as a finite float32 2-D array, or an ErnieError "cannot <action> <name>: ..."."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype not in FLOATS:
        raise ErnieError(f"cannot {action} {name!r}: expected a 2-D float array, got {w.dtype} {list(w.shape)}")
    w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise ErnieError(f"cannot {action} {name!r}: it contains NaN or Inf")
    return w
