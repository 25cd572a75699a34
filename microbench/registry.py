"""One record per variant: the CLI's --naive/--fused flags and the suites are keys into it.

A record binds (op, variant, backend) to a builder.  Builders follow one contract:

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


@dataclass(frozen=True)
class Check:
    max_rel_err: float
    tol: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"max_rel_err": self.max_rel_err, "tol": self.tol, "passed": self.passed,
                "detail": self.detail}


@dataclass(frozen=True)
class VariantRecord:
    op: str
    variant: str
    backend: str
    build: Callable
    about: str
    fusable: bool = False    # takes a fusion plan (--opt, --ladder)
    framework: str = ""      # set for framework cases (rows labelled framework/path)
    device_name: str = ""    # explicit device where the backend name does not tell it

    @property
    def device(self) -> str:
        if self.device_name:
            return self.device_name
        return BACKENDS[self.backend].device if self.backend in BACKENDS else "cpu"

    @property
    def key(self) -> tuple:
        return (self.op, self.variant, self.backend)


REGISTRY: dict = {}


def register(record: VariantRecord) -> VariantRecord:
    if record.key in REGISTRY:
        raise ValueError(f"variant {record.key} registered twice")
    REGISTRY[record.key] = record
    return record


def ours(op: str) -> list:
    """Records of our own variants of an op (framework records are chosen with --frameworks)."""
    return [r for r in REGISTRY.values() if r.op == op and not r.framework]


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
    if backend_names and not out:
        on = ", ".join(backends(op, device)) or "none"
        raise BadInput(f"backend {','.join(backend_names)} does not run on {device}; "
                       f"backends on {device}: {on}")
    return out
