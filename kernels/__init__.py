"""microbench kernels: LSTM, GRU, vanilla RNN (and convolution) implementations, importable, no timing.

    from kernels import lstm, LSTMParams
    params = LSTMParams.random(input_size=256, hidden_size=256, num_layers=2, seed=0)
    y, (h_n, c_n) = lstm(x, params, variant="fused", backend="numba")

Every variant is checked against the float64 definitions in :mod:`kernels.reference`.
Names are loaded on first use, so ``import kernels.errors`` (which :mod:`fusion` does) stays
light and free of import cycles.
"""
import importlib
import os

# numba's OpenMP worker threads spin after each parallel kernel, and OpenBLAS's threads spin after
# each GEMM; alternating the two, as every RNN step does, makes them fight for the cores (a step
# took 9.4 ms instead of 1.8 ms on 2 cores).  libgomp reads its wait policy once, when numba first
# loads it, so this must run before numba is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "BACKENDS": "backends", "Backend": "backends", "get_backend": "backends",
    "BadInput": "errors", "ForkedAfterOpenMP": "errors", "MicrobenchError": "errors",
    "MissingDependency": "errors", "Unsupported": "errors",
    "CellParams": "params", "GRUParams": "params", "LSTMParams": "params", "Layer": "params", "RNNParams": "params",
    "reorder_gates": "params", "VanillaRNNParams": "params",
    "gru_reference": "reference", "lstm_reference": "reference", "rnn_reference": "reference",
    "RNN": "recurrent", "VARIANTS": "recurrent", "gru": "recurrent", "lstm": "recurrent", "rnn": "recurrent",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
