"""The ``cudnn`` LSTM/GRU variants: cuDNN's own RNN kernels called directly (no framework), one
case per cuDNN RNN algorithm, checked against the same float64 reference as every variant.

Skips (kernels.errors.Unsupported) with the reason when there is no GPU, no cuDNN, or cuDNN
refuses the algorithm for the shape or precision (its status name and message).
"""
from __future__ import annotations

import functools

import numpy as np

from kernels.errors import Unsupported

from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, register
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

        def check() -> Check:
            y, hy, cy = run()
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


for _op in ("lstm", "gru"):
    for _variant, _algo in ALGORITHMS.items():
        register(VariantRecord(_op, _variant, BACKEND,
                               functools.partial(build_cudnn_rnn, algo=_algo),
                               _ABOUT[_algo]))
