"""Parameter containers in one canonical layout, shared by every variant and framework adapter.

Layout (the one cuDNN and PyTorch use): for layer ``l`` with input width ``I_l`` (``I`` for the
first layer, ``H`` above it) and ``G`` gates,

    w_ih: (G*H, I_l)   w_hh: (G*H, H)   b_ih: (G*H,)   b_hh: (G*H,)

with the gate blocks stacked along the rows in the canonical order:
LSTM ``i, f, g, o``; GRU ``r, z, n``; the vanilla RNN one block ``h``
(``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, ``act`` ReLU or tanh, PyTorch's
``nn.RNN`` and cuDNN's ``CUDNN_RNN_RELU``/``CUDNN_RNN_TANH``).  The GRU applies its reset gate *after* the recurrent GEMM
(``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``), as cuDNN and PyTorch do, so ``b_hn`` can not be
folded into ``b_in``.  Frameworks with other orders (Keras ``i, f, c, o`` with ``(I, G*H)``
kernels, ...) convert with :func:`reorder_gates`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import BadInput

GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}
NONLINEARITIES = ("relu", "tanh")     # of the vanilla RNN cell (op "rnn")

# A sanity bound, not a memory check: larger sizes are almost always a typo (the CLI checks memory).
MAX_DIM = 1 << 24


def check_dim(name: str, value) -> int:
    """A positive integer size, or a BadInput naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInput(f"{name}={value!r} must be a positive integer")
    if value <= 0 or value > MAX_DIM:
        raise BadInput(f"{name}={value} is out of range; allowed: 1..{MAX_DIM}")
    return int(value)


def require_unidirectional(params, what: str) -> None:
    """A one-line BadInput where a runner takes one direction only (bidirectional parameters run
    on :class:`kernels.rnn.RNN`, :mod:`kernels.backward` and :mod:`kernels.torch`)."""
    if getattr(params, "bidirectional", False):
        raise BadInput(f"{what} takes unidirectional parameters; these are bidirectional (run them with "
                       "kernels.RNN, kernels.backward or kernels.torch)")


def real_float(name: str, dtype) -> None:
    """Weights are floating point: float64, float32, float16 or bfloat16 (BadInput otherwise)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:      # not a NumPy/CuPy dtype: the variants refuse it with their own words
        return
    if dt.kind != "f" and dt.name != "bfloat16":
        raise BadInput(f"{name} have dtype {dt}; allowed: float64, float32, float16, bfloat16")


def check_real(name: str, a) -> None:
    """An input or state array of real numbers (BadInput for complex, text, objects, dates)."""
    if a is None:
        return
    dt = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    if dt.kind not in "fiub" and np.dtype(dt).name != "bfloat16":
        what = "complex" if dt.kind == "c" else "not numbers"
        raise BadInput(f"{name} has dtype {dt} ({what}); expected real numbers "
                       "(float64, float32, float16, bfloat16 or integers)")


@dataclass(frozen=True)
class Layer:
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray

    def arrays(self):
        return self.w_ih, self.w_hh, self.b_ih, self.b_hh


@dataclass(frozen=True)
class RNNParams:
    """Weights of a multi-layer RNN of one cell type (base of LSTM/GRUParams).

    ``bidirectional`` (keyword only): ``layers`` holds two entries per layer, in PyTorch's order
    (layer 0 forward, layer 0 reverse, layer 1 forward, ...), and the layers above the first
    read both directions' outputs side by side (input width 2H); ``num_layers`` counts layers,
    not entries."""

    input_size: int
    hidden_size: int
    layers: tuple = field(default_factory=tuple)
    bidirectional: bool = field(default=False, kw_only=True)

    cell = ""  # set by subclasses

    def __post_init__(self):
        check_dim("input_size", self.input_size)
        check_dim("hidden_size", self.hidden_size)
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise BadInput(f"bidirectional={self.bidirectional!r} must be True or False")
        object.__setattr__(self, "bidirectional", bool(self.bidirectional))
        if not isinstance(self.layers, (tuple, list)):
            raise BadInput(f"layers={self.layers!r} must be a tuple or list of kernels.params.Layer, "
                           "one per layer")
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise BadInput(f"{type(self).__name__} needs at least one layer")
        G, H, D = self.num_gates, self.hidden_size, self.num_directions
        if len(self.layers) % D:
            raise BadInput(f"bidirectional {type(self).__name__} needs two entries per layer (forward, "
                           f"reverse), got {len(self.layers)}")
        for l, layer in enumerate(self.layers):
            where = f"layer {l}" if D == 1 else f"layers[{l}] (layer {l // 2}, {'reverse' if l % 2 else 'forward'})"
            if not isinstance(layer, Layer):
                raise BadInput(f"{where} is a {type(layer).__name__}; expected kernels.params.Layer")
            width = self.input_size if l < D else D * H
            want = {"w_ih": (G * H, width), "w_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,)}
            # .dtype first: CuPy arrays (kernels.torch on a GPU) refuse np.asarray
            dtypes = {a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype for a in layer.arrays()}
            if len(dtypes) != 1:
                raise BadInput(f"{where}: weights mix dtypes {sorted(map(str, dtypes))}; use one")
            real_float(f"{where} weights", next(iter(dtypes)))
            for name, shape in want.items():
                got = np.shape(getattr(layer, name))
                if got != shape:
                    raise BadInput(f"{where}: {name} has shape {got}; expected {shape} "
                                   f"({self.cell}, G={G}, H={H}, input width {width})")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def random(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, seed: int = 0,
               dtype=np.float64, bidirectional: bool = False, **extra):
        """Uniform(-1/sqrt(H), 1/sqrt(H)) weights and biases (PyTorch's default), reproducible by seed.
        ``extra``: the subclass's own fields (``nonlinearity`` of a vanilla RNN)."""
        check_dim("input_size", input_size)
        H = check_dim("hidden_size", hidden_size)
        check_dim("num_layers", num_layers)
        layers = random_layers(input_size, H, num_layers, len(GATES[cls.cell]), seed=seed, dtype=dtype,
                               directions=2 if bidirectional else 1)
        return cls(input_size, hidden_size, layers, bidirectional=bidirectional, **extra)

    @classmethod
    def from_torch(cls, module):
        """Float64 copies of a ``torch.nn.LSTM``/``GRU``/``RNN``'s weights (same names and gate
        order, nothing reordered; bidirectional when the module is); the way back is
        :func:`kernels.torch.torch_module`."""
        p = params_from_torch(module)
        if not isinstance(p, cls):
            raise BadInput(f"{cls.__name__}.from_torch got a {type(module).__name__}")
        return p

    def astype(self, dtype):
        """A copy with every array in ``dtype`` (contiguous)."""
        conv = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return replace(self, layers=tuple(Layer(*map(conv, layer.arrays())) for layer in self.layers))

    def layer_params(self, layer: int, direction: int = 0):
        """One direction of one layer as unidirectional one-layer parameters of the same kind
        (views of these arrays, no copies): what a runner of a bidirectional stack runs."""
        k = layer * self.num_directions + direction
        width = self.input_size if layer == 0 else self.num_directions * self.hidden_size
        return replace(self, input_size=width, layers=(self.layers[k],), bidirectional=False,
                       **self._entry_extras(k))

    def _entry_extras(self, k: int) -> dict:
        """The per-entry fields besides ``layers`` (a declared cell's extras) for :meth:`layer_params`."""
        return {}

    # -- views ---------------------------------------------------------------------------
    @property
    def gates(self) -> tuple:
        return GATES[self.cell]

    @property
    def cell_mode(self) -> str:
        """The cell with its variant: ``lstm``, ``gru``, ``rnn_relu``, ``rnn_tanh`` (cuDNN's modes)."""
        return self.cell

    @property
    def num_gates(self) -> int:
        return len(GATES[self.cell])

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def num_layers(self) -> int:
        return len(self.layers) // self.num_directions

    @property
    def dtype(self) -> np.dtype:
        # the array's own .dtype: CuPy arrays (kernels.torch on a GPU) refuse np.asarray
        w = self.layers[0].w_ih
        return np.dtype(w.dtype) if hasattr(w, "dtype") else np.asarray(w).dtype

    def gate(self, layer: int, gate: str, which: str = "w_ih", direction: int = 0) -> np.ndarray:
        """The rows of one gate in one array, e.g. ``gate(0, "f", "w_hh")`` -> (H, H);
        ``direction=1``: the reverse direction's (bidirectional)."""
        if gate not in self.gates:
            raise BadInput(f"gate {gate!r} is unknown for {self.cell}; allowed: {', '.join(self.gates)}")
        if which not in ("w_ih", "w_hh", "b_ih", "b_hh"):
            raise BadInput(f"array {which!r} is unknown; allowed: w_ih, w_hh, b_ih, b_hh")
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not 0 <= layer < self.num_layers:
            raise BadInput(f"layer {layer!r} is out of range; allowed: 0..{self.num_layers - 1}")
        if direction not in range(self.num_directions):
            raise BadInput(f"direction {direction!r} is out of range; allowed: 0..{self.num_directions - 1}")
        k, H = self.gates.index(gate), self.hidden_size
        return getattr(self.layers[layer * self.num_directions + direction], which)[k * H:(k + 1) * H]

    def num_weights(self) -> int:
        return sum(np.size(a) for layer in self.layers for a in layer.arrays())


def random_layers(input_size: int, hidden_size: int, num_layers: int, num_gates: int, *, seed: int,
                  dtype, directions: int = 1) -> tuple:
    """The layers of :meth:`RNNParams.random`: Uniform(-1/sqrt(H), 1/sqrt(H)), drawn from ``seed``
    layer by layer in the order w_ih, w_hh, b_ih, b_hh (a custom cell with G gates draws the same way);
    ``directions=2``: two entries per layer (forward, reverse), the upper layers 2H wide."""
    from .dtypes import canonical, storage
    dtype = storage(canonical(dtype))   # an integer dtype would round every weight to 0
    G, H = num_gates, hidden_size
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    layers = []
    for l in range(num_layers * directions):
        width = input_size if l < directions else directions * H
        draw = lambda *shape: rng.uniform(-k, k, size=shape).astype(dtype)  # noqa: E731
        layers.append(Layer(draw(G * H, width), draw(G * H, H), draw(G * H), draw(G * H)))
    return tuple(layers)


class LSTMParams(RNNParams):
    """LSTM weights, gates ``i, f, g, o``."""

    cell = "lstm"


class GRUParams(RNNParams):
    """GRU weights, gates ``r, z, n``; reset gate applied after the recurrent GEMM."""

    cell = "gru"


@dataclass(frozen=True)
class VanillaRNNParams(RNNParams):
    """Vanilla (Elman) RNN weights, one block ``h``; ``nonlinearity`` ``relu`` or ``tanh``."""

    nonlinearity: str = "tanh"

    cell = "rnn"

    def __post_init__(self):
        if self.nonlinearity not in NONLINEARITIES:
            raise BadInput(f"nonlinearity {self.nonlinearity!r} is unknown; allowed: {', '.join(NONLINEARITIES)}")
        super().__post_init__()

    @property
    def cell_mode(self) -> str:
        return f"rnn_{self.nonlinearity}"


PARAMS = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}


@dataclass(frozen=True)
class CellParams(RNNParams):
    """Weights of an RNN whose cell is a :class:`fusion.cellexpr.Cell` (``expr``): the canonical
    layout with the cell's G gates in its declared order, plus its per-unit parameters
    (``extras``, one dict per layer, named and shaped as the declaration says).
    Subclasses fix the cell (:class:`kernels.custom.PeepholeLSTMParams`, ...); for a cell of your
    own, ``CellParams.random(I, H, L, cell=MY_CELL)`` or ``CellParams(I, H, layers, extras, MY_CELL)``.
    A cell whose states are ``("c",)`` is called like an LSTM (``h0, c0``), one without states
    like a GRU.  (This module does not import fusion: the cell is used through its attributes.)"""

    extras: tuple = ()
    expr: object = None

    # ``expr`` is also a class attribute: a subclass sets its cell there (it is then the default)
    def __post_init__(self):
        if self.expr is None:
            object.__setattr__(self, "expr", type(self).expr)
        if self.expr is None or not hasattr(self.expr, "gates"):
            raise BadInput(f"{type(self).__name__}: expr={self.expr!r} is not a fusion.cellexpr.Cell")
        if not self.extras and self.expr.params:
            raise BadInput(f"{type(self).__name__}: cell {self.expr.name} has parameters "
                           f"{', '.join(p for p, _ in self.expr.params)}; give extras, one dict per layer")
        if not self.extras:
            object.__setattr__(self, "extras", tuple({} for _ in self.layers))
        super().__post_init__()
        object.__setattr__(self, "extras", tuple(dict(e) for e in self.extras))
        if len(self.extras) != len(self.layers):
            raise BadInput(f"{type(self).__name__}: {len(self.extras)} extra-parameter sets for "
                           f"{len(self.layers)} layers")
        for l, e in enumerate(self.extras):
            want = {p: self.expr.param_shape(p, self.hidden_size) for p, _ in self.expr.params}
            if set(e) != set(want):
                raise BadInput(f"layer {l}: extra parameters {sorted(e)}; expected {sorted(want)}")
            for name, shape in want.items():
                if np.shape(e[name]) != shape:
                    raise BadInput(f"layer {l}: {name} has shape {np.shape(e[name])}; expected {shape}")

    @property
    def cell(self) -> str:
        """``lstm`` for a cell with the LSTM's states (h and c: called with ``h0, c0``), else
        the cell's name."""
        return "lstm" if tuple(self.expr.states) == ("c",) else self.expr.name

    @property
    def gates(self) -> tuple:
        return tuple(self.expr.gates)

    @property
    def num_gates(self) -> int:
        return len(self.expr.gates)

    @property
    def cell_mode(self) -> str:
        return self.expr.name

    @classmethod
    def random(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, seed: int = 0,
               dtype=np.float64, cell=None, bidirectional: bool = False):
        """Canonical weights as :meth:`RNNParams.random` (same seed, same numbers for the same G),
        extras from a second stream of the same seed (see :meth:`_draw_extra`)."""
        expr = cell if cell is not None else cls.expr
        if expr is None:
            raise BadInput(f"{cls.__name__}.random needs cell= (a fusion.cellexpr.Cell)")
        H = check_dim("hidden_size", hidden_size)
        check_dim("num_layers", num_layers)
        layers = random_layers(check_dim("input_size", input_size), H, num_layers, len(expr.gates),
                               seed=seed, dtype=dtype, directions=2 if bidirectional else 1)
        rng = np.random.default_rng([seed, 1])
        dt = layers[0].w_ih.dtype
        extras = tuple({p: cls._draw_extra(rng, p, expr.param_shape(p, H)).astype(dt)
                        for p, _ in expr.params} for _ in range(len(layers)))
        return cls(input_size, hidden_size, layers, extras, expr, bidirectional=bidirectional)

    @staticmethod
    def _draw_extra(rng, name, shape):
        """Uniform(-1/sqrt(H), 1/sqrt(H)), as the weights."""
        k = 1.0 / np.sqrt(shape[-1])
        return rng.uniform(-k, k, size=shape)

    def astype(self, dtype):
        conv = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return type(self)(self.input_size, self.hidden_size,
                          tuple(Layer(*map(conv, layer.arrays())) for layer in self.layers),
                          tuple({k: conv(v) for k, v in e.items()} for e in self.extras), self.expr,
                          bidirectional=self.bidirectional)

    def _entry_extras(self, k: int) -> dict:
        return {"extras": (self.extras[k],)}

    def extra_arrays(self, layer: int) -> tuple:
        """The layer's extra arrays in the cell declaration's order (the kernel's argument order);
        ``layer`` indexes ``layers`` (bidirectional: layer * 2 + direction)."""
        return tuple(self.extras[layer][p] for p, _ in self.expr.params)

    def num_weights(self) -> int:
        return super().num_weights() + sum(np.size(a) for e in self.extras for a in e.values())


def reorder_gates(a: np.ndarray, src: str, dst: str, axis: int = 0) -> np.ndarray:
    """Permute gate blocks along ``axis`` from order ``src`` to ``dst`` (e.g. "ifgo" -> "ifog").

    Letters name gates; both orders must hold the same letters.  Used to convert our canonical
    order to a framework's and back: ``reorder_gates(reorder_gates(w, a, b), b, a) == w``.
    """
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise BadInput(f"gate orders {src!r} and {dst!r} must be permutations of the same letters")
    n = a.shape[axis]
    if n % len(src):
        raise BadInput(f"axis {axis} of length {n} does not split into {len(src)} gates")
    blocks = np.split(a, len(src), axis=axis)
    return np.concatenate([blocks[src.index(g)] for g in dst], axis=axis)


# -- torch.nn modules' weights (read through their attributes: this module does not import torch) --
TORCH_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}     # torch.nn class -> our cell


def torch_cell(module) -> str | None:
    """``lstm``/``gru``/``rnn`` for a ``torch.nn.LSTM``/``GRU``/``RNN`` (or a subclass), else None."""
    for c in type(module).__mro__:
        if c.__module__.startswith("torch.nn.") and c.__name__ in TORCH_CELLS:
            return TORCH_CELLS[c.__name__]
    return None


def torch_suffixes(num_layers: int, bidirectional: bool) -> list:
    """torch.nn's parameter suffixes in its order (ours): _l0, _l0_reverse, _l1, ..."""
    return [f"_l{l}{'_reverse' if d else ''}" for l in range(num_layers) for d in range(2 if bidirectional else 1)]


def params_from_torch(module, cell: str | None = None):
    """Our canonical parameters (float64 copies) of a ``torch.nn.LSTM``/``GRU``/``RNN``.

    Same names, same gate order (PyTorch's), so nothing is reordered; biases of a ``bias=False``
    module are zeros; a bidirectional module gives bidirectional parameters; projections
    (``proj_size``) are refused: our kernels do not compute them.  The weights only: ``dropout``
    is the module's setting (``kernels.torch.LSTM.from_torch`` keeps it).  ``cell``: the cell the
    caller expects (a module of another cell is refused)."""
    got = torch_cell(module)
    want = cell or got
    if got is None or got != want:
        names = {v: k for k, v in TORCH_CELLS.items()}
        raise BadInput(f"from_torch takes a torch.nn.{names.get(want, 'LSTM, GRU or RNN')}, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise BadInput(f"from_torch: proj_size={module.proj_size} is not supported (0 only)")
    G, H = len(GATES[got]), module.hidden_size
    layers = []
    for suffix in torch_suffixes(module.num_layers, module.bidirectional):
        get = lambda n: getattr(module, f"{n}{suffix}").detach().cpu().double().numpy().copy()  # noqa: E731
        b = (get("bias_ih"), get("bias_hh")) if module.bias else (np.zeros(G * H), np.zeros(G * H))
        layers.append(Layer(get("weight_ih"), get("weight_hh"), *b))
    extra = {"nonlinearity": module.nonlinearity} if got == "rnn" else {}
    cls = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}[got]
    return cls(module.input_size, H, tuple(layers), bidirectional=bool(module.bidirectional), **extra)
