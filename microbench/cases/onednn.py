"""The ``onednn`` variants: oneDNN's own RNN and convolution primitives called directly (no
framework), the CPU's counterpart of the ``cudnn`` variants, checked against the same float64
reference as every variant.

- ``onednn``: LSTM (``dnnl_lstm_forward``), the linear-before-reset GRU
  (``dnnl_lbr_gru_forward``) and the vanilla RNN (``dnnl_vanilla_rnn_forward``, ReLU or tanh) in
  inference, weights reordered into the primitive's layout once at build; conv2d with oneDNN's
  direct algorithm.
- ``onednn_reorder``: the same RNN primitive, paying the weight reorders on every call, as
  PyTorch's ``mkldnn_rnn_layer`` does: the difference between the two rows is that cost.
- ``onednn_winograd``: conv2d with ``convolution_winograd`` where oneDNN offers it.

Skips (kernels.errors.Unsupported) with the reason when oneDNN cannot be loaded, or refuses the
request (``dnnl_unimplemented``: bf16 on a CPU without AVX-512, Winograd for most shapes/ISAs);
and for a skip-input problem: oneDNN's RNN primitives always multiply the layer input by
``weights_layer`` (no skip-input mode), so they cannot time the recurrent part alone.
"""
from __future__ import annotations

import functools

import numpy as np

from kernels import dtypes
from kernels.errors import Unsupported

from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, library_probe, register
from .rnn import compare, make_inputs, reference_outputs, second_inputs

BACKEND = "onednn"
PRECISIONS = ("fp32", "bf16")
RNN_VARIANTS = {"onednn": False, "onednn_reorder": True}    # variant -> reorder every call


def _precision(precision: str) -> str:
    p = dtypes.canonical(precision)
    if p not in PRECISIONS:
        raise Unsupported(f"dtype {p} is not offered by the onednn variants; allowed: "
                          f"{', '.join(PRECISIONS)}")
    return p


def build_onednn_rnn(problem: RNNProblem, seed: int, *, reorder_each_call: bool, precision: str,
                     plan=None) -> Prepared:
    from kernels.onednn.lib import load
    from kernels.onednn.rnn import OnednnRNN
    precision = _precision(precision)
    if problem.skip_input:
        raise Unsupported("oneDNN's RNN primitives have no skip-input mode (they always compute the "
                          "input GEMM); drop --skip-input (suites: --input-gemm) for an onednn row")
    lib = load()  # MissingDependency (an Unsupported) names the places searched
    inp = make_inputs(problem, seed, precision)
    rnn = OnednnRNN(inp["params"], batch=problem.B, seq_len=problem.T, precision=precision,
                    reorder_each_call=reorder_each_call, lib=lib)
    try:
        rnn.bind(inp["x"], inp["h0"], inp["c0"])
        run = rnn.run

        def check(out=None) -> Check:
            # out: a timed call's return value; else two calls: a result that goes wrong after the
            # first call (reused buffers, a reorder that overwrote its own source) must not pass
            if out is None:
                run()
                out = run()
            outs = [np.array(a, dtype=np.float64) for a in out]
            return compare(outs, reference_outputs(problem, seed, precision), precision)

        info = rnn.info()
        info["onednn_path"] = lib.path
        # inputs: the buffers the primitives read (bind copied the inputs there)
        return Prepared(inputs=rnn.bound, run=run, flops=problem.flops(),
                        bytes=problem.bytes(dtypes.itemsize(precision)), check=check, info=info,
                        close=rnn.close, vary=second_inputs(problem, seed, precision, flatten=tuple))
    except BaseException:
        rnn.close()
        raise


_ABOUT_RNN = {
    False: "oneDNN's fused RNN primitive (dnnl_{cell}_forward, inference) called through ctypes; "
           "weights reordered to its layout once, at build",
    True: "the same oneDNN RNN primitive, plus the reorder of the weights into its layout on every "
          "call (what PyTorch's mkldnn_rnn_layer does)",
}

_PROBE = library_probe("kernels.onednn.lib")

for _op, _cell in (("lstm", "lstm"), ("gru", "lbr_gru"), ("rnn", "vanilla_rnn")):
    for _variant, _each in RNN_VARIANTS.items():
        register(VariantRecord(_op, _variant, BACKEND,
                               functools.partial(build_onednn_rnn, reorder_each_call=_each),
                               _ABOUT_RNN[_each].format(cell=_cell), code="kernels.onednn.rnn:OnednnRNN",
                               dtypes=PRECISIONS, probe=_PROBE))


# -- convolution ---------------------------------------------------------------------------------
# Winograd's transforms round differently from direct summation (as for our own Winograd).
_CONV_TOL_SCALE = {"winograd": 10.0}


def build_onednn_conv(problem, seed: int, *, algo: str, precision: str, plan=None) -> Prepared:
    from kernels.onednn.conv import OnednnConv
    from kernels.onednn.lib import load

    from .conv import make_inputs as conv_inputs, reference_output, second_input
    precision = _precision(precision)
    lib = load()
    conv = OnednnConv(problem, precision=precision, algo=algo, lib=lib)
    try:
        x, w, b = conv_inputs(problem, seed, precision)
        conv.set_weights(w, b)
        conv.x[...] = x
        run = conv.run
        tol = dtypes.tolerance(precision) * _CONV_TOL_SCALE.get(algo, 1.0)

        def check(out=None) -> Check:
            if out is None:
                run()
                out = run()
            return compare([np.array(out, dtype=np.float64)],
                           [reference_output(problem, seed, precision)], precision, names=("y",),
                           tol=tol)

        info = conv.info()
        info["onednn_path"] = lib.path
        # inputs: x is the buffer the primitive reads (conv.x), the weights as given
        return Prepared(inputs={"x": conv.x, "w": w, "b": b}, run=run,
                        flops=problem.flops, bytes=problem.bytes(precision), check=check,
                        info=info, close=conv.close, vary=second_input(problem, seed, precision, tol))
    except BaseException:
        conv.close()
        raise


register(VariantRecord("conv", "onednn", BACKEND, functools.partial(build_onednn_conv, algo="direct"),
                       "oneDNN convolution primitive, convolution_direct, layouts of oneDNN's "
                       "choice (activations reordered per call where the user layout differs)",
                       code="kernels.onednn.conv:OnednnConv", dtypes=PRECISIONS, probe=_PROBE))
register(VariantRecord("conv", "onednn_winograd", BACKEND,
                       functools.partial(build_onednn_conv, algo="winograd"),
                       "oneDNN convolution primitive, convolution_winograd (where oneDNN offers it)",
                       code="kernels.onednn.conv:OnednnConv", dtypes=PRECISIONS, probe=_PROBE,
                       tol_scale=_CONV_TOL_SCALE["winograd"]))
