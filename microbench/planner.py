"""What `lstm`/`gru`/`rnn`, `conv` and `suite` share when they turn arguments into cases: the
device, the precisions, the timing defaults, the memory a case needs and the ladder's rungs.

Each command still decides which records it wants (its flags differ); from there the steps are
these functions, so the three commands validate and expand the same way.
"""
from __future__ import annotations

from kernels import devices
from kernels.errors import BadInput

# The timing rule's knobs; their defaults are harness.Settings' (the one place they are written).
TIMING_FIELDS = ("warmup", "min_time", "max_time", "min_samples", "max_noise")


def timing_defaults() -> dict:
    from .harness import Settings
    d = Settings()
    return {k: getattr(d, k) for k in TIMING_FIELDS}


def parse_precisions(text: str) -> list:
    """``--dtype`` (a comma list) -> canonical precision names, once each, in the order given."""
    from kernels import dtypes

    from .args import csv_list
    precisions = list(dict.fromkeys(dtypes.canonical(d) for d in csv_list(text)))
    if not precisions:
        raise BadInput(f"--dtype {text!r} names no precision; allowed: {', '.join(dtypes.PRECISIONS)}")
    return precisions


def resolve_device(requested: str, op: str) -> str:
    """``cpu`` or ``cuda`` for a --device value (auto, cpu, cuda, cuda:K); a GPU choice also
    selects the ordinal (kernels.devices.select: validated, CuPy and torch pointed at it)."""
    from . import env as menv
    from . import registry
    kind, index = devices.parse(requested)
    gpu = menv.gpu()
    has_cuda_backend = bool(registry.backends(op, "cuda"))
    if kind == "cuda":
        if not gpu.get("available"):
            raise BadInput(f"--device {requested}: no CUDA GPU found ({gpu.get('reason', 'unknown')}); "
                           "allowed here: cpu, auto")
        if not has_cuda_backend:
            raise BadInput(f"--device {requested}: no {op} backend for cuda is installed; allowed here: cpu, auto")
        devices.select(index)
        return "cuda"
    if kind == "auto":
        return "cuda" if gpu.get("available") and has_cuda_backend else "cpu"
    return kind


def memory_need(problem, precision: str, records=()) -> int:
    """Peak host bytes of one checked forward case: the RNN problem's own estimate; for a conv,
    input, filter and output, the reference's float64 copies and the largest host workspace of
    ``records`` (each record's own estimate, ``VariantRecord.workspace``; a record without one,
    or no records given, counts im2col's column matrix, the most a CPU algorithm here needs)."""
    from kernels import dtypes
    item = dtypes.storage(precision).itemsize
    if hasattr(problem, "memory_estimate"):
        return problem.memory_estimate(item)
    cols = problem.N * problem.P * problem.Q * problem.Cg * problem.R * problem.S * item
    work = [r.workspace(problem, precision) if r.workspace is not None else cols for r in records]
    return problem.bytes(precision) * 2 + 8 * problem.elements + max(work, default=cols)


def default_plan(record, device: str, plan=None):
    """The fusion plan a record runs with: ``plan`` (--opt) or every step for a fusable record;
    None for the others."""
    from fusion.steps import full_plan
    return (plan or full_plan(device, record.backend)) if record.fusable else None


def ladder_rungs(op: str, backends, device: str) -> list:
    """``(record, plan, label)`` per backend and rung of the fusion ladder: naive, then the fused
    record with each step added in turn; a backend without one of the two records is left out
    of that rung, and so are the rungs holding a step the backend cannot run or that changes
    nothing on it (PyCUDA's ``wavefront`` and ``graph``, the numpy backend's ``graph``)."""
    from fusion.steps import ladder
    from kernels.backends import BACKENDS

    from . import registry
    out = []
    for backend in backends:
        lacks = BACKENDS[backend].unplanned if backend in BACKENDS else ()
        for label, rung_plan in ladder(device):
            v = "naive" if label == "naive" else "fused"
            rec = registry.REGISTRY.get((op, v, backend))
            if v == "fused" and any(n in rung_plan for n in lacks):
                continue
            if rec is not None:
                out.append((rec, rung_plan if v == "fused" else None, label))
    return out
