"""LSTM, GRU and vanilla RNN inference through oneDNN's RNN primitives, called with ctypes on
NumPy memory.

    from kernels.onednn.rnn import OnednnRNN
    with OnednnRNN(params, batch=64, seq_len=100) as rnn:
        y, h_n, c_n = rnn(x, h0, c0)            # NumPy arrays, time-major (T, B, I)

Primitives: ``dnnl_lstm_forward`` for the LSTM and ``dnnl_lbr_gru_forward`` for the GRU: the
linear-before-reset GRU, whose candidate is ``tanh(W_o x + b_o + r * (U_o h + b_u'))``, the
reset-after form cuDNN, PyTorch and our reference use (``dnnl_gru_forward`` resets before the
recurrent GEMM: a different function).  The vanilla cell (op ``rnn``) is ``dnnl_vanilla_rnn_forward``
with activation ``eltwise_relu`` (alpha, the negative slope, 0: a plain ReLU) or ``eltwise_tanh``.
All in ``forward_inference``, left to right.

Weight layout.  oneDNN's weights are ``(layers, directions, input, gates, hidden)``; a
descriptor with tag ``ldgoi`` stores them gate, then output row, then input innermost: exactly
our ``w_ih`` / ``w_hh`` ``(G*H, width)`` row-major blocks, once the gates are in oneDNN's order:

- LSTM: ``i, f, c~, o`` = our ``i, f, g, o`` (no permutation).
- LBR GRU: ``u, r, o`` = our ``z, r, n`` (update first); its bias has a fourth gate,
  ``b_u, b_r, b_o, b_u'`` = ``b_iz + b_hz, b_ir + b_hr, b_in, b_hn``: the recurrent bias of the
  candidate stays inside the reset product, as in ours.
- LSTM bias: ``b_ih + b_hh`` per gate.  Biases are f32 in every precision (oneDNN's rule).
- Vanilla RNN: one gate, ``h``; bias ``b_ih + b_hh`` (one gate: the bias is added before the
  activation, so the two sum).

The primitive is created with weights of format ``any``: oneDNN picks its preferred (blocked,
packed) layout, and a ``reorder`` converts our weights into it.  With ``reorder_each_call=False``
that reorder runs once, in the constructor, outside the timed region; with True it runs on every
call, before the RNN primitive, as PyTorch's ``mkldnn_rnn_layer`` does, so its cost is visible.

Layers: one primitive covers a stack of layers when their input widths agree, so ``I == H``
needs one primitive for all ``L`` layers and ``I != H`` two (layer 0, then layers 1..L-1).
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..dtypes import canonical, storage
from ..errors import BadInput
from ..params import RNNParams, check_dim, check_real, reorder_gates, require_unidirectional
from . import core
from . import lib as L

CELLS = {"lstm": "dnnl_lstm_forward_primitive_desc_create",
         "gru": "dnnl_lbr_gru_forward_primitive_desc_create",
         "rnn": "dnnl_vanilla_rnn_forward_primitive_desc_create"}
# our canonical gate order -> oneDNN's
GATE_ORDER = {"lstm": ("ifgo", "ifgo"), "gru": ("rzn", "zrn"), "rnn": ("h", "h")}
PRIMITIVE = {"lstm": "vanilla_lstm", "gru": "lbr_gru", "rnn": "vanilla_rnn"}
BIAS_GATES = {"lstm": 4, "gru": 4, "rnn": 1}     # the LBR GRU's bias has a fourth gate
# the vanilla cell's activation (dnnl_alg_kind_t)
ACTIVATION = {"relu": "eltwise_relu", "tanh": "eltwise_tanh"}


def layer_groups(num_layers: int, input_size: int, hidden_size: int) -> list:
    """Layers per primitive: a stack shares one input width (layer 0 reads I, the rest H)."""
    L_ = check_dim("num_layers", num_layers)
    if input_size == hidden_size or L_ == 1:
        return [list(range(L_))]
    return [[0], list(range(1, L_))]


def onednn_weights(params: RNNParams, layers: list, which: str) -> np.ndarray:
    """``w_ih`` or ``w_hh`` of ``layers`` in oneDNN's gate order, shaped (nl, 1, G, H, width):
    the ``ldgoi`` layout of logical dims (nl, 1, width, G, H)."""
    src, dst = GATE_ORDER[params.cell]
    G, H = params.num_gates, params.hidden_size
    out = []
    for l in layers:
        w = np.asarray(getattr(params.layers[l], which))
        w = reorder_gates(w, src, dst, axis=0)
        out.append(w.reshape(G, H, w.shape[1]))
    return np.ascontiguousarray(np.stack(out)[:, None])


def onednn_bias(params: RNNParams, layers: list) -> np.ndarray:
    """The bias of ``layers``, (nl, 1, G', H) float32 in oneDNN's order (G' = BIAS_GATES)."""
    H = params.hidden_size
    out = []
    for l in layers:
        lay = params.layers[l]
        b_ih = np.asarray(lay.b_ih, dtype=np.float64)
        b_hh = np.asarray(lay.b_hh, dtype=np.float64)
        if params.cell in ("lstm", "rnn"):
            b = (b_ih + b_hh).reshape(BIAS_GATES[params.cell], H)
        else:
            g = lambda a, k: a[k * H:(k + 1) * H]  # noqa: E731  (our r, z, n = 0, 1, 2)
            b = np.stack([g(b_ih, 1) + g(b_hh, 1), g(b_ih, 0) + g(b_hh, 0), g(b_ih, 2), g(b_hh, 2)])
        out.append(b)
    return np.ascontiguousarray(np.stack(out)[:, None], dtype=np.float32)


class OnednnRNN:
    """One LSTM/GRU/vanilla RNN network as oneDNN primitives; ``__call__(x, h0[, c0])`` runs
    inference."""

    def __init__(self, params: RNNParams, *, batch: int, seq_len: int, precision: str = "fp32",
                 reorder_each_call: bool = False, lib=None):
        if not isinstance(params, RNNParams) or params.cell not in CELLS:
            raise BadInput(f"params must be LSTMParams, GRUParams or VanillaRNNParams, got "
                           f"{type(params).__name__}")
        require_unidirectional(params, "the onednn RNN variant")
        self.cell = params.cell
        self.nonlinearity = getattr(params, "nonlinearity", "")
        self.precision = canonical(precision)
        self.B, self.T = check_dim("batch", batch), check_dim("seq_len", seq_len)
        self.I, self.H, self.L = params.input_size, params.hidden_size, params.num_layers
        self.reorder_each_call = bool(reorder_each_call)
        self.lib = lib or L.load()
        self.scope = core.Scope(self.lib)
        self.dtype = storage(self.precision)
        try:
            dt = core.data_type(self.precision)
            params = params.astype(self.dtype)
            self.ctx = core.Context(self.scope)
            self._build(params, dt)
        except BaseException:
            self.close()
            raise

    # -- construction --------------------------------------------------------------------------
    def _build(self, params: RNNParams, dt: int) -> None:
        s, ctx, lstm = self.scope, self.ctx, self.cell == "lstm"
        T, B, H, G = self.T, self.B, self.H, params.num_gates
        f32 = L.DT["f32"]
        self.y = np.empty((T, B, H), self.dtype)
        self.hy = np.empty((self.L, B, H), self.dtype)
        self.cy = np.empty((self.L, B, H), self.dtype) if lstm else None
        self._x = np.zeros((T, B, self.I), self.dtype)
        self._h0 = np.zeros((self.L, B, H), self.dtype)
        self._c0 = np.zeros((self.L, B, H), self.dtype) if lstm else None
        self.steps, self.once, self.impl, self.weight_formats = [], [], [], []
        self._inputs = []                  # (memory, which array, layer slice) to rebind
        groups = layer_groups(self.L, self.I, H)
        src_arr = self._x
        for gi, layers in enumerate(groups):
            nl, width = len(layers), (self.I if layers[0] == 0 else H)
            lo, hi = layers[0], layers[-1] + 1
            md = {
                "src_layer": s.md((T, B, width), dt, "tnc"),
                "src_iter": s.md((nl, 1, B, H), dt, "ldnc"),
                "weights_layer": s.md((nl, 1, width, G, H), dt, "any"),
                "weights_iter": s.md((nl, 1, H, G, H), dt, "any"),
                "bias": s.md((nl, 1, BIAS_GATES[self.cell], H), f32, "ldgo"),
                "dst_layer": s.md((T, B, H), dt, "tnc"),
                "dst_iter": s.md((nl, 1, B, H), dt, "ldnc"),
            }
            if lstm:
                md["src_iter_c"] = s.md((nl, 1, B, H), dt, "ldnc")
                md["dst_iter_c"] = s.md((nl, 1, B, H), dt, "ldnc")
                args = [md["src_layer"], md["src_iter"], md["src_iter_c"], md["weights_layer"],
                        md["weights_iter"], None, None, md["bias"], md["dst_layer"],
                        md["dst_iter"], md["dst_iter_c"]]
            else:
                args = [md["src_layer"], md["src_iter"], md["weights_layer"], md["weights_iter"],
                        md["bias"], md["dst_layer"], md["dst_iter"]]
            attr = s.attr_user_scratchpad()
            prop = L.PROP["forward_inference"]
            if self.cell == "rnn":
                # activation before direction; alpha 0 (ReLU's negative slope), beta unused
                pd = s.pd(CELLS["rnn"], ctx.engine, prop, L.ALG[ACTIVATION[self.nonlinearity]],
                          L.DIRECTION_L2R, *args, 0, 0.0, 0.0, attr)
            else:
                pd = s.pd(CELLS[self.cell], ctx.engine, prop, L.DIRECTION_L2R, *args, 0, attr)
            self.impl.append(s.impl_info(pd))
            dst_arr = self.y if gi == len(groups) - 1 else np.empty((T, B, H), self.dtype)
            mem = {
                "src_layer": s.memory(md["src_layer"], ctx.engine, src_arr),
                "src_iter": s.memory(md["src_iter"], ctx.engine, self._h0[lo:hi]),
                "bias": s.memory(md["bias"], ctx.engine, onednn_bias(params, layers)),
                "dst_layer": s.memory(md["dst_layer"], ctx.engine, dst_arr),
                "dst_iter": s.memory(md["dst_iter"], ctx.engine, self.hy[lo:hi]),
                "scratchpad": s.memory(s.arg_md(pd, "scratchpad"), ctx.engine),
            }
            if gi == 0:
                self._inputs.append(("x", mem["src_layer"], None))
            self._inputs.append(("h0", mem["src_iter"], (lo, hi)))
            if lstm:
                mem["src_iter_c"] = s.memory(md["src_iter_c"], ctx.engine, self._c0[lo:hi])
                mem["dst_iter_c"] = s.memory(md["dst_iter_c"], ctx.engine, self.cy[lo:hi])
                self._inputs.append(("c0", mem["src_iter_c"], (lo, hi)))
            for arg, which in (("weights_layer", "w_ih"), ("weights_iter", "w_hh")):
                user = onednn_weights(params, layers, which)
                logical = (nl, 1, user.shape[4], G, H)
                user_md = s.md(logical, dt, "ldgoi")
                want = s.arg_md(pd, arg)
                self.weight_formats.append(self._describe_md(want))
                user_mem = s.memory(user_md, ctx.engine, user)
                mem[arg] = s.memory(want, ctx.engine)
                r_pd, r_prim = core.reorder(s, ctx, user_md, want)
                step = core.Step(self.lib, f"reorder {arg}", r_prim, ctx.stream,
                                 {"from": user_mem, "to": mem[arg]})
                (self.steps if self.reorder_each_call else self.once).append(step)
            prim = s.primitive(pd)
            self.steps.append(core.Step(self.lib, PRIMITIVE[self.cell], prim, ctx.stream, mem, kind="rnn"))
            src_arr = dst_arr
        for step in self.once:        # the weights, reordered once, outside any timed call
            step()
        core.wait(ctx)
        self._wait = self.lib.fn("dnnl_stream_wait")

    def _describe_md(self, md) -> str:
        """'blocked' or 'opaque' (dnnl_format_kind_t of the layout oneDNN chose), with its size."""
        kind = ctypes.c_int()
        self.lib.call("dnnl_memory_desc_query", md, L.QUERY["format_kind"], ctypes.byref(kind))
        name = L.FORMAT_KIND.get(kind.value, str(kind.value))
        return f"{name} ({self.scope.md_size(md)} bytes)"

    # -- calls ---------------------------------------------------------------------------------
    def bind(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None = None) -> None:
        """Copy inputs into the buffers the primitives read (untimed set-up)."""
        want = {"x": (self.T, self.B, self.I), "h0": (self.L, self.B, self.H)}
        arrays = {"x": x, "h0": h0}
        if self.cell == "lstm":
            if c0 is None:
                raise BadInput("the LSTM needs c0")
            want["c0"] = want["h0"]
            arrays["c0"] = c0
        for k, a in arrays.items():
            check_real(k, a)     # a complex array would silently lose its imaginary part
            if np.shape(a) != want[k]:
                raise BadInput(f"{k} has shape {np.shape(a)}; expected {want[k]}")
        self._x[...] = x
        self._h0[...] = h0
        if self._c0 is not None:
            self._c0[...] = c0

    @property
    def bound(self) -> dict:
        """The buffers the primitives read, by name (``x``, ``h0``, ``c0``): what :meth:`bind`
        copies into; writing them in place changes the next :meth:`run`'s inputs."""
        return {"x": self._x, "h0": self._h0, "c0": self._c0}

    def run(self) -> tuple:
        """One inference over the bound inputs; returns (y, h_n[, c_n]) (buffers reused per call)."""
        if self.scope.closed:   # its primitives and memories are released: executing would crash
            raise BadInput("this oneDNN RNN was closed; build a new one")
        for step in self.steps:
            step()
        st = self._wait(self.ctx.stream)
        if st:
            core.wait(self.ctx)
        return (self.y, self.hy, self.cy) if self.cell == "lstm" else (self.y, self.hy)

    def __call__(self, x, h0, c0=None) -> tuple:
        self.bind(x, h0, c0)
        return self.run()

    def info(self) -> dict:
        name = {"lstm": "lstm", "gru": "lbr_gru", "rnn": "vanilla_rnn"}[self.cell]
        out = {"activation": ACTIVATION[self.nonlinearity]} if self.cell == "rnn" else {}
        return {"primitive": f"dnnl_{name}_forward", **out,
                "impl": sorted(set(self.impl)), "primitives_per_call": len(self.steps),
                "weight_reorder": "every call" if self.reorder_each_call else "once, at build",
                "weight_formats": self.weight_formats, "onednn": self.lib.version,
                "isa": self.lib.isa}

    def close(self) -> None:
        self.scope.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
