"""Custom cells: each one row (:class:`CustomCell`) from which its parameters, float64 reference,
family, runner checks and (in microbench) records, ``--cell`` choices and tests follow.

A row holds the cell's declaration (a :class:`fusion.cellexpr.Cell`: gates, states, per-unit
parameters, the pointwise body the kernels are generated from), its float64 reference step
(written by hand, not generated: it is the oracle the generated kernels are held to), how its
per-unit parameters are drawn, and one line about it.  Its **family** follows from its states: a
cell with state ``c`` is LSTM-family (called with ``h0, c0``, returns ``y, (h_n, c_n)``; op
``lstm``), one without states is GRU-family (``h0``, returns ``y, h_n``; op ``gru``), or, with
a single gate, vanilla-RNN-family (op ``rnn``).  :func:`register_cell` adds a row (and makes its
parameter container, a :class:`~kernels.params.CellParams` subclass); :func:`unregister_cell`
removes one (a test's throwaway cell).

Shipped rows:

- ``peephole`` (``PEEPHOLE_LSTM``): ``peep (3, H)``: rows i, f, o; i and f see c_{t-1}, o sees c_t;
- ``layernorm`` (``LAYERNORM_LSTM``, Ba et al. 2016): ``lnx_g, lnx_b (4, H)``: gain and bias of the
  layer norm over the 4H input pre-activations ``x W_ih^T``; ``lnh_g, lnh_b (4, H)``: the same
  for ``h W_hh^T``; ``lnc_g, lnc_b (H,)``: layer norm of c before the output tanh.  The canonical
  biases are added after the normalisation (so they are not folded into the input GEMM).

Parameters extend the canonical layout (:mod:`kernels.params`: ``w_ih, w_hh, b_ih, b_hh`` per
layer, the cell's G gates in its declared order) with per-unit arrays, one dict per layer, named
and shaped as the declaration says.  The containers derive from :class:`CustomCellParams`, not
from ``LSTMParams``: the plain :func:`kernels.lstm` refuses them instead of silently dropping the
extra parameters.

The runner is :class:`kernels.recurrent.RNN`, the plain cells' one (:class:`CustomRNN` is ``RNN``
with the defaults these cells always had: backend ``numba``, every fusion step of the backend).
Variants: ``naive``: per-gate GEMMs every step and the cell's op-by-op NumPy pointwise code
(generated from the same declaration); ``fused``: the fusion plan (``opts``, as for the plain
cells) with the generated fused kernel (``numba``, ``cupy``: CUDA C through
:class:`fusion.cellexpr_gpu.CupyCell`, ``numba-cuda``: :class:`fusion.cellexpr_gpu.NumbaCudaCell`)
or the op-by-op code (``numpy``).  The biases fold into the input GEMM where the declaration
allows it (peephole: both; layer norm: neither).
GPU precisions fp32, tf32 (TF32 cuBLAS math) and fp16 (fp16 storage, fp32 math in the kernel).
Without a GPU, building one raises :class:`~kernels.errors.Unsupported` with the reason, except
``numba-cuda`` under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs the same step
loop with NumPy arrays and GEMMs (how the CPU tests check it).
Inputs may be NumPy or CuPy arrays; outputs are CuPy arrays.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusion import cellexpr

from .backends import step_backends
from .errors import BadInput
from .params import CellParams
from .reference import _initial, check_sequence, sigmoid
from .recurrent import RNN

# The runner's backends of generated kernels, by device (the CLI's --cell backends)
CPU_BACKENDS = step_backends("cpu", generated=True)
GPU_BACKENDS = step_backends("cuda", generated=True)
BACKENDS = CPU_BACKENDS + GPU_BACKENDS

# What each family is called with and returns (the op it runs as on the command line)
FAMILIES = {"lstm": "state c: called with h0, c0, returns y, (h_n, c_n)",
            "gru": "no state besides h, several gates: called with h0, returns y, h_n",
            "rnn": "no state besides h, one gate: called with h0, returns y, h_n"}


# How a family is named in a sentence ("--cell mgu is a GRU-family cell")
FAMILY_WORDS = {"lstm": "an LSTM-family", "gru": "a GRU-family", "rnn": "a vanilla-RNN-family"}


def family_of(expr) -> str:
    """The family of a declared cell, from its states (and, without states, its gate count)."""
    states = tuple(expr.states)
    if states == ("c",):
        return "lstm"
    if not states:
        return "rnn" if len(expr.gates) == 1 else "gru"
    raise BadInput(f"cell {expr.name}: states {states}; a custom cell has the LSTM's state c or none "
                   "(the runner keeps h and at most c)")


class CustomCellParams(CellParams):
    """Base of the registered cells' containers; ``kind`` is the row's name (set per subclass)."""

    kind = ""


@dataclass(frozen=True)
class CustomCell:
    """One custom cell, declared once.

    ``step(x_t, h, states, w_ih, w_hh, b_ih, b_hh, extras) -> (h, states)`` is the float64
    reference step of one layer and direction (``states``: ``(c,)`` for an LSTM-family cell,
    ``()`` otherwise; ``extras``: the layer's per-unit parameters by name).  ``draw_extra(rng,
    name, shape)`` draws a per-unit parameter (None: Uniform(-1/sqrt(H), 1/sqrt(H)), as the
    weights).  ``params_name``: the container's class name (default ``<Name>Params``)."""

    name: str
    expr: object
    step: Callable
    about: str
    draw_extra: Callable | None = None
    params_name: str = ""
    params: type = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == "plain":
            raise BadInput(f"cell name {self.name!r} must be an identifier other than 'plain' "
                           "(it becomes --cell NAME and the variants NAME-naive, NAME-fused)")
        if not isinstance(self.expr, cellexpr.Cell):
            raise BadInput(f"cell {self.name}: expr={self.expr!r} is not a fusion.cellexpr.Cell")
        family_of(self.expr)          # refuses a cell the runner cannot run
        ns = {"kind": self.name, "expr": self.expr, "__module__": __name__,
              "__doc__": f"Parameters of the {self.name} cell ({self.about})."}
        if self.draw_extra is not None:
            ns["_draw_extra"] = staticmethod(self.draw_extra)
        cls_name = self.params_name or "".join(p.title() for p in self.name.split("_")) + "Params"
        object.__setattr__(self, "params", type(cls_name, (CustomCellParams,), ns))

    @property
    def family(self) -> str:
        """``lstm``, ``gru`` or ``rnn``: the op it runs as, from its states (:func:`family_of`)."""
        return family_of(self.expr)

    @property
    def has_c(self) -> bool:
        return self.family == "lstm"

    @property
    def num_gates(self) -> int:
        return len(self.expr.gates)

    @property
    def state_names(self) -> tuple:
        """The initial states it is called with: ``("h0", "c0")`` or ``("h0",)``."""
        return ("h0", "c0") if self.has_c else ("h0",)

    def extra_weights(self, hidden_size: int) -> int:
        """Numbers in one layer's per-unit parameters."""
        return sum(int(np.prod(self.expr.param_shape(p, hidden_size))) for p, _ in self.expr.params)

    def reference(self, x, params, h0=None, c0=None):
        """The float64 forward pass: ``y (T, B, D*H)`` and ``(h_n, c_n)`` (LSTM family) or
        ``h_n``; time-major input."""
        return _reference(self, x, params, h0, c0)


# The registered cells by name; CUSTOM_PARAMS and CUSTOM_REFERENCES are views of it.
CUSTOM_CELLS: dict = {}


class _Column(Mapping):
    """One attribute of every registered row, by cell name (read-only, always current)."""

    def __init__(self, attr: str):
        self._attr = attr

    def __getitem__(self, name):
        return getattr(CUSTOM_CELLS[name], self._attr)

    def __iter__(self):
        return iter(CUSTOM_CELLS)

    def __len__(self):
        return len(CUSTOM_CELLS)


CUSTOM_PARAMS = _Column("params")
CUSTOM_REFERENCES = _Column("reference")


def register_cell(row: CustomCell) -> CustomCell:
    """Add a row (microbench's records come from :func:`microbench.cases.custom.add_cell`)."""
    if not isinstance(row, CustomCell):
        raise BadInput(f"register_cell takes a kernels.custom.CustomCell, got {type(row).__name__}")
    if row.name in CUSTOM_CELLS:
        raise BadInput(f"cell {row.name!r} is already registered")
    CUSTOM_CELLS[row.name] = row
    return row


def unregister_cell(name: str) -> None:
    get_cell(name)
    del CUSTOM_CELLS[name]


def get_cell(name: str) -> CustomCell:
    if name not in CUSTOM_CELLS:
        raise BadInput(f"cell {name!r} is unknown; allowed: {', '.join(CUSTOM_CELLS) or 'none registered'}")
    return CUSTOM_CELLS[name]


def cell_of(params) -> CustomCell:
    """The registered row of a custom cell's parameters (BadInput for anything else)."""
    row = CUSTOM_CELLS.get(getattr(params, "kind", "")) if isinstance(params, CustomCellParams) else None
    if row is None or not isinstance(params, row.params):
        allowed = ", ".join(r.params.__name__ for r in CUSTOM_CELLS.values())
        raise BadInput(f"params must be a registered custom cell's ({allowed}), got {type(params).__name__}")
    return row


# -- float64 references, step by step ----------------------------------------------------------
def _reference(row: CustomCell, x, params, h0, c0):
    """The layer/time loop of the custom-cell references, float64; ``row.step`` is the cell."""
    if not isinstance(params, row.params):
        raise BadInput(f"needs {row.params.__name__}, got {type(params).__name__}")
    if not row.has_c and c0 is not None:
        raise BadInput(f"a {row.name} cell has no cell state: c0 must be None")
    states = {"h0": h0, "c0": c0} if row.has_c else {"h0": h0}
    T, B = check_sequence(np.shape(x), params, False, states, x=x)
    inits = [_initial(s, params, B) for s in states.values()]
    finals = [np.empty_like(s) for s in inits]
    seq = np.asarray(x, dtype=np.float64)
    D, H = params.num_directions, params.hidden_size
    for l in range(params.num_layers):
        out = np.empty((T, B, D * H))
        for d in range(D):          # bidirectional: the reverse direction walks t = T-1..0
            k = l * D + d
            weights = tuple(np.asarray(a, dtype=np.float64) for a in params.layers[k].arrays())
            extras = {n: np.asarray(v, dtype=np.float64) for n, v in params.extras[k].items()}
            h, rest = inits[0][k], tuple(s[k] for s in inits[1:])
            for t in (reversed(range(T)) if d else range(T)):
                h, rest = row.step(seq[t], h, rest, *weights, extras)
                out[t, :, d * H:(d + 1) * H] = h
            for f, s in zip(finals, (h, *rest)):
                f[k] = s
        seq = out
    return (seq, tuple(finals)) if row.has_c else (seq, finals[0])


def _peephole_step(x_t, h, states, w_ih, w_hh, b_ih, b_hh, e):
    (c,) = states
    w_ci, w_cf, w_co = e["peep"]
    a_i, a_f, a_g, a_o = np.split(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=1)
    i = sigmoid(a_i + w_ci * c)          # peepholes on the previous cell state
    f = sigmoid(a_f + w_cf * c)
    g = np.tanh(a_g)
    c = f * c + i * g
    o = sigmoid(a_o + w_co * c)          # the output gate sees the new cell state
    return o * np.tanh(c), (c,)


def layer_norm(a, gain, bias, eps: float = cellexpr.LN_EPS):
    """Over the last axis, biased variance (as torch.nn.LayerNorm)."""
    mu = a.mean(axis=-1, keepdims=True)
    var = ((a - mu) ** 2).mean(axis=-1, keepdims=True)
    return (a - mu) / np.sqrt(var + eps) * gain + bias


def _layernorm_step(x_t, h, states, w_ih, w_hh, b_ih, b_hh, e):
    (c,) = states
    ax = layer_norm(x_t @ w_ih.T, e["lnx_g"].ravel(), e["lnx_b"].ravel())   # over 4H
    ah = layer_norm(h @ w_hh.T, e["lnh_g"].ravel(), e["lnh_b"].ravel())     # over 4H
    a_i, a_f, a_g, a_o = np.split(ax + ah + b_ih + b_hh, 4, axis=1)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c = f * c + i * g
    return o * np.tanh(layer_norm(c, e["lnc_g"], e["lnc_b"])), (c,)         # over H


def _draw_layernorm(rng, name, shape):
    # gains near 1, biases near 0 (the usual init is exactly 1 and 0; random values make the
    # checks see every parameter)
    if name.endswith("_g"):
        return rng.uniform(0.75, 1.25, size=shape)
    return rng.uniform(-0.1, 0.1, size=shape)


PEEPHOLE = register_cell(CustomCell(
    "peephole", cellexpr.PEEPHOLE_LSTM, _peephole_step,
    "peephole LSTM (Gers & Schmidhuber): i and f see c_{t-1}, o sees c_t", params_name="PeepholeLSTMParams"))
LAYERNORM = register_cell(CustomCell(
    "layernorm", cellexpr.LAYERNORM_LSTM, _layernorm_step,
    "layer-norm LSTM (Ba et al. 2016): LN over each GEMM's 4H pre-activations and over c",
    draw_extra=_draw_layernorm, params_name="LayerNormLSTMParams"))
PeepholeLSTMParams = PEEPHOLE.params
LayerNormLSTMParams = LAYERNORM.params


def peephole_lstm_reference(x, params, h0=None, c0=None):
    """Returns ``y (T, B, H)`` and ``(h_n, c_n)``, float64; time-major input."""
    return PEEPHOLE.reference(x, params, h0, c0)


def layernorm_lstm_reference(x, params, h0=None, c0=None):
    """Returns ``y (T, B, H)`` and ``(h_n, c_n)``, float64; time-major input."""
    return LAYERNORM.reference(x, params, h0, c0)


# -- the runner: kernels.recurrent.RNN with the custom cells' defaults ------------------------------
class CustomRNN(RNN):
    """:class:`kernels.recurrent.RNN` for a registered custom cell, with the custom cells'
    defaults (backend ``numba``, every fusion step of the backend) and the ``cell`` name checked
    against the parameters.  Built once, called many times::

        run = CustomRNN(params, variant="fused", backend="numba", dtype="fp32")
        y, (h_n, c_n) = run(x, h0, c0)      # an LSTM-family cell; GRU/RNN family: y, h_n = run(x, h0)
    """

    def __init__(self, params, *, cell: str | None = None, variant: str = "fused",
                 backend: str = "numba", dtype=None, opts=None, **kw):
        row = cell_of(params)
        if cell is not None and cell != row.name:
            get_cell(cell)
            raise BadInput(f"cell {cell!r} given {type(params).__name__} (a {row.name} cell)")
        super().__init__(params, variant=variant, backend=backend, dtype=dtype, opts=opts, **kw)


CustomLSTM = CustomRNN        # the name it had while every custom cell was an LSTM


def custom_rnn(x, params, h0=None, c0=None, *, cell: str | None = None, variant: str = "fused",
               backend: str = "numba", dtype=None, opts=None):
    """Forward pass of a registered custom cell: ``y, (h_n, c_n)`` (LSTM family) or ``y, h_n``;
    see :class:`CustomRNN`."""
    dtype = dtype if dtype is not None else (x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    run = CustomRNN(params, cell=cell, variant=variant, backend=backend, dtype=dtype, opts=opts)
    return run(x, h0, c0)


custom_lstm = custom_rnn
