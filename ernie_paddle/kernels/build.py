"""Build and load a C++ Paddle custom-operator module on first use (``paddle.utils.cpp_extension``, g++).

The module lands in ``$ERNIE_PADDLE_CACHE`` or ``~/.cache/ernie_paddle`` under ``kernels/<hash>``, keyed by
the source, the flags, the Paddle version and the CPU flags (the code is compiled for the host CPU), so a
changed source or another CPU builds afresh. Parallel processes build once (a file lock).
``NativeModule`` keeps the build's outcome: its module, or why there is none (then callers use Paddle ops).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import re
import warnings
from pathlib import Path

# Paddle adds -fwrapv, which blocks vectorization; -ffp-contract=off: the kernels' only fused multiply-adds
# are their explicit ones, so the AVX2 and portable backends (and numpy's float32 references) agree bit for bit.
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-wrapv", "-ffp-contract=off"]


def _cache_dir(source: Path) -> Path:
    import paddle

    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    key = hashlib.sha256(_source_bytes(source) + " ".join(CFLAGS + _openmp_ldflags()).encode() + paddle.__version__.encode()
                         + flags.encode()).hexdigest()[:16]
    root = Path(os.environ.get("ERNIE_PADDLE_CACHE") or Path.home() / ".cache" / "ernie_paddle")
    return root / "kernels" / key


def _source_bytes(source: Path) -> bytes:
    """The source and the local headers it includes (``#include "name.h"``, recursively): the cache key."""
    seen, out, todo = set(), b"", [source]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        data = path.read_bytes()
        out += data
        todo += [path.parent / m.decode() for m in re.findall(rb'^#include "([^"]+)"', data, re.M)]
    return out


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


def _openmp_ldflags() -> list[str]:
    """Link Paddle's own OpenMP runtime (Intel's libiomp5, which MKL uses) instead of GCC's libgomp: two
    runtimes in one process keep two thread pools, and MKL's threads spin-waiting after each matmul
    took the cores from the other pool's threads (a GEMV ran 10x slower right after an MKL call)."""
    import paddle

    libs = Path(paddle.__file__).parent / "libs"
    iomp = libs / "libiomp5.so"
    return [str(iomp), f"-Wl,-rpath,{libs}"] if iomp.is_file() else ["-fopenmp"]


_LOADED: dict = {}  # name -> module: a process registers a library's operators once, so load it once


def build(source: Path, name: str):
    """The loaded extension module ``name`` compiled from ``source`` (built when not cached)."""
    if name not in _LOADED:
        _LOADED[name] = _build(source, name)
    return _LOADED[name]


def _build(source: Path, name: str):
    import fcntl

    with warnings.catch_warnings():  # Paddle warns at import that ccache is missing: not the user's concern
        warnings.filterwarnings("ignore", message="No ccache found")
        from paddle.utils.cpp_extension import load

    folder = _cache_dir(source)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock, _quiet():
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = folder / name
        if (built / f"{name}.so").is_file():  # skip setuptools' up-to-date check (~1 s per process)
            with contextlib.suppress(Exception):
                from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

                return _import_module_from_library(name, str(built))
        return load(name=name, sources=[str(source)], build_directory=str(folder),
                    extra_cxx_cflags=CFLAGS, extra_ldflags=_openmp_ldflags(), verbose=False)


class NativeModule:
    """One lazily built module; ``get()`` is None when ``env_switch`` is "0", off Linux/x86, or when the
    build fails (``error`` says why)."""

    def __init__(self, source: Path, name: str, env_switch: str):
        self.source, self.name, self.env_switch = source, name, env_switch
        self.reset()

    def reset(self) -> None:
        """Forget the decision (tests flip the environment switch)."""
        self.tried, self.module, self.error = False, None, None

    def get(self):
        if not self.tried:
            self.tried = True
            if os.environ.get(self.env_switch, "1") == "0":
                self.error = f"disabled by {self.env_switch}=0"
            elif platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
                self.error = f"no compiled kernels for {platform.system()}/{platform.machine()}"
            else:
                try:
                    self.module = build(self.source, self.name)
                except Exception as e:  # a missing compiler or headers: callers use Paddle ops
                    self.error = f"{type(e).__name__}: {e}"
        return self.module
