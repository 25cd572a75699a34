"""Generator: the op-by-op NumPy (or CuPy) step of a cell, the ``naive`` pointwise stage."""
from __future__ import annotations

import functools

from .language import Cell, _Printer, _const_py, analyse

# -- NumPy, op by op -----------------------------------------------------------------------------
def numpy_source(cell: Cell) -> str:
    """``def step(xp, gx, gh, bx, bh, h_prev, <s>_prev..., <params>...) -> (h, <s>...)``.

    Every arithmetic operation is one array operation (the ``naive`` cost); biases may be None.
    """
    an = analyse(cell)
    args = ["xp", "gx", "gh", "bx", "bh", "h_prev"] + [f"{s}_prev" for s in cell.states] + [p for p, _ in cell.params]

    class P(_Printer):
        funcs = {"sigmoid": "_sigmoid", "tanh": "xp.tanh", "relu": "_relu", "exp": "xp.exp", "sqrt": "xp.sqrt"}

    pr = P(lambda n: f"v_{n}", _const_py)
    lines = [f"def step({', '.join(args)}):", "    B, _, H = gx.shape", "    v_H = float(H)"]
    for n, src in an.inputs.items():
        if n not in set().union(*(s.deps for s in an.stmts)):
            continue
        if src[0] in ("gx", "gh"):
            lines.append(f"    v_{n} = {src[0]}[:, {src[1]}]")
        elif src[0] in ("bx", "bh"):
            lines.append(f"    v_{n} = 0.0 if {src[0]} is None else {src[0]}[{src[1]}]")
        elif src[0] == "prev":
            lines.append(f"    v_{n} = {src[1]}_prev")
        else:
            lines.append(f"    v_{n} = {src[1]}" + ("" if src[2] is None else f"[{src[2]}]"))
    for s in an.stmts:
        e = pr(s.expr)
        if s.name in an.reductions:
            e = f"{e}.sum(axis=1, keepdims=True)"
        lines.append(f"    v_{s.name} = {e}")
    outs = ("h",) + cell.states
    lines.append(f"    return ({', '.join(f'v_{o}' for o in outs)},)")
    return "import numpy as np\n\n\ndef _sigmoid(a):\n    return 0.5 * np.tanh(0.5 * a) + 0.5\n\n\n" \
        "def _relu(a):\n    return np.maximum(a, 0.0)\n\n\n" \
        + "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def numpy_step(cell: Cell):
    src = numpy_source(cell)
    ns = {}
    exec(compile(src, f"<cellexpr numpy {cell.name}>", "exec"), ns)  # our own generated text
    step = ns["step"]

    def run(xp, gx, gh, bx, bh, h_prev, *rest):
        # _sigmoid calls np.tanh: with CuPy arrays that dispatches through __array_ufunc__
        return step(xp, gx, gh, bx, bh, h_prev, *rest)
    return run
