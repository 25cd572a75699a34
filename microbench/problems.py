"""What a case computes: the op and its sizes, FLOPs, bytes and a memory estimate."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from kernels.errors import BadInput
from kernels.params import GATES, check_dim


@dataclass(frozen=True)
class RNNProblem:
    """A unidirectional multi-layer LSTM/GRU forward pass, time-major ``(T, B, I)`` input."""

    op: str
    T: int
    B: int
    I: int
    H: int
    L: int = 1

    def __post_init__(self):
        if self.op not in GATES:
            raise BadInput(f"op {self.op!r} is unknown; allowed: {', '.join(GATES)}")
        for name in ("T", "B", "H", "I", "L"):  # H before I: -I defaults to -H
            check_dim(f"-{name}", getattr(self, name))

    @property
    def G(self) -> int:
        return len(GATES[self.op])

    @property
    def label(self) -> str:
        extra = "" if self.I == self.H else f" I{self.I}"
        layers = "" if self.L == 1 else f" L{self.L}"
        return f"H{self.H} B{self.B} T{self.T}{extra}{layers}"

    def shape(self) -> dict:
        d = asdict(self)
        d.pop("op")
        return d

    def num_weights(self) -> int:
        G, H, I, L = self.G, self.H, self.I, self.L
        first = G * H * (I + H + 2)
        return first + (L - 1) * G * H * (2 * H + 2)

    def flops(self) -> int:
        """GEMM FLOPs (2 per multiply-add), the DeepBench convention; pointwise work is not counted."""
        G, H, T, B = self.G, self.H, self.T, self.B
        per_layer = [2 * T * B * G * H * ((self.I if l == 0 else H) + H) for l in range(self.L)]
        return sum(per_layer)

    def bytes(self, itemsize: int) -> int:
        """Compulsory traffic: weights, input and output once each, initial and final states."""
        T, B, I, H, L = self.T, self.B, self.I, self.H, self.L
        states = (2 if self.op == "lstm" else 1) * 2 * L * B * H
        return itemsize * (self.num_weights() + T * B * I + T * B * H + states)

    def memory_estimate(self, itemsize: int) -> int:
        """Peak bytes of one checked case: the run's buffers plus the float64 reference's."""
        T, B, I, H, L, G = self.T, self.B, self.I, self.H, self.L, self.G
        run = itemsize * (self.num_weights() * 2 + T * B * I + 2 * T * B * H + T * B * G * H + 4 * L * B * H)
        reference = 8 * (self.num_weights() + T * B * I + 3 * T * B * H + T * B * G * H)
        return run + reference


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str) -> None:
    avail = available_memory()
    if avail is not None and needed > avail:
        raise BadInput(f"{what} needs about {needed / 2**30:.1f} GiB, more than the "
                       f"{avail / 2**30:.1f} GiB of memory available; choose smaller sizes")
