"""Framework adapters: PyTorch, TensorFlow/Keras, JAX/Flax, MXNet and Chainer computing our
LSTM/GRU/vanilla RNN (and conv2d).

Each framework runs in its own worker process (:mod:`.worker`), optionally under its own
interpreter (MXNet 1.9 and Chainer 7 need NumPy 1.x: they share one), fed our canonical weights and inputs through ``.npz``
files and driven by one-line JSON messages (:mod:`.client`).  The worker builds the framework's
layer with our weights converted (:mod:`.convert`), returns its outputs for the check, and times
it with the framework's own synchronisation under the harness's stopping rule.

Paths (rows are labelled ``framework/path``): on a CPU ``fused`` is the framework's fused RNN
kernel where one exists and ``generic`` its cell run step by step; on a GPU ``cudnn`` is the
layer that reaches cuDNN and ``nocudnn`` the cell loop with cuDNN switched off.

This package's ``__init__`` imports nothing beyond the standard library: the MXNet and Chainer
workers run it under an interpreter that has only NumPy, MXNet and Chainer.
"""
from __future__ import annotations

import os
from pathlib import Path

FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet", "chainer")

# The module each framework's worker imports to see whether the framework is there.
IMPORT_NAME = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax", "mxnet": "mxnet",
               "chainer": "chainer"}

# The frameworks that need NumPy 1: their workers run in the interpreter scripts/setup-mxnet makes.
NUMPY1 = ("mxnet", "chainer")

# Frameworks of the comparison this project grew from that no supported Python can install:
# named here so that --frameworks and `microbench env` say why, instead of "unknown".
NOT_INSTALLABLE = {
    "cntk": "CNTK's last release (2.7.post2, 2020; no longer developed) has no wheel for any "
            "Python this project supports (3.10 or newer) and no source distribution",
    "caffe": "Caffe (last release 1.0, 2017; no longer developed) has no wheel on PyPI and no "
             "package for this OS (Debian 13); it builds only from source",
}

# Frameworks that run on the CPU only, and why (the SKIPPED text of their GPU rows): no build that
# a supported install can get reaches this project's GPUs (sm_90, CUDA 13 driver), so their
# adapters have no GPU code.
NO_GPU = {
    "mxnet": "MXNet's CUDA wheels on PyPI stop at CUDA 11.7 (mxnet-cu117): there is none for CUDA "
             "11.8, the first CUDA that compiles for sm_90 (Hopper), or later, so scripts/setup-mxnet "
             "installs the CPU build of MXNet 1.9.1 (its last release)",
    "chainer": "Chainer 7.8.1 (its last release) runs on a GPU through CuPy 7 (it requires "
               "cupy>=7.7,<8), which has no wheel for CPython 3.10 or newer and no CUDA 12/13 build; "
               "scripts/setup-mxnet installs Chainer without CuPy",
}

# framework -> device -> path -> op (lstm, gru, rnn, conv) -> what that path runs (None: the path does not exist for the
# op; the text after "skip:" is the reason shown in the SKIPPED row).
PATHS = {
    "torch": {
        "cpu": {
            "fused": {"lstm": "nn.LSTM: ATen's fused CPU RNN (oneDNN for fp32 and bf16)",
                      "gru": "nn.GRU: ATen's fused CPU RNN (its own kernels: no oneDNN primitive)",
                      "rnn": "nn.RNN (relu or tanh): ATen's fused CPU RNN",
                      "conv": "F.conv2d: oneDNN (mkldnn) convolution"},
            "generic": {"lstm": "nn.LSTMCell stepped in a Python loop",
                        "gru": "nn.GRUCell stepped in a Python loop",
                        "rnn": "nn.RNNCell stepped in a Python loop",
                        "conv": "F.conv2d with oneDNN disabled: ATen slow_conv2d (unfold + GEMM)"},
        },
        "cuda": {
            "cudnn": {"lstm": "nn.LSTM (cuDNN RNN)", "gru": "nn.GRU (cuDNN RNN)",
                      "rnn": "nn.RNN (cuDNN RNN_RELU / RNN_TANH)",
                      "conv": "F.conv2d (cuDNN)"},
            "nocudnn": {"lstm": "nn.LSTMCell loop, cuDNN disabled", "gru": "nn.GRUCell loop, cuDNN disabled",
                        "rnn": "nn.RNNCell loop, cuDNN disabled",
                        "conv": "F.conv2d with cuDNN disabled (ATen fallback)"},
        },
    },
    "tensorflow": {
        "cpu": {
            "fused": {"lstm": "tf.raw_ops.BlockLSTMV2: TF's fused CPU LSTM kernel, in a tf.function",
                      "gru": "skip: TensorFlow has no fused GRU sequence op; GRUBlockCell applies the "
                             "reset gate before the recurrent GEMM, which is not our GRU",
                      "rnn": "skip: TensorFlow has no fused vanilla RNN op; Keras runs SimpleRNN as "
                             "its cell in a loop (the generic row)",
                      "conv": "tf.nn.conv2d in a tf.function (NHWC; oneDNN when TF_ENABLE_ONEDNN_OPTS is on)"},
            "generic": {"lstm": "keras.layers.RNN(LSTMCell) in a tf.function (Keras 3, TF backend)",
                        "gru": "keras.layers.RNN(GRUCell(reset_after=True)) in a tf.function",
                        "rnn": "keras.layers.RNN(SimpleRNNCell(activation=relu|tanh)) in a tf.function",
                        "conv": "skip: TensorFlow has one conv2d path on a CPU (the fused row)"},
        },
        "cuda": {
            "cudnn": {"lstm": "keras.layers.LSTM(use_cudnn=True) in a tf.function",
                      "gru": "keras.layers.GRU(use_cudnn=True, reset_after=True) in a tf.function",
                      "rnn": "skip: Keras 3's SimpleRNN has no cuDNN path (the nocudnn row is its cell loop)",
                      "conv": "tf.nn.conv2d in a tf.function (cuDNN)"},
            "nocudnn": {"lstm": "keras.layers.RNN(LSTMCell) in a tf.function",
                        "gru": "keras.layers.RNN(GRUCell(reset_after=True)) in a tf.function",
                        "rnn": "keras.layers.RNN(SimpleRNNCell(activation=relu|tanh)) in a tf.function",
                        "conv": "skip: TensorFlow has no switch that keeps conv2d off cuDNN"},
        },
    },
    "jax": {
        "cpu": {
            "fused": {"lstm": "skip: XLA:CPU has no fused RNN kernel; jax.experimental.rnn lowers "
                              "to cuDNN only (the generic path is what JAX runs on a CPU)",
                      "gru": "skip: XLA:CPU has no fused RNN kernel and jax.experimental.rnn has no GRU",
                      "rnn": "skip: XLA:CPU has no fused RNN kernel and jax.experimental.rnn has no "
                             "vanilla RNN",
                      "conv": "lax.conv_general_dilated under jax.jit (XLA:CPU convolution)"},
            "generic": {"lstm": "flax nn.RNN(OptimizedLSTMCell) (lax.scan) under jax.jit",
                        "gru": "flax nn.RNN(GRUCell) (lax.scan) under jax.jit",
                        "rnn": "flax nn.RNN(SimpleCell(activation_fn=relu|tanh)) (lax.scan) under jax.jit",
                        "conv": "skip: XLA has one conv2d path (the fused row)"},
        },
        "cuda": {
            "cudnn": {"lstm": "jax.experimental.rnn.lstm (cuDNN) under jax.jit",
                      "gru": "skip: jax.experimental.rnn offers LSTM only",
                      "rnn": "skip: jax.experimental.rnn offers LSTM only",
                      "conv": "lax.conv_general_dilated under jax.jit (cuDNN through XLA)"},
            "nocudnn": {"lstm": "flax nn.RNN(OptimizedLSTMCell) (lax.scan) under jax.jit",
                        "gru": "flax nn.RNN(GRUCell) (lax.scan) under jax.jit",
                        "rnn": "flax nn.RNN(SimpleCell(activation_fn=relu|tanh)) (lax.scan) under jax.jit",
                        "conv": "skip: XLA has no switch that keeps conv2d off cuDNN"},
        },
    },
    "mxnet": {
        "cpu": {
            "fused": {"lstm": "gluon rnn.LSTM, hybridized: MXNet's fused RNN op (oneDNN on CPU)",
                      "gru": "gluon rnn.GRU, hybridized: MXNet's fused RNN op (oneDNN on CPU)",
                      "rnn": "gluon rnn.RNN(activation=relu|tanh), hybridized: MXNet's fused RNN op "
                             "(oneDNN on CPU)",
                      "conv": "nd.Convolution (oneDNN on CPU)"},
            "generic": {"lstm": "gluon rnn.LSTMCell unrolled, hybridized",
                        "gru": "gluon rnn.GRUCell unrolled, hybridized",
                        "rnn": "gluon rnn.RNNCell(activation=relu|tanh) unrolled, hybridized",
                        "conv": "skip: MXNet has one conv2d path on a CPU (the fused row)"},
        },
        "cuda": {path: {op: "skip: " + NO_GPU["mxnet"] for op in ("lstm", "gru", "rnn", "conv")}
                 for path in ("cudnn", "nocudnn")},
    },
    # Chainer 7.8.1 on a CPU has no oneDNN: iDeep (its oneDNN binding) has no build for this
    # Python, and the NStep functions never call it; everything is NumPy, GEMMs in NumPy's BLAS.
    "chainer": {
        "cpu": {
            "fused": {"lstm": "L.NStepLSTM: Chainer's own CPU loop (no oneDNN): per step and layer two "
                              "NumPy GEMMs (BLAS) and F.lstm's pointwise kernel in NumPy",
                      "gru": "L.NStepGRU: Chainer's own CPU loop (no oneDNN): per step and layer two "
                             "NumPy GEMMs (BLAS) and the gates as NumPy ops",
                      "rnn": "L.NStepRNNReLU / L.NStepRNNTanh: Chainer's own CPU loop (no oneDNN): per "
                             "step and layer two NumPy GEMMs (BLAS) and the activation",
                      "conv": "L.Convolution2D: im2col in NumPy + one BLAS GEMM (tensordot); no oneDNN"},
            "generic": {"lstm": "L.StatelessLSTM cell (F.lstm) stepped in a Python loop",
                        "gru": "GRU cell of L.Linear + chainer.functions stepped in a Python loop "
                               "(Chainer's GRU links apply the reset gate before the recurrent GEMM)",
                        "rnn": "vanilla cell of L.Linear + F.relu / F.tanh stepped in a Python loop",
                        "conv": "skip: Chainer has one conv2d path on a CPU (the fused row)"},
        },
        "cuda": {path: {op: "skip: " + NO_GPU["chainer"] for op in ("lstm", "gru", "rnn", "conv")}
                 for path in ("cudnn", "nocudnn")},
    },
}


# The paths that run the vendor library's layer primitive (oneDNN's or cuDNN's RNN or convolution
# primitive), and those that do not, where that is known: torch, tensorflow and mxnet on a CPU as
# the oneDNN traces in tests/fixtures/onednn show (a test checks those entries against them;
# ``explain OP --device cpu`` traces them again), jax and chainer on a CPU call no oneDNN at all
# (XLA:CPU's own kernels; Chainer without iDeep), and on a GPU the cudnn path is the layer that
# reaches cuDNN by construction.  A path not listed is unknown: figures say so rather than guess.
VENDOR_LAYER = {
    ("torch", "cpu", "fused"): {"lstm": True, "gru": False, "conv": True},
    ("torch", "cpu", "generic"): {"lstm": False, "gru": False, "conv": False},
    # TF's BlockLSTMV2 calls oneDNN's dnnl_sgemm (gemm_api), not the RNN primitive; its conv2d
    # runs oneDNN's convolution or not depending on the CPU and TF_ENABLE_ONEDNN_OPTS (a trace says)
    ("tensorflow", "cpu", "fused"): {"lstm": False},
    ("tensorflow", "cpu", "generic"): {"lstm": False, "gru": False},
    ("mxnet", "cpu", "fused"): {"lstm": True, "gru": True, "conv": True},
    ("mxnet", "cpu", "generic"): {"lstm": False, "gru": False},
    ("jax", "cpu", "generic"): {"lstm": False, "gru": False, "rnn": False},
    ("chainer", "cpu", "fused"): {"lstm": False, "gru": False, "rnn": False, "conv": False},
    ("chainer", "cpu", "generic"): {"lstm": False, "gru": False, "rnn": False},
    **{(fw, "cuda", "cudnn"): {op: True for op in ("lstm", "gru", "rnn", "conv")}
       for fw in FRAMEWORKS if fw not in NO_GPU},
}


def reaches_vendor(framework: str, device: str, path: str, op: str) -> bool | None:
    """Whether ``framework/path`` runs the vendor library's layer primitive for ``op`` (see
    :data:`VENDOR_LAYER`): True, False, or None where no trace tells."""
    return VENDOR_LAYER.get((framework, device, path), {}).get(op)


# Paths that compute fewer precisions than their framework's adapter offers on that device:
# (framework, device, path, op) -> (the precisions the path has, why).  A row in another
# precision is SKIPPED with the reason, before any worker starts.
PATH_PRECISIONS = {
    ("jax", "cuda", "cudnn", "lstm"): (
        ("fp32",),
        "jax.experimental.rnn's cuDNN call computes float32 only: jaxlib 0.10.2's gpu_rnn.py lowers "
        "f32 and f64 outputs only (fp16/bf16 raise 'Unknown output type'), and its rnn_kernels.cc "
        "sets CUDNN_DATA_FLOAT for every tensor (f64 data would be read as f32)"),
}


def precision_reason(framework: str, device: str, path: str, op: str, precision: str) -> str | None:
    """Why a path cannot run ``precision`` (the SKIPPED text), or None."""
    have, why = PATH_PRECISIONS.get((framework, device, path, op), (None, ""))
    if have is None or precision in have:
        return None
    return f"{framework}/{path} runs {', '.join(have)} only, not {precision}: {why}"


def describe(framework: str, device: str, path: str, op: str) -> str:
    return PATHS[framework][device][path][op]


def skip_reason(framework: str, device: str, path: str, op: str) -> str | None:
    text = describe(framework, device, path, op)
    return text[len("skip: "):] if text.startswith("skip: ") else None


# -- the interpreter a framework's worker runs under -------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# MXNet's and Chainer's NumPy-1 interpreter (scripts/setup-mxnet makes it): MICROBENCH_MXNET_VENV,
# else .venv-mxnet here.
MXNET_VENV_PYTHON = Path(os.environ.get("MICROBENCH_MXNET_VENV", REPO_ROOT / ".venv-mxnet")) / "bin" / "python"
# TensorFlow's CUDA build on a GPU machine (scripts/setup-tensorflow makes it): MICROBENCH_TF_VENV,
# else .venv-tf here.  Absent on a CPU machine, where tensorflow-cpu is in our own environment.
TF_VENV_PYTHON = Path(os.environ.get("MICROBENCH_TF_VENV", REPO_ROOT / ".venv-tf")) / "bin" / "python"


def default_python(framework: str) -> str | None:
    """The interpreter a framework's worker runs under when --python does not say: MXNet and
    Chainer use ``.venv-mxnet`` (made by scripts/setup-mxnet) when it exists, TensorFlow
    ``.venv-tf`` (scripts/setup-tensorflow, GPU machines) when it exists; otherwise ours."""
    if framework in NUMPY1 and MXNET_VENV_PYTHON.exists():
        return str(MXNET_VENV_PYTHON)
    if framework == "tensorflow" and TF_VENV_PYTHON.exists():
        return str(TF_VENV_PYTHON)
    return None
