"""Optional compiled CPU kernels for ``RuntimeQuantLinear`` (``cpu_kernels.cc``, a Paddle custom operator).

Built on first use with ``paddle.utils.cpp_extension`` (g++, ~15 s once) into
``$ERNIE_PADDLE_CACHE`` or ``~/.cache/ernie_paddle/kernels/<hash>``, keyed by the source, the Paddle version
and the CPU flags (the code is compiled for the host CPU). ``get()`` returns None, and the runtime uses Paddle
ops instead, when ``ERNIE_PADDLE_QUANT_KERNELS=0``, on a non-Linux/x86 host, or when the build fails (the
reason is kept in ``build_error()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
from pathlib import Path

_SOURCE = Path(__file__).with_name("cpu_kernels.cc")
_NAME = "ernie_quant_kernels"
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-wrapv"]  # Paddle adds -fwrapv, which blocks vectorization
_CODES = {"wint8": 0, "wint4": 1, "fp8": 2}
_STATE: dict = {"tried": False, "kernels": None, "error": None}


def _cache_dir() -> Path:
    import paddle

    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_CFLAGS).encode() + paddle.__version__.encode()
                         + flags.encode()).hexdigest()[:16]
    root = Path(os.environ.get("ERNIE_PADDLE_CACHE") or Path.home() / ".cache" / "ernie_paddle")
    return root / "kernels" / key


class Kernels:
    """Python face of the two operators, taking a RuntimeQuantLinear."""

    def __init__(self, module):
        self._fused, self._dequant = module.eqlinear_fused, module.eqlinear_dequant

    def fused(self, layer, x):
        """y [M, N] = x [M, K] @ W for M <= 8, reading the compact storage once."""
        x = x if x.is_contiguous() else x.contiguous()
        return self._fused(x, layer.quant_weight, layer.weight_scale, _CODES[layer.method], layer.block,
                           layer.out_features, threads())

    def dequant_rows(self, layer, r0: int, r1: int):
        """float32 rows r0:r1 of W [K, N] (wint4: r0, r1 even; fp8: r0 on a block boundary)."""
        if layer.method == "wint4":
            q, s = layer.quant_weight[r0 // 2: r1 // 2], layer.weight_scale
        elif layer.method == "fp8":
            b = layer.block
            q, s = layer.quant_weight[r0:r1], layer.weight_scale[r0 // b: (r1 + b - 1) // b]
        else:
            q, s = layer.quant_weight[r0:r1], layer.weight_scale
        return self._dequant(q.contiguous(), s.contiguous(), _CODES[layer.method], layer.block, layer.out_features,
                             threads())


def threads() -> int:
    """Threads per kernel call: ``$ERNIE_PADDLE_QUANT_THREADS``, else 1 (see ``RuntimeQuantLinear``)."""
    return int(os.environ.get("ERNIE_PADDLE_QUANT_THREADS", "1"))


@contextlib.contextmanager
def _quiet():
    """Silence the build's setuptools/compiler chatter (printed and logged at INFO)."""
    sink = io.StringIO()
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _build():
    import fcntl

    from paddle.utils.cpp_extension import load

    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock, _quiet():  # parallel processes (tests, bench children) build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = folder / _NAME
        if (built / f"{_NAME}.so").is_file():  # skip setuptools' up-to-date check (~1 s per process)
            with contextlib.suppress(Exception):
                from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

                return _import_module_from_library(_NAME, str(built))
        return load(name=_NAME, sources=[str(_SOURCE)], build_directory=str(folder),
                    extra_cxx_cflags=_CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)


def get() -> Kernels | None:
    """The compiled kernels, or None (see the module docstring)."""
    if not _STATE["tried"]:
        _STATE["tried"] = True
        if os.environ.get("ERNIE_PADDLE_QUANT_KERNELS", "1") == "0":
            _STATE["error"] = "disabled by ERNIE_PADDLE_QUANT_KERNELS=0"
        elif platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            _STATE["error"] = f"no kernels for {platform.system()}/{platform.machine()}"
        else:
            try:
                _STATE["kernels"] = Kernels(_build())
            except Exception as e:  # a missing compiler or headers: fall back to Paddle ops
                _STATE["error"] = f"{type(e).__name__}: {e}"
    return _STATE["kernels"]


def build_error() -> str | None:
    return _STATE["error"]


def reset() -> None:
    """Forget the cached decision (tests switch ``ERNIE_PADDLE_QUANT_KERNELS``)."""
    _STATE.update(tried=False, kernels=None, error=None)
