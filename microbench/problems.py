"""What a case computes: the op and its sizes, FLOPs, bytes and a memory estimate."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from kernels.errors import BadInput
from kernels.params import GATES, NONLINEARITIES, check_dim


@dataclass(frozen=True)
class RNNProblem:
    """A unidirectional multi-layer LSTM/GRU/vanilla-RNN forward pass, time-major ``(T, B, I)`` input.

    ``nonlinearity``: the vanilla cell's (op ``rnn``): ``relu`` or ``tanh`` (default); empty for
    LSTM and GRU.  ``skip_input``: the first layer's input projection is taken as given, as
    DeepBench times a recurrent layer (cuDNN's ``CUDNN_SKIP_INPUT``): the run reads the
    ``(T, B, G*H)`` pre-activations ``x W_ih^T`` instead of x and computes only the recurrent
    part, and FLOPs count only the recurrent GEMMs of that layer.
    """

    op: str
    T: int
    B: int
    I: int
    H: int
    L: int = 1
    nonlinearity: str = ""
    skip_input: bool = False

    def __post_init__(self):
        if self.op not in GATES:
            raise BadInput(f"op {self.op!r} is unknown; allowed: {', '.join(GATES)}")
        for name in ("T", "B", "H", "I", "L"):  # H before I: -I defaults to -H
            check_dim(f"-{name}", getattr(self, name))
        if self.op == "rnn":
            if not self.nonlinearity:
                object.__setattr__(self, "nonlinearity", "tanh")
            if self.nonlinearity not in NONLINEARITIES:
                raise BadInput(f"--nonlinearity {self.nonlinearity!r} is unknown; allowed: "
                               f"{', '.join(NONLINEARITIES)}")
        elif self.nonlinearity:
            raise BadInput(f"{self.op} has no nonlinearity option (got {self.nonlinearity!r}); "
                           "only the vanilla cell, op rnn, has one")
        if not isinstance(self.skip_input, bool):
            raise BadInput(f"skip_input={self.skip_input!r} must be True or False")

    @property
    def cell_mode(self) -> str:
        """``lstm``, ``gru``, ``rnn_relu`` or ``rnn_tanh`` (as kernels.params.RNNParams.cell_mode)."""
        return f"rnn_{self.nonlinearity}" if self.op == "rnn" else self.op

    @property
    def input_width(self) -> int:
        """Width of what the run reads per step and row: I, or G*H with skip_input."""
        return self.G * self.H if self.skip_input else self.I

    def options(self) -> dict:
        """What the problem computes besides its sizes (recorded in a record's options); only
        the attributes that are set, so LSTM/GRU records without skip-input keep their keys."""
        out = {}
        if self.nonlinearity:
            out["nonlinearity"] = self.nonlinearity
        if self.skip_input:
            out["skip_input"] = True
        return out

    @property
    def G(self) -> int:
        return len(GATES[self.op])

    @property
    def label(self) -> str:
        extra = "" if self.I == self.H or self.skip_input else f" I{self.I}"
        layers = "" if self.L == 1 else f" L{self.L}"
        act = f" {self.nonlinearity}" if self.nonlinearity else ""
        skip = " skip-input" if self.skip_input else ""
        return f"H{self.H} B{self.B} T{self.T}{extra}{layers}{act}{skip}"

    def shape(self) -> dict:
        """The sizes (integers; the schema's ``shape``); the rest is in :meth:`options`."""
        d = asdict(self)
        for k in ("op", "nonlinearity", "skip_input"):
            d.pop(k)
        return d

    def num_weights(self) -> int:
        """Weights the run reads (with skip_input the first layer has no W_ih)."""
        G, H, I, L = self.G, self.H, self.I, self.L
        first = G * H * (H + 2) + (0 if self.skip_input else G * H * I)
        return first + (L - 1) * G * H * (2 * H + 2)

    def flops(self) -> int:
        """GEMM FLOPs (2 per multiply-add), the DeepBench convention; pointwise work is not counted.
        With skip_input the first layer's input GEMM is not done, so not counted (DeepBench's)."""
        G, H, T, B = self.G, self.H, self.T, self.B
        first_in = 0 if self.skip_input else self.I
        per_layer = [2 * T * B * G * H * ((first_in if l == 0 else H) + H) for l in range(self.L)]
        return sum(per_layer)

    def bytes(self, itemsize: int) -> int:
        """Compulsory traffic: weights, input and output once each, initial and final states."""
        T, B, H, L = self.T, self.B, self.H, self.L
        states = (2 if self.op == "lstm" else 1) * 2 * L * B * H
        return itemsize * (self.num_weights() + T * B * self.input_width + T * B * H + states)

    def memory_estimate(self, itemsize: int) -> int:
        """Peak bytes of one checked case: the run's buffers plus the float64 reference's."""
        T, B, I, H, L, G = self.T, self.B, self.I, self.H, self.L, self.G
        I = max(I, self.input_width)
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
