"""The fusion steps as named, composable switches, after Appleyard's cuDNN 5 work.

A :class:`Plan` is the set of steps a ``fused`` run applies; ``naive`` is the empty plan.
``--opt a,b`` picks steps, ``--ladder`` adds them one at a time in :data:`LADDER` order.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels.errors import BadInput


@dataclass(frozen=True)
class Step:
    name: str
    what: str    # what the step changes
    why: str     # why it should gain (printed beside its rung)
    devices: tuple = ("cpu", "cuda")


STEPS = {s.name: s for s in (
    Step("group_gemm", "the G per-gate GEMMs of x and of h become one GEMM each (N = G*H)",
         "one large GEMM keeps the BLAS/cuBLAS kernel busier than G small ones and calls it G times less"),
    Step("hoist_input", "the input GEMM runs once for all T steps (M = T*B) before the step loop",
         "x does not depend on h: T small GEMMs become one large one, and its bias is folded in once"),
    Step("pretranspose", "weights are stored transposed and contiguous, so every GEMM is x @ W; on the "
         "CPU (fp32) they are packed once into oneDNN's inner-product layout and every GEMM runs from it",
         "the GEMM reads weights laid out for it: on the CPU oneDNN's brgemm kernel reads pre-packed "
         "blocks instead of BLAS repacking W on every call; on a GPU it selects the NN kernel instead of TN"),
    Step("fuse_pointwise", "all pointwise operations of a step run as one kernel",
         "about 15-30 array operations per step, each a pass over memory (and a launch on a GPU), "
         "become one pass that keeps gates in registers"),
    Step("streams", "the input GEMM runs in chunks on a second stream, each chunk ordered before "
         "its steps by an event",
         "the first recurrent steps start while later input rows are still being multiplied",
         devices=("cuda",)),
    Step("wavefront", "each layer runs on its own stream; layer l+1 starts a chunk of steps as soon "
         "as layer l has finished it",
         "layers run diagonally, side by side, instead of one after the other (L > 1 only)",
         devices=("cuda",)),
    Step("graph", "the whole call (every layer and step) is captured once as a CUDA graph and "
         "replayed; on the CPU (numba, packed oneDNN GEMMs) each layer's steps run as one compiled "
         "call, and on several threads as one OpenMP team",
         "one graph launch replaces hundreds of kernel launches from Python; on the CPU no Python "
         "between steps, and one parallel region per layer instead of one per step"),
)}

# The order in which --ladder adds steps: the GEMM arrangement first, then the pointwise fusion
# before pretranspose, as in Appleyard's write-up (there, fusing the element-wise operations comes
# before pre-transposing the weights): with the ~30 per-step pointwise operations already one
# kernel, the pretranspose rung measures the GEMM change itself instead of a step that the
# op-by-op stage dominates.
LADDER = ("group_gemm", "hoist_input", "fuse_pointwise", "pretranspose", "streams", "wavefront", "graph")

# Chunks of steps the input GEMM is split into when streams or wavefront is on: enough to
# overlap the first steps with later input rows, few enough that each GEMM stays large.
CHUNKS = 8


@dataclass(frozen=True)
class Plan:
    steps: frozenset = frozenset()

    def __post_init__(self):
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise BadInput(f"fusion step {unknown[0]!r} is unknown; allowed: {', '.join(STEPS)}")
        object.__setattr__(self, "steps", frozenset(self.steps))

    def __contains__(self, name: str) -> bool:
        return name in self.steps

    @classmethod
    def full(cls, device: str = "cpu", exclude: tuple = ()) -> "Plan":
        """Every step the device has, less ``exclude`` (steps a backend cannot run)."""
        return cls(frozenset(n for n in LADDER if device in STEPS[n].devices and n not in exclude))

    @classmethod
    def parse(cls, text: str | None, device: str = "cpu") -> "Plan":
        """'group_gemm,hoist_input' -> Plan; None or 'all' -> every step the device has; 'none' -> empty."""
        if text is None or text.strip() == "all":
            return cls.full(device)
        if text.strip() == "none":
            return cls()
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise BadInput(f"--opt {text!r} names no step; allowed: {', '.join(STEPS)}, all, none")
        plan = cls(frozenset(names))
        for n in names:
            if device not in STEPS[n].devices:
                raise BadInput(f"fusion step {n!r} does not exist on {device}")
        return plan

    def ordered(self) -> tuple:
        return tuple(n for n in STEPS if n in self.steps)

    @property
    def label(self) -> str:
        return ",".join(self.ordered()) or "none"


def full_plan(device: str, backend: str) -> Plan:
    """The default plan of ``backend``: every step of its device that it can run."""
    from kernels.backends import BACKENDS
    b = BACKENDS.get(backend)
    return Plan.full(device, exclude=b.unplanned if b is not None else ())


def ladder(device: str = "cpu") -> list:
    """[(rung label, Plan)] from the empty plan up to every step, each rung adding one step."""
    rungs, acc = [("naive", Plan())], []
    for name in LADDER:
        if device in STEPS[name].devices:
            acc.append(name)
            rungs.append(("+" + name, Plan(frozenset(acc))))
    return rungs
