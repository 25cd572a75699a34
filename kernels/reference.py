"""float64 NumPy definitions of the layers: the specification every variant is checked against.

Written for clarity, not speed: one step at a time, one layer at a time, in float64 whatever
the inputs' dtype.  Inputs are time-major ``(T, B, I)`` (``batch_first=True``: ``(B, T, I)``).
"""
from __future__ import annotations

import numpy as np

from .errors import BadInput
from .params import GRUParams, LSTMParams, RNNParams, VanillaRNNParams, check_real


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: exp is only taken of non-positive numbers."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def check_sequence(shape, params: RNNParams, batch_first: bool, states: dict,
                   skip_input: bool = False, x=None) -> tuple:
    """Validate an input shape, the initial states' shapes and (given ``x``) that the input and
    states are real numbers (a complex h0 would silently lose its imaginary part); return ``(T, B)``.
    With ``skip_input`` the input is the first layer's projection ``x W_ih^T``, width G*H."""
    check_real("x", x)
    for name, s in states.items():
        check_real(name, s)
    shape = tuple(shape)
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if len(shape) != 3:
        raise BadInput(f"input has shape {shape}; expected 3 dimensions {layout}")
    T, B, I = (shape[1], shape[0], shape[2]) if batch_first else shape
    if T == 0 or B == 0:
        raise BadInput(f"input has shape {shape}; T and B must be at least 1")
    if skip_input and params.bidirectional:
        raise BadInput("skip-input takes unidirectional parameters (one given projection, not one per direction)")
    if skip_input:
        if I != params.num_gates * params.hidden_size:
            raise BadInput(f"skip-input: the input is the projection x W_ih^T of width G*H = "
                           f"{params.num_gates * params.hidden_size}, not {I}")
    elif I != params.input_size:
        raise BadInput(f"input width {I} does not match the parameters' input_size {params.input_size}")
    D = params.num_directions
    want = (params.num_layers * D, B, params.hidden_size)
    for name, s in states.items():
        if s is not None and tuple(s.shape if hasattr(s, "shape") else np.shape(s)) != want:
            raise BadInput(f"{name} has shape {np.shape(s)}; expected ({'L*2' if D == 2 else 'L'}, B, H) = {want}")
    return T, B


def check_masks(masks, params: RNNParams, T: int, B: int) -> tuple:
    """Dropout masks between layers (see :func:`draw_dropout_masks`): None, or one array per layer but
    the last, each ``(T, B, D*H)`` (time-major whatever the input's layout); returns a tuple."""
    if masks is None:
        return ()
    L, want = params.num_layers, (T, B, params.num_directions * params.hidden_size)
    if not isinstance(masks, (tuple, list)) or len(masks) != L - 1:
        n = f" of {len(masks)}" if isinstance(masks, (tuple, list)) else ""
        raise BadInput(f"dropout_masks must be a list of num_layers - 1 = {L - 1} arrays of shape {want}, "
                       f"got {type(masks).__name__}{n}")
    for l, m in enumerate(masks):
        if tuple(np.shape(m) if not hasattr(m, "shape") else m.shape) != want:
            raise BadInput(f"dropout mask {l} has shape {tuple(np.shape(m))}; expected (T, B, D*H) = {want}")
    return tuple(masks)


def draw_dropout_masks(p: float, params: RNNParams, T: int, B: int, *, rng=None, xp=np, dtype=np.float64) -> list:
    """Masks of ``torch.nn.LSTM``'s dropout between layers with probability ``p``: per layer but
    the last, ``(T, B, D*H)`` of 0 (probability p) and 1/(1-p) (``p == 1``: all 0), drawn from
    ``rng`` (a ``numpy.random.Generator`` or a seed).  Multiply them into the layer outputs
    (``dropout_masks=`` of :class:`kernels.rnn.RNN` and :func:`kernels.backward.forward_train`)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 <= p <= 1:
        raise BadInput(f"dropout={p!r} must be a number in [0, 1] (the probability of zeroing an element)")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shape = (T, B, params.num_directions * params.hidden_size)
    out = []
    for _ in range(params.num_layers - 1):
        m = np.zeros(shape) if p == 1 else (rng.random(shape) >= p) / (1.0 - p)
        out.append(xp.asarray(m, dtype=dtype))
    return out


def _time_major(x, batch_first):
    x = np.asarray(x, dtype=np.float64)
    return x.transpose(1, 0, 2) if batch_first else x


def _input_part(seq_t, w_ih, b_ih, first_skipped: bool):
    """The input half of the pre-activations: x W_ih^T + b_ih, or (skip-input, first layer) the
    given projection + b_ih."""
    return (seq_t if first_skipped else seq_t @ w_ih.T) + b_ih


def _initial(state, params, B):
    if state is None:
        return np.zeros((params.num_layers * params.num_directions, B, params.hidden_size))
    return np.asarray(state, dtype=np.float64)


def _recur(x, params: RNNParams, init: tuple, batch_first: bool, skip_input: bool, step, masks=()):
    """Layer by layer, one step at a time: ``state = step(xa, hh, b_hh, *state)`` with ``xa`` the
    input part ``x_t W_ih^T + b_ih`` (see :func:`_input_part`), ``hh = h_{t-1} W_hh^T`` and the
    state ``(h,)`` or ``(h, c)``; h is the layer's output.  Bidirectional: the reverse direction
    walks t = T-1..0, and the layer's output is both directions' h side by side.  ``masks``: the
    dropout masks multiplied into each layer's output but the last.  Returns ``y`` and the final
    states."""
    seq = _time_major(x, batch_first)
    T, B = seq.shape[:2]
    D = params.num_directions
    finals = tuple(np.empty_like(s) for s in init)
    for l in range(params.num_layers):
        out = np.empty((T, B, D * params.hidden_size))
        for d in range(D):
            k = l * D + d
            w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=np.float64) for a in params.layers[k].arrays())
            state = tuple(s[k] for s in init)
            cols = slice(d * params.hidden_size, (d + 1) * params.hidden_size)
            for t in (reversed(range(T)) if d else range(T)):
                state = step(_input_part(seq[t], w_ih, b_ih, skip_input and l == 0), state[0] @ w_hh.T, b_hh, *state)
                out[t, :, cols] = state[0]
            for f, s in zip(finals, state):
                f[k] = s
        seq = out * np.asarray(masks[l], dtype=np.float64) if l < len(masks) else out
    return (seq.transpose(1, 0, 2) if batch_first else seq), finals


def _lstm_step(xa, hh, b_hh, h, c):
    i, f, g, o = np.split(xa + hh + b_hh, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def _gru_step(xa, hh, b_hh, h):
    xr, xz, xn = np.split(xa, 3, axis=1)
    hr, hz, hn = np.split(hh + b_hh, 3, axis=1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)  # reset applied after the recurrent GEMM (cuDNN's GRU)
    return ((1.0 - z) * n + z * h,)


def lstm_reference(x, params: LSTMParams, h0=None, c0=None, *, batch_first: bool = False,
                   skip_input: bool = False, dropout_masks=None):
    """Returns ``y (T, B, H)`` (or ``(B, T, H)``) and ``(h_n, c_n)``, each ``(L, B, H)``, float64.
    ``skip_input``: x is the first layer's input projection ``(T, B, 4H)`` (see RNNProblem).
    Bidirectional parameters: ``y`` is ``(T, B, 2H)`` and the states ``(2L, B, H)``, as torch's.
    ``dropout_masks``: see :func:`check_masks`."""
    if not isinstance(params, LSTMParams):
        raise BadInput(f"lstm needs LSTMParams, got {type(params).__name__}")
    T, B = check_sequence(np.shape(x), params, batch_first, {"h0": h0, "c0": c0}, skip_input, x=x)
    y, (h_n, c_n) = _recur(x, params, (_initial(h0, params, B), _initial(c0, params, B)), batch_first,
                           skip_input, _lstm_step, check_masks(dropout_masks, params, T, B))
    return y, (h_n, c_n)


def gru_reference(x, params: GRUParams, h0=None, *, batch_first: bool = False, skip_input: bool = False,
                  dropout_masks=None):
    """Returns ``y (T, B, H)`` (or ``(B, T, H)``) and ``h_n (L, B, H)``, float64.
    ``skip_input``: x is the first layer's input projection ``(T, B, 3H)``.  Bidirectional and
    ``dropout_masks``: as :func:`lstm_reference`."""
    if not isinstance(params, GRUParams):
        raise BadInput(f"gru needs GRUParams, got {type(params).__name__}")
    T, B = check_sequence(np.shape(x), params, batch_first, {"h0": h0}, skip_input, x=x)
    y, (h_n,) = _recur(x, params, (_initial(h0, params, B),), batch_first, skip_input, _gru_step,
                       check_masks(dropout_masks, params, T, B))
    return y, h_n


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0); NaN stays NaN (np.maximum propagates it)."""
    return np.maximum(x, 0.0)


ACTIVATIONS = {"relu": relu, "tanh": np.tanh}


def rnn_reference(x, params: VanillaRNNParams, h0=None, *, batch_first: bool = False,
                  skip_input: bool = False, dropout_masks=None):
    """Vanilla RNN, ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` with ``act`` the
    parameters' ``nonlinearity`` (ReLU or tanh; PyTorch's ``nn.RNN``, cuDNN's ``CUDNN_RNN_RELU``
    and ``CUDNN_RNN_TANH``).  Returns ``y (T, B, H)`` (or ``(B, T, H)``) and ``h_n (L, B, H)``.
    ``skip_input``: x is the first layer's input projection ``(T, B, H)``.  Bidirectional and
    ``dropout_masks``: as :func:`lstm_reference`."""
    if not isinstance(params, VanillaRNNParams):
        raise BadInput(f"rnn needs VanillaRNNParams, got {type(params).__name__}")
    T, B = check_sequence(np.shape(x), params, batch_first, {"h0": h0}, skip_input)
    act = ACTIVATIONS[params.nonlinearity]
    y, (h_n,) = _recur(x, params, (_initial(h0, params, B),), batch_first, skip_input,
                       lambda xa, hh, b_hh, h: (act(xa + hh + b_hh),), check_masks(dropout_masks, params, T, B))
    return y, h_n


REFERENCES = {"lstm": lstm_reference, "gru": gru_reference, "rnn": rnn_reference}
