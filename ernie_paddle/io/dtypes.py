"""Safetensors dtype codes <-> numpy dtypes (bf16 and fp8 through ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

BY_CODE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
CODE_OF: dict[np.dtype, str] = {v: k for k, v in BY_CODE.items()}
BY_NAME: dict[str, np.dtype] = {
    "bfloat16": BY_CODE["BF16"],
    "float16": BY_CODE["F16"],
    "float32": BY_CODE["F32"],
}


def code_of(dtype) -> str:
    """The safetensors code of a numpy dtype (raises ValueError for one safetensors cannot hold)."""
    try:
        return CODE_OF[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors code") from None


def itemsize(code: str) -> int:
    return BY_CODE[code].itemsize
