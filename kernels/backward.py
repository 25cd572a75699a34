"""Backward passes (data and weights) of the fused LSTM, GRU, vanilla RNN and layer-norm LSTM,
generic over ``xp``.

Training forward (``*_forward_train``) runs the fused arrangement (input GEMM hoisted over all T,
one recurrent GEMM per step) and keeps a *tape*: what backward needs and nothing it can
recompute cheaply.  Per layer, with T steps, B rows, G gates:

- LSTM:  the layer input X (T, B, I), h_{t-1} for every t (T+1, B, H), c_t (T+1, B, H), the
  activated gates (T, B, 4H);  tanh(c_t) is recomputed.
- GRU:   X, h (T+1, B, H), activated r, z, n and the recurrent part of n, W_hn h + b_hn (T, B, H each).
- vanilla RNN: X and h (T+1, B, H); the activation's derivative is read off h (ReLU: h > 0;
  tanh: 1 - h^2).
- LN-LSTM: X, h, c, activated gates, the normalised pre-activations x^, h^ (T, B, 4H) and their
  inverse deviations (T, B, 1), the normalised cell state c^ and its inverse deviation,
  tanh(LN(c)) (T, B, H).

Backward walks the steps in reverse.  Only what feeds the recurrence is done per step: the gate
gradients dG_t (B, G*H) and one GEMM dh_{t-1} += dG_t W_hh.  Everything else is batched over all
steps after the loop, as one GEMM each with M = T*B:

    dW_hh = dG^T (T*B, G*H)^T @ Hprev (T*B, H)      dW_ih = dGX^T @ X      dX = dGX @ W_ih
    db = column sums of dG;   layer-norm gains and biases: sums over (T, B) of dP * x^ and dP.

For the GRU the input and recurrent gate gradients differ in one block (dGH_n = dGX_n * r); for
the layer-norm LSTM both go through their layer norm's backward (dGX after the loop, dGH inside).

Multi-layer: the dX of layer l is the dy of layer l-1 (times layer l-1's dropout mask, when the
forward was given ``dropout_masks``: torch's dropout between layers, the mask multiplied into each
layer's output but the last).  Bidirectional parameters: each layer runs a forward and a reverse
direction (the reverse one walks the sequence backwards, its tape kept in its own time order); the
layer's output is both directions' h side by side, and its dX the sum of both directions' dX.
Tape and gradient entries are per direction, in the parameters' order (layer * 2 + direction).

``skip_input`` (plain cells): the first layer's input projection ``x W_ih^T`` is the given input
(DeepBench's recurrent-layer timing, cuDNN's ``CUDNN_SKIP_INPUT``), so that layer has no input
GEMM, no W_ih gradient (its entry is absent from ``Grads.layers[0]``), and ``Grads.x`` is the
gradient with respect to the given projection: the gate pre-activation gradients, no dX GEMM.  ``xp`` is NumPy on the CPU, CuPy on a
GPU (the CuPy path is the one kernels.torch uses there; unverified without a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusion.cellexpr import LN_EPS

from .errors import BadInput
from .reference import check_masks


def _sig(xp, a):
    return 0.5 * xp.tanh(0.5 * a) + 0.5


def _arrays(xp, params, l, dtype):
    return tuple(xp.asarray(a, dtype=dtype) for a in params.layers[l].arrays())


def _init_state(xp, s, L, B, H, dtype):
    return xp.zeros((L, B, H), dtype=dtype) if s is None else xp.asarray(s, dtype=dtype)


@dataclass
class Tape:
    cell: str
    params: object
    dtype: object
    layers: list = field(default_factory=list)   # one dict per layer
    skip_input: bool = False                     # layer 0 read the given input projection
    gemm: object = None                          # (key, a, w) -> a @ w: the forward's provider
    masks: tuple = ()                            # dropout masks multiplied into layer outputs


@dataclass
class Grads:
    x: object
    h0: object
    c0: object                                  # None for the GRU and the vanilla RNN
    layers: list                                # per layer: {"w_ih", "w_hh", "b_ih", "b_hh", extras...}


def _ln_fwd(xp, a, eps=LN_EPS):
    """Normalise over the last axis: returns (a^, inverse deviation)."""
    mu = a.mean(axis=-1, keepdims=True)
    d = a - mu
    s = 1.0 / xp.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
    return d * s, s


def _ln_bwd(da_hat, a_hat, s):
    """d loss / d a from d loss / d a^ (a^ = (a - mean) * s, biased variance)."""
    m1 = da_hat.mean(axis=-1, keepdims=True)
    m2 = (da_hat * a_hat).mean(axis=-1, keepdims=True)
    return s * (da_hat - m1 - a_hat * m2)


# -- forward with tape -----------------------------------------------------------------------
def _skip_check(skip_input: bool, layernorm: bool = False):
    if skip_input and layernorm:
        raise BadInput("skip_input applies to the plain cells, not the layer-norm LSTM")


def _plain_gemm(key, a, w):
    """``a @ w``.  A ``gemm`` given to the forward has this signature; ``key`` names the fixed
    weight matrix (``("w_hh.T", layer)``, ...), so a provider can keep it packed
    (:class:`fusion.gemm.PackedWeights`)."""
    return a @ w


def _input_gemm(seq, w_ih, T: int, B: int, given: bool, mm=_plain_gemm, l: int = 0):
    """The hoisted input GEMM over all T*B rows, or (skip-input, first layer) a copy of the given
    projection (a copy: the caller adds biases in place)."""
    rows = seq.reshape(T * B, seq.shape[-1])    # the width named: T*B may be 0
    return rows.copy() if given else mm(("w_ih.T", l), rows, w_ih.T)


class _LSTMForward:
    """The LSTM's (and layer-norm LSTM's) per-cell part of :func:`_forward`; carries c."""

    carried = 1                                  # c

    def __init__(self, xp, params, l: int, T: int, B: int, H: int, dtype):
        self.xp, self.H = xp, H
        self.layernorm = getattr(params, "kind", "") == "layernorm"
        self.rec = {"act": xp.empty((T, B, 4 * H), dtype)}
        if self.layernorm:
            self.e = {k: xp.asarray(v, dtype=dtype) for k, v in params.extras[l].items()}
            self.rec.update(hh=xp.empty((T, B, 4 * H), dtype), sh=xp.empty((T, B, 1), dtype),
                            ch=xp.empty((T, B, H), dtype), sc=xp.empty((T, B, 1), dtype),
                            tl=xp.empty((T, B, H), dtype), e=self.e)

    def inputs(self, ax, b_ih, b_hh):
        """The hoisted input part of the gate pre-activations, biases added."""
        if self.layernorm:
            e = self.e
            T, B, _ = self.rec["act"].shape
            xh, sx = _ln_fwd(self.xp, ax)                                      # LN of all T at once
            ax = xh * e["lnx_g"].reshape(-1) + e["lnx_b"].reshape(-1) + b_ih + b_hh
            self.rec.update(xh=xh.reshape(T, B, 4 * self.H), sx=sx.reshape(T, B, 1))
        else:
            ax += b_ih + b_hh
        return ax

    def step(self, t: int, ax_t, ah, hs, cs) -> None:
        xp, H, rec = self.xp, self.H, self.rec
        if self.layernorm:
            e = self.e
            hh, sh = _ln_fwd(xp, ah)
            rec["hh"][t], rec["sh"][t] = hh, sh
            pre = ax_t + hh * e["lnh_g"].reshape(-1) + e["lnh_b"].reshape(-1)
        else:
            pre = ax_t + ah
        a = rec["act"][t]
        a[:, :2 * H] = _sig(xp, pre[:, :2 * H])
        a[:, 2 * H:3 * H] = xp.tanh(pre[:, 2 * H:3 * H])
        a[:, 3 * H:] = _sig(xp, pre[:, 3 * H:])
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        cs[t + 1] = f * cs[t] + i * g
        if self.layernorm:
            ch, sc = _ln_fwd(xp, cs[t + 1])
            tl = xp.tanh(ch * e["lnc_g"] + e["lnc_b"])
            rec["ch"][t], rec["sc"][t], rec["tl"][t] = ch, sc, tl
            hs[t + 1] = o * tl
        else:
            hs[t + 1] = o * xp.tanh(cs[t + 1])


class _GRUForward:
    """The GRU's per-cell part of :func:`_forward`: the reset applied after the recurrent GEMM."""

    carried = 0

    def __init__(self, xp, params, l: int, T: int, B: int, H: int, dtype):
        self.xp, self.H = xp, H
        self.rec = {k: xp.empty((T, B, H), dtype) for k in ("r", "z", "n", "hn")}
        self.b_hh = None

    def inputs(self, ax, b_ih, b_hh):
        self.b_hh = b_hh                                 # added to the recurrent part, before the reset
        return ax + b_ih

    def step(self, t: int, ax_t, ah, hs) -> None:
        xp, H, rec = self.xp, self.H, self.rec
        gh = ah + self.b_hh
        r = _sig(xp, ax_t[:, :H] + gh[:, :H])
        z = _sig(xp, ax_t[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = xp.tanh(ax_t[:, 2 * H:] + r * hn)
        hs[t + 1] = (1.0 - z) * n + z * hs[t]
        rec["r"][t], rec["z"][t], rec["n"][t], rec["hn"][t] = r, z, n, hn


class _RNNForward:
    """The vanilla RNN's per-cell part of :func:`_forward` (ReLU or tanh)."""

    carried = 0

    def __init__(self, xp, params, l: int, T: int, B: int, H: int, dtype):
        self.xp, self.rec = xp, {}
        self.relu = params.nonlinearity == "relu"

    def inputs(self, ax, b_ih, b_hh):
        ax += b_ih + b_hh
        return ax

    def step(self, t: int, ax_t, ah, hs) -> None:
        a = ax_t + ah
        hs[t + 1] = self.xp.maximum(a, 0) if self.relu else self.xp.tanh(a)


def _forward(cell, kind: str, x, params, states: tuple, *, xp, dtype, skip_input: bool, gemm=None,
             dropout_masks=None):
    """The fused forward shared by every cell, keeping the tape; ``cell`` (``_LSTMForward``, ...)
    is the per-cell part.  Per layer and direction: the hoisted input GEMM over all T*B rows,
    ``cell.inputs`` adds the biases; per step: the one recurrent GEMM, then ``cell.step`` writes
    h_{t+1} (and c_{t+1}).  Returns ``y (T, B, D*H)``, the final states ``[h_n (, c_n)]`` and the tape."""
    dtype = dtype or params.dtype
    seq = xp.asarray(x, dtype=dtype)
    T, B, _ = seq.shape
    L, H, D = params.num_layers, params.hidden_size, params.num_directions
    if skip_input and D == 2:
        raise BadInput("skip_input takes unidirectional parameters (one given projection, not one per direction)")
    masks = tuple(xp.asarray(m, dtype=dtype) for m in check_masks(dropout_masks, params, T, B))
    init = [_init_state(xp, s, L * D, B, H, dtype) for s in states]       # h0 (, c0)
    if gemm is not None and not callable(gemm):
        raise BadInput(f"gemm={gemm!r} must be a callable (key, a, w) -> a @ w, or None")
    mm = gemm or _plain_gemm
    tape = Tape(kind, params, dtype, skip_input=skip_input, gemm=mm, masks=masks)
    finals = [xp.empty((L * D, B, H), dtype) for _ in states]
    for l in range(L):
        outs = []
        for d in range(D):
            k = l * D + d                                   # the entry in params.layers
            inp = xp.ascontiguousarray(seq[::-1]) if d else seq   # reverse: the steps in its own order
            w_ih, w_hh, b_ih, b_hh = _arrays(xp, params, k, dtype)
            layer = cell(xp, params, k, T, B, H, dtype)
            carry = [xp.empty((T + 1, B, H), dtype) for _ in states]        # h (, c) for t = 0..T
            for c, s0 in zip(carry, init):
                c[0] = s0[k]
            ax = layer.inputs(_input_gemm(inp, w_ih, T, B, skip_input and l == 0, mm, k), b_ih, b_hh)  # hoisted
            ax = ax.reshape(T, B, ax.shape[-1])
            for t in range(T):
                layer.step(t, ax[t], mm(("w_hh.T", k), carry[0][t], w_hh.T), *carry)   # 1 GEMM per step
            tape.layers.append({"x": inp, **dict(zip(("h", "c"), carry)), **layer.rec})
            for fin, c in zip(finals, carry):
                fin[k] = c[T]
            outs.append(carry[0][1:][::-1] if d else carry[0][1:])
        seq = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
        if l < len(masks):                                   # dropout between layers
            seq = seq * masks[l]
    return seq, finals, tape


# The LSTM cells the training step runs, by the name ``--cell`` uses ("plain": LSTMParams, whose
# ``kind`` is ""); there is no peephole backward.
CELLS = {"plain": "", "layernorm": "layernorm"}


def lstm_forward_train(x, params, h0=None, c0=None, *, xp=np, dtype=None, skip_input: bool = False,
                       gemm=None, dropout_masks=None):
    """``y (T, B, H), h_n, c_n, tape`` for an LSTMParams or LayerNormLSTMParams (``params.kind``);
    bidirectional parameters: ``y (T, B, 2H)``, states ``(2L, B, H)``.  ``dropout_masks``: one
    ``(T, B, D*H)`` array per layer but the last, multiplied into that layer's output
    (:func:`kernels.reference.draw_dropout_masks` draws torch's)."""
    layernorm = getattr(params, "kind", "") == "layernorm"
    if params.cell != "lstm" or getattr(params, "kind", "") not in CELLS.values():
        raise BadInput(f"lstm_forward_train takes LSTMParams or LayerNormLSTMParams, got {type(params).__name__}")
    _skip_check(skip_input, layernorm)
    y, (h_n, c_n), tape = _forward(_LSTMForward, "layernorm" if layernorm else "lstm", x, params, (h0, c0),
                                   xp=xp, dtype=dtype, skip_input=skip_input, gemm=gemm,
                                   dropout_masks=dropout_masks)
    return y, h_n, c_n, tape


def gru_forward_train(x, params, h0=None, *, xp=np, dtype=None, skip_input: bool = False,
                      gemm=None, dropout_masks=None):
    """``y (T, B, H), h_n, tape`` for GRUParams (bidirectional, dropout: as :func:`lstm_forward_train`)."""
    if params.cell != "gru":
        raise BadInput(f"gru_forward_train takes GRUParams, got {type(params).__name__}")
    y, (h_n,), tape = _forward(_GRUForward, "gru", x, params, (h0,), xp=xp, dtype=dtype,
                               skip_input=skip_input, gemm=gemm, dropout_masks=dropout_masks)
    return y, h_n, tape


def rnn_forward_train(x, params, h0=None, *, xp=np, dtype=None, skip_input: bool = False,
                      gemm=None, dropout_masks=None):
    """``y (T, B, H), h_n, tape`` for VanillaRNNParams (ReLU or tanh; bidirectional, dropout: as
    :func:`lstm_forward_train`)."""
    if params.cell != "rnn":
        raise BadInput(f"rnn_forward_train takes VanillaRNNParams, got {type(params).__name__}")
    y, (h_n,), tape = _forward(_RNNForward, "rnn", x, params, (h0,), xp=xp, dtype=dtype,
                               skip_input=skip_input, gemm=gemm, dropout_masks=dropout_masks)
    return y, h_n, tape


# -- backward ---------------------------------------------------------------------------------
def _input_grad(dgx, w_ih, gw: dict, given: bool, mm=_plain_gemm, l: int = 0):
    """dX = dGX W_ih (one GEMM over T*B rows); with a given projection (skip-input, first layer)
    dGX itself, and no W_ih gradient."""
    if given:
        gw.pop("w_ih")
        return dgx
    T, B, GH = dgx.shape
    return mm(("w_ih", l), dgx.reshape(T * B, GH), w_ih).reshape(T, B, w_ih.shape[1])


def _weight_grads(xp, dgx, dgh, X, Hprev, given: bool = False):
    """The batched weight-gradient GEMMs of one layer (M = T*B each)."""
    T, B, GH = dgx.shape
    gx2, gh2 = dgx.reshape(T * B, GH), dgh.reshape(T * B, GH)
    return {"w_ih": gx2.T @ X.reshape(T * B, X.shape[-1]), "w_hh": gh2.T @ Hprev.reshape(T * B, Hprev.shape[-1]),
            "b_ih": gx2.sum(axis=0), "b_hh": gh2.sum(axis=0)}


class _LSTMGates:
    """The LSTM's (and layer-norm LSTM's) per-cell part of :func:`_backward`: one step's gate
    derivatives, and after the loop its weight gradients.  It carries dc from step to step."""

    carried = 1                                  # dc

    def __init__(self, xp, tape: Tape, rec: dict, T: int, B: int, H: int):
        dt = tape.dtype
        self.xp, self.rec, self.H = xp, rec, H
        self.layernorm = tape.cell == "layernorm"
        self.dP = xp.empty((T, B, 4 * H), dt)    # gradient of the gate pre-activations
        self.dAH = self.dP if not self.layernorm else xp.empty((T, B, 4 * H), dt)
        if self.layernorm:
            self.e = rec["e"]
            self.d_lnc_g, self.d_lnc_b = xp.zeros((H,), dt), xp.zeros((H,), dt)

    def step(self, t: int, dht, carry: tuple) -> tuple:
        xp, rec, H = self.xp, self.rec, self.H
        (dc,) = carry
        cs = rec["c"]
        a = rec["act"][t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        if self.layernorm:
            e = self.e
            tl, ch = rec["tl"][t], rec["ch"][t]
            do = dht * tl
            dln = dht * o * (1.0 - tl * tl)
            self.d_lnc_g += (dln * ch).sum(axis=0)
            self.d_lnc_b += dln.sum(axis=0)
            dc = dc + _ln_bwd(dln * e["lnc_g"], ch, rec["sc"][t])
        else:
            tc = xp.tanh(cs[t + 1])
            do = dht * tc
            dc = dc + dht * o * (1.0 - tc * tc)
        d = self.dP[t]
        d[:, :H] = dc * g * i * (1.0 - i)
        d[:, H:2 * H] = dc * cs[t] * f * (1.0 - f)
        d[:, 2 * H:3 * H] = dc * i * (1.0 - g * g)
        d[:, 3 * H:] = do * o * (1.0 - o)
        dc = dc * f
        if self.layernorm:
            self.dAH[t] = _ln_bwd(d * self.e["lnh_g"].reshape(-1), rec["hh"][t], rec["sh"][t])
        return self.dAH[t], None, (dc,)

    def finish(self) -> tuple:
        xp, rec, H, dP = self.xp, self.rec, self.H, self.dP
        T, B = dP.shape[:2]
        if not self.layernorm:
            return dP, _weight_grads(xp, dP, dP, rec["x"], rec["h"][:T])
        e = self.e
        dAX = _ln_bwd(dP * e["lnx_g"].reshape(-1), rec["xh"], rec["sx"])            # all T at once
        gw = _weight_grads(xp, dAX, self.dAH, rec["x"], rec["h"][:T])
        db = dP.reshape(T * B, 4 * H).sum(axis=0)
        gw["b_ih"], gw["b_hh"] = db, db.copy()
        dP2 = dP.reshape(T * B, 4 * H)
        gw["lnx_g"] = (dP2 * rec["xh"].reshape(T * B, 4 * H)).sum(axis=0).reshape(4, H)
        gw["lnh_g"] = (dP2 * rec["hh"].reshape(T * B, 4 * H)).sum(axis=0).reshape(4, H)
        gw["lnx_b"] = db.reshape(4, H).copy()
        gw["lnh_b"] = db.reshape(4, H).copy()
        gw["lnc_g"], gw["lnc_b"] = self.d_lnc_g, self.d_lnc_b
        return dAX, gw


class _GRUGates:
    """The GRU's per-cell part of :func:`_backward`: input and recurrent gate gradients differ in
    the n block (the reset is applied after the recurrent GEMM), and dh_{t-1} has a direct part."""

    carried = 0

    def __init__(self, xp, tape: Tape, rec: dict, T: int, B: int, H: int):
        self.xp, self.rec, self.H = xp, rec, H
        self.dGX, self.dGH = xp.empty((T, B, 3 * H), tape.dtype), xp.empty((T, B, 3 * H), tape.dtype)

    def step(self, t: int, dht, carry: tuple) -> tuple:
        rec, H = self.rec, self.H
        r, z, n, hn = rec["r"][t], rec["z"][t], rec["n"][t], rec["hn"][t]
        dan = dht * (1.0 - z) * (1.0 - n * n)
        daz = dht * (rec["h"][t] - n) * z * (1.0 - z)
        dar = dan * hn * r * (1.0 - r)
        gx, gh = self.dGX[t], self.dGH[t]
        gx[:, :H], gx[:, H:2 * H], gx[:, 2 * H:] = dar, daz, dan
        gh[:, :H], gh[:, H:2 * H], gh[:, 2 * H:] = dar, daz, dan * r          # reset after the GEMM
        return gh, dht * z, carry

    def finish(self) -> tuple:
        T = self.dGX.shape[0]
        return self.dGX, _weight_grads(self.xp, self.dGX, self.dGH, self.rec["x"], self.rec["h"][:T])


class _RNNGates:
    """The vanilla RNN's per-cell part of :func:`_backward`: the activation's derivative, read off h."""

    carried = 0

    def __init__(self, xp, tape: Tape, rec: dict, T: int, B: int, H: int):
        self.xp, self.rec = xp, rec
        self.relu = tape.params.nonlinearity == "relu"
        self.dP = xp.empty((T, B, H), tape.dtype)

    def step(self, t: int, dht, carry: tuple) -> tuple:
        h = self.rec["h"][t + 1]
        self.dP[t] = dht * ((h > 0) if self.relu else (1.0 - h * h))
        return self.dP[t], None, carry

    def finish(self) -> tuple:
        T = self.dP.shape[0]
        return self.dP, _weight_grads(self.xp, self.dP, self.dP, self.rec["x"], self.rec["h"][:T])


def _backward(gates, tape: Tape, dy, dstates: tuple, *, xp, on_layer) -> Grads:
    """The walk through time shared by every cell; ``gates`` (``_LSTMGates``, ...) is the per-cell
    part.  Per step: ``dG_h, dh_direct, carry = step(t, dh_t, carry)``, then the one GEMM
    ``dh_{t-1} = dG_h W_hh (+ dh_direct)``; per layer and direction after the loop ``finish()``
    gives the input gate gradients and the weight gradients (batched GEMMs, M = T*B)."""
    p, dt = tape.params, tape.dtype
    mm = tape.gemm or _plain_gemm
    L, H, D = p.num_layers, p.hidden_size, p.num_directions
    dseq = xp.asarray(dy, dtype=dt)
    T, B, _ = dseq.shape
    finals = [xp.empty((L * D, B, H), dt) for _ in range(1 + gates.carried)]     # dh0 (, dc0)
    grads = [None] * (L * D)
    for l in reversed(range(L)):
        dx = None
        for d in range(D):
            k = l * D + d                                    # the entry in params.layers and the tape
            rec = tape.layers[k]
            w_ih, w_hh, _, _ = _arrays(xp, p, k, dt)
            dout = dseq[:, :, d * H:(d + 1) * H]
            dout = dout[::-1] if d else dout                 # the reverse direction's own time order
            dh, *carry = (xp.zeros((B, H), dt) if s is None else xp.array(s[k], dtype=dt) for s in dstates)
            cell = gates(xp, tape, rec, T, B, H)
            carry = tuple(carry)
            for t in reversed(range(T)):
                dgh, direct, carry = cell.step(t, dout[t] + dh, carry)
                dh = mm(("w_hh", k), dgh, w_hh)                                  # 1 GEMM per step
                if direct is not None:
                    dh = direct + dh
            dgx, grads[k] = cell.finish()
            if on_layer is not None:
                on_layer(k, grads[k])
            for fin, g in zip(finals, (dh, *carry)):
                fin[k] = g
            dxd = _input_grad(dgx, w_ih, grads[k], tape.skip_input and l == 0, mm, k)  # dX, one GEMM
            dxd = dxd[::-1] if d else dxd
            dx = dxd if dx is None else dx + dxd
        if 0 < l <= len(tape.masks):                         # through the dropout below this layer
            dx = dx * tape.masks[l - 1]
        dseq = dx
    return Grads(dseq, finals[0], finals[1] if gates.carried else None, grads)


def lstm_backward(tape: Tape, dy, dh_n=None, dc_n=None, *, xp=np, on_layer=None) -> Grads:
    """Gradients of a scalar loss given ``dy`` (T, B, H) and, optionally, ``dh_n``, ``dc_n`` (L, B, H).

    ``on_layer(l, grads_l)`` is called as soon as layer l's weight gradients are final (last layer
    first), before the layers below are differentiated: a data-parallel step starts their
    all-reduce there, so it overlaps the rest of the backward pass.  (Bidirectional: l indexes
    ``Grads.layers``, layer * 2 + direction; states and their gradients are ``(2L, B, H)``.)"""
    return _backward(_LSTMGates, tape, dy, (dh_n, dc_n), xp=xp, on_layer=on_layer)


def gru_backward(tape: Tape, dy, dh_n=None, *, xp=np, on_layer=None) -> Grads:
    """As :func:`lstm_backward`, for the GRU."""
    return _backward(_GRUGates, tape, dy, (dh_n,), xp=xp, on_layer=on_layer)


def rnn_backward(tape: Tape, dy, dh_n=None, *, xp=np, on_layer=None) -> Grads:
    """As :func:`lstm_backward`, for the vanilla RNN."""
    return _backward(_RNNGates, tape, dy, (dh_n,), xp=xp, on_layer=on_layer)


def forward_train(x, params, h0=None, c0=None, *, xp=np, dtype=None, skip_input: bool = False,
                  gemm=None, dropout_masks=None):
    """Dispatch on the parameters: ``(y, states, tape)`` with states ``(h_n, c_n)`` or ``(h_n,)``.
    ``dropout_masks``: see :func:`lstm_forward_train`.
    ``gemm``: ``(key, a, w) -> a @ w`` for every GEMM by a weight matrix, forward and backward
    (the tape keeps it); default NumPy's/CuPy's matmul.  A packing provider keeps each weight
    matrix packed once, so give one only while the parameters do not change between calls."""
    if params.cell in ("gru", "rnn"):
        if c0 is not None:
            raise BadInput(f"a {params.cell.upper()} has no cell state: c0 must be None")
        fwd = gru_forward_train if params.cell == "gru" else rnn_forward_train
        y, h, tape = fwd(x, params, h0, xp=xp, dtype=dtype, skip_input=skip_input, gemm=gemm,
                         dropout_masks=dropout_masks)
        return y, (h,), tape
    y, h, c, tape = lstm_forward_train(x, params, h0, c0, xp=xp, dtype=dtype, skip_input=skip_input,
                                       gemm=gemm, dropout_masks=dropout_masks)
    return y, (h, c), tape


def backward(tape: Tape, dy, dstates=(), *, xp=np, on_layer=None) -> Grads:
    if tape.cell == "gru":
        return gru_backward(tape, dy, *dstates, xp=xp, on_layer=on_layer)
    if tape.cell == "rnn":
        return rnn_backward(tape, dy, *dstates, xp=xp, on_layer=on_layer)
    return lstm_backward(tape, dy, *dstates, xp=xp, on_layer=on_layer)
