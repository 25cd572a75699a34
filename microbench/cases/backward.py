"""Training-step cases (``--backward``): forward + backward of our fused LSTM, GRU, vanilla RNN and
layer-norm LSTM (:mod:`kernels.backward`; plain cells also with ``--skip-input``), and the gradient check every training row (ours and the
frameworks') goes through.

The loss is ``sum(y * dY)`` for a fixed random ``dY`` (T, B, H) drawn from the seed (never zeros
or ones: a constant dY would hide a transposed or misplaced gradient block); no gradient flows
into ``h_n`` or ``c_n``.  A row returns ``y`` and the gradients with respect to ``x``, ``h0``,
``c0`` (LSTMs) and every weight, in the order :func:`microbench.frameworks.convert.grad_names` gives.

Reference: ``y`` from the float64 forward definitions (:mod:`kernels.reference`,
:mod:`kernels.custom`); the gradients from :mod:`kernels.backward` run in float64 on the same
rounded inputs.  That code is checked against central finite differences of the float64
references and against PyTorch autograd in ``tests/test_backward.py``; finite differences at
benchmark sizes would take hours.

Tolerance, per array: the precision's (fp32 1e-5, fp64 1e-10) or a multiple of that array's
measured conditioning, whichever is larger (:mod:`.conditioning`).  It matters for the layer-norm
LSTM, whose gradients also grow going back in time (at H=512, B=64, T=100 with the seeded
weights |dx| grows 300-fold from t=T-1 to t=0): there fp32 gradients are only defined to ~1e-3.
"""
from __future__ import annotations

import functools

import numpy as np

from fusion import gemm as fgemm
from fusion.steps import Plan
from kernels import backward as bw
from kernels import dtypes
from kernels.custom import CUSTOM_REFERENCES
from kernels.errors import BadInput, Unsupported
from kernels.reference import REFERENCES

from ..frameworks.convert import LAYERNORM_EXTRAS, grad_names
from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, register
from . import conditioning as cond
from .custom import make_custom_inputs
from .rnn import make_inputs

__all__ = ["BACKWARD_BACKENDS", "BACKWARD_CELLS", "BACKWARD_PRECISIONS", "build_backward",
           "check_grads", "flatten_grads", "grad_op", "memory_estimate", "train_inputs", "upstream_grad"]

BACKWARD_CELLS = tuple(bw.CELLS)             # kernels.backward has no peephole LSTM
# numpy: kernels.backward, the steps issued from Python; numba: kernels.train, the steps compiled
BACKWARD_BACKENDS = ("numpy", "numba")
BACKWARD_PRECISIONS = ("fp32", "fp64")
FLOPS_NOTE = ("3x the forward GEMM FLOPs: every forward GEMM has two backward GEMMs of the same "
              "size (data and weight gradients); pointwise and layer-norm work not counted")


def grad_op(problem: RNNProblem, cell: str) -> str:
    """The name :func:`~microbench.frameworks.convert.grad_names` and the workers use."""
    return "layernorm" if cell == "layernorm" else problem.op


def upstream_grad(problem: RNNProblem, seed: int, precision: str) -> np.ndarray:
    """dY (T, B, H): standard normal from its own stream of the seed, rounded to the storage type."""
    rng = np.random.default_rng([seed, 2])
    return rng.standard_normal((problem.T, problem.B, problem.H)).astype(dtypes.storage(precision))


def train_inputs(problem: RNNProblem, seed: int, precision: str, cell: str) -> dict:
    """The forward inputs every forward row of the cell gets, plus ``dy``."""
    if cell not in BACKWARD_CELLS:
        raise BadInput(f"--backward: kernels.backward has no {cell} LSTM; allowed cells: "
                       f"{', '.join(BACKWARD_CELLS)}")
    if cell != "plain" and problem.skip_input:
        raise BadInput(f"--skip-input applies to the plain cells, not --cell {cell}")
    inp = make_inputs(problem, seed, precision) if cell == "plain" else \
        make_custom_inputs(problem, seed, precision, cell)
    return {**inp, "dy": upstream_grad(problem, seed, precision)}


def flatten_grads(op: str, y, g: bw.Grads) -> list:
    """``y`` and a :class:`kernels.backward.Grads` in :func:`grad_names` order (a skip-input
    first layer has no ``w_ih`` entry, and grad_names none either)."""
    out = [y, g.x, g.h0] + ([g.c0] if op in ("lstm", "layernorm") else [])
    per = ("w_ih", "w_hh", "b_ih", "b_hh") + (LAYERNORM_EXTRAS if op == "layernorm" else ())
    for layer in g.layers:
        out += [layer[k] for k in per if k in layer]
    return out


def _float64_train(op, params, x, h0, c0, dy, skip_input=False) -> list:
    y, _, tape = bw.forward_train(x, params, h0, c0 if op in ("lstm", "layernorm") else None,
                                  dtype=np.float64, skip_input=skip_input)
    return flatten_grads(op, y, bw.backward(tape, dy))


@functools.lru_cache(maxsize=4)
def reference_grads(problem: RNNProblem, seed: int, precision: str, cell: str) -> tuple:
    """``(names, reference arrays, tolerances)`` for a training row; cached across the rows of a run.

    ``y`` comes from the float64 forward definition, the gradients from kernels.backward in
    float64; each array's tolerance follows its measured conditioning (:mod:`.conditioning`)."""
    op = grad_op(problem, cell)
    inp = train_inputs(problem, seed, precision, cell)
    p64 = inp["params"].astype(np.float64)
    x, h0, dy = (inp[k].astype(np.float64) for k in ("x", "h0", "dy"))
    c0 = inp["c0"].astype(np.float64) if inp["c0"] is not None else None
    skip = problem.skip_input
    base = _float64_train(op, p64, x, h0, c0, dy, skip)
    if cell != "plain":
        y = CUSTOM_REFERENCES[cell](x, p64, h0, c0)[0]
    elif op == "lstm":
        y = REFERENCES[op](x, p64, h0, c0, skip_input=skip)[0]
    else:
        y = REFERENCES[op](x, p64, h0, skip_input=skip)[0]
    ref = [y] + base[1:]
    u, rng = cond.unit_roundoff(precision), np.random.default_rng([seed, 3])
    moved = _float64_train(op, cond.perturb_params(p64, rng, u), cond.perturb(x, rng, u),
                           cond.perturb(h0, rng, u), cond.perturb(c0, rng, u), dy, skip)
    return tuple(grad_names(op, problem.L, skip)), tuple(ref), cond.tolerances(base, moved, precision)


def check_grads(outputs, problem: RNNProblem, seed: int, precision: str, cell: str) -> Check:
    """y and every gradient against the reference, each with its own tolerance."""
    names, ref, tols = reference_grads(problem, seed, precision, cell)
    return cond.compare_each(outputs, ref, tols, names)


def memory_estimate(problem: RNNProblem, itemsize: int) -> int:
    """Peak bytes of one checked training row: the forward estimate plus the tape and the
    gradient buffers, once in the storage type and twice in float64 (reference, conditioning).
    Per layer the layer-norm tape holds about 16 H values per (t, b) row (h, c, 4H gates, the two
    normalised 4H pre-activations, c^ and tanh), the backward about 12 H more (dP, dAH, dAX)."""
    rows = problem.T * problem.B
    words = problem.L * rows * (problem.I + 28 * problem.H) + 2 * problem.num_weights()
    return problem.memory_estimate(itemsize) + words * (itemsize + 2 * 8)


def build_backward(problem: RNNProblem, seed: int, *, cell: str, backend: str, precision: str,
                   plan=None) -> Prepared:
    """Forward (hoisted input GEMM, one recurrent GEMM per step, the tape) and backward (one GEMM
    per step for dh, weight gradients as one GEMM over all T*B rows each) of the fused
    arrangement; ``cell``: plain or layernorm.  Backend numpy: :mod:`kernels.backward`, the steps
    issued from Python; numba: :mod:`kernels.train`, the steps compiled."""
    if plan not in (None, "all"):
        raise BadInput(f"the backward pass has one arrangement; it takes no fusion plan (got {plan!r})")
    if backend not in BACKWARD_BACKENDS:
        raise BadInput(f"--backward runs on backend {', '.join(BACKWARD_BACKENDS)}, not {backend!r}")
    if precision not in BACKWARD_PRECISIONS:
        raise Unsupported(f"the backward pass computes {', '.join(BACKWARD_PRECISIONS)}, not {precision}")
    op = grad_op(problem, cell)
    inp = train_inputs(problem, seed, precision, cell)
    params, x, h0, c0, dy = (inp[k] for k in ("params", "x", "h0", "c0", "dy"))
    dt = dtypes.storage(precision)
    extra = {}
    if backend == "numba":
        from kernels.train import Trainer
        trainer = Trainer(params, dtype=precision, skip_input=problem.skip_input).prepare(problem.T, problem.B)

        def run():
            y, _, tape = trainer.forward(x, h0, c0)
            return y, trainer.backward(tape, dy)
        gemm_info = dict(trainer.gemm_info)
        kinds = sorted(set(trainer.loop_kinds.values()))        # every layer has the same H
        extra = {"step_loop": "; ".join(kinds) + (" (packed oneDNN GEMM + fused numba kernel per step, "
                                                  "forward and backward)" if trainer.packer else ""),
                 "close": trainer.close}
        code = "compiled step loops (kernels.train, fusion.trainloop), fused numba kernels (fusion.backward_numba)"
    else:
        # The CPU's packed GEMMs (fp32, oneDNN): every GEMM by a weight matrix, forward and backward,
        # runs from weights packed once, as the fused forward's pretranspose does; else BLAS.
        packer, gemm_info = fgemm.provider_for(np, "cpu", precision, Plan(frozenset({"pretranspose"})))
        gemm = fgemm.PackedWeights(packer) if packer is not None else None

        def run():
            y, _, tape = bw.forward_train(x, params, h0, c0, dtype=dt, skip_input=problem.skip_input,
                                          gemm=gemm)
            return y, bw.backward(tape, dy)
        code = "Python step loop, NumPy pointwise ops (kernels.backward)"

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        y, g = run() if out is None else out
        return check_grads(flatten_grads(op, y, g), problem, seed, precision, cell)

    itemsize = dt.itemsize
    info = {"pass": "forward+backward", "cell": cell, "flops_rule": FLOPS_NOTE,
            "loss": "sum(y * dY), dY fixed standard normal (seed stream [seed, 2])",
            "reference": "y: float64 forward definition; gradients: kernels.backward in float64 "
                         "(checked by finite differences and torch autograd in the tests)",
            "tolerance": f"per array max(precision tolerance, {cond.SENSITIVITY_FACTOR:g} x measured "
                         "conditioning)",
            "arrangement": "input GEMM hoisted over T, 1 recurrent GEMM per step forward and "
                           "backward, weight gradients batched over T*B rows",
            "steps": code,
            "gemm": dict(gemm_info) or {"provider": fgemm.BLAS}}
    if "step_loop" in extra:
        info["step_loop"] = extra["step_loop"]
    return Prepared(
        inputs={"x": x, "h0": h0, "c0": c0, "dy": dy}, run=run, flops=3 * problem.flops(),
        # forward traffic, and its mirror: dY read, dx, dW, dh0 (dc0) written
        bytes=2 * problem.bytes(itemsize), check=check, info=info, close=extra.get("close"))


# Registered with direction "bwd" (``registry.ours(op, cell, direction="bwd")``; --backward and
# the training suites select them): the plain cells of every RNN op, and the layer-norm LSTM.
for _op, _cell in (("lstm", "plain"), ("gru", "plain"), ("rnn", "plain"), ("lstm", "layernorm")):
    for _backend in BACKWARD_BACKENDS:
        register(VariantRecord(
            _op, "fused+bwd" if _cell == "plain" else f"{_cell}-fused+bwd", _backend,
            functools.partial(build_backward, cell=_cell, backend=_backend),
            "fused forward + backward " + ("(kernels.backward)" if _backend == "numpy" else
                                           "(kernels.train: compiled step loops, numba kernels)"),
            code="kernels.backward:backward" if _backend == "numpy" else "kernels.train:Trainer",
            dtypes=BACKWARD_PRECISIONS, cell=_cell, direction="bwd"))
