"""The ``cudnn`` variants: cuDNN's own kernels called directly (no framework), checked against the
same float64 reference as every variant.  LSTM, GRU and vanilla RNN: one case per cuDNN RNN
algorithm.  conv2d: the legacy API's forward per algorithm (``cudnn`` its heuristic pick) and the
frontend graph; with ``--backward``, backward-data and backward-filter per algorithm
(``cudnn_ALGO+bwd_data``, ``cudnn+bwd_weights``, ..., direction ``bwd``).

Skips (kernels.errors.Unsupported) with the reason when there is no GPU, no cuDNN, or cuDNN
refuses the algorithm for the shape or precision (its status name and message).
"""
from __future__ import annotations

import functools

import numpy as np

from kernels.errors import Unsupported

from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, library_probe, register
from .rnn import compare, make_inputs, reference_outputs

# variant name -> cuDNN algorithm (kernels.cudnn.rnn.CUDNN_RNN_ALGO)
ALGORITHMS = {
    "cudnn": "standard",
    "cudnn_persist_static": "persist_static",
    "cudnn_persist_dynamic": "persist_dynamic",
    "cudnn_persist_static_small_h": "persist_static_small_h",
}
BACKEND = "cupy"

_ABOUT = {
    "standard": "cuDNN cudnnRNNForward, CUDNN_RNN_ALGO_STANDARD (input GEMM for all steps, then a "
                "GEMM + fused pointwise kernel per step), called through ctypes",
    "persist_static": "cuDNN CUDNN_RNN_ALGO_PERSIST_STATIC: one persistent kernel keeps the "
                      "recurrent weights on chip for all steps",
    "persist_dynamic": "cuDNN CUDNN_RNN_ALGO_PERSIST_DYNAMIC: persistent kernel compiled by NVRTC "
                       "for this exact shape (cudnnBuildRNNDynamic, in build)",
    "persist_static_small_h": "cuDNN CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H: persistent kernel with "
                              "the weights in registers, for small hidden sizes",
}


def build_cudnn_rnn(problem: RNNProblem, seed: int, *, algo: str, precision: str,
                    plan=None, mode: str = "inference") -> Prepared:
    if problem.skip_input:
        # CUDNN_SKIP_INPUT feeds x (T, B, H) to every gate as it is; our skip-input problem gives
        # each gate its own projection (T, B, G*H), so the two are not the same function
        raise Unsupported("the cudnn variants run the whole layer (CUDNN_LINEAR_INPUT); cuDNN's "
                          "skip-input mode is not wired yet: use --input-gemm, or our variants")
    from kernels import gpu
    ok, reason = gpu.detect()
    if not ok:
        raise Unsupported(f"the cudnn variant needs a GPU: {reason}")
    from kernels.cudnn.lib import load
    from kernels.cudnn.rnn import PRECISION, CudnnRNN
    lib = load()  # MissingDependency (an Unsupported) names the places searched
    if precision not in PRECISION:
        raise Unsupported(f"dtype {precision} is not offered by the cudnn RNN variant; allowed: "
                          f"{', '.join(PRECISION)}")
    import cupy as cp

    inp = make_inputs(problem, seed, precision)
    rnn = CudnnRNN(inp["params"], batch=problem.B, seq_len=problem.T, algo=algo,
                   precision=precision, mode=mode, lib=lib)
    try:
        x, h0 = cp.asarray(inp["x"]), cp.asarray(inp["h0"])
        c0 = cp.asarray(inp["c0"]) if inp["c0"] is not None else None
        run = functools.partial(rnn, x, h0, c0)

        def check(out=None) -> Check:   # out: a timed call's return value, else one call now
            y, hy, cy = run() if out is None else out
            outs = (y, hy, cy) if problem.op == "lstm" else (y, hy)
            host = [np.asarray(a.get()) for a in outs]
            return compare(host, reference_outputs(problem, seed, precision), precision)

        itemsize = np.dtype(rnn.cfg.storage).itemsize
        info = rnn.info()
        info["cudnn_path"] = lib.directory
        return Prepared(inputs={"x": x, "h0": h0, "c0": c0}, run=run, flops=problem.flops(),
                        bytes=problem.bytes(itemsize), check=check, info=info, close=rnn.close)
    except BaseException:
        rnn.close()
        raise


_PROBE = library_probe("kernels.cudnn.lib")


def _register_rnn():
    from kernels.cudnn.rnn import PRECISION
    for op in ("lstm", "gru", "rnn"):      # rnn: CUDNN_RNN_RELU / CUDNN_RNN_TANH
        for variant, algo in ALGORITHMS.items():
            register(VariantRecord(op, variant, BACKEND, functools.partial(build_cudnn_rnn, algo=algo),
                                   _ABOUT[algo], code="kernels.cudnn.rnn:CudnnRNN",
                                   dtypes=tuple(PRECISION), probe=_PROBE))


_register_rnn()


# -- convolution ---------------------------------------------------------------------------------
# Transform-based algorithms (FFT, Winograd) round differently from direct summation; their fp32
# error against the float64 reference has not been measured yet, so they get 10x the tolerance.
_CONV_TOL_SCALE = {"fft": 10.0, "fft_tiling": 10.0, "winograd": 10.0, "winograd_nonfused": 10.0}


def build_cudnn_conv(problem, seed: int, *, algo: str, precision: str, plan=None,
                     frontend: bool = False) -> Prepared:
    """cuDNN forward convolution: the legacy API with one algorithm (``auto``: cuDNN's heuristic
    pick), or the frontend graph ``conv_fprop``; checked against the float64 reference."""
    from kernels import dtypes, gpu
    ok, reason = gpu.detect()
    if not ok:
        raise Unsupported(f"the cudnn conv variants need a GPU: {reason}")
    import cupy as cp
    from kernels.cudnn.conv import CudnnConv, FrontendConv

    from .conv import make_inputs as conv_inputs, reference_output
    conv = FrontendConv(problem, precision=precision) if frontend else \
        CudnnConv(problem, precision=precision, algo=algo)
    try:
        x, w, b = (None if a is None else cp.asarray(a) for a in conv_inputs(problem, seed, precision))
        run = functools.partial(conv, x, w, b)
        tol = dtypes.tolerance(precision) * _CONV_TOL_SCALE.get(getattr(conv, "algo", algo), 1.0)

        def check(out=None) -> Check:   # out: a timed call's return value, else one call now
            return compare([np.asarray((run() if out is None else out).get())], [reference_output(problem, seed, precision)],
                           precision, names=("y",), tol=tol)

        info = {"algo": getattr(conv, "algo", "frontend"),
                "workspace_bytes": getattr(conv, "workspace_bytes", None), "layout": problem.layout}
        return Prepared(inputs={"x": x, "w": w, "b": b}, run=run, flops=problem.flops,
                        bytes=problem.bytes(precision), check=check, info=info, close=conv.close)
    except BaseException:
        conv.close()
        raise


def _register_conv():
    from kernels.cudnn.conv import FWD_ALGOS, PRECISION
    common = dict(dtypes=tuple(PRECISION), probe=_PROBE)
    register(VariantRecord("conv", "cudnn", BACKEND, functools.partial(build_cudnn_conv, algo="auto"),
                           "cuDNN legacy API, the algorithm cuDNN's heuristics pick",
                           code="kernels.cudnn.conv:CudnnConv", **common))
    for algo in FWD_ALGOS:
        register(VariantRecord("conv", f"cudnn_{algo}", BACKEND,
                               functools.partial(build_cudnn_conv, algo=algo),
                               f"cuDNN legacy API, CUDNN_CONVOLUTION_FWD_ALGO_{algo.upper()}",
                               code="kernels.cudnn.conv:CudnnConv",
                               tol_scale=_CONV_TOL_SCALE.get(algo, 1.0), **common))
    register(VariantRecord("conv", "cudnn_frontend", BACKEND,
                           functools.partial(build_cudnn_conv, algo="auto", frontend=True),
                           "cuDNN frontend graph conv_fprop (heuristics, workspace)",
                           code="kernels.cudnn.conv:FrontendConv", **common))


_register_conv()


# -- convolution backward (conv --backward on a GPU, the conv training suites) ---------------------
# Registered with direction bwd like the CPU phases.  Rows: cudnn+PHASE (cuDNN's heuristic pick)
# and cudnn_ALGO+PHASE per algorithm of the phase, ALGO as in CUDNN_CONVOLUTION_BWD_*_ALGO_*; the
# transform algorithms get the forward's tolerance scale (_CONV_TOL_SCALE: the same names).


def build_cudnn_conv_backward(problem, seed: int, *, algo: str, phase: str, precision: str,
                              plan=None) -> Prepared:
    """One backward phase through the legacy API (bwd_data: dx; bwd_weights: dw and, with a
    bias, db), checked against the float64 phase reference as the CPU phases are; transform
    algorithms get the forward's 10x (their error is not measured yet)."""
    from kernels import gpu
    ok, reason = gpu.detect()
    if not ok:
        raise Unsupported(f"the cudnn conv backward variants need a GPU: {reason}")
    import cupy as cp
    from kernels.cudnn.conv import BACKWARD

    from . import conditioning as cond
    from .conv import backward_reference, make_inputs as conv_inputs, upstream_grad
    op = BACKWARD[phase](problem, precision=precision, algo=algo)
    try:
        x, w, _ = conv_inputs(problem, seed, precision)
        x, w, dy = cp.asarray(x), cp.asarray(w), cp.asarray(upstream_grad(problem, seed, precision))
        run = functools.partial(op, w, dy) if phase == "bwd_data" else functools.partial(op, x, dy)
        names = ("dx",) if phase == "bwd_data" else (("dw", "db") if problem.bias else ("dw",))
        scale = _CONV_TOL_SCALE.get(op.algo, 1.0)

        def check(out=None) -> Check:   # out: a timed call's return value, else one call now
            out = run() if out is None else out
            outs = [out] if phase == "bwd_data" else [a for a in out if a is not None]
            ref, tols = backward_reference(problem, seed, precision, phase)
            return cond.compare_each([np.asarray(a.get()) for a in outs], ref,
                                     [t * scale for t in tols], names)

        info = {"algo": op.algo, "workspace_bytes": op.workspace_bytes, "layout": problem.layout,
                "pass": phase, "outputs": list(names)}
        return Prepared(inputs={"x": x, "w": w, "dy": dy}, run=run, flops=problem.flops,
                        bytes=problem.bytes(precision), check=check, info=info, close=op.close)
    except BaseException:
        op.close()
        raise


def _register_conv_backward() -> None:
    """A record per (phase, algorithm), direction bwd: cudnn+PHASE (cuDNN's heuristic pick)
    first, then cudnn_ALGO+PHASE per algorithm of the phase's enum."""
    from kernels.conv.backward import PHASES
    from kernels.cudnn.conv import BACKWARD, PRECISION
    from .conv import PHASE_ABOUT
    common = dict(dtypes=tuple(PRECISION), probe=_PROBE, direction="bwd")
    for phase in PHASES:
        cls = BACKWARD[phase]
        fn = cls.HEURISTIC_FN.replace("cudnnGet", "cudnn").replace("Algorithm_v7", "")
        code = f"kernels.cudnn.conv:{cls.__name__}"
        register(VariantRecord("conv", f"cudnn+{phase}", BACKEND, functools.partial(
            build_cudnn_conv_backward, algo="auto", phase=phase),
            f"cuDNN legacy API {fn}, the algorithm cuDNN's heuristics pick; {PHASE_ABOUT[phase]}",
            code=code, **common))
        for a in cls.ALGOS:
            register(VariantRecord("conv", f"cudnn_{a}+{phase}", BACKEND, functools.partial(
                build_cudnn_conv_backward, algo=a, phase=phase),
                f"cuDNN legacy API {fn}, {cls.enum_name(a)}; {PHASE_ABOUT[phase]}", code=code,
                tol_scale=_CONV_TOL_SCALE.get(a, 1.0), **common))


_register_conv_backward()

