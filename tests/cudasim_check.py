"""Run the numba.cuda pointwise kernels in numba's CUDA simulator and compare them with the
float64 math and with fusion's NumPy fused providers.

Run by tests/test_cuda_sources.py in a subprocess with NUMBA_ENABLE_CUDASIM=1: numba reads that
variable once, when numba.cuda is first imported, and the simulator would then replace the real
target for every later test of the same process.  Prints one JSON line per case and a summary
line; exits 1 if any case is off, 2 if the simulator is not active.

Cases: LSTM and GRU; float32 and float16 storage; awkward sizes (B, H) = (1, 1), (3, 129);
the three gate layouts fusion.gemm produces (grouped (B, G*H); per gate (G, B, H) seen as
(B, G, H); one step's rows of a per-gate hoisted (G, T*B, H) buffer, gate stride T*B*H); biases
absent, separate or one combined; the cell state updated in place; and a grid capped at one
block row so the kernels' grid-stride loop over B runs.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    print("NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported", file=sys.stderr)
    sys.exit(2)

import numpy as np  # noqa: E402

from fusion import pointwise as fpointwise  # noqa: E402
from fusion import pointwise_cuda as pc  # noqa: E402
from kernels import cells  # noqa: E402

# Relative to max(1, |reference|).  fp32: the storage type's check tolerance (kernels.dtypes);
# fp16: inputs are compared from their fp16 values, so the error is the final rounding of h and c
# to fp16 (2^-11) plus fp32 math: 1e-3.
TOL = {"float32": 1e-5, "float16": 1e-3}


def gates(rng, layout, B, G, H, dtype):
    """A (B, G, H) view in one of fusion.gemm's layouts, values in [-4, 4] (sigmoid/tanh saturate)."""
    if layout == "grouped":
        buf = rng.uniform(-4, 4, (B, G * H)).astype(dtype)
        return buf.reshape(B, G, H)
    if layout == "per_gate":
        return rng.uniform(-4, 4, (G, B, H)).astype(dtype).transpose(1, 0, 2)
    # hoisted per gate: step t=1 of T=3, so the view starts inside the buffer
    T, t = 3, 1
    buf = rng.uniform(-4, 4, (G, T * B, H)).astype(dtype)
    return buf[:, t * B:(t + 1) * B].transpose(1, 0, 2)


def on_device(args):
    """The simulator's stand-in for device arrays, wrapping each view as it is: a plain NumPy
    argument would be copied to a contiguous "device" buffer, and the strided views are the point
    (on a GPU the provider passes CuPy views through __cuda_array_interface__ the same way)."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return tuple(FakeCUDAArray(a) if isinstance(a, np.ndarray) else a for a in args)


def err(got, ref):
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))))


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def lstm_case(rng, B, H, dtype, layout, bias, in_place, max_grid_y):
    G = 4
    gx, gh = gates(rng, layout, B, G, H, dtype), gates(rng, layout, B, G, H, dtype)
    bx = rng.uniform(-1, 1, (G, H)).astype(dtype) if bias in ("x", "both") else None
    bh = rng.uniform(-1, 1, (G, H)).astype(dtype) if bias == "both" else None
    c_prev = rng.uniform(-2, 2, (B, H)).astype(dtype)
    h_ref, c_ref = cells.lstm_pointwise(np, f64(gx), f64(gh), f64(bx), f64(bh), f64(c_prev))
    h_out = np.full((B, H), np.nan, dtype=dtype)
    c_in = c_prev.copy()
    c_out = c_in if in_place else np.full((B, H), np.nan, dtype=dtype)
    pc.numba_cuda_launch("lstm", on_device(pc._lstm_args(gx, gh, bx, bh, c_in, h_out, c_out)),
                         max_grid_y=max_grid_y)
    out = {"h": err(h_out, h_ref), "c": err(c_out, c_ref)}
    if dtype == "float32":
        # fusion's NumPy fused provider computes in the storage type: the two must agree closely
        h_np, c_np = np.empty_like(h_out), np.empty_like(c_out)
        fpointwise.NumpyLSTM()(np, gx, gh, bx, bh, c_prev, h_np, c_np)
        out["vs_numpy"] = max(err(h_out, h_np.astype(np.float64)), err(c_out, c_np.astype(np.float64)))
    return out


def gru_case(rng, B, H, dtype, layout, bias, in_place, max_grid_y):
    G = 3
    gx, gh = gates(rng, layout, B, G, H, dtype), gates(rng, layout, B, G, H, dtype)
    bx = rng.uniform(-1, 1, (G, H)).astype(dtype) if bias == "both" else None
    bh = rng.uniform(-1, 1, (G, H)).astype(dtype) if bias in ("x", "both") else None
    h_prev = rng.uniform(-1, 1, (B, H)).astype(dtype)
    # the op-by-op definition needs b_hh; an absent one is zero
    bh_ref = f64(bh) if bh is not None else np.zeros((G, H))
    (h_ref,) = cells.gru_pointwise(np, f64(gx), f64(gh), f64(bx), bh_ref, f64(h_prev))
    h_in = h_prev.copy()
    h_out = h_in if in_place else np.full((B, H), np.nan, dtype=dtype)
    pc.numba_cuda_launch("gru", on_device(pc._gru_args(gx, gh, bx, bh, h_in, h_out)), max_grid_y=max_grid_y)
    out = {"h": err(h_out, h_ref)}
    if dtype == "float32" and bh is not None:
        h_np = np.empty_like(h_prev)
        fpointwise.NumpyGRU()(np, gx, gh, bx, bh, h_prev, h_np)
        out["vs_numpy"] = err(h_out, h_np.astype(np.float64))
    return out


def main() -> int:
    from numba import cuda
    kernel_type = type(pc.numba_cuda_kernels()[0]).__name__
    if kernel_type != "FakeCUDAKernel":  # the simulator's kernel class: anything else is a real target
        print(f"the CUDA simulator is not active (kernel type {kernel_type})", file=sys.stderr)
        return 2
    implementation = getattr(cuda, "implementation", "?")
    rng = np.random.default_rng(0)
    failures, n = [], 0
    sizes = ((1, 1), (3, 129))
    for cell, (B, H), dtype, layout, bias in itertools.product(
            ("lstm", "gru"), sizes, ("float32", "float16"), ("grouped", "per_gate", "hoisted"),
            ("none", "x", "both")):
        # in place and the grid-stride loop on a rotating subset keeps the simulator run short
        in_place = n % 2 == 1
        max_grid_y = 1 if n % 3 == 0 else pc.MAX_GRID_Y
        case = dict(cell=cell, B=B, H=H, dtype=dtype, layout=layout, bias=bias, in_place=in_place,
                    max_grid_y=max_grid_y)
        run = lstm_case if cell == "lstm" else gru_case
        errors = run(rng, B, H, dtype, layout, bias, in_place, max_grid_y)
        ok = all(np.isfinite(v) and v <= TOL[dtype] for v in errors.values())
        case.update(errors=errors, ok=bool(ok))
        print(json.dumps(case))
        if not ok:
            failures.append(case)
        n += 1
    print(json.dumps({"summary": True, "cases": n, "failures": len(failures),
                      "numba_cuda": implementation}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
