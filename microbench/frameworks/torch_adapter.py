"""PyTorch: nn.LSTM/nn.GRU (ATen's fused RNN: oneDNN on a CPU, cuDNN on a GPU) and a cell loop."""
from __future__ import annotations

import numpy as np

from .common import Built, Unsupported, dims
from .convert import to_torch, unpack_layers

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
    # Precision switches, set explicitly: full fp32 GEMMs unless --dtype tf32 asks otherwise.
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
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


def _dtype(precision, device):
    torch = _torch
    table = {"fp32": torch.float32, "fp64": torch.float64}
    if device == "cuda":
        table.update({"tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16})
    if precision not in table:
        raise Unsupported(f"torch on {device} runs {', '.join(table)}; not {precision}")
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return table[precision]


def build(op, path, device, precision, arrays) -> Built:
    torch, nn = _torch, _torch.nn
    T, B, I, H, L = dims(arrays)
    dt = _dtype(precision, device)
    dev = torch.device(device)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dt)  # noqa: E731
    layers = unpack_layers(arrays)
    x, h0 = t(arrays["x"]), t(arrays["h0"])
    c0 = t(arrays["c0"]) if op == "lstm" else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info = {"precision_switches": {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                                   "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                                   "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32},
            "mode": "torch.inference_mode, eval(), grad disabled"}

    if path in ("fused", "cudnn"):
        mod = (nn.LSTM if op == "lstm" else nn.GRU)(I, H, num_layers=L).to(dev, dt).eval()
        for l, layer in enumerate(layers):
            for name, a in to_torch(layer, op).items():
                getattr(mod, f"{name}_l{l}").copy_(t(a))
        state = (h0, c0) if op == "lstm" else h0

        def fwd():
            with torch.inference_mode():
                return mod(x, state)
        info["kernel"] = ("cuDNN RNN" if device == "cuda" else
                          "oneDNN (mkldnn_rnn)" if dt == torch.float32 and info_mkldnn() else "ATen native")
    elif path in ("generic", "nocudnn"):
        Cell = nn.LSTMCell if op == "lstm" else nn.GRUCell
        cells = []
        for l, layer in enumerate(layers):
            cell = Cell(I if l == 0 else H, H).to(dev, dt).eval()
            for name, a in to_torch(layer, op).items():
                getattr(cell, name).copy_(t(a))
            cells.append(cell)

        def fwd():
            with torch.inference_mode(), torch.backends.cudnn.flags(enabled=False):
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
        info["kernel"] = "per step: cell GEMMs + pointwise ops (ATen), Python loop"
    else:
        raise Unsupported(f"torch has no path {path!r} on {device}")

    last = {}

    def run():
        last["out"] = fwd()
        sync()

    def outputs():
        y, st = last["out"]
        parts = (y, *st) if op == "lstm" else (y, st)
        return tuple(p.detach().to("cpu", torch.float64).numpy() for p in parts)

    return Built(run, outputs, info)


def info_mkldnn() -> bool:
    b = _torch.backends.mkldnn
    return bool(b.enabled and b.is_available())


def build_conv(path, device, precision, arrays, geom) -> Built:
    """F.conv2d with our KCRS filter as is; NHWC problems run in channels_last memory format."""
    torch = _torch
    F = torch.nn.functional
    dt = _dtype(precision, device)
    dev = torch.device(device)
    nhwc = geom["layout"] == "NHWC"
    xa = np.asarray(arrays["x"])
    x = torch.from_numpy(np.ascontiguousarray(xa.transpose(0, 3, 1, 2) if nhwc else xa)).to(dev, dt)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.from_numpy(np.ascontiguousarray(arrays["w"])).to(dev, dt)
    b = torch.from_numpy(np.asarray(arrays["b"])).to(dev, dt) if "b" in arrays else None
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
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    last = {}

    def run():
        with torch.inference_mode(), flags():
            last["y"] = F.conv2d(x, w, b, tuple(geom["stride"]), tuple(geom["pad"]),
                                 tuple(geom["dilation"]), geom["groups"])
        sync()

    def outputs():
        y = last["y"].to("cpu", torch.float64)
        return ((y.permute(0, 2, 3, 1) if nhwc else y).contiguous().numpy(),)

    return Built(run, outputs, {"kernel": kernel, "layout": geom["layout"],
                                "precision_switches": {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                                                       "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}})
