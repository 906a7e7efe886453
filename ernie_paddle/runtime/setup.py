"""Where and how a runtime computes: device, dtype, CPU math tuning and thread count, set up once per load.

CPU computes in float32 (Paddle has no CPU bf16 kernels); GPU defaults to bfloat16. Every runtime (dygraph
text, VL, predictor, tensor-parallel rank) goes through :func:`setup`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import paddle

from ernie_paddle.errors import ErnieError

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


@dataclass(frozen=True)
class Placement:
    """The resolved device ("cpu" or "gpu:N"), compute dtype and CPU thread count of a runtime."""

    device: str
    dtype: str
    threads: int


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tune_cpu_math() -> None:
    """On AMD CPUs with AVX2, let Paddle's bundled MKL use its AVX2 kernels (it otherwise takes a generic
    path, 2-3x slower for the matmuls of prefill and batched decode). Effective before the first matmul
    of the process; a user's own MKL_DEBUG_CPU_TYPE wins."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ:
        return
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    if "AuthenticAMD" in info and " avx2" in info:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"


def resolve_device(device: str | None) -> str:
    """``None`` picks the GPU when Paddle has one, else the CPU."""
    if device is None:
        has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        return "gpu:0" if has_gpu else "cpu"
    device = str(device).lower().replace("cuda", "gpu")
    if device.startswith("gpu") and not paddle.device.is_compiled_with_cuda():
        raise ErnieError(f"device {device!r} requested but this Paddle build has no CUDA support")
    if not (device == "cpu" or device.startswith("gpu")):
        raise ErnieError(f"unknown device {device!r} (cpu, gpu or gpu:N)")
    return device


def resolve_dtype(dtype: str | None, device: str) -> str:
    """float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise (CPU runs float32 only)."""
    if dtype is None:
        return "float32" if device == "cpu" else "bfloat16"
    name = _DTYPES.get(str(dtype).replace("paddle.", "").lower())
    if name is None:
        raise ErnieError(f"unsupported dtype {dtype!r} (float32, bfloat16 or float16)")
    if device == "cpu" and name != "float32":
        raise ErnieError(f"dtype {name} is not supported on CPU: Paddle has no CPU kernels for it; "
                         "use float32 (the default) or a GPU")
    return name


def setup(device: str | None = None, dtype: str | None = None, num_threads: int | None = None,
          share: int = 1) -> Placement:
    """Resolve device and dtype, make the device current and, on CPU, tune MKL and set the thread count.

    ``num_threads`` defaults to the usable cores divided by ``share`` (the processes sharing this host).
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    threads = num_threads or max(1, available_cores() // share)
    paddle.set_device(device)
    if device == "cpu":
        tune_cpu_math()  # before the process's first matmul
        paddle.base.core.set_num_threads(threads)
    return Placement(device, dtype, threads)
