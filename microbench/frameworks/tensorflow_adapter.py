"""TensorFlow 2 with Keras 3: Keras RNN layers in a tf.function, and TF's fused CPU LSTM op;
conv2d forward (``tf.nn.conv2d``) and its backward-data and backward-weights phases
(``Conv2DBackpropInput``, ``Conv2DBackpropFilter`` + ``BiasAddGrad``: :func:`build_conv_backward`).

On a CPU Keras 3's LSTM/GRU layers have no fused kernel (their cuDNN branch needs a GPU, and
otherwise they run the cell in a ``tf.while_loop``), so the CPU ``fused`` path is
``tf.raw_ops.BlockLSTMV2``, TensorFlow's own fused LSTM sequence kernel.  The vanilla RNN (op
``rnn_relu``/``rnn_tanh``) is ``keras.layers.RNN(SimpleRNNCell(activation=...))``: TensorFlow has
no fused vanilla RNN op and Keras 3's ``SimpleRNN`` no cuDNN branch, so it has the cell loop only.

With ``dy`` among the arrays every path is a training step instead: one ``tf.function`` runs the
forward under a ``tf.GradientTape`` and the gradients of ``sum(y * dy)`` with respect to x, the
initial states and the weights (BlockLSTMV2 backpropagates through TF's fused BlockLSTMGradV2
kernel, Keras through its cell's ops).
"""
from __future__ import annotations

import os

import numpy as np

from .common import Built, Unsupported, dims
from .convert import grads_from_keras, grads_from_tfblock, split_op, to_keras, to_tfblock, unpack_layers

_tf = None


def setup(threads, device) -> dict:
    global _tf
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import tensorflow as tf
    _tf = tf
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cuda" and not gpus:
        raise Unsupported(f"tensorflow {tf.__version__} sees no GPU (tensorflow-cpu, or no CUDA build)")
    for g in gpus:      # memory as needed, not nearly all of it at start (the worker sets
        tf.config.experimental.set_memory_growth(g, True)   # TF_FORCE_GPU_ALLOW_GROWTH too)
    import keras
    if keras.backend.backend() != "tensorflow":
        raise Unsupported(f"Keras runs on the {keras.backend.backend()} backend; set KERAS_BACKEND=tensorflow")
    build_info = tf.sysconfig.get_build_info()
    return {"framework": "tensorflow", "version": tf.__version__, "keras": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
            "onednn_opts": _onednn_opts(),
            "cuda": build_info.get("cuda_version"), "cudnn": build_info.get("cudnn_version"),
            "gpus": [g.name for g in gpus],
            "memory_growth": [tf.config.experimental.get_memory_growth(g) for g in gpus]}


def _onednn_opts() -> str:
    """Whether TensorFlow's oneDNN custom ops are on in this process (TF turns them on by default
    on some x86 CPUs and not on others; TF_ENABLE_ONEDNN_OPTS overrides), and what decided it."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        on = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):
        on = "unknown"
    given = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return f"{on} (TF_ENABLE_ONEDNN_OPTS={given})" if given is not None else f"{on} (TensorFlow's default here)"


# What TensorFlow refused in this process: (what, device, geometry) -> its message.  Which conv
# geometries TensorFlow's CPU kernels run depends on the build and the CPU (with oneDNN's custom
# ops, on by default on some x86 CPUs, dilated and grouped gradients run; with TensorFlow's own
# kernels they fail at run time), so it is asked, once, by running the op, never assumed.
_REFUSED: dict = {}


def _first_call(run, what: str, device: str, geom: dict, suspect: str) -> None:
    """Run ``run`` once.  When the geometry has a feature some TensorFlow CPU kernels refuse
    (``suspect``: e.g. "dilation (2, 2)"; '' for none) and TensorFlow refuses the call, the case
    is Unsupported with TensorFlow's own message; any other failure stays a failure (an adapter
    bug must not pass as a skip)."""
    tf = _tf
    key = (what, device, suspect, geom.get("groups"), tuple(geom.get("dilation", ())))
    if suspect and key in _REFUSED:
        raise Unsupported(_REFUSED[key])
    try:
        run()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        if not suspect:
            raise
        said = _reason(e.message or str(e))
        _REFUSED[key] = (f"TensorFlow {tf.__version__} on this {device} (oneDNN ops {_onednn_opts()}) "
                         f"refuses {what} for {suspect}: {said}")
        raise Unsupported(_REFUSED[key]) from None


def _reason(message: str) -> str:
    """The line of a TensorFlow error that says why (not "Graph execution error:", the node
    trace or the stack): the last line of text before the failing node's ``[[...]]``."""
    keep = []
    for line in message.splitlines():
        text = line.split("[[", 1)[0].strip()
        if not text or text.startswith(("Graph execution error", "Detected at node", "File ", "Stack trace")):
            continue
        keep.append(text)
    return (keep[-1] if keep else message.strip())[:300]


def _suspect(geom: dict, with_bias: bool = False) -> str:
    """The features of a conv geometry that some TensorFlow CPU kernels refuse ('' for none)."""
    parts = []
    if any(d != 1 for d in geom["dilation"]):
        parts.append(f"dilation {tuple(geom['dilation'])}")
    if geom["groups"] != 1:
        parts.append(f"groups={geom['groups']}" + (" with a bias" if with_bias else ""))
    return ", ".join(parts)


def build(op, path, device, precision, arrays) -> Built:
    """``op``: lstm, gru, rnn_relu or rnn_tanh (the vanilla cell, SimpleRNNCell)."""
    tf = _tf
    import keras
    T, B, I, H, L = dims(arrays)
    cell_op, act = split_op(op)
    table = {"fp32": "float32", "fp64": "float64"}
    if device == "cuda":
        table.update({"fp16": "float16", "tf32": "float32"})
    if precision not in table:
        raise Unsupported(f"tensorflow on {device} runs {', '.join(table)}; not {precision}")
    if precision == "tf32":
        tf.config.experimental.enable_tensor_float_32_execution(True)
    dt = table[precision]
    layers = unpack_layers(arrays)
    tdev = "/GPU:0" if device == "cuda" else "/CPU:0"
    c = lambda a: tf.constant(np.asarray(a).astype(dt))  # noqa: E731
    train = "dy" in arrays
    info = {"precision_switches": {"tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled()},
            "mode": ("tf.function (jit_compile=False), training=True: GradientTape gradients of sum(y * dy) "
                     "w.r.t. x, h0, c0 and every weight" if train else
                     "tf.function (jit_compile=False), training=False, no GradientTape")}

    with tf.device(tdev):
        h0 = c(arrays["h0"])
        c0 = c(arrays["c0"]) if op == "lstm" else None
        if cell_op == "rnn" and path not in ("generic", "nocudnn"):
            raise Unsupported("TensorFlow has no fused vanilla RNN op and Keras 3's SimpleRNN no cuDNN "
                              "path; the vanilla cell runs as keras.layers.RNN(SimpleRNNCell) only")
        if path == "fused" and device == "cpu":
            if op != "lstm":
                raise Unsupported("TensorFlow has no fused GRU sequence op; GRUBlockCell applies the reset "
                                  "gate before the recurrent GEMM, which is not our GRU")
            if dt != "float32":
                raise Unsupported(f"tf.raw_ops.BlockLSTMV2 runs half and float only; not {precision}")
            x = c(arrays["x"])                       # BlockLSTM is time-major, like us
            # the weights are arguments of the step (not captured constants): the tape watches them
            weights = [w for layer in layers for w in map(c, to_tfblock(layer))]
            block = _block_lstm(tf, T, H, dt)

            def forward(x, h0, c0, *weights):
                seq, hs, cs = x, [], []
                for l in range(L):
                    out = block(seq, c0[l], h0[l], weights[2 * l], weights[2 * l + 1])
                    seq = out[6]
                    hs.append(seq[-1])
                    cs.append(out[1][-1])
                return seq, tf.stack(hs), tf.stack(cs)
            states = (h0, c0)

            def to_canonical(g):         # per layer (w, b) -> w_ih, w_hh, b_ih, b_hh
                return [a for l in range(L) for a in grads_from_tfblock(g[2 * l], g[2 * l + 1], I if l == 0 else H)]
            time_major = True
            info["kernel"] = "BlockLSTMV2 (Eigen, fused gates; 7 (T,B,H) outputs written)" + (
                "; backward: BlockLSTMGradV2" if train else "")
        elif path in ("generic", "cudnn", "nocudnn"):
            x = c(np.ascontiguousarray(np.asarray(arrays["x"]).transpose(1, 0, 2)))   # Keras is batch-major
            mods = []
            for l, layer in enumerate(layers):
                width = I if l == 0 else H
                if path == "cudnn":
                    kw = dict(use_cudnn=True, dtype=dt)
                    m = (keras.layers.LSTM(H, return_sequences=True, return_state=True, **kw) if op == "lstm"
                         else keras.layers.GRU(H, return_sequences=True, return_state=True, reset_after=True, **kw))
                else:
                    cell = (keras.layers.SimpleRNNCell(H, activation=act, dtype=dt) if cell_op == "rnn" else
                            keras.layers.LSTMCell(H, dtype=dt) if op == "lstm"
                            else keras.layers.GRUCell(H, reset_after=True, dtype=dt))
                    m = keras.layers.RNN(cell, return_sequences=True, return_state=True, dtype=dt)
                m.build((B, T, width))
                m.set_weights([np.asarray(a).astype(dt) for a in to_keras(layer, cell_op)])
                mods.append(m)
            # the layers' own variables, in to_keras order (kernel, recurrent_kernel, bias)
            weights = [v for m in mods for v in (m.cell.kernel, m.cell.recurrent_kernel, m.cell.bias)]

            def forward(x, h0, c0=None):
                seq, hs, cs = x, [], []
                for l, m in enumerate(mods):
                    init = [h0[l], c0[l]] if op == "lstm" else [h0[l]]
                    out = m(seq, initial_state=init, training=train)
                    seq = out[0]
                    hs.append(out[1])
                    if op == "lstm":
                        cs.append(out[2])
                return (seq, tf.stack(hs), tf.stack(cs)) if op == "lstm" else (seq, tf.stack(hs))
            states = (h0, c0) if op == "lstm" else (h0,)

            def to_canonical(g):
                return [a for l in range(L) for a in grads_from_keras(g[3 * l:3 * l + 3], cell_op)]
            time_major = False
            info["kernel"] = ("Keras cuDNN RNN" if path == "cudnn" else
                              "Keras cell in a tf.while_loop (GEMMs + pointwise ops per step)") + (
                ", forward and backward (GradientTape)" if train else "")
        else:
            raise Unsupported(f"tensorflow has no path {path!r} on {device}")
        if train:
            if cell_op != "gru":   # one summed bias in TF: its gradient is both of ours
                info["gradients"] = ("TensorFlow keeps one bias (b_ih + b_hh): its gradient is "
                                     "reported as both db_ih and db_hh")
            dy = np.asarray(arrays["dy"])
            dy = c(dy if time_major else np.ascontiguousarray(dy.transpose(1, 0, 2)))
            fwd, args = _training_step(forward, x, states, weights, dy, keras_vars=not time_major)
        else:
            fwd = tf.function(forward, jit_compile=False)
            args = (x, *states, *weights) if time_major else (x, *states)
        import time
        t0 = time.perf_counter()
        fwd.get_concrete_function(*args)            # trace outside the timed region
        info["compile_s"] = time.perf_counter() - t0

    sync = (tf.test.experimental.sync_devices if device == "cuda" and hasattr(tf.test.experimental, "sync_devices")
            else None)
    last = {}

    def run():
        out = fwd(*args)
        if sync is not None:
            sync()
        else:
            out[1].numpy()      # the final state (or dx): forces the call to complete
        last["out"] = out

    def outputs():
        out = [np.asarray(o.numpy(), dtype=np.float64) for o in last["out"]]
        if train:       # y, dx, dh0[, dc0], then the weight gradients in the framework's layout
            n = 1 + len(states) + 1
            grads = to_canonical(out[n:])
            out = out[:n] + [np.asarray(a) for a in grads]
        if not time_major:
            out[0] = out[0].transpose(1, 0, 2)
            if train:
                out[1] = out[1].transpose(1, 0, 2)          # dx, batch-major like x
        return tuple(out)

    return Built(run, outputs, info)


def _training_step(forward, x, states, weights, dy, keras_vars):
    """(step, args): a tf.function returning y, then the gradients of sum(y * dy) with respect
    to x, the states and ``weights`` (Keras variables, read inside the step; or the BlockLSTM
    tensors, passed in as arguments and watched)."""
    tf = _tf
    n_in = 1 + len(states)

    @tf.function(jit_compile=False)
    def step(*args):
        leaves = list(args)
        with tf.GradientTape() as tape:
            tape.watch(leaves)
            y = forward(*(leaves if not keras_vars else leaves[:n_in]))[0]
            loss = tf.reduce_sum(y * dy)
        grads = tape.gradient(loss, leaves + (list(weights) if keras_vars else []))
        return (y, *grads)
    args = (x, *states) if keras_vars else (x, *states, *weights)
    return step, args


def _block_lstm(tf, T, H, dt):
    """BlockLSTMV2 with the gradient that matches its gate layout.

    TF registers one gradient function for BlockLSTM and BlockLSTMV2 (tensorflow/python/ops/
    rnn_grad.py), and it calls BlockLSTMGrad, which reads the weights in V1's gate order (i, ci,
    f, o) while V2 stores i, f, ci, o: through the tape, V2's dx and dw come out wrong (checked
    against finite differences in TF 2.21).  BlockLSTMGradV2 is TF's fused backward kernel for
    V2's layout; this wrapper makes the tape call it."""
    zero = tf.zeros([H], dtype=dt)
    seq_len = tf.constant(T, tf.int64)

    @tf.custom_gradient
    def block(x, cs_prev, h_prev, w, b):
        out = tf.raw_ops.BlockLSTMV2(seq_len_max=seq_len, x=x, cs_prev=cs_prev, h_prev=h_prev, w=w,
                                     wci=zero, wcf=zero, wco=zero, b=b, cell_clip=0.0, use_peephole=False)

        def grad(*gs):
            # gradients of the 7 outputs; only cs and h carry the state and the output onwards
            # (the gate activations are saved for the backward, never used downstream)
            cs_grad = gs[1] if gs[1] is not None else tf.zeros_like(out[1])
            h_grad = gs[6] if gs[6] is not None else tf.zeros_like(out[6])
            r = tf.raw_ops.BlockLSTMGradV2(seq_len_max=seq_len, x=x, cs_prev=cs_prev, h_prev=h_prev, w=w,
                                           wci=zero, wcf=zero, wco=zero, b=b, i=out[0], cs=out[1], f=out[2],
                                           o=out[3], ci=out[4], co=out[5], h=out[6], cs_grad=cs_grad,
                                           h_grad=h_grad, use_peephole=False)
            x_grad, cs_prev_grad, h_prev_grad, w_grad, _, _, _, b_grad = r
            return x_grad, cs_prev_grad, h_prev_grad, w_grad, b_grad
        return list(out), grad
    return block


def build_conv(path, device, precision, arrays, geom) -> Built:
    """tf.nn.conv2d, NHWC with an HWIO filter (TF's CPU conv has no NCHW kernel: an NCHW problem's
    input is transposed once, outside the timed call)."""
    tf = _tf
    if path not in (("fused",) if device == "cpu" else ("cudnn",)):
        raise Unsupported(f"tensorflow has no conv path {path!r} on {device}")
    dt = {"fp32": "float32", "fp64": "float64"}.get(precision)
    if dt is None:
        raise Unsupported(f"the tensorflow conv adapter runs fp32, fp64; not {precision}")
    nchw = geom["layout"] == "NCHW"
    xa = np.asarray(arrays["x"])
    with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
        x = tf.constant(np.ascontiguousarray(xa.transpose(0, 2, 3, 1) if nchw else xa).astype(dt))
        w = tf.constant(np.ascontiguousarray(np.asarray(arrays["w"]).transpose(2, 3, 1, 0)).astype(dt))
        b = tf.constant(np.asarray(arrays["b"]).astype(dt)) if "b" in arrays else None
        (ph, pw), (sh, sw), (dh, dw) = geom["pad"], geom["stride"], geom["dilation"]

        @tf.function(jit_compile=False)
        def fwd(x, w):
            y = tf.nn.conv2d(x, w, strides=[1, sh, sw, 1], padding=[[0, 0], [ph, ph], [pw, pw], [0, 0]],
                             dilations=[1, dh, dw, 1], data_format="NHWC")
            return tf.nn.bias_add(y, b) if b is not None else y
        import time
        t0 = time.perf_counter()
        fwd.get_concrete_function(x, w)
        info = {"kernel": "tf.nn.conv2d (Conv2D op)", "layout": "NHWC",
                "compile_s": time.perf_counter() - t0,
                "precision_switches": {"tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled()}}
    last = {}

    def run():
        y = fwd(x, w)
        y.numpy() if device == "cpu" else tf.test.experimental.sync_devices()
        last["y"] = y

    def outputs():
        y = np.asarray(last["y"].numpy(), dtype=np.float64)
        return (np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if nchw else y,)

    # Grappler's remapper turns Conv2D + BiasAdd into _FusedConv2D, whose CPU kernel refuses
    # groups on some builds and CPUs ("Fused conv implementation does not support grouped
    # convolutions") and not on others: asked by running it.
    _first_call(run, "Conv2D + BiasAdd (fused by grappler)" if b is not None else "Conv2D", device,
                geom, _suspect(geom, with_bias=b is not None) if device == "cpu" else "")
    return Built(run, outputs, info)


def build_conv_backward(path, device, precision, arrays, geom, phase) -> Built:
    """One backward phase of ``sum(y * dy)`` for the conv2d of :func:`build_conv`, through the ops
    TensorFlow's registered Conv2D gradient runs, in a tf.function: ``bwd_data`` is
    ``Conv2DBackpropInput`` (dx), ``bwd_weights`` is ``Conv2DBackpropFilter`` (dw) and, with a
    bias, ``BiasAddGrad`` (db, the gradient of ``tf.nn.bias_add``: dy summed over N, H, W).  NHWC
    with an HWIO filter as the forward; an NCHW problem's dy and x are transposed once, outside the
    timed call, and dx/dw go back to our layouts when read."""
    tf = _tf
    if phase not in ("bwd_data", "bwd_weights"):
        raise Unsupported(f"conv backward phase {phase!r} is unknown; allowed: bwd_data, bwd_weights")
    if path not in (("fused",) if device == "cpu" else ("cudnn",)):
        raise Unsupported(f"tensorflow has no conv path {path!r} on {device}")
    dt = {"fp32": "float32", "fp64": "float64"}.get(precision)
    if dt is None:
        raise Unsupported(f"the tensorflow conv adapter runs fp32, fp64; not {precision}")
    nchw = geom["layout"] == "NCHW"
    nhwc = lambda a: tf.constant(np.ascontiguousarray(  # noqa: E731
        np.asarray(a).transpose(0, 2, 3, 1) if nchw else np.asarray(a)).astype(dt))
    data = phase == "bwd_data"
    has_b = "b" in arrays
    wa = np.asarray(arrays["w"])
    K, Cg, R, S = wa.shape
    (ph, pw), (sh, sw), (dh, dw) = geom["pad"], geom["stride"], geom["dilation"]
    conv_kw = dict(strides=[1, sh, sw, 1], padding="EXPLICIT", explicit_paddings=[0, 0, ph, ph, pw, pw, 0, 0],
                   dilations=[1, dh, dw, 1], data_format="NHWC")
    with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
        dy = nhwc(arrays["dy"])
        if data:
            xs = np.asarray(arrays["x"]).shape
            sizes = tf.constant([xs[0], xs[2], xs[3], xs[1]] if nchw else list(xs), tf.int32)
            w = tf.constant(np.ascontiguousarray(wa.transpose(2, 3, 1, 0)).astype(dt))

            @tf.function(jit_compile=False)
            def bwd(dy, w):
                return (tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=w, out_backprop=dy, **conv_kw),)
            args = (dy, w)
            ops = "Conv2DBackpropInput"
        else:
            x = nhwc(arrays["x"])
            sizes = tf.constant([R, S, Cg, K], tf.int32)

            @tf.function(jit_compile=False)
            def bwd(dy, x):
                dwt = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=sizes, out_backprop=dy, **conv_kw)
                return (dwt, tf.raw_ops.BiasAddGrad(out_backprop=dy, data_format="NHWC")) if has_b else (dwt,)
            args = (dy, x)
            ops = "Conv2DBackpropFilter" + (" + BiasAddGrad" if has_b else "")
        import time
        t0 = time.perf_counter()
        bwd.get_concrete_function(*args)        # trace outside the timed region
        # Which CPU kernels run these ops depends on TensorFlow's oneDNN custom ops (on by default
        # on some x86 CPUs): the record says whether they were on.
        info = {"kernel": f"{ops} in a tf.function" + (
                    f": TensorFlow's CPU kernels, oneDNN custom ops {_onednn_opts()}"
                    if device == "cpu" else " (cuDNN)"),
                "layout": "NHWC", "compile_s": time.perf_counter() - t0,
                "backward": f"{ops}: the ops of TensorFlow's Conv2D/BiasAdd gradients ({phase})",
                "precision_switches": {"tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled()}}
    last = {}

    def run():
        out = bwd(*args)
        out[0].numpy() if device == "cpu" else tf.test.experimental.sync_devices()
        last["out"] = out

    # TensorFlow's own CPU gradient kernels refuse dilation above 1 ("Current CPU implementations
    # do not yet support dilation rates larger than 1") and groups ("Gradients for grouped
    # convolutions are not supported on CPU"); with its oneDNN custom ops both run: asked.
    _first_call(run, ops, device, geom, _suspect(geom) if device == "cpu" else "")

    def outputs():
        out = [np.asarray(o.numpy(), dtype=np.float64) for o in last["out"]]
        if data:        # NHWC -> the problem's layout
            return (np.ascontiguousarray(out[0].transpose(0, 3, 1, 2)) if nchw else out[0],)
        out[0] = np.ascontiguousarray(out[0].transpose(3, 2, 0, 1))     # HWIO -> our KCRS
        return tuple(out)

    return Built(run, outputs, info)
