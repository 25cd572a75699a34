"""Precision names, their NumPy storage types and their check tolerances."""
from __future__ import annotations

import numpy as np

from .errors import BadInput, MissingDependency

# name -> (storage dtype, relative tolerance against the float64 reference).
# tf32 stores fp32 and only changes GEMM math, so its tolerance is that of a 10-bit mantissa.
_PRECISIONS = {
    "fp64": ("float64", 1e-10),
    "fp32": ("float32", 1e-5),
    "tf32": ("float32", 1e-3),
    "fp16": ("float16", 1e-2),
    "bf16": ("bfloat16", 1e-2),
}

ALIASES = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
           "double": "fp64", "float": "fp32", "half": "fp16"}

PRECISIONS = tuple(_PRECISIONS)


def canonical(name) -> str:
    """'float32', np.float32, 'fp32' -> 'fp32'."""
    if not isinstance(name, str):
        name = np.dtype(name).name
    key = ALIASES.get(name, name)
    if key not in _PRECISIONS:
        raise BadInput(f"dtype {name!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    return key


def bfloat16() -> np.dtype:
    """The bfloat16 NumPy dtype of ml_dtypes.  NumPy has none of its own; CuPy 14 takes this same
    dtype for its bfloat16 arrays (and runs their GEMMs through cublasGemmEx with fp32 compute)."""
    try:
        import ml_dtypes
    except ImportError:
        raise MissingDependency("ml_dtypes", "bf16 storage", "pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def storage(name) -> np.dtype:
    """NumPy storage type of a precision (bf16: ml_dtypes' bfloat16)."""
    key = canonical(name)
    if key == "bf16":
        return bfloat16()
    return np.dtype(_PRECISIONS[key][0])


def itemsize(name) -> int:
    """Bytes per stored element, without importing ml_dtypes (memory estimates use it)."""
    return 2 if canonical(name) == "bf16" else storage(name).itemsize


def tolerance(name) -> float:
    return _PRECISIONS[canonical(name)][1]
