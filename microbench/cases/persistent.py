"""The ``persistent`` variant of LSTM/GRU (kernels/persistent.py, kernels/cuda/rnn_persistent.cu).

One cooperative launch per layer and sequence, W_hh kept in shared memory.  The builder runs the
plan first: a shape that does not fit on chip raises Unsupported with the plan's reason (which
resource, needed vs available, "use the fused variant"), and the case is skipped with it.
"""
from __future__ import annotations

import functools

import numpy as np

from kernels.backends import BACKENDS
from kernels.errors import Unsupported

from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, register
from .rnn import compare, make_inputs, reference_outputs

ABOUT = ("one cooperative kernel for all T steps; W_hh rows of each block's units in shared memory, "
         "grid.sync() per step, input GEMM hoisted (cuBLAS); 1 layer")


def build_persistent(problem: RNNProblem, seed: int, *, backend: str = "cupy", precision: str,
                     plan=None) -> Prepared:
    from kernels import persistent as kp
    # ``plan`` (a fusion plan) does not apply: persistent is the last rung, with every step in it.
    if problem.skip_input:
        raise Unsupported("the persistent kernel runs the whole layer (its own input GEMM); "
                          "skip-input is not wired there: use --input-gemm, or our variants")
    if problem.L != 1:
        raise Unsupported(f"persistent {problem.op}: 1 layer only (got L={problem.L}); "
                          "use the fused variant")
    BACKENDS[backend].check_dtype(precision)
    # The plan on H100 numbers first: a shape that can never fit is skipped with its reason even
    # before a GPU is asked; the launcher re-plans with the live device's numbers.
    kp.plan(problem.op, problem.H, problem.B, precision)
    xp = BACKENDS[backend].xp()
    inp = make_inputs(problem, seed, precision)
    impl = kp.PersistentRNN(inp["params"], precision)
    geo = impl.geometry(problem.B)
    x, h0 = xp.asarray(inp["x"]), xp.asarray(inp["h0"][0])
    c0 = xp.asarray(inp["c0"][0]) if inp["c0"] is not None else None
    run = (lambda: impl(x, h0, c0)) if problem.op == "lstm" else (lambda: impl(x, h0))  # noqa: E731

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        out = run() if out is None else out
        if problem.op == "lstm":
            y, (h, c) = out
            got = (y, h[None], c[None])
        else:
            y, h = out
            got = (y, h[None])
        host = [np.asarray(a.get()) for a in got]
        return compare(host, reference_outputs(problem, seed, precision), precision)

    itemsize = np.dtype(impl.dtype).itemsize
    return Prepared(inputs={"x": x, "h0": h0, "c0": c0}, run=run, flops=problem.flops(),
                    bytes=problem.bytes(itemsize), check=check,
                    info={"plan": "persistent", "geometry": geo.describe(),
                          # input GEMM, bias add, persistent kernel
                          "launches_per_call": 3})


for _op in ("lstm", "gru"):
    register(VariantRecord(_op, "persistent", "cupy",
                           functools.partial(build_persistent, backend="cupy"), ABOUT,
                           code="kernels.persistent:PersistentRNN"))
