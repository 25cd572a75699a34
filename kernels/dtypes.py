"""Precision names, their NumPy storage types and their check tolerances."""
from __future__ import annotations

import numpy as np

from .errors import BadInput

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


def storage(name) -> np.dtype:
    """NumPy storage type of a precision (bf16 needs an array library that has it)."""
    key = canonical(name)
    if key == "bf16":
        raise BadInput("dtype 'bf16' has no NumPy storage type; it exists only on GPU backends")
    return np.dtype(_PRECISIONS[key][0])


def tolerance(name) -> float:
    return _PRECISIONS[canonical(name)][1]
