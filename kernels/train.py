"""The training step on the numba backend: forward keeping a tape, and backward, of a
unidirectional LSTM, GRU, vanilla RNN or layer-norm LSTM, with the work arranged as :mod:`kernels.backward`
describes (the float64 reference it is checked against) but compiled.

Per layer, forward:

1. ``gx = X W_ih^T (+ b)``: one GEMM over all T*B rows (fp32: oneDNN's inner product or matmul
   with W_ih packed once and the bias added by the primitive; fp64: BLAS).  With ``skip_input``
   the first layer's gx is a copy of the given projection and the kernel adds the biases.
2. The recurrence, compiled (:mod:`fusion.trainloop`): per step one packed GEMM ``h W_hh^T`` and
   the fused kernel, which keeps the tape: h_t, c_t (LSTM), the activated gates over gx, the
   GRU's ``W_hn h + b_hn``.

Backward, per layer from the top:

1. The recurrence in reverse, compiled: per step the fused kernel (gate gradients dG_t written
   over the gates, bias gradients summed as it goes) and one packed GEMM ``dG_t W_hh``.
2. One GEMM for each weight gradient over all T*B rows: ``dW_ih = dGX^T X``,
   ``dW_hh = dGH^T [h_0 .. h_{T-1}]`` (the GRU's dGH differs from dGX in the n block only:
   that block is its own GEMM); and ``dX = dGX W_ih`` (packed, M = T*B), the next layer
   down's upstream gradient.

Buffers (tape, gradients) belong to the trainer and are reused by the next call with the same
T and B: what :meth:`Trainer.forward` and :meth:`Trainer.backward` return is overwritten by the
next call, as a benchmark wants (no allocation, no page faults in the timed step).  A tape is
consumed by its backward pass (the gate buffer receives the gradients), so it is refused the
second time.  Bidirectional layers and dropout run on :mod:`kernels.backward`.

The layer-norm LSTM (``LayerNormLSTMParams``) runs the same way with its normalisations in the
kernels: the input part's over all T*B rows before the recurrence (and its backward after it),
the recurrent part's and c's inside each step; its steps are issued from one thread (each step
normalises whole rows, which a team splitting the units would have to reduce across threads).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusion import gemm as fgemm
from fusion import trainloop
from fusion.steps import Plan

from fusion.cellexpr import LN_EPS

from .backward import Grads
from .dtypes import canonical, storage
from .errors import BadInput
from .params import GRUParams, LSTMParams, VanillaRNNParams, check_real, require_unidirectional

PRECISIONS = ("fp32", "fp64")


@dataclass
class TrainTape:
    """What :meth:`Trainer.backward` reads: per layer its buffers (``x``, ``h``, ``c``, ``gates``,
    ``hn``), in the trainer's workspace."""
    trainer: object
    T: int
    B: int
    layers: list = field(default_factory=list)
    consumed: bool = False


class _Layer:
    """One layer's weights as the training step uses them, and its GEMMs by fixed weights."""

    def __init__(self, trainer, l: int, given: bool):
        p, dt = trainer.params, trainer.dtype
        G, H = trainer.G, trainer.H
        w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dt) for a in p.layers[l].arrays())
        self.given = given                      # skip-input: the first layer reads its projection
        self.w_ih, self.w_hh = np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh)
        self.w_ih_t = np.ascontiguousarray(w_ih.T)
        gru = trainer.cell_mode == "gru"
        # The input GEMM adds b_ih + b_hh (GRU: b_ih; b_hn sits inside r * (...)); a given
        # projection has no GEMM, so the kernel adds them (b1).
        fold = b_ih if gru else b_ih + b_hh
        self.fold = None if given else np.ascontiguousarray(fold)
        self.b1 = np.ascontiguousarray(fold.reshape(G, H)) if given else None
        self.b2 = np.ascontiguousarray(b_hh.reshape(G, H)) if gru else None
        if trainer.layernorm:
            # the input part is normalised before its gain, its bias and b_ih + b_hh are added
            # (by the normalising kernel), so the input GEMM adds nothing
            e = {k: np.ascontiguousarray(np.asarray(v, dt)) for k, v in p.extras[l].items()}
            self.fold = None
            self.lnx_g = e["lnx_g"].reshape(-1)
            self.lnx_bias = np.ascontiguousarray(e["lnx_b"].reshape(-1) + b_ih + b_hh)
            self.lnh_g, self.lnh_b, self.lnc_g, self.lnc_b = (e[k] for k in ("lnh_g", "lnh_b", "lnc_g", "lnc_b"))
        self.packed: dict = {}                  # (name, M) -> packed GEMM
        self.loops: dict = {}                   # (B, threads) -> training loop

    def close(self) -> None:
        for g in list(self.packed.values()) + list(self.loops.values()):
            g.close()
        self.packed.clear()
        self.loops.clear()


class Trainer:
    """``Trainer(params, dtype="fp32", skip_input=False)``; ``y, states, tape = t.forward(x, h0, c0)``,
    ``grads = t.backward(tape, dy, dstates)``: the arguments and results of
    :func:`kernels.backward.forward_train` and :func:`kernels.backward.backward` (``states``:
    ``(h_n, c_n)`` or ``(h_n,)``; :class:`kernels.backward.Grads`), computed by compiled step
    loops (module doc).  Threads: numba's and oneDNN's pools as set when called (a team of
    numba's threads runs the steps where :func:`fusion.cpuloop.team_reason` allows)."""

    def __init__(self, params, *, dtype=None, skip_input: bool = False):
        from .custom import LayerNormLSTMParams
        if not isinstance(params, (LSTMParams, GRUParams, VanillaRNNParams, LayerNormLSTMParams)):
            raise BadInput(f"the numba training step takes LSTMParams, GRUParams, VanillaRNNParams or "
                           f"LayerNormLSTMParams, got {type(params).__name__}")
        require_unidirectional(params, "the numba training step")
        self.layernorm = isinstance(params, LayerNormLSTMParams)
        if self.layernorm and skip_input:
            raise BadInput("skip_input applies to the plain cells, not the layer-norm LSTM")
        self.precision = canonical(dtype if dtype is not None else params.dtype)
        if self.precision not in PRECISIONS:
            raise BadInput(f"the numba training step computes {', '.join(PRECISIONS)}, not {self.precision}")
        self.params, self.dtype = params, storage(self.precision)
        self.cell_mode = "lstm" if self.layernorm else params.cell_mode
        self.G, self.H, self.L = params.num_gates, params.hidden_size, params.num_layers
        self.skip_input = bool(skip_input)
        # fp32: oneDNN's packed GEMMs (the fused forward's pretranspose); else BLAS, saying why
        self.packer, self.gemm_info = fgemm.provider_for(np, "cpu", self.precision,
                                                         Plan(frozenset({"pretranspose"})))
        if self.packer is None:
            self.gemm_info = self.gemm_info or {"provider": fgemm.BLAS, "reason": f"{self.precision}: BLAS's GEMMs"}
        self.layers = [_Layer(self, l, self.skip_input and l == 0) for l in range(self.L)]
        self._work: dict = {}                   # (T, B) -> workspace
        self.loop_kinds: dict = {}              # what ran last, per layer: "team of N threads", ...

    def close(self) -> None:
        for lay in self.layers:
            lay.close()

    # -- GEMMs by a fixed weight matrix ---------------------------------------------------------
    def _gemm(self, lay: _Layer, name: str, a, out):
        """``out <- a @ W (+ bias)`` for W = W_ih^T (``"in"``, with the folded bias) or W_ih
        (``"dx"``): packed once per row count where oneDNN runs, else BLAS."""
        if self.packer is None:
            np.matmul(a, lay.w_ih_t if name == "in" else lay.w_ih, out=out)
            if name == "in" and lay.fold is not None:
                out += lay.fold
            return out
        return self._packed(lay, name, a.shape[0])(a, out)

    def _packed(self, lay: _Layer, name: str, M: int):
        g = lay.packed.get((name, M))
        if g is None:
            w, bias = (lay.w_ih_t, lay.fold) if name == "in" else (lay.w_ih, None)
            g = _keep(lay.packed, (name, M), self.packer(w, M, bias=bias))
        return g

    def _loop(self, lay: _Layer, B: int):
        """The layer's training loop for batch B at numba's thread count now."""
        import numba
        if self.packer is None:
            key = (B, "blas")
            if key not in lay.loops:
                _keep(lay.loops, key, trainloop.LNBLASLoop(lay.w_hh, B, self.dtype) if self.layernorm else
                      trainloop.BLASLoop(lay.w_hh, B, self.cell_mode, self.dtype))
            return lay.loops[key]
        n = numba.get_num_threads()
        if n > 1 and not self.layernorm and trainloop.cpuloop.team_reason(self.H, n) is None:
            key = (B, n)
            if key not in lay.loops:
                _keep(lay.loops, key, trainloop.TrainTeam(lay.w_hh, B, self.cell_mode, n, self.packer))
            return lay.loops[key]
        return self._fallback(lay, B)

    def _fallback(self, lay: _Layer, B: int):
        """The loop issued from one thread (also where a team could not form for a call)."""
        key = (B, 1)
        if key not in lay.loops:
            _keep(lay.loops, key, trainloop.LNTrainLoop(lay.w_hh, B, self.packer) if self.layernorm else
                  trainloop.TrainLoop(lay.w_hh, B, self.cell_mode, self.packer))
        return lay.loops[key]

    # -- buffers ----------------------------------------------------------------------------------
    def _workspace(self, T: int, B: int) -> list:
        """Per layer the tape's and the gradients' buffers for T steps of B rows, made once."""
        ws = self._work.get((T, B))
        if ws is not None:
            return ws
        self._work.clear()                      # one shape at a time: a new one frees the old
        dt, G, H = self.dtype, self.G, self.H
        ws = []
        for l, lay in enumerate(self.layers):
            I = lay.w_ih.shape[1]
            ws.append({
                "h": np.zeros((T + 1, B, H), dt),
                "c": np.zeros((T + 1, B, H), dt) if self.cell_mode == "lstm" else None,
                "gates": np.zeros((T * B, G * H), dt),
                "hn": np.zeros((T, B, H), dt) if self.cell_mode == "gru" else None,
                "dx": None if lay.given else np.zeros((T * B, I), dt),
                "dw_ih": None if lay.given else np.zeros((G * H, I), dt),
                "dw_hh": np.zeros((G * H, H), dt),
                "db": np.zeros((trainloop.DB_ROWS[self.cell_mode], H), dt),
                "dh0": np.zeros((B, H), dt), "dc": np.zeros((B, H), dt), "dd": np.zeros((B, H), dt),
            })
            if self.layernorm:
                ws[-1].update({
                    "xh": np.zeros((T * B, G * H), dt), "sx": np.zeros(T * B, dt),
                    "hh": np.zeros((T * B, G * H), dt), "sh": np.zeros((T, B), dt), "sc": np.zeros((T, B), dt),
                    "ch": np.zeros((T, B, H), dt), "tl": np.zeros((T, B, H), dt),
                    "dlnh_g": np.zeros((G, H), dt), "dlnc_g": np.zeros(H, dt), "dlnc_b": np.zeros(H, dt),
                    "dlnx_g": np.zeros((_LN_CHUNKS, G * H), dt)})
        self._work[(T, B)] = ws
        return ws

    def prepare(self, T: int, B: int) -> "Trainer":
        """Make the buffers and pack every GEMM for T steps of B rows now (build time), at the
        thread count set now."""
        self._workspace(T, B)
        for l, lay in enumerate(self.layers):
            self.loop_kinds[l] = _kind(self._loop(lay, B))
            if self.packer is not None and not lay.given:
                self._packed(lay, "in", T * B)
                self._packed(lay, "dx", T * B)
        return self

    def info(self) -> dict:
        """Which GEMMs and loops ran (per layer, the last call's)."""
        out = {"gemm": dict(self.gemm_info), "loops": dict(self.loop_kinds)}
        for l, lay in enumerate(self.layers):
            for key, loop in lay.loops.items():
                out.setdefault("step", {})[f"layer {l} B={key[0]}"] = loop.info()
        return out

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x, h0=None, c0=None):
        """``y (T, B, H), states, tape``."""
        dt, G, H, L = self.dtype, self.G, self.H, self.L
        lstm = self.cell_mode == "lstm"
        if not lstm and c0 is not None:
            raise BadInput(f"a {self.params.cell.upper()} has no cell state: c0 must be None")
        for name, a in (("x", x), ("h0", h0), ("c0", c0)):
            check_real(name, a)
        seq = np.asarray(x)
        width = G * H if self.skip_input else self.params.input_size
        if seq.ndim != 3 or seq.shape[2] != width or 0 in seq.shape:
            raise BadInput(f"x has shape {seq.shape}; expected (T, B, {width})"
                           + (" (skip_input: the first layer's projection, G*H wide)" if self.skip_input else ""))
        T, B, _ = seq.shape
        states = []
        for name, s in (("h0", h0), ("c0", c0 if lstm else None)):
            if s is not None and np.shape(s) != (L, B, H):
                raise BadInput(f"{name} has shape {np.shape(s)}; expected ({L}, {B}, {H})")
            states.append(s)
        ws = self._workspace(T, B)
        tape = TrainTape(self, T, B)
        inp = np.ascontiguousarray(seq, dtype=dt)
        for l, (lay, w) in enumerate(zip(self.layers, ws)):
            hs, cs, gx = w["h"], w["c"], w["gates"]
            hs[0] = 0 if states[0] is None else states[0][l]
            if lstm:
                cs[0] = 0 if states[1] is None else states[1][l]
            rows = inp.reshape(T * B, inp.shape[-1])
            if lay.given:
                np.copyto(gx, rows)             # the kernel writes the gates over it
            else:
                self._gemm(lay, "in", rows, gx)
            loop = self._loop(lay, B)
            if self.layernorm:
                from fusion.backward_numba import ln_rows
                ln_rows(gx, w["xh"], w["sx"], lay.lnx_g, lay.lnx_bias, dt.type(LN_EPS))   # all T at once
                loop.forward(hs, gx, cs, *(w[k] for k in _LN_TAPE), lay.lnh_g, lay.lnh_b, lay.lnc_g, lay.lnc_b,
                             LN_EPS)
            elif loop.forward(hs, gx, lay.b1, lay.b2, cs, w["hn"]) is False:
                loop = self._fallback(lay, B)   # a team that could not form: one thread issues
                loop.forward(hs, gx, lay.b1, lay.b2, cs, w["hn"])
            self.loop_kinds[l] = _kind(loop)
            tape.layers.append({"x": inp, "h": hs, "c": cs, "gates": gx, "hn": w["hn"]})
            inp = hs[1:]
        finals = [np.stack([w["h"][T] for w in ws])]
        if lstm:
            finals.append(np.stack([w["c"][T] for w in ws]))
        return inp, tuple(finals), tape

    # -- backward ---------------------------------------------------------------------------------
    def backward(self, tape: TrainTape, dy, dstates=()) -> Grads:
        """Gradients of a loss given ``dy (T, B, H)`` and optionally ``dh_n`` (, ``dc_n``) ``(L, B, H)``."""
        if not isinstance(tape, TrainTape) or tape.trainer is not self:
            raise BadInput("backward takes the tape this trainer's forward returned")
        if tape.consumed:
            raise BadInput("this tape was consumed by a backward pass already (its gate buffer holds "
                           "the gradients); run forward again")
        T, B, dt, G, H, L = tape.T, tape.B, self.dtype, self.G, self.H, self.L
        lstm, gru = self.cell_mode == "lstm", self.cell_mode == "gru"
        if self._work.get((T, B)) is None or any(r["h"] is not w["h"] for r, w in zip(tape.layers, self._work[(T, B)])):
            raise BadInput("this tape's buffers were reused by a later forward; run forward again")
        check_real("dy", dy)
        if np.shape(dy) != (T, B, H):
            raise BadInput(f"dy has shape {np.shape(dy)}; expected ({T}, {B}, {H})")
        dstates = tuple(dstates) + (None,) * (2 - len(dstates))
        dh_n, dc_n = dstates[0], dstates[1] if lstm else None
        if not lstm and dstates[1] is not None:
            raise BadInput(f"a {self.params.cell.upper()} has no cell state: no dc_n")
        for name, s in (("dh_n", dh_n), ("dc_n", dc_n)):
            if s is not None and np.shape(s) != (L, B, H):
                raise BadInput(f"{name} has shape {np.shape(s)}; expected ({L}, {B}, {H})")
        tape.consumed = True
        ws = self._work[(T, B)]
        dys = np.ascontiguousarray(dy, dtype=dt)
        grads = [None] * L
        dh0, dc0 = np.empty((L, B, H), dt), (np.empty((L, B, H), dt) if lstm else None)
        for l in reversed(range(L)):
            lay, w, rec = self.layers[l], ws[l], tape.layers[l]
            gx, hs, cs, hn, db = rec["gates"], rec["h"], rec["c"], rec["hn"], w["db"]
            db[...] = 0
            w["dc"][...] = 0 if dc_n is None else dc_n[l]
            w["dd"][...] = 0
            dh = w["dh0"]
            dh[...] = 0 if dh_n is None else dh_n[l]
            loop = self._loop(lay, B)
            if self.layernorm:
                for k in ("dlnh_g", "dlnc_g", "dlnc_b", "dlnx_g"):
                    w[k][...] = 0
                out = loop.backward(dys, dh, hs, gx, cs, *(w[k] for k in _LN_TAPE), w["dc"], lay.lnc_g, lay.lnh_g, db,
                                    w["dlnh_g"], w["dlnc_g"], w["dlnc_b"])
                from fusion.backward_numba import ln_rows_bwd
                ln_rows_bwd(gx, lay.lnx_g, w["xh"], w["sx"], w["dlnx_g"])     # dAX over xh
            else:
                out = loop.backward(dys, dh, hs, gx, cs, hn, w["dc"], w["dd"], db)
                if out is None:                 # the team could not form: nothing was written
                    out = self._fallback(lay, B).backward(dys, dh, hs, gx, cs, hn, w["dc"], w["dd"], db)
            dh0[l] = out
            if gru:
                dh0[l] += w["dd"]
            if lstm:
                dc0[l] = w["dc"]
            g = self._weight_grads(lay, w, rec, T, B)
            grads[l] = g
            if lay.given:
                dys = gx.reshape(T, B, G * H)    # the gradient with respect to the given projection
            else:
                self._gemm(lay, "dx", w["xh"] if self.layernorm else gx, w["dx"])
                dys = w["dx"].reshape(T, B, -1)
        return Grads(dys, dh0, dc0, grads)

    def _weight_grads(self, lay: _Layer, w: dict, rec: dict, T: int, B: int) -> dict:
        """One GEMM per weight gradient over all T*B rows; the biases from the kernel's sums."""
        H = self.H
        gx, db = rec["gates"], w["db"]
        hprev = rec["h"][:T].reshape(T * B, H)
        if self.layernorm:                          # dAX (over xh) and dAH (over hh) feed the GEMMs
            np.matmul(w["hh"].T, hprev, out=w["dw_hh"])
            db = db.reshape(-1)
            X = rec["x"].reshape(T * B, -1)
            return {"w_ih": np.matmul(w["xh"].T, X, out=w["dw_ih"]), "w_hh": w["dw_hh"], "b_ih": db.copy(),
                    "b_hh": db.copy(), "lnx_g": w["dlnx_g"].sum(axis=0).reshape(4, H),
                    "lnx_b": db.reshape(4, H).copy(), "lnh_g": w["dlnh_g"].copy(), "lnh_b": db.reshape(4, H).copy(),
                    "lnc_g": w["dlnc_g"].copy(), "lnc_b": w["dlnc_b"].copy()}
        if self.cell_mode == "gru":                 # dGH: dGX's r and z blocks, and dn r
            np.matmul(gx[:, :2 * H].T, hprev, out=w["dw_hh"][:2 * H])
            np.matmul(rec["hn"].reshape(T * B, H).T, hprev, out=w["dw_hh"][2 * H:])
            b_ih = db[:3].reshape(-1).copy()
            b_hh = np.concatenate([db[0], db[1], db[3]])
        else:
            np.matmul(gx.T, hprev, out=w["dw_hh"])
            b_ih = db.reshape(-1).copy()
            b_hh = b_ih.copy()
        out = {"w_hh": w["dw_hh"], "b_ih": b_ih, "b_hh": b_hh}
        if not lay.given:
            X = rec["x"].reshape(T * B, -1)
            out["w_ih"] = np.matmul(gx.T, X, out=w["dw_ih"])
        return {k: out[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh") if k in out}


# the layer-norm tape's buffers, in the order the loops take them
_LN_TAPE = ("hh", "sh", "ch", "sc", "tl")
# chunks of rows the input layer norm's backward splits its gain gradient into (one per thread)
_LN_CHUNKS = 8


def _keep(kept: dict, key, value):
    """Remember a packed GEMM or a loop (each holds its own packed weights), closing the oldest
    beyond fusion.gemm.MAX_PACKED, so sequences of ever new lengths or batch sizes do not grow
    memory without bound (one that comes back is packed again)."""
    while len(kept) >= fgemm.MAX_PACKED:
        kept.pop(next(iter(kept))).close()
    kept[key] = value
    return value


def _kind(loop) -> str:
    if isinstance(loop, trainloop.TrainTeam):
        return f"compiled, team of {loop.threads} threads"
    if isinstance(loop, trainloop.TrainLoop):
        return "compiled, issued from one thread"
    return "Python loop, BLAS GEMMs"
