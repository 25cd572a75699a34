"""The geometry of one 2-D convolution layer, shared by the reference, every variant and the suites.

Conventions (those of cuDNN and PyTorch):

- the operation is cross-correlation (the filter is not flipped), as in every DL framework;
- activations are ``NCHW`` or ``NHWC`` (``problem.layout``), for input and output alike;
- the filter is always ``KCRS`` = ``(K, C/groups, R, S)``, whatever the activation layout, so one
  set of weights serves both layouts and every framework adapter converts to it once;
- output size ``P = (H + 2*pad_h - dil_h*(R-1) - 1) // stride_h + 1`` (``Q`` likewise with W, S);
- channel group ``g`` maps input channels ``g*C/G .. (g+1)*C/G`` to output channels
  ``g*K/G .. (g+1)*K/G``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import canonical, storage
from ..errors import BadInput, Unsupported
from ..params import check_dim

LAYOUTS = ("NCHW", "NHWC")


def _pair(name: str, value, minimum: int) -> tuple:
    """An int or a pair of ints -> ``(h, w)``, each at least ``minimum``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    try:
        h, w = pair
    except (TypeError, ValueError):
        raise BadInput(f"{name}={value!r} must be an int or a pair (h, w) of ints") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise BadInput(f"{name}={value!r} is not allowed; each must be an integer >= {minimum}")
    return int(h), int(w)


@dataclass(frozen=True)
class ConvProblem:
    """One forward convolution: input ``(N, C, H, W)``, ``K`` filters of ``R x S``."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    layout: str = "NCHW"
    bias: bool = True

    def __post_init__(self):
        for name in ("N", "C", "H", "W", "K", "R", "S", "groups"):
            object.__setattr__(self, name, check_dim(name, getattr(self, name)))
        object.__setattr__(self, "stride", _pair("stride", self.stride, 1))
        object.__setattr__(self, "pad", _pair("pad", self.pad, 0))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation, 1))
        if self.layout not in LAYOUTS:
            raise BadInput(f"layout {self.layout!r} is unknown; allowed: {', '.join(LAYOUTS)}")
        object.__setattr__(self, "bias", bool(self.bias))
        G = self.groups
        if self.C % G or self.K % G:
            raise BadInput(f"groups={G} must divide both C={self.C} and K={self.K}")
        for out, size, pad, dil, filt, st, axis in (
                ("P", self.H, self.pad[0], self.dilation[0], self.R, self.stride[0], "H"),
                ("Q", self.W, self.pad[1], self.dilation[1], self.S, self.stride[1], "W")):
            n = (size + 2 * pad - dil * (filt - 1) - 1) // st + 1
            if n <= 0:
                f = "R" if axis == "H" else "S"
                raise BadInput(
                    f"output size {out}={n} <= 0: ({axis}={size} + 2*pad={pad} - dilation={dil}"
                    f"*({f}={filt}-1) - 1) // stride={st} + 1; the filter must fit the padded input")

    # -- sizes ------------------------------------------------------------------------------
    @property
    def P(self) -> int:
        """Output height."""
        return (self.H + 2 * self.pad[0] - self.dilation[0] * (self.R - 1) - 1) // self.stride[0] + 1

    @property
    def Q(self) -> int:
        """Output width."""
        return (self.W + 2 * self.pad[1] - self.dilation[1] * (self.S - 1) - 1) // self.stride[1] + 1

    @property
    def Cg(self) -> int:
        """Input channels each filter sees (C / groups)."""
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        """Output channels per group (K / groups)."""
        return self.K // self.groups

    @property
    def x_shape(self) -> tuple:
        return (self.N, self.C, self.H, self.W) if self.layout == "NCHW" else (self.N, self.H, self.W, self.C)

    @property
    def w_shape(self) -> tuple:
        """Always KCRS, whatever the activation layout."""
        return (self.K, self.Cg, self.R, self.S)

    @property
    def b_shape(self) -> tuple:
        return (self.K,)

    @property
    def y_shape(self) -> tuple:
        return (self.N, self.K, self.P, self.Q) if self.layout == "NCHW" else (self.N, self.P, self.Q, self.K)

    # -- work and traffic -------------------------------------------------------------------
    @property
    def flops(self) -> int:
        """2 * N*K*P*Q * (C/groups)*R*S: one multiply and one add per filter tap.

        Bias adds are *not* counted (N*K*P*Q of them, under 1/(C*R*S) of the total), so GFLOP/s
        compare directly with the figures cuDNN, DeepBench and the papers publish.
        """
        return 2 * self.N * self.K * self.P * self.Q * self.Cg * self.R * self.S

    @property
    def elements(self) -> int:
        """Minimal traffic in elements: read x, w (and b) once, write y once."""
        return (self.N * self.C * self.H * self.W + self.K * self.Cg * self.R * self.S
                + (self.K if self.bias else 0) + self.N * self.K * self.P * self.Q)

    def bytes(self, dtype="fp32") -> int:
        """Minimal traffic in bytes at precision ``dtype`` (see :attr:`elements`)."""
        return self.elements * storage(dtype).itemsize

    # -- data -------------------------------------------------------------------------------
    def random_inputs(self, rng, dtype="fp64"):
        """``(x, w, b)`` in ``dtype``; ``b`` is None when ``bias`` is False.

        No element is zero (magnitudes in [0.1, 1), random signs), so a kernel that skips a tap
        or a channel can not pass by luck.  ``w`` is scaled by 1/sqrt(C/groups*R*S) so ``y`` stays
        O(1) and relative tolerances mean the same at every layer size.
        """
        dt = storage(dtype)

        def draw(shape, scale=1.0):
            mag = rng.uniform(0.1, 1.0, size=shape)
            sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
            return np.ascontiguousarray(mag * sign * scale, dtype=dt)

        x = draw(self.x_shape)
        w = draw(self.w_shape, 1.0 / np.sqrt(self.Cg * self.R * self.S))
        b = draw(self.b_shape) if self.bias else None
        return x, w, b

    # -- identity, as the harness and the result records see a problem -------------------------
    op = "conv"

    @property
    def label(self) -> str:
        return self.describe()

    def shape(self) -> dict:
        """Integer sizes for result records (the layout goes with the options)."""
        return {"N": self.N, "C": self.C, "H": self.H, "W": self.W, "K": self.K, "R": self.R,
                "S": self.S, "stride_h": self.stride[0], "stride_w": self.stride[1],
                "pad_h": self.pad[0], "pad_w": self.pad[1], "dilation_h": self.dilation[0],
                "dilation_w": self.dilation[1], "groups": self.groups}

    def describe(self) -> str:
        """One line, e.g. ``N8 C64 56x56 K64 3x3 s1 p1 d1 g1 NCHW``."""
        return (f"N{self.N} C{self.C} {self.H}x{self.W} K{self.K} {self.R}x{self.S} "
                f"s{_fmt(self.stride)} p{_fmt(self.pad)} d{_fmt(self.dilation)} g{self.groups} "
                f"{self.layout}{'' if self.bias else ' nobias'}")


def _fmt(pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]},{pair[1]}"


def check_inputs(x, w, b, problem: ConvProblem) -> np.dtype:
    """Shapes and dtypes of ``(x, w, b)`` against the problem; returns the common dtype.
    ``x=None`` checks the weights alone (a layer built before it sees an input)."""
    if not isinstance(problem, ConvProblem):
        raise BadInput(f"problem must be a ConvProblem, got {type(problem).__name__}")
    for name, a, want in (("x", x, problem.x_shape), ("w", w, problem.w_shape)):
        if a is None and name == "x":
            continue
        if tuple(np.shape(a)) != want:
            raise BadInput(f"{name} has shape {tuple(np.shape(a))}; expected {want} "
                           f"({problem.layout if name == 'x' else 'KCRS'} for {problem.describe()})")
    if problem.bias:
        if b is None or tuple(np.shape(b)) != problem.b_shape:
            raise BadInput(f"b has shape {None if b is None else tuple(np.shape(b))}; "
                           f"expected {problem.b_shape} (problem has bias=True)")
    elif b is not None:
        raise BadInput("b was given but the problem has bias=False; pass b=None")
    dtypes = {np.asarray(a).dtype for a in (x, w, b) if a is not None}
    if len(dtypes) != 1:
        raise BadInput(f"x, w, b mix dtypes {sorted(map(str, dtypes))}; use one")
    dt = dtypes.pop()
    canonical(dt)  # an unknown dtype raises BadInput naming it
    return dt


def build_layer(accepts, make, w, b, problem: ConvProblem):
    """A layer-style variant's ``prepare``: the weights checked against the problem, the
    variant's ``accepts(problem, dtype)`` asked (its reason raised as Unsupported), then
    ``make()`` builds the layer."""
    dt = check_inputs(None, w, b, problem)
    reason = accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    return make()


def run_once(prepare, x, w, b, problem: ConvProblem) -> np.ndarray:
    """A layer-style variant's one-call ``run``: build the layer with ``prepare(w, b, problem)``,
    run it on ``x``, release it (the benchmark builds once: kernels.conv)."""
    check_inputs(x, w, b, problem)
    layer = prepare(w, b, problem)
    try:
        return layer(x)
    finally:
        layer.close()
