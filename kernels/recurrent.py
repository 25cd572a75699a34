"""LSTM, GRU and vanilla RNN forward passes as ``naive`` and ``fused`` variants, generic over the array module.

The step loop below is the whole algorithm; the variant and the fusion plan only decide how the
GEMMs are arranged (:mod:`fusion.gemm`) and which pointwise stage runs (op by op from
:mod:`kernels.cells`, or one fused kernel from :mod:`fusion.pointwise`)::

    for each layer:
        gemm_x:  GX = X @ W_ih.T (+ biases)        once for all T (hoist_input) or per step
        for t in range(T):                          NVTX "step"
            gemm_h:    GH = h @ W_hh.T             1 GEMM (group_gemm) or G GEMMs
            pointwise: h, c = cell(GX[t], GH, ...)  1 kernel (fuse_pointwise) or ~15-30 ops

Build once (weights arranged, kernels compiled), call many times::

    run = RNN(params, variant="fused", backend="numba", dtype="fp32")
    y, (h_n, c_n) = run(x)

The cell is the parameters' one: a plain LSTM, GRU or vanilla RNN, or any
:class:`fusion.cellexpr.Cell` through :class:`kernels.params.CellParams` (the peephole and
layer-norm LSTMs of :mod:`kernels.custom`, a cell of your own).  Every cell gets the same GEMM
arrangement, fusion steps, backends and graphs; only the pointwise stage is the cell's own.  Its
provider (``pointwise=``): ``handwritten``, the tuned kernels of :mod:`fusion.pointwise` (numba,
``kernels/cuda/rnn_pointwise.cu``, numba.cuda), the production path of the plain cells; or
``generated``, the kernels :mod:`fusion.cellexpr` generates from the cell's declaration, the only
path of a declared cell and, for the plain cells, the oracle the tests hold the hand-written
kernels to.
"""
from __future__ import annotations

import threading
import zlib

import numpy as np

from fusion import cpuloop
from fusion import gemm as fgemm
from fusion import pointwise as fpointwise
from fusion import streams as fstreams
from fusion.steps import CHUNKS, STEPS, Plan
from kernels import nvtx

from . import cells, forking
from .backends import LIBRARY_BACKENDS, get_backend, step_backends
from .dtypes import canonical, storage
from .errors import BadInput, Unsupported
from .gpu import cublas_math
from .params import CellParams, GRUParams, LSTMParams, RNNParams, VanillaRNNParams, check_real
from .reference import check_masks, check_sequence

VARIANTS = ("naive", "fused")
POINTWISE = ("handwritten", "generated")
# Biases the plain cells fold into the input GEMM's result (fusion.cellexpr.foldable_biases says
# the same of their declarations; tests/test_custom_cells.py checks it).
PLAIN_FOLDS = {"lstm": ("bx", "bh"), "rnn": ("bx", "bh"), "gru": ("bx",)}
# The backends of the generated kernels: NumPy op by op, numba CPU, CUDA C through CuPy, numba.cuda.
GENERATED_BACKENDS = step_backends(generated=True)   # those that launch generated kernels


class _LayerExec:
    """One layer's weights arranged for a plan, plus the biases the pointwise stage still adds."""

    def __init__(self, xp, folds: tuple, layer, G: int, plan: Plan, dtype, fused: bool, given: bool = False,
                 extra: tuple = (), packer=None):
        w_ih, w_hh, b_ih, b_hh = (xp.asarray(a, dtype=dtype) for a in layer.arrays())
        # a declared cell's per-unit parameters, in its declaration's order (the kernel's)
        self.extra = tuple(xp.ascontiguousarray(xp.asarray(a, dtype=dtype)) for a in extra)
        grouped, pre_t = "group_gemm" in plan, "pretranspose" in plan
        H = w_hh.shape[1]
        # given (skip-input, first layer): the input projection is the caller's array, read in
        # place; W_ih is not used, so not arranged (a stand-in of the right G*H rows keeps the
        # layout helpers).  Its bias b_ih cannot be folded into the caller's array.
        self.given = given
        self.proj_h = fgemm.Projection(xp, w_hh, G, grouped=grouped, pretransposed=pre_t, packer=packer)
        b_ih, b_hh = b_ih.reshape(G, H), b_hh.reshape(G, H)
        self.hoist = "hoist_input" in plan and not given
        # Which biases are folded into the hoisted input GEMM and which the pointwise stage adds
        # (``folds``, see fusion.cellexpr.foldable_biases).  LSTM, vanilla RNN: b_ih + b_hh can
        # always be summed; GRU: b_hn sits inside r * (...), so only b_ih moves; layer-norm LSTM:
        # neither (gx is normalised before its biases are added).
        if folds == ("bx", "bh"):
            summed = xp.ascontiguousarray(b_ih + b_hh)
            if self.hoist:
                self.b_fold, self.bx, self.bh = summed, None, None
            elif fused:
                self.b_fold, self.bx, self.bh = None, summed, None
            else:
                self.b_fold, self.bx, self.bh = None, b_ih, b_hh
        elif folds == ("bx",):
            self.b_fold, self.bx, self.bh = (b_ih, None, b_hh) if self.hoist else (None, b_ih, b_hh)
        else:
            self.b_fold, self.bx, self.bh = None, b_ih, b_hh
        # a packed input GEMM adds the folded bias itself (oneDNN's bias argument)
        self.proj_x = fgemm.Projection(xp, w_ih[:, :1] if given else w_ih, G, grouped=grouped,
                                       pretransposed=pre_t, packer=packer, bias=self.b_fold)

    def given_rows(self, xp, seq, T: int, B: int):
        """The caller's projection ``(T, B, G*H)`` as this layer's gx buffer, without a copy."""
        flat = seq.reshape(T * B, self.proj_h.G * self.proj_h.H)
        if self.proj_x.grouped:
            return flat
        return flat.reshape(T * B, self.proj_h.G, self.proj_h.H).transpose(1, 0, 2)


class RNN:
    """A built LSTM, GRU, vanilla RNN or declared cell: ``RNN(params, variant=..., backend=..., dtype=..., opts=...)(x, ...)``.

    ``opts`` (fused only): a :class:`fusion.Plan`, a comma-separated string of step names, or None
    for every step of the backend's device.  A Plan given directly may hold GPU-only steps
    (streams, wavefront, graph) on NumPy: their orchestration then runs serially, which is how
    the CPU tests check it.  ``dtype``: precision name (``fp32``, ``fp64``) or NumPy dtype; default: the
    parameters' dtype.  ``skip_input``: the call's x is the first layer's input projection
    ``x W_ih^T``, ``(T, B, G*H)`` in canonical gate order, and only the recurrent part runs
    (DeepBench's recurrent-layer timing; cuDNN's ``CUDNN_SKIP_INPUT``); layers above run as usual.
    ``pointwise``: ``handwritten`` (default of the plain cells) or ``generated`` (the only one of a
    declared cell, :class:`~kernels.params.CellParams`); see the module doc.  A declared cell runs
    on the backends of :data:`GENERATED_BACKENDS`; it is called like an LSTM (``h0, c0``) when its
    states are ``("c",)``, like a GRU when it has none.  Bidirectional parameters (as
    ``torch.nn.LSTM(bidirectional=True)``): each direction of each layer is a one-layer runner
    of its own (``directions``) with the same plan, run layer by layer, the reverse one on the
    sequence read backwards; ``y`` is ``(T, B, 2H)``, the states ``(2L, B, H)``.  A call's
    ``dropout_masks`` (see :func:`kernels.reference.check_masks`) are multiplied into each layer's
    output but the last, as torch's dropout between layers in training mode.

    ``backend="onednn"``: oneDNN's own RNN primitive (variant ``fused`` only; LSTM, GRU, vanilla).
    Calls of one object from several threads take turns (a lock); each returns arrays of its own.
    ``track_params`` (default on): each call notices an in-place update of the parameters (a
    CRC-32 of their bytes) and arranges the weights again; off, call :meth:`refresh` after one.
    """

    def __init__(self, params: RNNParams, *, variant: str = "fused", backend: str = "numpy",
                 dtype=None, opts=None, scheduler=None, reuse_outputs: bool = False,
                 skip_input: bool = False, pointwise: str | None = None, track_params: bool = True):
        if not isinstance(params, (LSTMParams, GRUParams, VanillaRNNParams, CellParams)):
            raise BadInput(f"params must be LSTMParams, GRUParams, VanillaRNNParams or CellParams, "
                           f"got {type(params).__name__}")
        if variant not in VARIANTS:
            raise BadInput(f"variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        # One call at a time per built RNN: a call uses buffers the object owns (pointwise
        # scratch, staged rows, packed GEMMs' data pointers, step loops, captured graphs), so two
        # threads in one object would overwrite each other's (issue: wrong outputs, no error).
        # An uncontended acquire/release is two atomic operations, nothing next to the T*L GEMMs
        # of a call; contended, callers wait their turn instead of racing.
        self._lock = threading.Lock()
        # In-place updates of the parameters after build (training): the weights are arranged
        # (copied, transposed, packed) here, so each call compares a checksum of the parameters
        # with the one they were arranged from and re-arranges them when it differs.  Off
        # (track_params=False: the benchmark builders, whose timed calls must not read every
        # weight once more), refresh() does it on request.
        self.track_params = bool(track_params)
        self._vendor = None
        if backend in LIBRARY_BACKENDS:
            self._library_backend(params, variant, backend, dtype, opts, skip_input, pointwise)
            return
        declared = isinstance(params, CellParams)
        if pointwise is None:
            pointwise = "generated" if declared else "handwritten"
        if pointwise not in POINTWISE or (declared and pointwise != "generated"):
            allowed = ("generated",) if declared else POINTWISE
            raise BadInput(f"pointwise {pointwise!r} is unknown for cell {params.cell_mode}; allowed: "
                           f"{', '.join(allowed)}")
        self.generated = pointwise == "generated"
        self.expr = params.expr if declared else None
        if self.generated:
            from fusion import cellexpr
            if self.expr is None:
                self.expr = cellexpr.get(params.cell_mode)
            if tuple(self.expr.states) not in ((), ("c",)):
                raise BadInput(f"cell {self.expr.name} has states {self.expr.states}; the runner takes "
                               "cells with the LSTM's states (c) or none")
            if backend not in GENERATED_BACKENDS:
                get_backend(backend)      # an unknown name is bad input; a known one unsupported
                raise Unsupported(f"backend {backend!r} has no generated kernels of cell {self.expr.name}; "
                                  f"allowed: {', '.join(GENERATED_BACKENDS)}")
        self.backend = get_backend(backend)
        self.precision = canonical(dtype if dtype is not None else params.dtype)
        if self.generated and self.backend.device == "cpu" and self.precision not in ("fp32", "fp64"):
            raise BadInput(f"generated cells run in fp32 or fp64 on the CPU, not {self.precision}")
        self.backend.check_dtype(self.precision)
        if backend == "numba-cuda" and self.generated and _simulator():
            self.xp = np     # numba's CUDA simulator (tests): NumPy arrays, kernels run on the CPU
        else:
            self.xp = self.backend.xp()        # Unsupported (with the reason) without a GPU
        self.dtype = storage(self.precision)
        if variant == "naive":
            if opts not in (None, "none", Plan()):
                raise BadInput(f"variant 'naive' takes no fusion steps (got opts={opts!r}); "
                               "use variant='fused' with opts")
            self.plan = Plan()
        elif isinstance(opts, Plan):
            self.plan = opts
        elif opts is None or (isinstance(opts, str) and opts.strip() == "all"):
            self.plan = Plan.full(self.backend.device, exclude=self.backend.unplanned)
        elif not isinstance(opts, str):
            raise BadInput(f"opts={opts!r} is not a fusion plan; allowed: a comma-separated string of "
                           f"steps ({', '.join(STEPS)}), 'all', 'none', a fusion.Plan, or None")
        else:
            self.plan = Plan.parse(opts, self.backend.device)
        self.backend.check_plan(self.plan)
        self.variant, self.params, self.cell = variant, params, params.cell
        self.has_c = (tuple(self.expr.states) == ("c",)) if self.expr is not None else params.cell == "lstm"
        # Streams/events implementation; None picks the one of the array module.  Tests pass a
        # fusion.streams.DeferredStreams to run the stream logic in an adversarial order.
        self.scheduler = scheduler
        self._sched = None
        self._graphs: dict = {}
        # graph step: return the graph's own output buffers (overwritten by the next call) instead
        # of copies; a benchmark loop wants no copy inside the timed call, research code the copy.
        self.reuse_outputs = bool(reuse_outputs)
        self.fused = "fuse_pointwise" in self.plan
        self.pointwise = self._pointwise_stage(params, backend)
        # A fused kernel writes h straight into y[t]; the op-by-op code returns fresh arrays
        # (NumPy has no fused kernel of a declared cell: its fused stage is the op-by-op code).
        self.in_place = self.fused and not (self.generated and backend == "numpy")
        self.skip_input = bool(skip_input)
        self._step_loops: dict = {}
        self._arrange()
        # OpenMP runs in this object's calls (numba's kernels, oneDNN's GEMMs): refused in a child
        # forked after OpenMP use (kernels.forking), where it would hang or be killed
        self.uses_openmp = backend == "numba" or self.gemm_info.get("provider") == fgemm.ONEDNN

    def _arrange(self) -> None:
        """Arrange the parameters' weights for the plan (copies, transposes, packed GEMMs), and
        remember the checksum of the parameters they were arranged from."""
        params, declared = self.params, isinstance(self.params, CellParams)
        self._signature = _param_signature(params)
        folds = self.expr.foldable_biases if self.generated else PLAIN_FOLDS[self.cell]
        # GEMM provider: oneDNN with packed weights on the CPU under pretranspose (fp32), else
        # the array module's matmul; gemm_info says which, and why not oneDNN.
        packer, self.gemm_info = fgemm.provider_for(self.xp, self.backend.device, self.precision, self.plan)
        self.directions = None
        if params.bidirectional:
            if self.skip_input:
                raise BadInput("skip_input takes unidirectional parameters (one given projection, "
                               "not one per direction)")
            # one unidirectional one-layer runner per direction and layer, with this plan; their
            # layers (forward, reverse per layer: the parameters' order) are this runner's
            # (the parent tracks the parameters: it arranges the directions anew when they change)
            sub = dict(variant=self.variant, backend=self.backend.name, dtype=self.precision,
                       scheduler=self.scheduler, opts=None if self.variant == "naive" else self.plan,
                       pointwise="generated" if self.generated else "handwritten", track_params=False)
            self.directions = [[RNN(params.layer_params(l, d), **sub) for d in range(2)]
                               for l in range(params.num_layers)]
            self.layers = [lay for pair in self.directions for run in pair for lay in run.layers]
        else:
            self.layers = [_LayerExec(self.xp, folds, layer, params.num_gates, self.plan, self.dtype,
                                      self.fused, given=self.skip_input and l == 0,
                                      extra=params.extra_arrays(l) if declared else (), packer=packer)
                           for l, layer in enumerate(params.layers)]
        # numba's fused kernel over packed oneDNN GEMMs: each layer's steps run as one compiled
        # call (fusion.cpuloop) instead of a Python loop; one StepLoop per batch size, per layer.
        self.step_loop_why = cpuloop.why_not(self.plan, self.backend.name, params.cell_mode, self.generated,
                                             self.gemm_info.get("provider"))
        self.compiled_loop = self.step_loop_why is None
        for loop in self._step_loops.values():    # a team owns packed copies of the old weights
            if hasattr(loop, "close"):
                loop.close()
        self._step_loops = {}
        self._graphs = {}                          # captured with the old weights

    def refresh(self) -> "RNN":
        """Arrange the parameters' weights again, after an in-place update (a training step).
        Calls do it themselves when ``track_params`` is on (the default)."""
        with self._lock:
            if self._vendor is not None:
                self._vendor.refresh()
            else:
                self._arrange()
        return self

    def _library_backend(self, params, variant, backend, dtype, opts, skip_input, pointwise) -> None:
        """``backend="onednn"``: the vendor library's own RNN (oneDNN's RNN primitive), which is
        one fused kernel per stack of layers: variant "fused" only, no fusion plan of ours."""
        self.backend = get_backend(backend)
        self.variant, self.params, self.cell = variant, params, params.cell
        if variant != "fused":
            raise Unsupported(f"backend {backend} runs oneDNN's own RNN primitive, one fused kernel: it "
                              f"has no {variant} form; use variant='fused' (or a step backend: "
                              f"{', '.join(step_backends('cpu'))})")
        if isinstance(params, CellParams):
            raise Unsupported(f"backend {backend}: oneDNN has no RNN primitive of cell {params.cell_mode} "
                              f"(LSTM, GRU and vanilla RNN only); use backend numpy or numba")
        if skip_input:
            raise Unsupported(f"backend {backend}: oneDNN's RNN primitive always computes the input GEMM "
                              "(no skip-input)")
        if pointwise not in (None, "handwritten"):
            raise BadInput(f"pointwise {pointwise!r}: backend {backend} runs oneDNN's RNN primitive, "
                           "whose pointwise stage is its own; leave pointwise unset")
        if not (opts is None or (isinstance(opts, str) and opts.strip() == "all")):
            raise BadInput(f"opts={opts!r}: backend {backend} runs oneDNN's RNN primitive, which takes "
                           "no fusion steps of ours; leave opts unset")
        self.precision = canonical(dtype if dtype is not None else params.dtype)
        self.backend.check_dtype(self.precision)
        self.xp, self.dtype = np, storage(self.precision)
        self.plan, self.generated, self.expr, self.skip_input = Plan(), False, None, False
        self.has_c, self.uses_openmp, self.gemm_info = params.cell == "lstm", True, {}
        self._vendor = _VendorRNN(params, self.precision)

    def _refresh_if_changed(self) -> None:
        """Re-arrange the weights when the parameters changed in place since they were arranged."""
        if self._vendor is not None:
            self._vendor.refresh_if_changed()
        elif self._signature is not None and _param_signature(self.params) != self._signature:
            self._arrange()

    def prepare(self, T: int, B: int) -> "RNN":
        """Pack the weights for every GEMM a call with T steps and batch B makes, now rather than
        in the first call (a no-op without a packing provider).  Each row count M is one oneDNN
        primitive: B for the step GEMMs, T*B (or a chunk of it) for the hoisted input GEMM."""
        with self._lock:
            if self._vendor is not None:
                self._vendor.get(T, B)
            elif self.directions is not None:
                for pair in self.directions:
                    for run in pair:
                        run.prepare(T, B)
            elif self.gemm_info.get("provider") == fgemm.ONEDNN:
                self._prepare(T, B)
        return self

    def _prepare(self, T: int, B: int) -> None:
        chunk = self._chunk(T)
        for l, lay in enumerate(self.layers):
            lay.proj_h.prepare(B)
            if self.compiled_loop:
                self._step_loop(l, B)
            if lay.given:
                continue
            if not lay.hoist:
                lay.proj_x.prepare(B)
                continue
            for t0 in range(0, T, chunk):
                lay.proj_x.prepare((min(T, t0 + chunk) - t0) * B)

    def _chunk(self, T: int) -> int:
        """Steps per chunk of work: T, or T/CHUNKS when streams or wavefront overlap chunks."""
        overlap = "streams" in self.plan or "wavefront" in self.plan
        return max(1, -(-T // CHUNKS)) if overlap else T

    @property
    def provider(self):
        """The pointwise stage's callable (a generated kernel's launcher, a hand-written kernel,
        or the op-by-op code)."""
        return self.pointwise

    def _pointwise_stage(self, params, backend: str):
        """The per-step pointwise callable: op by op (naive), or the fused provider."""
        if not self.generated:
            # params.cell_mode: the vanilla cell's nonlinearity picks its kernels (rnn_relu, rnn_tanh)
            if not self.fused:
                return cells.NAIVE[params.cell_mode]
            try:
                return fpointwise.get(params.cell_mode, self.backend.pointwise)
            except ValueError as e:     # no fused kernel of this cell for this backend
                raise Unsupported(f"backend {backend}: {e}") from None
        from fusion import cellexpr
        if not self.fused or backend == "numpy":
            return cellexpr.numpy_step(self.expr)
        if backend == "numba":
            return cellexpr.NumbaCell(self.expr)
        from fusion import cellexpr_gpu
        return cellexpr_gpu.provider(self.expr, backend)

    # ------------------------------------------------------------------------------------------
    def __call__(self, x, h0=None, c0=None, *, batch_first: bool = False, dropout_masks=None):
        if self.uses_openmp and forking.inherited():
            forking.check(f"kernels.RNN on backend {self.backend.name}")
        with self._lock:
            if self.track_params:
                self._refresh_if_changed()
            return self._call(x, h0, c0, batch_first, dropout_masks)

    def _call(self, x, h0, c0, batch_first: bool, dropout_masks):
        xp, p = self.xp, self.params
        states = {"h0": h0, "c0": c0} if self.has_c else {"h0": h0}
        if not self.has_c and c0 is not None:
            raise BadInput(f"a {self.cell.upper()} has no cell state: c0 must be None")
        x = xp.asarray(x)
        T, B = check_sequence(x.shape, p, batch_first, states, self.skip_input, x=x)
        masks = tuple(xp.asarray(m, dtype=self.dtype) for m in check_masks(dropout_masks, p, T, B))
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)  # outside any timed region: builders pass the built dtype
        seq = x.transpose(1, 0, 2) if batch_first else x
        if self._vendor is not None:
            if masks:
                raise Unsupported("backend onednn runs oneDNN's RNN primitive, which has no dropout "
                                  "between layers; use backend numpy or numba for dropout_masks")
            y, h_n, c_n = self._vendor(seq, h0, c0, T, B)
        else:
            with cublas_math(xp, self.precision):
                if self.directions is not None:
                    y, h_n, c_n = self._bidirectional(seq, h0, c0, masks)
                elif "graph" in self.plan and xp.__name__ == "cupy" and not masks:   # a graph would bake one mask in
                    y, h_n, c_n = self._graph_call(seq, h0, c0, T, B)
                else:
                    y, h_n, c_n = self._forward(seq, h0, c0, T, B, masks)
        y = y.transpose(1, 0, 2) if batch_first else y
        return (y, (h_n, c_n)) if self.has_c else (y, h_n)

    def _bidirectional(self, seq, h0, c0, masks: tuple):
        """Layer by layer, each direction's one-layer runner, the reverse one on the sequence read
        backwards (its output flipped back); the layer's output is both directions' h side by
        side, times the layer's dropout mask.  States: entry 2l + d of h0/c0, h_n/c_n."""
        xp = self.xp
        h_n, c_n = [], []
        for l, pair in enumerate(self.directions):
            outs = []
            for d, run in enumerate(pair):
                k = 2 * l + d
                inp = xp.ascontiguousarray(seq[::-1]) if d else seq
                h0k, c0k = (None if s is None else xp.asarray(s)[k:k + 1] for s in (h0, c0))
                if self.has_c:
                    y, (h, c) = run(inp, h0k, c0k)
                    c_n.append(c)
                else:
                    y, h = run(inp, h0k)
                h_n.append(h)
                outs.append(y[::-1] if d else y)
            seq = xp.concatenate(outs, axis=2)
            if l < len(masks):
                seq = seq * masks[l]
        return seq, xp.concatenate(h_n), (xp.concatenate(c_n) if self.has_c else None)

    def _forward(self, seq, h0, c0, T: int, B: int, masks: tuple = ()):
        """Issue every GEMM and pointwise stage of every layer on the scheduler's streams.

        Work is issued per chunk of steps.  Without ``streams``/``wavefront`` there is one chunk
        and one stream, which is the plain loop.  With them, chunk c of layer l depends on:
        its input rows (the input GEMM of that chunk, on the layer's input stream, which itself
        waits for chunk c of layer l-1) and on chunk c-1 of the same layer (stream order).
        ``masks``: dropout between layers; layer l reads its own masked copy of layer l-1's
        output, made chunk by chunk on layer l's input stream before its input GEMM.
        """
        xp, dt, sch = self.xp, self.dtype, self.streams_for()
        sch.begin()
        L, H = self.params.num_layers, self.params.hidden_size
        overlap = "streams" in self.plan or "wavefront" in self.plan
        chunk = self._chunk(T)
        n_chunks = -(-T // chunk)
        main = sch.stream("main")
        s_step = [sch.stream(("layer", l)) if "wavefront" in self.plan else main for l in range(L)]
        s_x = [sch.stream(("x", l)) if "streams" in self.plan else s_step[l] for l in range(L)]
        used = list(dict.fromkeys(s_step + s_x))
        start = sch.record(main)              # the inputs are ready on the caller's stream
        for s in used:
            if s is not main:
                sch.wait(s, start)
        ys = [xp.empty((T, B, H), dtype=dt) for _ in range(L)]
        dropped = [xp.empty((T, B, H), dtype=dt) for _ in masks]
        h_n = xp.empty((L, B, H), dtype=dt)
        c_n = xp.empty((L, B, H), dtype=dt) if self.has_c else None
        ctx = []
        for l, lay in enumerate(self.layers):
            c = None
            if self.has_c:  # updated in place, one buffer per layer
                c = xp.zeros((B, H), dt) if c0 is None else xp.array(c0[l], dtype=dt)
            h_init = xp.zeros((B, H), dt) if h0 is None else xp.ascontiguousarray(h0[l], dtype=dt)
            if lay.given:
                gx_all = lay.given_rows(xp, xp.ascontiguousarray(seq), T, B)
            else:
                gx_all = lay.proj_x.alloc(T * B, dt) if (lay.hoist or overlap) else None
            ctx.append(dict(c=c, h0=h_init, gx_all=gx_all, gh=lay.proj_h.alloc(B, dt),
                            gx_step=None if gx_all is not None else lay.proj_x.alloc(B, dt)))
        done = [[None] * n_chunks for _ in range(L)]
        if "wavefront" in self.plan:   # issue diagonally, so every layer's stream has work early
            order = [(l, d - l) for d in range(n_chunks + L - 1) for l in range(L) if 0 <= d - l < n_chunks]
        else:
            order = [(l, k) for l in range(L) for k in range(n_chunks)]
        for l, k in order:
            lay, st, t0, t1 = self.layers[l], ctx[l], k * chunk, min(T, (k + 1) * chunk)
            inp = seq if l == 0 else ys[l - 1]
            if l > 0:
                sch.wait(s_x[l], done[l - 1][k])
                if masks:
                    sch.launch(s_x[l], lambda l=l, t0=t0, t1=t1: xp.multiply(
                        ys[l - 1][t0:t1], masks[l - 1][t0:t1], out=dropped[l - 1][t0:t1]))
                    inp = dropped[l - 1]
            if lay.given:             # nothing to project: the steps read the caller's rows
                pass
            elif lay.hoist:
                sch.launch(s_x[l], lambda lay=lay, st=st, inp=inp, t0=t0, t1=t1: self._gemm_x(lay, st, inp, t0, t1, B))
                if s_x[l] is not s_step[l]:
                    sch.wait(s_step[l], sch.record(s_x[l]))
            if self.compiled_loop:
                sch.launch(s_step[l], lambda l=l, t0=t0, t1=t1: self._loop_steps(l, t0, t1, ys[l], ctx[l], B))
                done[l][k] = sch.record(s_step[l])
                continue
            for t in range(t0, t1):
                if not lay.hoist and not lay.given and st["gx_all"] is not None:  # per-step input GEMM
                    sch.launch(s_x[l], lambda lay=lay, st=st, inp=inp, t=t: self._gemm_x(lay, st, inp, t, t + 1, B))
                    if s_x[l] is not s_step[l]:
                        sch.wait(s_step[l], sch.record(s_x[l]))
                sch.launch(s_step[l], lambda l=l, t=t, inp=inp: self._step(l, t, inp, ys[l], ctx[l], B))
            done[l][k] = sch.record(s_step[l])
        sch.join(main, used)
        for l in range(L):
            h_n[l] = ys[l][T - 1]
            if c_n is not None:
                c_n[l] = ctx[l]["c"]
        return ys[-1], h_n, c_n

    def _gemm_x(self, lay: _LayerExec, st: dict, inp, t0: int, t1: int, B: int):
        """Input GEMM for steps t0..t1 (M = (t1-t0)*B) into rows of the layer's gx buffer."""
        with nvtx.phase("gemm_x"):
            rows = self.xp.ascontiguousarray(inp[t0:t1]).reshape((t1 - t0) * B, -1)
            buf = st["gx_all"]
            out = buf[t0 * B:t1 * B] if lay.proj_x.grouped else buf[:, t0 * B:t1 * B]
            lay.proj_x(rows, out)
            if lay.b_fold is not None and not lay.proj_x.adds_bias:
                gates = lay.proj_x.gates(out)
                gates += lay.b_fold

    def _step_loop(self, l: int, B: int):
        """Layer l's compiled loop for batch B at numba's thread count now: a thread team over all
        steps (fusion.cpuloop.TeamLoop) where one can form, else the one-thread-issued loop."""
        return self._team_loop(l, B) or self._single_loop(l, B)

    def _team_loop(self, l: int, B: int):
        import numba
        n, lay = numba.get_num_threads(), self.layers[l]
        if cpuloop.team_reason(lay.proj_h.H, n):
            return None
        loop = self._step_loops.get((l, B, n))
        if loop is None or loop.closed:
            loop = self._keep((l, B, n), cpuloop.TeamLoop(lay.proj_h.mats[0], B, self.params.cell_mode,
                                                          self.dtype, n, lay.proj_h.packer))
        return loop

    def _single_loop(self, l: int, B: int):
        """The StepLoop over the packed GEMM the projection holds now (a projection releases the
        primitives of old row counts: a loop over one is made anew)."""
        gemm = self.layers[l].proj_h.prepare(B)[0]
        loop = self._step_loops.get((l, B, 1))
        if loop is None or loop.gemm is not gemm:
            loop = self._keep((l, B, 1), cpuloop.StepLoop(gemm, self.params.cell_mode, self.dtype))
        return loop

    def _keep(self, key, loop):
        """Remember a loop; forget closed ones, and close the oldest teams (which own their
        packed GEMMs) beyond MAX_PACKED per layer, as a projection releases its primitives."""
        kept = {k: v for k, v in self._step_loops.items() if not v.closed and k != key}
        if isinstance(loop, cpuloop.TeamLoop):
            teams = [k for k in kept if k[0] == key[0] and isinstance(kept[k], cpuloop.TeamLoop)]
            for k in teams[:max(0, len(teams) + 1 - fgemm.MAX_PACKED)]:
                kept.pop(k).close()
        kept[key] = loop            # last: the newest
        self._step_loops = kept
        return loop

    def _loop_steps(self, l: int, t0: int, t1: int, y, st: dict, B: int):
        """Steps t0..t1 of layer l as one compiled call (GEMM and cell kernel per step)."""
        lay = self.layers[l]
        with nvtx.phase("steps"):
            team = self._team_loop(l, B)
            if team is not None and team(st["h0"], y, st["gx_all"], lay.bx, lay.bh, st["c"], t0, t1):
                return
            self._single_loop(l, B)(st["h0"], y, st["gx_all"], st["gh"], lay.bx, lay.bh, st["c"], t0, t1)

    def _step(self, l: int, t: int, inp, y, st: dict, B: int):
        xp, lay = self.xp, self.layers[l]
        with nvtx.phase("step"):
            if st["gx_all"] is not None:   # filled by _gemm_x, hoisted or per step
                gx = lay.proj_x.rows(st["gx_all"], t * B, (t + 1) * B)
            else:
                with nvtx.phase("gemm_x"):
                    gx = lay.proj_x.gates(lay.proj_x(inp[t], st["gx_step"]))
            h_prev = st["h0"] if t == 0 else y[t - 1]
            with nvtx.phase("gemm_h"):
                lay.proj_h(h_prev, st["gh"])
            gh = lay.proj_h.gates(st["gh"])
            with nvtx.phase("pointwise"):
                if self.generated:
                    self._generated_pointwise(lay, gx, gh, h_prev, y[t], st["c"])
                elif st["c"] is not None:
                    h, c = self.pointwise(xp, gx, gh, lay.bx, lay.bh, st["c"], y[t], st["c"])
                    if not self.fused:   # the op-by-op cell returns new arrays
                        y[t] = h
                        st["c"][...] = c
                else:
                    (h,) = self.pointwise(xp, gx, gh, lay.bx, lay.bh, h_prev, y[t])
                    if not self.fused:
                        y[t] = h

    def _generated_pointwise(self, lay: _LayerExec, gx, gh, h_prev, h_out, c):
        """A generated stage: the fused kernel (state updated in place, h written into h_out) or
        the op-by-op code (fresh arrays, copied in)."""
        states = () if c is None else (c,)
        if self.in_place:
            self.pointwise(self.xp, gx, gh, lay.bx, lay.bh, h_prev, states, lay.extra, h_out, states)
            return
        h, *new = self.pointwise(self.xp, gx, gh, lay.bx, lay.bh, h_prev, *states, *lay.extra)
        h_out[...] = h
        for s, v in zip(states, new):
            s[...] = v

    def streams_for(self):
        """The scheduler: the one given, else one per built RNN (its streams and events are made
        once, not on every call)."""
        if self.scheduler is not None:
            return self.scheduler
        if self._sched is None:
            self._sched = fstreams.for_module(self.xp)
        return self._sched

    def _graph_entry(self, seq, h0, c0, T: int, B: int) -> dict:
        """The captured graph of one input signature, capturing it on first use: static input
        buffers it reads, outputs it writes, its stream and its two events (made once)."""
        xp = self.xp
        key = (seq.shape, h0 is None, c0 is None)
        g = self._graphs.get(key)
        if g is None:
            static = {"seq": xp.array(seq), "h0": None if h0 is None else xp.array(h0, dtype=self.dtype),
                      "c0": None if c0 is None else xp.array(c0, dtype=self.dtype)}
            stream = xp.cuda.Stream(non_blocking=True)
            with stream:
                self._forward(static["seq"], static["h0"], static["c0"], T, B)  # allocations happen here
                stream.synchronize()
                stream.begin_capture()
                try:
                    outs = self._forward(static["seq"], static["h0"], static["c0"], T, B)
                finally:
                    graph = stream.end_capture()
            g = self._graphs[key] = dict(graph=graph, stream=stream, static=static, outs=outs,
                                         ready=xp.cuda.Event(disable_timing=True),
                                         finished=xp.cuda.Event(disable_timing=True))
        return g

    def graph_inputs(self, x, h0=None, c0=None):
        """(``graph`` plans on CuPy) The static buffers the captured graph reads, filled with
        ``x``, ``h0``, ``c0``; calling with exactly these arrays copies nothing in.  Time-major."""
        if "graph" not in self.plan or self.xp.__name__ != "cupy":
            raise BadInput("graph_inputs is for plans with the graph step on a GPU backend")
        with self._lock:
            return self._graph_inputs(x, h0, c0)

    def _graph_inputs(self, x, h0, c0):
        x = self.xp.asarray(x, dtype=self.dtype)
        T, B = check_sequence(x.shape, self.params, False,
                              {"h0": h0, "c0": c0} if self.has_c else {"h0": h0})
        with cublas_math(self.xp, self.precision):
            static = self._graph_entry(x, h0, c0, T, B)["static"]
        static["seq"][...] = x
        for name, v in (("h0", h0), ("c0", c0)):
            if v is not None:
                static[name][...] = v
        return static["seq"], static["h0"], static["c0"]

    def _graph_call(self, seq, h0, c0, T: int, B: int):
        """``graph`` step: capture one whole call per input signature, then replay it.

        Inputs are copied into the static buffers the graph reads unless they are those buffers
        (:meth:`graph_inputs`); outputs are copied out of the static buffers it writes, so results
        of earlier calls are not overwritten, unless ``reuse_outputs`` is set.
        """
        xp = self.xp
        g = self._graph_entry(seq, h0, c0, T, B)
        static, stream = g["static"], g["stream"]
        for name, v in (("seq", seq), ("h0", h0), ("c0", c0)):
            if v is not None and v is not static[name]:
                static[name][...] = v
        main = xp.cuda.get_current_stream()
        g["ready"].record(main)
        stream.wait_event(g["ready"])
        g["graph"].launch(stream)
        g["finished"].record(stream)
        main.wait_event(g["finished"])
        if self.reuse_outputs:
            return g["outs"]
        return tuple(None if o is None else o.copy() for o in g["outs"])


class _VendorRNN:
    """oneDNN's RNN primitive behind :class:`RNN`'s call (``backend="onednn"``): one
    :class:`kernels.onednn.rnn.OnednnRNN` per (T, B), since a primitive fixes both, the oldest
    released beyond :data:`MAX_SHAPES`; outputs copied out of the buffers it reuses per call."""

    MAX_SHAPES = 4

    def __init__(self, params, precision: str):
        from .onednn import lib as dnnl
        ok, why = dnnl.available()
        if not ok:
            raise Unsupported(f"backend onednn: {why}")
        self.params, self.precision = params, precision
        self._built: dict = {}
        self._signature = _param_signature(params)

    def get(self, T: int, B: int):
        from .onednn.rnn import OnednnRNN
        run = self._built.get((T, B))
        if run is None:
            while len(self._built) >= self.MAX_SHAPES:
                self._built.pop(next(iter(self._built))).close()
            run = self._built[(T, B)] = OnednnRNN(self.params, batch=B, seq_len=T, precision=self.precision)
        return run

    def refresh(self) -> None:
        self.close()
        self._signature = _param_signature(self.params)

    def refresh_if_changed(self) -> None:
        if self._signature is not None and _param_signature(self.params) != self._signature:
            self.refresh()

    def __call__(self, seq, h0, c0, T: int, B: int):
        run = self.get(T, B)
        zeros = lambda: np.zeros((run.L, B, run.H), run.dtype)  # noqa: E731
        outs = run(seq, zeros() if h0 is None else h0, (zeros() if c0 is None else c0) if run.cell == "lstm" else None)
        y, h_n = outs[0].copy(), outs[1].copy()
        return y, h_n, (outs[2].copy() if run.cell == "lstm" else None)

    def close(self) -> None:
        built, self._built = self._built, {}
        for run in built.values():
            run.close()

    def __del__(self):     # the RNN that owns it went: release the primitives' oneDNN handles
        if getattr(self, "_built", None):
            self.close()


def _param_signature(params) -> tuple | None:
    """CRC-32 of every parameter array's bytes: a cheap pass that notices an in-place update of
    the weights after they were arranged (None when an array is not a NumPy array: not tracked)."""
    sig = []
    for l, layer in enumerate(params.layers):
        extra = params.extra_arrays(l) if isinstance(params, CellParams) else ()
        for a in (*layer.arrays(), *extra):
            if not isinstance(a, np.ndarray):
                return None
            sig.append(zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
    return tuple(sig)


def _simulator() -> bool:
    """numba's CUDA simulator is on (then the numba-cuda backend's generated kernels take NumPy arrays)."""
    from fusion.cellexpr_gpu import simulator_active
    return simulator_active()


def _dtype_of(x):
    check_real("x", x)      # text or complex: one line, before its dtype is taken as the precision
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _as_array(a, name: str):
    """NumPy and CuPy arrays as they are; any other DLPack array (a torch or JAX tensor on the
    CPU) as a zero-copy NumPy view; else a one-line error saying what is taken."""
    if a is None or isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "cupy":
        return a
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (TypeError, RuntimeError, BufferError, ValueError) as e:
            raise BadInput(f"{name}: a {type(a).__module__}.{type(a).__name__} that NumPy cannot take "
                           f"through DLPack ({str(e).splitlines()[0]}); pass a NumPy array (CPU), a CuPy "
                           "array (GPU) or a CPU tensor without grad (tensor.detach().cpu()); for "
                           "autograd use kernels.torch / kernels.jax") from None
    return a


def lstm(x, params: LSTMParams, h0=None, c0=None, *, variant: str = "fused", backend: str = "numpy",
         dtype=None, opts=None, batch_first: bool = False):
    """LSTM forward. Returns ``y`` and ``(h_n, c_n)``. See :class:`RNN` for the keywords."""
    if not isinstance(params, LSTMParams):
        raise BadInput(f"lstm needs LSTMParams, got {type(params).__name__}")
    x, h0, c0 = _as_array(x, "x"), _as_array(h0, "h0"), _as_array(c0, "c0")
    dtype = dtype if dtype is not None else _dtype_of(x)
    return RNN(params, variant=variant, backend=backend, dtype=dtype, opts=opts)(
        x, h0, c0, batch_first=batch_first)


def gru(x, params: GRUParams, h0=None, *, variant: str = "fused", backend: str = "numpy",
        dtype=None, opts=None, batch_first: bool = False):
    """GRU forward. Returns ``y`` and ``h_n``. See :class:`RNN` for the keywords."""
    if not isinstance(params, GRUParams):
        raise BadInput(f"gru needs GRUParams, got {type(params).__name__}")
    x, h0 = _as_array(x, "x"), _as_array(h0, "h0")
    dtype = dtype if dtype is not None else _dtype_of(x)
    return RNN(params, variant=variant, backend=backend, dtype=dtype, opts=opts)(
        x, h0, batch_first=batch_first)


def rnn(x, params: VanillaRNNParams, h0=None, *, variant: str = "fused", backend: str = "numpy",
        dtype=None, opts=None, batch_first: bool = False):
    """Vanilla RNN forward (``params.nonlinearity``: relu or tanh). Returns ``y`` and ``h_n``.
    See :class:`RNN` for the keywords."""
    if not isinstance(params, VanillaRNNParams):
        raise BadInput(f"rnn needs VanillaRNNParams, got {type(params).__name__}")
    x, h0 = _as_array(x, "x"), _as_array(h0, "h0")
    dtype = dtype if dtype is not None else _dtype_of(x)
    return RNN(params, variant=variant, backend=backend, dtype=dtype, opts=opts)(
        x, h0, batch_first=batch_first)
