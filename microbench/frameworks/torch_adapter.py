"""PyTorch: nn.LSTM/nn.GRU/nn.RNN (ATen's fused RNN: cuDNN on a GPU; on a CPU oneDNN for the LSTM only)
and a cell loop; the layer-norm LSTM in PyTorch ops, eager and under torch.compile.  Every path
also has a training step (forward and backward through autograd) when the parent sends an
upstream gradient ``dy``.
Convolutions: ``F.conv2d``, and its backward-data and backward-weights phases one at a time
through ``aten.convolution_backward`` (:func:`build_conv_backward`)."""
from __future__ import annotations

import functools
import time

import numpy as np

from .common import Built, Unsupported, dims
from .convert import LAYERNORM_EXTRAS, split_op, to_torch, unpack_extras, unpack_layers

_torch = None


def setup(threads, device) -> dict:
    global _torch
    import torch
    _torch = torch
    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable before the first parallel work
            pass
    torch.set_grad_enabled(False)
    set_precision(torch, "fp32")     # full fp32 GEMMs unless a row's --dtype tf32 asks otherwise
    if device == "cuda" and not torch.cuda.is_available():
        raise Unsupported(f"torch {torch.__version__} sees no CUDA GPU (a CPU-only build or no driver)")
    env = {"framework": "torch", "version": torch.__version__,
           "intra_op_threads": torch.get_num_threads(),
           "inter_op_threads": torch.get_num_interop_threads(),
           "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "mkldnn_enabled": bool(torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
           "parallel_info": torch.__config__.parallel_info().splitlines()[:6]}
    if device == "cuda":
        env.update({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "gpu": torch.cuda.get_device_name(), "allow_tf32": False})
    return env


def set_precision(torch, precision: str) -> dict:
    """Set every switch that decides whether PyTorch runs fp32 math as TF32, for a row labelled
    ``precision``: TF32 for ``tf32`` only.  The one place for every torch row of the project (the
    framework adapter here and ``scale``'s DDP steps, microbench/scaling.py).  Returns the switches
    as they now read (the record's ``precision_switches``).

    torch 2.13 starts with ``torch.backends.cudnn.allow_tf32 = True`` (``cudnn.conv`` and
    ``cudnn.rnn.fp32_precision`` read ``'tf32'``), and ATen's cuDNN RNN and convolution descriptors
    then allow TF32 (``CUDNN_DEFAULT_MATH``): an fp32 row would run TF32.  The legacy switches are
    set, not the ``fp32_precision`` ones: the legacy setter also sets the conv and rnn precisions,
    while setting only the new ones leaves the legacy flag disagreeing, and then the legacy reads
    that ``torch.backends.cudnn.flags()`` (used by the nocudnn rows) makes raise RuntimeError."""
    tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return precision_switches(torch)


def precision_switches(torch) -> dict:
    """The TF32 switches as they read now; the per-operator ``fp32_precision`` ones where this
    torch has them (2.9 and later)."""
    out = {"float32_matmul_precision": torch.get_float32_matmul_precision(),
           "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
    for name, where in (("cudnn.conv", lambda: torch.backends.cudnn.conv),
                        ("cudnn.rnn", lambda: torch.backends.cudnn.rnn)):
        try:
            out[f"{name}.fp32_precision"] = where().fp32_precision
        except AttributeError:
            pass
    return out


def _dtype(precision, device, cpu_bf16: bool = False):
    """``cpu_bf16``: the RNN rows take bf16 on the CPU too (nn.LSTM runs it through oneDNN's
    bf16 RNN, mkldnn_rnn_layer; nn.GRU and nn.RNN through ATen's bf16 GEMMs)."""
    torch = _torch
    table = {"fp32": torch.float32, "fp64": torch.float64}
    if device == "cuda":
        table.update({"tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16})
    elif cpu_bf16:
        table["bf16"] = torch.bfloat16
    if precision not in table:
        raise Unsupported(f"torch on {device} runs {', '.join(table)}; not {precision}")
    set_precision(torch, precision)
    return table[precision]


def build(op, path, device, precision, arrays) -> Built:
    """``op``: lstm, gru, rnn_relu, rnn_tanh (nn.RNN) or layernorm (the layer-norm LSTM, paths
    eager and compile).  With ``dy``
    among the arrays the row is a training step: forward and backward of ``sum(y * dy)``."""
    torch, nn = _torch, _torch.nn
    T, B, I, H, L = dims(arrays)
    dt = _dtype(precision, device, cpu_bf16=True)
    dev = torch.device(device)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dt)  # noqa: E731
    layers = unpack_layers(arrays)
    x, h0 = t(arrays["x"]), t(arrays["h0"])
    c0 = t(arrays["c0"]) if "c0" in arrays else None
    act = split_op(op)[1]           # the vanilla cell's nonlinearity (None for the other cells)
    train = "dy" in arrays
    sync = _syncer(device)
    info = {"precision_switches": precision_switches(torch),
            "mode": ("training step: train(), autograd.grad of sum(y * dy) w.r.t. x, h0, c0 and every weight"
                     if train else "torch.inference_mode, eval(), grad disabled")}
    if op == "layernorm":
        return _build_layernorm(path, device, dt, arrays, layers, (x, h0, c0), info, sync)

    if path in ("fused", "cudnn"):
        if act:
            mod = nn.RNN(I, H, num_layers=L, nonlinearity=act)
        else:
            mod = (nn.LSTM if op == "lstm" else nn.GRU)(I, H, num_layers=L)
        mod = mod.to(dev, dt).train(train)
        for l, layer in enumerate(layers):
            for name, a in to_torch(layer, op).items():
                getattr(mod, f"{name}_l{l}").copy_(t(a))
        weights = [getattr(mod, f"{name}_l{l}") for l in range(L) for name in _CANON]

        def net(x, h0, c0=None):
            return mod(x, (h0, c0) if op == "lstm" else h0)
        info["kernel"] = ("cuDNN RNN" if device == "cuda" else
                          f"ATen rnn_{act}" if act else
                          "oneDNN (mkldnn_rnn)" if op == "lstm" and info_mkldnn() and (
                              dt == torch.float32 or dt == torch.bfloat16 and _mkldnn_bf16())
                          else "ATen native")
        if train:
            info["kernel"] += ", forward and backward"
    elif path in ("generic", "nocudnn"):
        Cell = nn.LSTMCell if op == "lstm" else nn.GRUCell
        if act:
            Cell = functools.partial(nn.RNNCell, nonlinearity=act)
        cells = []
        for l, layer in enumerate(layers):
            cell = Cell(I if l == 0 else H, H).to(dev, dt).train(train)
            for name, a in to_torch(layer, op).items():
                getattr(cell, name).copy_(t(a))
            cells.append(cell)
        weights = [getattr(cell, name) for cell in cells for name in _CANON]

        def net(x, h0, c0=None):
            with torch.backends.cudnn.flags(enabled=False):
                seq, hs, cs = x, [], []
                for l, cell in enumerate(cells):
                    h = h0[l]
                    c = c0[l] if op == "lstm" else None
                    ys = []
                    for step in range(T):
                        if op == "lstm":
                            h, c = cell(seq[step], (h, c))
                        else:
                            h = cell(seq[step], h)
                        ys.append(h)
                    seq = torch.stack(ys)
                    hs.append(h)
                    cs.append(c)
                return (seq, (torch.stack(hs), torch.stack(cs))) if op == "lstm" else (seq, torch.stack(hs))
        info["kernel"] = "per step: cell GEMMs + pointwise ops (ATen), Python loop" + (
            "; autograd replays it backwards" if train else "")
    else:
        raise Unsupported(f"torch has no path {path!r} on {device}")

    inputs = (x, h0, c0) if op == "lstm" else (x, h0)
    if train:
        run, outputs = _training(lambda *a: net(*a)[0], inputs, weights, t(arrays["dy"]), sync)
        return Built(run, outputs, info)

    last = {}

    def run():
        with torch.inference_mode():
            last["out"] = net(*inputs)
        sync()

    def outputs():
        y, st = last["out"]
        parts = (y, *st) if op == "lstm" else (y, st)
        return tuple(p.detach().to("cpu", torch.float64).numpy() for p in parts)

    return Built(run, outputs, info)


_CANON = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _training(forward, inputs, weights, dy, sync):
    """(run, outputs) of a training step: ``y = forward(*inputs)``, then the gradients of
    ``sum(y * dy)`` with respect to the inputs and the weights (autograd.grad: nothing
    accumulates between calls, no optimizer step).  outputs: y, then the gradients in order."""
    torch = _torch
    leaves = [a.detach().clone().requires_grad_(True) for a in inputs]
    for w in weights:
        w.requires_grad_(True)
    last = {}

    def run():
        with torch.enable_grad():
            y = forward(*leaves)
            grads = torch.autograd.grad(y, leaves + list(weights), grad_outputs=dy)
        last["out"] = (y.detach(), *grads)
        sync()

    def outputs():
        return tuple(a.detach().to("cpu", torch.float64).numpy() for a in last["out"])

    return run, outputs


def _layernorm_fns(eps: float):
    """The layer-norm LSTM in PyTorch ops: the input part for all steps at once, and one step.

    Biases come after the input layer norm (as kernels.custom defines the cell), so they are
    added to its output rather than folded into the GEMM."""
    torch = _torch
    F = torch.nn.functional

    def inputs(seq, w_ih, g, b, bias):
        T, B, _ = seq.shape
        a = seq.reshape(T * B, -1) @ w_ih.T                      # one GEMM, M = T*B
        return (F.layer_norm(a, (a.shape[1],), g, b, eps) + bias).reshape(T, B, -1)

    def step(ax, h, c, w_hh, g, b, cg, cb):
        H = h.shape[1]
        ah = F.layer_norm(h @ w_hh.T, (4 * H,), g, b, eps)
        i, f, gg, o = (ax + ah).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), cg, cb, eps))
        return h, c
    return inputs, step


def _build_layernorm(path, device, dt, arrays, layers, state, info, sync) -> Built:
    """Our layer-norm LSTM, op by op: ``eager``, or ``compile`` (the same two functions under
    torch.compile; the step loop stays in Python, so one small graph compiles, not T of them)."""
    torch = _torch
    dev = torch.device(device)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dt)  # noqa: E731
    x, h0, c0 = state
    T = x.shape[0]
    train = "dy" in arrays
    extras = unpack_extras(arrays)
    # canonical order per layer: w_ih, w_hh, b_ih, b_hh, then the layer-norm extras
    weights = [t(a) for l, layer in enumerate(layers)
               for a in (*layer, *(extras[l][n] for n in LAYERNORM_EXTRAS))]
    per = 4 + len(LAYERNORM_EXTRAS)
    inputs_fn, step_fn = _layernorm_fns(float(arrays["ln_eps"]))
    if path == "compile":
        inputs_fn = torch.compile(inputs_fn, dynamic=False, fullgraph=True)
        step_fn = torch.compile(step_fn, dynamic=False, fullgraph=True)
        info["kernel"] = ("per step: the recurrent GEMM and Inductor-generated kernels for the layer "
                          "norms and pointwise work (torch.compile, fullgraph), Python step loop")
    elif path == "eager":
        info["kernel"] = "per step: the recurrent GEMM, 2 F.layer_norm and ~10 ATen pointwise ops, Python loop"
    else:
        raise Unsupported(f"torch has no layer-norm LSTM path {path!r}; paths: eager, compile")

    def net(x, h0, c0, *ws):
        seq, hs, cs = x, [], []
        for l in range(len(layers)):
            w_ih, w_hh, b_ih, b_hh, lnx_g, lnx_b, lnh_g, lnh_b, lnc_g, lnc_b = ws[l * per:(l + 1) * per]
            ax = inputs_fn(seq, w_ih, lnx_g.reshape(-1), lnx_b.reshape(-1), b_ih + b_hh)
            g, b = lnh_g.reshape(-1), lnh_b.reshape(-1)
            h, c, ys = h0[l], c0[l], []
            for step in range(T):
                h, c = step_fn(ax[step], h, c, w_hh, g, b, lnc_g, lnc_b)
                ys.append(h)
            seq = torch.stack(ys)
            hs.append(h)
            cs.append(c)
        return seq, torch.stack(hs), torch.stack(cs)

    if train:
        run, outputs = _training(lambda *a: net(*a, *weights)[0], (x, h0, c0), weights,
                                 t(arrays["dy"]), sync)
    else:
        last = {}

        def run():
            with torch.no_grad():
                last["out"] = net(x, h0, c0, *weights)
            sync()

        def outputs():
            return tuple(p.to("cpu", torch.float64).numpy() for p in last["out"])
        info["mode"] = "torch.no_grad"

    if path == "compile":
        # Compilation happens on the first call; where it cannot (no C++ compiler, an
        # unsupported op), the row is skipped with the reason instead of failing the run.
        t0 = time.perf_counter()
        try:
            run()
        except Exception as e:  # noqa: BLE001
            msg = (str(e).strip().splitlines() or [""])[0][:300]
            raise Unsupported(f"torch.compile failed here ({type(e).__name__}: {msg})") from None
        info["compile_s"] = time.perf_counter() - t0
    return Built(run, outputs, info)


# While the worker times a call with CUDA events the call must not synchronize the host: the end
# event would then be queued only after the host woke up, and the sample would include that gap.
_EVENTS_TIMING = {"on": False}


def _syncer(device: str):
    if device != "cuda":
        return lambda: None

    def sync():
        if not _EVENTS_TIMING["on"]:
            _torch.cuda.synchronize()
    return sync


class CudaEventTimer:
    """torch.cuda.Event pairs on torch's current stream around each call, the end event
    synchronized before reading: the same device-time samples our GPU rows get."""

    name = "cuda-events"

    def __init__(self):
        self.start = _torch.cuda.Event(enable_timing=True)
        self.end = _torch.cuda.Event(enable_timing=True)

    def sample(self, fn):
        stream = _torch.cuda.current_stream()
        _EVENTS_TIMING["on"] = True
        try:
            self.start.record(stream)
            fn()
            self.end.record(stream)
        finally:
            _EVENTS_TIMING["on"] = False
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


def timer(device: str):
    """The worker's timer on ``device``: CUDA events on a GPU, else None (wall clock)."""
    return CudaEventTimer() if device == "cuda" else None


def flusher(device: str):
    """Cold mode on a GPU: write twice the L2 on torch's current stream before each sample."""
    if device != "cuda":
        return None
    l2 = _torch.cuda.get_device_properties(_torch.cuda.current_device()).L2_cache_size
    buf = _torch.empty(2 * l2 // 4, dtype=_torch.float32, device="cuda")
    return lambda: buf.fill_(1.0)


def info_mkldnn() -> bool:
    b = _torch.backends.mkldnn
    return bool(b.enabled and b.is_available())


def _mkldnn_bf16() -> bool:
    """Whether ATen's bf16 LSTM takes oneDNN's RNN here (its mkldnn_bf16_device_check)."""
    try:
        return bool(_torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _conv_setup(path, device, precision, arrays, geom) -> tuple:
    """(to_device, x, w, b, flags, kernel, nhwc) of a conv row: our KCRS filter as is; an NHWC
    problem's tensors in channels_last memory format."""
    torch = _torch
    dt = _dtype(precision, device)
    dev = torch.device(device)
    nhwc = geom["layout"] == "NHWC"

    def to_device(a, activation=True):
        a = np.asarray(a)
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2) if nhwc and activation else a)).to(dev, dt)
        return t.contiguous(memory_format=torch.channels_last) if nhwc and activation else t
    x = to_device(arrays["x"])
    w = to_device(arrays["w"], activation=False)
    b = to_device(arrays["b"], activation=False) if "b" in arrays else None
    # A factory, not a context manager object: one made by @contextmanager can be entered once.
    backend = torch.backends.mkldnn if device == "cpu" else torch.backends.cudnn
    if path in ("fused", "cudnn"):
        flags = lambda: backend.flags(enabled=True)  # noqa: E731
        kernel = "cuDNN" if device == "cuda" else "oneDNN (mkldnn)"
    elif path in ("generic", "nocudnn"):
        flags = lambda: backend.flags(enabled=False)  # noqa: E731
        kernel = "ATen fallback (slow_conv2d: unfold + GEMM)"
    else:
        raise Unsupported(f"torch has no conv path {path!r} on {device}")
    return to_device, x, w, b, flags, kernel, nhwc


def _conv_info(kernel, geom) -> dict:
    torch = _torch
    return {"kernel": kernel, "layout": geom["layout"],
            "precision_switches": precision_switches(torch)}


def build_conv(path, device, precision, arrays, geom) -> Built:
    """F.conv2d with our KCRS filter as is; NHWC problems run in channels_last memory format."""
    torch = _torch
    F = torch.nn.functional
    _, x, w, b, flags, kernel, nhwc = _conv_setup(path, device, precision, arrays, geom)
    sync = _syncer(device)
    last = {}

    def run():
        with torch.inference_mode(), flags():
            last["y"] = F.conv2d(x, w, b, tuple(geom["stride"]), tuple(geom["pad"]),
                                 tuple(geom["dilation"]), geom["groups"])
        sync()

    def outputs():
        y = last["y"].to("cpu", torch.float64)
        return ((y.permute(0, 2, 3, 1) if nhwc else y).contiguous().numpy(),)

    return Built(run, outputs, _conv_info(kernel, geom))


def build_conv_backward(path, device, precision, arrays, geom, phase) -> Built:
    """One backward phase of ``sum(y * dy)`` for the conv2d of :func:`build_conv`: ``bwd_data``
    (dx) or ``bwd_weights`` (dw, and db with a bias).  Each calls
    ``aten.convolution_backward``, the op autograd's ConvolutionBackward0 node runs, with an
    output mask that asks for that phase only, so the two are timed apart as DeepBench times them."""
    torch = _torch
    if phase not in ("bwd_data", "bwd_weights"):
        raise Unsupported(f"conv backward phase {phase!r} is unknown; allowed: bwd_data, bwd_weights")
    to_device, x, w, b, flags, kernel, nhwc = _conv_setup(path, device, precision, arrays, geom)
    dy = to_device(arrays["dy"])
    data = phase == "bwd_data"
    mask = [True, False, False] if data else [False, True, b is not None]
    args = (dy, x, w, list(b.shape) if b is not None else None, list(geom["stride"]), list(geom["pad"]),
            list(geom["dilation"]), False, [0, 0], geom["groups"], mask)
    sync = _syncer(device)
    last = {}

    def run():
        with torch.no_grad(), flags():
            last["out"] = torch.ops.aten.convolution_backward(*args)
        sync()

    def outputs():
        dx, dw, db = last["out"]
        if data:
            dx = dx.to("cpu", torch.float64)
            return ((dx.permute(0, 2, 3, 1) if nhwc else dx).contiguous().numpy(),)
        return tuple(a.to("cpu", torch.float64).contiguous().numpy() for a in (dw, db) if a is not None)

    info = _conv_info(kernel + ", backward", geom)
    info["backward"] = f"aten.convolution_backward, output_mask {mask} ({phase})"
    return Built(run, outputs, info)
