"""The fp32 tanh of the numba cell kernels (hand-written and generated).

libm's scalar tanhf stops LLVM from vectorizing the loop (about 8x slower here than NumPy's
SIMD tanh).  For fp32 we use a rational approximation tanh(x) ~ x P(u) / Q(u), u = (x/9)^2, on
x clamped to [-9, 9] (tanh(9) rounds to 1 in fp32).  The coefficients are a least-squares fit of
the relative error on 40k Chebyshev nodes; evaluated in fp32 the maximum relative error is
3.5e-7 (about 6 ulp) over [-12, 12], checked in tests/test_rnn_variants.py.  All coefficients are
positive, so Horner's rule has no cancellation.  fp64 keeps libm's tanh: it is the precision
that must agree with the reference to 1e-10.
"""
from __future__ import annotations

import numpy as np

TANH_CLAMP = 9.0
TANH_P = (1.0, 11.118471145629883, 25.81534194946289, 15.97429370880127, 1.9722696542739868)
TANH_Q = (1.0, 38.11846160888672, 180.2147674560547, 216.63905334472656, 64.70911407470703,
          2.241997003555298)


def tanh_rational(x):
    """The fp32 approximation, in NumPy (for tests and for documentation)."""
    x = np.asarray(x, dtype=np.float32)
    ft = np.float32
    xc = np.clip(x, ft(-TANH_CLAMP), ft(TANH_CLAMP))
    u = (xc * ft(1 / TANH_CLAMP)) ** 2
    p = np.zeros_like(u)
    for a in TANH_P[::-1]:
        p = p * u + ft(a)
    q = np.zeros_like(u)
    for a in TANH_Q[::-1]:
        q = q * u + ft(a)
    return np.clip(xc * p / q, ft(-1), ft(1))
