"""One record per variant: the CLI's --naive/--fused flags, --cell, --backward, the suites, the
tests' parametrization and ``python -m microbench variants`` are keys into it.

Every variant of every op registers here once, from the module of its op in
:mod:`microbench.cases` (``register(VariantRecord(...))`` at import; importing
:mod:`microbench.cases` fills the registry).  A record binds (op, variant, backend) to a builder
and says what the variant is: devices, dtypes, cell, direction (fwd, or bwd for training steps
and backward phases), tolerance scale, a line about it and where its code is (``module:function``).
Builders follow one contract:

    build(problem, seed, *, precision, plan) -> Prepared

Allocation, compilation and weight loading happen in ``build``; only ``Prepared.run`` is timed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kernels.backends import BACKENDS
from kernels.errors import BadInput


@dataclass
class Prepared:
    """What a builder returns: everything needed to check and time one case."""

    inputs: dict                      # the arrays the run reads (fresh random, never zeros)
    run: Callable[[], object]         # the timed call; returns the outputs
    flops: int                        # per call
    bytes: int                        # compulsory traffic per call
    # Compares with the float64 reference: check() calls run once; check(out), where a builder
    # accepts it, checks ``out``, a timed call's return value (the runner's check after timing).
    check: Callable[..., "Check"]
    info: dict = field(default_factory=dict)
    # Set when the case must be timed elsewhere (a framework's worker process, with that
    # framework's own synchronisation): called with the harness Settings, returns a Measurement.
    measure: Callable | None = None
    close: Callable | None = None     # releases what build acquired (worker processes, handles)
    # A second set of inputs for the gate (microbench.callsample.vary_check): returns (arrays by
    # name of ``inputs``, of the same shapes; check(out) of a call's outputs on them against their
    # reference).  None: the case is not varied (its record's check says inputs_varied false).
    vary: Callable[[], tuple] | None = None


@dataclass(frozen=True)
class Check:
    max_rel_err: float
    tol: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"max_rel_err": self.max_rel_err, "tol": self.tol, "passed": self.passed,
                "detail": self.detail}


DIRECTIONS = ("fwd", "bwd")


@dataclass(frozen=True)
class VariantRecord:
    """One variant of one op: everything the CLI flags, the suites, the tests' parametrization and
    ``microbench variants`` read about it.  ``code`` is where its computation lives, as
    ``module:function`` (``python -m microbench variants OP`` prints it; a test imports each)."""

    op: str
    variant: str
    backend: str
    build: Callable
    about: str
    fusable: bool = False    # takes a fusion plan (--opt, --ladder)
    framework: str = ""      # set for framework cases (rows labelled framework/path)
    device_name: str = ""    # explicit device where the backend name does not tell it
    code: str = ""           # "module:function" (or module:Class) of the variant's computation
    dtypes: tuple = ()       # precisions it computes; () = every precision of its backend
    cell: str = "plain"      # the LSTM cell (--cell): plain, layernorm, peephole
    direction: str = "fwd"   # fwd: the forward pass; bwd: a training step or a backward phase
    tol_scale: float = 1.0   # multiple of the precision's check tolerance (transform algorithms)
    # Why it cannot run here besides its backend's reason (a vendor library that does not load),
    # or None; cheap: nothing is built.
    probe: Callable[[], str | None] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} of {self.key}; allowed: {', '.join(DIRECTIONS)}")

    @property
    def device(self) -> str:
        if self.device_name:
            return self.device_name
        return BACKENDS[self.backend].device if self.backend in BACKENDS else "cpu"

    @property
    def devices(self) -> tuple:
        return (self.device,)

    @property
    def precisions(self) -> tuple:
        """The precisions it computes: its own list, else its backend's."""
        if self.dtypes:
            return self.dtypes
        return BACKENDS[self.backend].dtypes if self.backend in BACKENDS else ()

    @property
    def key(self) -> tuple:
        return (self.op, self.variant, self.backend)


def missing(record: VariantRecord) -> str | None:
    """Why ``record`` cannot run on this machine (its backend's reason, then its probe's), or None."""
    if record.backend in BACKENDS:
        reason = BACKENDS[record.backend].missing()
        if reason:
            return reason
    return record.probe() if record.probe is not None else None


def library_probe(module: str) -> Callable[[], str | None]:
    """A probe from a vendor library module's ``available() -> (ok, text)`` (kernels.cudnn.lib,
    kernels.onednn.lib), imported when the probe runs."""
    def probe():
        import importlib
        ok, text = importlib.import_module(module).available()
        return None if ok else text
    return probe


def code_of(fn) -> str:
    """``module:qualname`` of a function or class, for a record's ``code``."""
    return f"{fn.__module__}:{fn.__qualname__}"


REGISTRY: dict = {}


def register(record: VariantRecord) -> VariantRecord:
    if record.key in REGISTRY:
        raise ValueError(f"variant {record.key} registered twice")
    REGISTRY[record.key] = record
    return record


def ours(op: str, cell: str = "plain", direction: str = "fwd") -> list:
    """Records of our own variants of an op, forward pass of the plain cell unless asked
    (framework records are chosen with --frameworks)."""
    return [r for r in REGISTRY.values() if r.op == op and not r.framework
            and r.cell == cell and r.direction == direction]


def listing(op: str | None = None) -> list:
    """Every registered record of ``op`` (every op when None) in registration order: ours (plain
    cell forward first, then the other cells, then the backward records), then the frameworks'."""
    recs = [r for r in REGISTRY.values() if op is None or r.op == op]
    return sorted(recs, key=lambda r: (bool(r.framework), r.cell != "plain", r.direction == "bwd"))


def ops() -> list:
    return list(dict.fromkeys(r.op for r in REGISTRY.values()))


def variants(op: str) -> list:
    """Our variant names of an op, in registration order."""
    return list(dict.fromkeys(r.variant for r in ours(op)))


def backends(op: str, device: str | None = None) -> list:
    return list(dict.fromkeys(r.backend for r in ours(op) if device is None or r.device == device))


def select(op: str, variant_names: list | None, backend_names: list | None, device: str) -> list:
    """Records for the op on the device, filtered; unknown names raise BadInput naming the allowed ones."""
    known_v, known_b = variants(op), backends(op)
    for v in variant_names or ():
        if v not in known_v:
            raise BadInput(f"variant {v!r} is unknown for {op}; allowed: {', '.join(known_v)}")
    for b in backend_names or ():
        if b not in known_b:
            raise BadInput(f"backend {b!r} is unknown for {op}; allowed: {', '.join(known_b)}")
    out = [r for r in ours(op) if r.device == device
           and (not variant_names or r.variant in variant_names)
           and (not backend_names or r.backend in backend_names)]
    for v in variant_names or ():
        if not any(r.variant == v for r in out):
            where = sorted({r.device for r in ours(op) if r.variant == v})
            if device not in where:
                raise BadInput(f"variant {v!r} runs on {', '.join(where)} only; this run is on {device}")
            # on this device, but --backend left out every backend it runs on: name that conflict
            # (not "backend X does not run on the device", which is not what is wrong)
            on = ", ".join(dict.fromkeys(r.backend for r in ours(op) if r.variant == v and r.device == device))
            raise BadInput(f"--{v} runs on backend {on}, which --backend {','.join(backend_names)} leaves out; "
                           f"add {on} to --backend or drop --{v}")
    if backend_names and not out:
        on = ", ".join(backends(op, device)) or "none"
        raise BadInput(f"backend {','.join(backend_names)} does not run on {device}; "
                       f"backends on {device}: {on}")
    return out
