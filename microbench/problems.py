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

    ``cell``: a registered custom cell (:mod:`kernels.custom`; empty: the op's plain cell).  Its
    family must be the op (an LSTM-family cell runs as ``lstm``, a GRU-family one as ``gru``),
    and its gate count, states and per-unit parameters give G, the weights, FLOPs, bytes and the
    memory estimate.  It is no part of :meth:`shape` or :meth:`options`: a record names it in its
    variant (``layernorm-fused``) and ``info.cell``.
    """

    op: str
    T: int
    B: int
    I: int
    H: int
    L: int = 1
    nonlinearity: str = ""
    skip_input: bool = False
    cell: str = ""

    def __post_init__(self):
        if self.op not in GATES:
            raise BadInput(f"op {self.op!r} is unknown; allowed: {', '.join(GATES)}")
        for name in ("T", "B", "H", "I", "L"):  # H before I: -I defaults to -H
            check_dim(f"-{name}", getattr(self, name))
        if not isinstance(self.cell, str):
            raise BadInput(f"cell={self.cell!r} must be a cell name")
        if self.cell:
            self._check_cell()
        elif self.op == "rnn":
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

    def _check_cell(self) -> None:
        row = self.cell_row
        if row.family != self.op:
            from kernels.custom import FAMILIES, FAMILY_WORDS
            raise BadInput(f"--cell {self.cell} is {FAMILY_WORDS[row.family]} cell ({FAMILIES[row.family]}); "
                           f"run it as `{row.family} --cell {self.cell}`, not {self.op}")
        if self.nonlinearity:
            raise BadInput(f"--nonlinearity applies to the plain vanilla cell; --cell {self.cell} "
                           "declares its own activation")
        if self.skip_input:
            raise BadInput(f"--skip-input applies to the plain cells, not --cell {self.cell}")

    @property
    def cell_row(self):
        """The custom cell's :class:`kernels.custom.CustomCell` (None for the plain cell)."""
        if not self.cell:
            return None
        from kernels.custom import get_cell
        return get_cell(self.cell)

    @property
    def cell_mode(self) -> str:
        """``lstm``, ``gru``, ``rnn_relu`` or ``rnn_tanh`` (as kernels.params.RNNParams.cell_mode);
        a custom cell's declared name."""
        if self.cell:
            return self.cell_row.expr.name
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
        """Gates per unit: the custom cell's, else the op's (4, 3, 1)."""
        return self.cell_row.num_gates if self.cell else len(GATES[self.op])

    @property
    def num_states(self) -> int:
        """States a layer carries: h, and c for an LSTM(-family) cell."""
        return 2 if self.op == "lstm" else 1

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
        for k in ("op", "nonlinearity", "skip_input", "cell"):
            d.pop(k)
        return d

    def num_weights(self) -> int:
        """Weights the run reads (with skip_input the first layer has no W_ih)."""
        G, H, I, L = self.G, self.H, self.I, self.L
        first = G * H * (H + 2) + (0 if self.skip_input else G * H * I)
        extras = L * self.cell_row.extra_weights(H) if self.cell else 0     # per-unit parameters
        return first + (L - 1) * G * H * (2 * H + 2) + extras

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
        states = self.num_states * 2 * L * B * H
        return itemsize * (self.num_weights() + T * B * self.input_width + T * B * H + states)

    def memory_estimate(self, itemsize: int) -> int:
        """Peak bytes of one checked case: the run's buffers plus the float64 reference's."""
        T, B, I, H, L, G = self.T, self.B, self.I, self.H, self.L, self.G
        I = max(I, self.input_width)
        states = 2 * self.num_states * L * B * H
        run = itemsize * (self.num_weights() * 2 + T * B * I + 2 * T * B * H + T * B * G * H + states)
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
