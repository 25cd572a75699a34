"""The training step's recurrences compiled: one native call runs all T steps of a layer's
forward (keeping the tape) or of its backward, as :mod:`fusion.cpuloop` does for the inference
forward.

Per step, forward: ``gh = h_{t-1} W_hh^T`` (one packed oneDNN GEMM, M = B) and the fused kernel
of :mod:`fusion.backward_numba`, which writes h_t (c_t) and keeps the activated gates in the
step's rows of the hoisted input buffer.  Backward, in reverse: the fused kernel (dh_t from the
upstream gradient and the GEMM's output, the gate gradients dG_t written over the gates, the
bias gradients summed as it goes), then ``dh_{t-1} = dG_t W_hh`` (one packed GEMM, M = B,
K = G*H, N = H).  No Python between the steps.

Three ways to issue the same steps, all over the same kernels:

- :class:`TrainLoop`: one thread issues every step; oneDNN may use its own threads inside each
  GEMM; the kernels run on the issuing thread.
- :class:`TrainTeam`: a team of threads over all steps, as :class:`fusion.cpuloop.TeamLoop`
  (same conditions, :func:`fusion.cpuloop.team_reason`): thread p owns hidden units
  j0..j1.  Forward it computes those units' columns of every gate with its own packed GEMM, then
  their kernel, then the team meets (the next GEMMs read all of h_t).  Backward it runs the
  kernel on its units, the team meets (the GEMM reads all of dG_t), then its GEMM computes
  its units' columns of dh_{t-1} = dG_t W_hh[:, j0:j1], which only its own next kernel reads:
  one barrier per step each way.
- :class:`BLASLoop`: the steps issued from Python, GEMMs by the array module's matmul (BLAS):
  fp64, and fp32 where oneDNN cannot be loaded.  Same kernels; a reference for the others in the
  tests.

Layouts are those of :mod:`fusion.trainloop_numba`.  numba does not check bounds, so every call
checks the shapes, dtypes and contiguity of what the loop reads and writes.
"""
from __future__ import annotations

import ctypes

import numpy as np

from kernels.errors import BadInput

from . import cpuloop

CELLS = cpuloop.CELLS           # lstm, gru, rnn_relu, rnn_tanh
CELL = {c: i for i, c in enumerate(CELLS)}      # fusion.trainloop_numba.CELL, without numba
GATES = {"lstm": 4, "gru": 3, "rnn_relu": 1, "rnn_tanh": 1}
# rows of the bias-gradient accumulator (fusion/backward_numba.py: the GRU's fourth row is dn r)
DB_ROWS = {"lstm": 4, "gru": 4, "rnn_relu": 1, "rnn_tanh": 1}


def _check(name: str, a, shape: tuple, dtype) -> None:
    if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}" \
            if isinstance(a, np.ndarray) else type(a).__name__
        raise BadInput(f"{name} must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}; got {got}")


_STAND_IN: dict = {}


def _stand_in(dtype, ndim: int):
    """A one-element array of the type a loop's unused argument must have (every branch of the
    compiled loop is typed, whichever cell runs)."""
    key = (np.dtype(dtype).name, ndim)
    if key not in _STAND_IN:
        _STAND_IN[key] = np.zeros((1,) * ndim, dtype)
    return _STAND_IN[key]


class _Steps:
    """What every way of issuing the steps shares: the cell, the shapes and the array checks."""

    def __init__(self, cell_mode: str, B: int, H: int, dtype):
        if cell_mode not in CELLS:
            raise BadInput(f"the compiled training loop runs cells {', '.join(CELLS)}, not {cell_mode!r}")
        self.cell_mode, self.B, self.H, self.G = cell_mode, int(B), int(H), GATES[cell_mode]
        self.dtype = np.dtype(dtype)
        self.cell = CELL[cell_mode]            # the number the compiled loops branch on

    def _tape(self, hs, gx, cs, hn) -> tuple:
        """Checked (T, cs, hn), stand-ins where the cell keeps none."""
        B, H, G, dt = self.B, self.H, self.G, self.dtype
        if not isinstance(hs, np.ndarray) or hs.ndim != 3 or hs.shape[0] < 1:
            raise BadInput(f"hs must be a (T+1, B, H) array; got {getattr(hs, 'shape', type(hs).__name__)}")
        T = hs.shape[0] - 1
        _check("hs", hs, (T + 1, B, H), dt)
        _check("gx", gx, (T * B, G * H), dt)
        if self.cell_mode == "lstm":
            if cs is None:
                raise BadInput("an LSTM's training loop needs its cell states cs (T+1, B, H); got None")
            _check("cs", cs, (T + 1, B, H), dt)
        else:
            cs = _stand_in(dt, 3)
        if self.cell_mode == "gru":
            if hn is None:
                raise BadInput("a GRU's training loop needs hn (T, B, H), W_hn h + b_hn per step; got None")
            _check("hn", hn, (T, B, H), dt)
        else:
            hn = _stand_in(dt, 3)
        return T, cs, hn

    def _biases(self, b1, b2) -> tuple:
        """(b1, b2, has_b) as the kernels take them: the LSTM's and the vanilla cell's one bias the
        kernel adds (None when the input GEMM added it), or the GRU's input bias (None: added
        by the input GEMM) and its recurrent bias (always: b_hn sits inside r * (...))."""
        G, H, dt = self.G, self.H, self.dtype
        for name, b in (("b1", b1), ("b2", b2)):
            if b is not None:
                _check(name, b, (G, H), dt)
        if self.cell_mode == "gru" and b2 is None:
            raise BadInput("a GRU's training loop needs its recurrent bias b2 (b_hn sits inside r * (...))")
        has_b = b1 is not None
        return (b1 if has_b else _stand_in(dt, 2)), (b2 if b2 is not None else _stand_in(dt, 2)), has_b

    def _grads(self, T: int, dys, dc, dd, db) -> tuple:
        """Checked backward carries: dys (T, B, H); dc (LSTM) and dd (GRU) (B, H), updated in
        place; db (rows, H), added into."""
        B, H, dt = self.B, self.H, self.dtype
        _check("dys", dys, (T, B, H), dt)
        _check("db", db, (DB_ROWS[self.cell_mode], H), dt)
        if self.cell_mode == "lstm":
            if dc is None:
                raise BadInput("an LSTM's backward loop needs dc (B, H); got None")
            _check("dc", dc, (B, H), dt)
        else:
            dc = _stand_in(dt, 2)
        if self.cell_mode == "gru":
            if dd is None:
                raise BadInput("a GRU's backward loop needs dd (B, H), the direct part of dh; got None")
            _check("dd", dd, (B, H), dt)
        else:
            dd = _stand_in(dt, 2)
        return dc, dd



def _handles(g) -> tuple:
    """(primitive, stream, args, nargs, source memory) of a packed GEMM, as the loops take them."""
    step = g._step
    return step._prim.value, g.ctx.stream.value, ctypes.addressof(step._args), step._n, g._src.value


def _raise(where: str, t: int, status: int, call: int) -> None:
    from kernels.onednn import errors as derr
    derr.check(f"the compiled training loop's {where} at step {t} ({cpuloop.CALLS[call]})", int(status))


class TrainLoop(_Steps):
    """One layer's forward and backward steps issued from one thread, over two packed GEMMs of
    W_hh (``(G*H, H)``, canonical): ``h W_hh^T`` and ``dG W_hh``, M = B each."""

    def __init__(self, w_hh, B: int, cell_mode: str, packer):
        H = w_hh.shape[1]
        super().__init__(cell_mode, B, H, np.float32)
        self.fwd = packer(np.ascontiguousarray(np.asarray(w_hh, np.float32).T), self.B)
        try:
            self.bwd = packer(np.ascontiguousarray(w_hh, np.float32), self.B)
        except BaseException:
            self.fwd.close()
            raise
        self.gh = np.zeros((self.B, self.G * H), np.float32)     # the forward GEMM's output
        self.dr = np.zeros((self.B, H), np.float32)              # the backward GEMM's output
        self.fwd._point(1, self.fwd._dst, self.gh.ctypes.data)
        self.bwd._point(1, self.bwd._dst, self.dr.ctypes.data)
        self._calls = cpuloop._step_calls(self.fwd.lib.path)
        self._fh, self._bh = _handles(self.fwd), _handles(self.bwd)

    @property
    def closed(self) -> bool:
        return self.fwd.scope.closed or self.bwd.scope.closed

    def close(self) -> None:
        self.fwd.close()
        self.bwd.close()

    def info(self) -> dict:
        return {"threads": 1, "forward": self.fwd.info(), "backward": self.bwd.info()}

    def _live(self) -> None:
        if self.closed:
            raise BadInput("this training loop's oneDNN GEMMs were closed; build a new one")

    def forward(self, hs, gx, b1, b2, cs, hn) -> None:
        """Steps 0..T: h_t into hs[t+1] (hs[0] = h_0 given), c_t into cs[t+1], the activated gates
        over gx's rows of step t, the GRU's hn[t]."""
        self._live()
        T, cs, hn = self._tape(hs, gx, cs, hn)
        b1, b2, has_b = self._biases(b1, b2)
        from .trainloop_numba import fwd_loop
        prim, stream, args, nargs, src = self._fh
        self.fwd._ptrs[0] = None                 # the loop moves the source: re-point next time
        t, status, call = fwd_loop(self.cell, self._calls, prim, stream, args, nargs, src, hs, gx, self.gh,
                                   b1, b2, has_b, cs, hn, 0, T)
        if status:
            _raise("forward", t, status, call)

    def backward(self, dys, dh, hs, gx, cs, hn, dc, dd, db):
        """Steps T-1..0 on a tape the forward wrote (consumed: gx gets dG, hn dn r).  ``dh``
        (B, H): the gradient of h_T from after the sequence.  Returns the GEMM's part of the
        gradient of h_0 (the GRU's direct part is in ``dd``): this loop's buffer, overwritten
        by the next call."""
        self._live()
        T, cs, hn = self._tape(hs, gx, cs, hn)
        dc, dd = self._grads(T, dys, dc, dd, db)
        _check("dh", dh, (self.B, self.H), self.dtype)
        self.dr[...] = dh
        dgh = np.empty((self.B, 3, self.H), np.float32) if self.cell_mode == "gru" else _stand_in(self.dtype, 3)
        from .trainloop_numba import bwd_loop
        prim, stream, args, nargs, src = self._bh
        self.bwd._ptrs[0] = None
        t, status, call = bwd_loop(self.cell, self._calls, prim, stream, args, nargs, src, dys, self.dr, gx, hs,
                                   cs, hn, dc, dd, dgh, db, 0, T)
        if status:
            _raise("backward", t, status, call)
        return self.dr


class TrainTeam(_Steps):
    """One layer's forward and backward steps on a team of ``threads`` threads (module doc):
    per thread two packed GEMMs, built while oneDNN is limited to one thread (so it runs each
    inside the team without a region of its own): W_hh^T's columns of the thread's units,
    ``(H, G*U)``, and W_hh's, ``(G*H, U)``."""

    def __init__(self, w_hh, B: int, cell_mode: str, threads: int, packer):
        from threadpoolctl import threadpool_limits

        from kernels.onednn import lib as L
        H = w_hh.shape[1]
        super().__init__(cell_mode, B, H, np.float32)
        why = cpuloop.team_reason(H, threads)
        if why:
            raise BadInput(f"a training-loop team of {threads} threads cannot run here: {why}")
        G, B = self.G, self.B
        self.threads = threads
        self.bounds = cpuloop.shares(H, threads)
        U = int(np.diff(self.bounds).max())
        self.fwd_stride = -(-B * G * U // 16) * 16              # 64-byte aligned shares
        self.bwd_stride = -(-B * U // 16) * 16
        self.gh = np.zeros(threads * self.fwd_stride, np.float32)
        self.drs = np.zeros(threads * self.bwd_stride, np.float32)
        w = np.asarray(w_hh, np.float32)
        wt = np.ascontiguousarray(w.T).reshape(H, G, H)
        self.fwd, self.bwd = [], []
        try:
            with threadpool_limits(limits=1, user_api="openmp"):
                for p in range(threads):
                    j0, j1 = self.bounds[p], self.bounds[p + 1]
                    self.fwd.append(packer(np.ascontiguousarray(wt[:, :, j0:j1].reshape(H, G * (j1 - j0))), B))
                    self.bwd.append(packer(np.ascontiguousarray(w[:, j0:j1]), B))
            for p in range(threads):
                self.fwd[p]._point(1, self.fwd[p]._dst, self.gh[p * self.fwd_stride:].ctypes.data)
                self.bwd[p]._point(1, self.bwd[p]._dst, self.drs[p * self.bwd_stride:].ctypes.data)
            self._calls = cpuloop._team_calls(L.load().path, cpuloop._gomp()[0])
        except BaseException:
            self.close()
            raise
        self._fh = self._table(self.fwd)
        self._bh = self._table(self.bwd)
        self.runs = 0                   # forward and backward calls the team ran

    @staticmethod
    def _table(gemms) -> tuple:
        rows = [_handles(g) for g in gemms]
        u64 = lambda i: np.array([r[i] for r in rows], np.uint64)      # noqa: E731
        return u64(0), u64(1), u64(2), np.array([r[3] for r in rows], np.int64), u64(4)

    @property
    def closed(self) -> bool:
        return any(g.scope.closed for g in self.fwd + self.bwd)

    def close(self) -> None:
        for g in self.fwd + self.bwd:
            g.close()

    def info(self) -> dict:
        return {"threads": self.threads, "units": np.diff(self.bounds).tolist(),
                "forward": [g.info() for g in self.fwd], "backward": [g.info() for g in self.bwd]}

    def _ready(self) -> bool:
        """False when numba would not give each share a thread (TeamLoop.__call__ says when)."""
        import numba
        if self.closed:
            raise BadInput("this training-loop team's oneDNN GEMMs were closed; build a new one")
        return numba.get_num_threads() == self.threads and numba.get_parallel_chunksize() == 0

    def _run(self, fn, gemms, where: str, *args) -> bool:
        from .spin import SLOT
        status = np.zeros(self.threads, np.int64)
        failed_at = np.zeros((self.threads, 2), np.int64)
        arrive = np.zeros(self.threads * SLOT, np.int64)
        for g in gemms:
            g._ptrs[0] = None           # the loop moves the sources: re-point next time
        fn(*args, status, failed_at, arrive)
        if (status == -1).any():
            return False
        for p in np.flatnonzero(status):
            t, call = failed_at[p]
            _raise(f"{where} (thread {p})", t, status[p], call)
        self.runs += 1
        return True

    def forward(self, hs, gx, b1, b2, cs, hn) -> bool:
        """As :meth:`TrainLoop.forward`; False when nothing ran (the caller issues the steps
        another way): numba not at the team's thread count, or OpenMP giving a smaller team."""
        T, cs, hn = self._tape(hs, gx, cs, hn)
        b1, b2, has_b = self._biases(b1, b2)
        if not self._ready():
            return False
        from .trainloop_numba import fwd_team
        prims, streams, args, nargs, srcs = self._fh
        return self._run(fwd_team, self.fwd, "forward", self.cell, self._calls, prims, streams, args, nargs,
                         srcs, self.bounds, self.gh, self.fwd_stride, hs, gx, b1, b2, has_b, cs, hn, 0, T)

    def backward(self, dys, dh, hs, gx, cs, hn, dc, dd, db):
        """As :meth:`TrainLoop.backward`: the GEMM's part of dh_0, a new (B, H) array; None when
        nothing ran (then nothing was written: the tape is intact)."""
        T, cs, hn = self._tape(hs, gx, cs, hn)
        dc, dd = self._grads(T, dys, dc, dd, db)
        _check("dh", dh, (self.B, self.H), self.dtype)
        if not self._ready():
            return None
        B, b, s = self.B, self.bounds, self.bwd_stride
        for p in range(self.threads):
            self.drs[p * s:p * s + B * (b[p + 1] - b[p])].reshape(B, -1)[...] = dh[:, b[p]:b[p + 1]]
        dgh2 = (np.empty((2, B, 3, self.H), np.float32) if self.cell_mode == "gru"
                else _stand_in(self.dtype, 4))
        from .trainloop_numba import bwd_team
        prims, streams, args, nargs, srcs = self._bh
        if not self._run(bwd_team, self.bwd, "backward", self.cell, self._calls, prims, streams, args, nargs,
                         srcs, self.bounds, self.drs, s, dys, gx, hs, cs, hn, dc, dd, dgh2, db, 0, T):
            return None
        out = np.empty((B, self.H), np.float32)
        for p in range(self.threads):
            out[:, b[p]:b[p + 1]] = self.drs[p * s:p * s + B * (b[p + 1] - b[p])].reshape(B, -1)
        return out


class BLASLoop(_Steps):
    """The same steps issued from Python with the array module's matmul (BLAS) and the same
    kernels: fp64, and fp32 without oneDNN."""

    def __init__(self, w_hh, B: int, cell_mode: str, dtype):
        H = w_hh.shape[1]
        super().__init__(cell_mode, B, H, dtype)
        self.wt = np.ascontiguousarray(np.asarray(w_hh, self.dtype).T)      # (H, G*H)
        self.w = np.ascontiguousarray(w_hh, self.dtype)                      # (G*H, H)
        self.gh = np.zeros((self.B, self.G * H), self.dtype)
        self.closed = False

    def close(self) -> None:
        pass

    def info(self) -> dict:
        return {"threads": "BLAS's", "provider": "blas"}

    def forward(self, hs, gx, b1, b2, cs, hn) -> None:
        from . import backward_numba as k
        from .pointwise_numba import rnn_relu_units, rnn_tanh_units
        T, cs, hn = self._tape(hs, gx, cs, hn)
        b1, b2, has_b = self._biases(b1, b2)
        B, G, H, mode = self.B, self.G, self.H, self.cell_mode
        r = self.gh.reshape(B, G, H)
        for t in range(T):
            np.matmul(hs[t], self.wt, out=self.gh)
            g = gx[t * B:(t + 1) * B].reshape(B, G, H)
            if mode == "lstm":
                k.lstm_fwd_units(g, r, b1, has_b, cs[t], cs[t + 1], hs[t + 1], 0)
            elif mode == "gru":
                k.gru_fwd_units(g, r, b1, has_b, b2, hs[t], hn[t], hs[t + 1], 0)
            else:
                (rnn_relu_units if mode == "rnn_relu" else rnn_tanh_units)(g, r, b1, has_b, hs[t + 1], 0)

    def backward(self, dys, dh, hs, gx, cs, hn, dc, dd, db):
        from . import backward_numba as k
        T, cs, hn = self._tape(hs, gx, cs, hn)
        dc, dd = self._grads(T, dys, dc, dd, db)
        _check("dh", dh, (self.B, self.H), self.dtype)
        B, G, H, mode = self.B, self.G, self.H, self.cell_mode
        dr = dh.copy()
        dgh = np.empty((B, 3, H), self.dtype) if mode == "gru" else None
        for t in reversed(range(T)):
            g = gx[t * B:(t + 1) * B]
            if mode == "lstm":
                k.lstm_bwd_units(g.reshape(B, G, H), dys[t], dr, cs[t], cs[t + 1], dc, db, 0)
            elif mode == "gru":
                k.gru_bwd_units(g.reshape(B, G, H), hn[t], dys[t], dr, dd, hs[t], dgh, db, 0)
            else:
                k.rnn_bwd_units(g.reshape(B, G, H), dys[t], dr, hs[t + 1], mode == "rnn_relu", db, 0)
            np.matmul(dgh.reshape(B, G * H) if mode == "gru" else g, self.w, out=dr)
        return dr


# -- the layer-norm LSTM ---------------------------------------------------------------------------
class _LNSteps:
    """The layer-norm LSTM's extra tape and parameters (fusion/trainloop_numba.py: layouts), checked."""

    def _ln_tape(self, T: int, hh, sh, ch, sc, tl) -> None:
        B, H, dt = self.B, self.H, self.dtype
        _check("hh", hh, (T * B, 4 * H), dt)
        for name, a in (("sh", sh), ("sc", sc)):
            _check(name, a, (T, B), dt)
        for name, a in (("ch", ch), ("tl", tl)):
            _check(name, a, (T, B, H), dt)

    def _ln_params(self, **named) -> None:
        H, dt = self.H, self.dtype
        for name, a in named.items():
            _check(name, a, (4, H) if "lnh" in name else (H,), dt)


class LNTrainLoop(TrainLoop, _LNSteps):
    """The layer-norm LSTM's steps issued from one thread over the packed GEMMs of
    :class:`TrainLoop` (no team: each step normalises whole rows).  ``forward`` and ``backward``
    take the plain LSTM's arrays and the layer norm's (module fusion.trainloop_numba)."""

    def __init__(self, w_hh, B: int, packer):
        super().__init__(w_hh, B, "lstm", packer)

    def forward(self, hs, gx, cs, hh, sh, ch, sc, tl, lnh_g, lnh_b, lnc_g, lnc_b, eps) -> None:
        self._live()
        T, cs, _ = self._tape(hs, gx, cs, None)
        self._ln_tape(T, hh, sh, ch, sc, tl)
        self._ln_params(lnh_g=lnh_g, lnh_b=lnh_b, lnc_g=lnc_g, lnc_b=lnc_b)
        from .trainloop_numba import ln_fwd_loop
        prim, stream, args, nargs, src = self._fh
        self.fwd._ptrs[0] = None
        t, status, call = ln_fwd_loop(self._calls, prim, stream, args, nargs, src, hs, gx, self.gh, hh, sh, cs, ch,
                                      sc, tl, lnh_g, lnh_b, lnc_g, lnc_b, self.dtype.type(eps), 0, T)
        if status:
            _raise("forward", t, status, call)

    def backward(self, dys, dh, hs, gx, cs, hh, sh, ch, sc, tl, dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b):
        """Steps T-1..0: dP over gx, dAH over hh (the GEMM's source); the GEMM's part of dh_0 is
        returned (this loop's buffer)."""
        self._live()
        T, cs, _ = self._tape(hs, gx, cs, None)
        self._ln_tape(T, hh, sh, ch, sc, tl)
        dc, _ = self._grads(T, dys, dc, None, db)
        self._ln_params(lnc_g=lnc_g, lnh_g=lnh_g, dlnh_g=dlnh_g, dlnc_g=dlnc_g, dlnc_b=dlnc_b)
        _check("dh", dh, (self.B, self.H), self.dtype)
        self.dr[...] = dh
        from .trainloop_numba import ln_bwd_loop
        prim, stream, args, nargs, src = self._bh
        self.bwd._ptrs[0] = None
        t, status, call = ln_bwd_loop(self._calls, prim, stream, args, nargs, src, dys, self.dr, gx, hh, sh, cs, ch,
                                      sc, tl, dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b, 0, T)
        if status:
            _raise("backward", t, status, call)
        return self.dr


class LNBLASLoop(BLASLoop, _LNSteps):
    """The layer-norm LSTM's steps issued from Python, BLAS GEMMs, the same kernels."""

    def __init__(self, w_hh, B: int, dtype):
        super().__init__(w_hh, B, "lstm", dtype)

    def forward(self, hs, gx, cs, hh, sh, ch, sc, tl, lnh_g, lnh_b, lnc_g, lnc_b, eps) -> None:
        from .backward_numba import lnlstm_fwd_units
        T, cs, _ = self._tape(hs, gx, cs, None)
        self._ln_tape(T, hh, sh, ch, sc, tl)
        self._ln_params(lnh_g=lnh_g, lnh_b=lnh_b, lnc_g=lnc_g, lnc_b=lnc_b)
        B, H = self.B, self.H
        r = self.gh.reshape(B, 4, H)
        for t in range(T):
            np.matmul(hs[t], self.wt, out=self.gh)
            rows = slice(t * B, (t + 1) * B)
            lnlstm_fwd_units(gx[rows].reshape(B, 4, H), r, hh[rows].reshape(B, 4, H), sh[t], lnh_g, lnh_b, cs[t],
                             cs[t + 1], ch[t], sc[t], tl[t], hs[t + 1], lnc_g, lnc_b, self.dtype.type(eps))

    def backward(self, dys, dh, hs, gx, cs, hh, sh, ch, sc, tl, dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b):
        from .backward_numba import lnlstm_bwd_units
        T, cs, _ = self._tape(hs, gx, cs, None)
        self._ln_tape(T, hh, sh, ch, sc, tl)
        dc, _ = self._grads(T, dys, dc, None, db)
        self._ln_params(lnc_g=lnc_g, lnh_g=lnh_g, dlnh_g=dlnh_g, dlnc_g=dlnc_g, dlnc_b=dlnc_b)
        _check("dh", dh, (self.B, self.H), self.dtype)
        B, H = self.B, self.H
        dr = dh.copy()
        for t in reversed(range(T)):
            rows = slice(t * B, (t + 1) * B)
            lnlstm_bwd_units(gx[rows].reshape(B, 4, H), hh[rows].reshape(B, 4, H), dys[t], dr, cs[t], ch[t], tl[t],
                             sc[t], sh[t], dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b)
            np.matmul(hh[rows], self.w, out=dr)
        return dr
