"""Cells as expressions: declare a cell's pointwise part once, generate its kernels for every backend.

A :class:`Cell` is a list of assignments in a small language (parsed with :mod:`ast`, never
``eval``-ed as given), one statement per line, each name assigned once::

    PEEPHOLE_LSTM = Cell("peephole_lstm", gates="ifgo", states=("c",), params=(("peep", "ifo"),), body='''
        i = sigmoid(gx_i + gh_i + bx_i + bh_i + peep_i * c_prev)
        f = sigmoid(gx_f + gh_f + bx_f + bh_f + peep_f * c_prev)
        g = tanh(gx_g + gh_g + bx_g + bh_g)
        c = f * c_prev + i * g
        o = sigmoid(gx_o + gh_o + bx_o + bh_o + peep_o * c)
        h = o * tanh(c)
    ''')

Names a body may read, all at one unit ``(b, j)`` of the step:

- ``gx_<g>``, ``gh_<g>``: gate ``g``'s input and recurrent GEMM results (``(B, G, H)`` views);
- ``bx_<g>``, ``bh_<g>``: the two biases of gate ``g`` (a launcher passes zeros for an absent one);
- ``h_prev`` and ``<s>_prev`` for each extra state ``s`` (LSTM: ``c``);
- per-unit parameters: ``<p>_<row>`` for a parameter declared with rows (array ``(rows, H)``),
  ``<p>`` for one declared with ``None`` (array ``(H,)``);
- ``H``, the hidden size, as a number.

Functions: ``sigmoid``, ``tanh``, ``relu`` (NaN stays NaN), ``exp``, ``sqrt``, and ``rowsum(e)``: the sum of ``e`` over the
H units of the batch row (what layer norm needs).  Operators ``+ - * /``, unary minus, ``** n``
for a small positive integer n.  A body must assign ``h`` and each state.  Statements may appear
in any order that defines a name before its use.

Reductions.  ``rowsum`` makes a statement a per-row scalar.  The generator gives every reduction
a level (1 + the deepest reduction its argument depends on) and runs one pass over the row per
level, then a final pass that writes the outputs.  Each pass recomputes the per-unit statements
it needs instead of storing them: a layer-norm LSTM (mean and variance of the input and of the
recurrent pre-activations, then mean and variance of c) is five passes, two-pass variance (no
E[x^2] - E[x]^2 cancellation).  Outputs are written only in the last pass, so a state updated
in place is read intact by the earlier ones.

Generated kernels (sources are plain text, inspectable with ``print(gen.numba_source(CELL))``):

- :func:`numpy_source`: op by op over ``(B, H)`` arrays (``rowsum`` -> ``sum(axis=1)``): the
  ``naive`` pointwise stage and a readable statement of the math.
- :func:`numba_source`: ``@njit(parallel=True)``, one parallel iteration per batch row, inner
  loops over contiguous units (vectorized by LLVM), fp32 tanh as the rational approximation of
  :mod:`fusion.pointwise`, reductions accumulated in the storage type.
- :func:`cuda_source`: CUDA C, ``float``/``__half``/``__nv_bfloat16`` storage, fp32 math, gate
  views read in place through their batch and gate strides like ``kernels/cuda/rnn_pointwise.cu``.
  Without reductions: one thread per unit (x along H, y along B, grid-stride over B), the
  mapping of the hand-written kernel.  With reductions: one block per batch row (grid-stride over
  B), threads stride over H, each pass ends in a block reduction (warp shuffles, then one warp
  over the per-warp sums in shared memory); blockDim must be a multiple of 32 (see
  :func:`cuda_launch_shape`).
- :func:`numba_cuda_source`: ``numba.cuda``, one block per batch row for every cell, shared-memory
  tree reduction (blockDim a power of two, at most ``NUMBA_CUDA_THREADS``).

Kernel arguments, in this order (every generator): ``gx, gh, bx, bh, h_prev``, then per state
``<s>_prev, <s>_out`` (the numba CPU kernel takes one in-place ``<s>`` array instead: two
names for one buffer defeat LLVM's alias check), then the parameters in declaration order,
then ``h_out``.  CUDA C adds the batch stride after each array of rows (and the gate stride after
gx, gh) and ``B, H`` at the end; biases may be null pointers there.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.errors import BadInput, MissingDependency

FUNCS = ("sigmoid", "tanh", "relu", "exp", "sqrt", "rowsum")
MAX_POW = 4
NUMBA_CUDA_THREADS = 256
CUDA_THREADS = 256
SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


# -- the language ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """A cell's pointwise part. ``gates``: names in canonical order (a string of one-letter names
    or a tuple); ``states``: recurrent states besides h; ``params``: ``(name, rows or None)``."""

    name: str
    gates: tuple
    states: tuple
    body: str
    params: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "gates", tuple(self.gates))
        object.__setattr__(self, "states", tuple(self.states))
        object.__setattr__(self, "params", tuple((p, None if r is None else tuple(r)) for p, r in self.params))
        if not self.name.isidentifier():
            raise BadInput(f"cell name {self.name!r} must be an identifier")
        analyse(self)  # fail at definition time, with the line

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    def param_shape(self, name: str, H: int) -> tuple:
        rows = dict(self.params)[name]
        return (H,) if rows is None else (len(rows), H)

    @property
    def has_reductions(self) -> bool:
        return analyse(self).levels > 0

    @property
    def foldable_biases(self) -> tuple:
        """The biases a builder may add into gx once (``("bx", "bh")``, ``("bx",)`` or ``()``);
        see :func:`foldable_biases`."""
        return foldable_biases(self)


@dataclass(frozen=True)
class _Stmt:
    name: str
    expr: ast.expr
    kind: str        # "unit" or "row"
    level: int       # reduction level it needs (0: none)
    deps: frozenset
    line: int


@dataclass(frozen=True)
class _Analysis:
    stmts: tuple            # program order; reductions appear as row statements "_rsK" = rowsum arg
    reductions: dict        # "_rsK" -> (argument expr, level)
    inputs: dict            # input name -> ("gx"|"gh"|"bx"|"bh", k) | ("prev", state) | ("param", name, row)
    levels: int


def _inputs(cell: Cell) -> dict:
    d = {}
    for k, g in enumerate(cell.gates):
        for src in ("gx", "gh", "bx", "bh"):
            d[f"{src}_{g}"] = (src, k)
    d["h_prev"] = ("prev", "h")
    for s in cell.states:
        if s == "h" or not s.isidentifier():
            raise BadInput(f"cell {cell.name}: state {s!r} must be an identifier other than h")
        d[f"{s}_prev"] = ("prev", s)
    for p, rows in cell.params:
        if rows is None:
            d[p] = ("param", p, None)
        else:
            for r, row in enumerate(rows):
                d[f"{p}_{row}"] = ("param", p, r)
    return d


def _names(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


@functools.lru_cache(maxsize=None)
def analyse(cell: Cell) -> _Analysis:
    where = f"cell {cell.name}"
    try:
        tree = ast.parse(_dedent(cell.body))
    except SyntaxError as e:
        raise BadInput(f"{where}, line {e.lineno}: {e.msg}") from None
    inputs = _inputs(cell)
    known = dict.fromkeys(inputs, ("unit", 0))
    known["H"] = ("row", 0)
    stmts, reductions = [], {}

    def check(node, line):
        for n in ast.walk(node):
            ok = isinstance(n, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Load,
                                ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow,
                                ast.USub, ast.UAdd))
            if not ok:
                raise BadInput(f"{where}, line {line}: {type(n).__name__} is not allowed")
            if isinstance(n, ast.Constant) and (isinstance(n.value, bool) or not isinstance(n.value, (int, float))):
                raise BadInput(f"{where}, line {line}: constant {n.value!r} is not a number")
            if isinstance(n, ast.Call):
                if not isinstance(n.func, ast.Name) or n.func.id not in FUNCS or len(n.args) != 1 or n.keywords:
                    raise BadInput(f"{where}, line {line}: calls take one argument and are one of {', '.join(FUNCS)}")
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow):
                e = n.right
                if not (isinstance(e, ast.Constant) and isinstance(e.value, int) and 1 <= e.value <= MAX_POW):
                    raise BadInput(f"{where}, line {line}: ** takes an integer exponent 1..{MAX_POW}")

    def classify(node, line):
        kind, level = "row", 0
        for n in _names(node) - set(FUNCS):
            if n not in known:
                raise BadInput(f"{where}, line {line}: {n!r} is not defined (inputs: gx_<g>, gh_<g>, "
                               f"bx_<g>, bh_<g>, h_prev, <state>_prev, parameters, H)")
            k, l = known[n]
            kind = "unit" if k == "unit" else kind
            level = max(level, l)
        return kind, level

    class Hoist(ast.NodeTransformer):
        def __init__(self, line):
            self.line = line

        def visit_Call(self, node):
            if node.func.id == "rowsum" and any(isinstance(n, ast.Call) and n.func.id == "rowsum"
                                                for n in ast.walk(node.args[0])):
                raise BadInput(f"{where}, line {self.line}: rowsum inside rowsum")
            self.generic_visit(node)
            if node.func.id != "rowsum":
                return node
            arg = node.args[0]
            _, level = classify(arg, self.line)
            name = f"_rs{len(reductions)}"
            reductions[name] = (arg, level + 1)
            known[name] = ("row", level + 1)
            stmts.append(_Stmt(name, arg, "row", level + 1, frozenset(_names(arg)), self.line))
            return ast.Name(id=name, ctx=ast.Load())

    for st in tree.body:
        if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)):
            raise BadInput(f"{where}, line {st.lineno}: each statement must be 'name = expression'")
        target = st.targets[0].id
        if target in known or target in FUNCS or target.startswith("_"):
            raise BadInput(f"{where}, line {st.lineno}: {target!r} is already defined or reserved "
                           "(each name is assigned once)")
        check(st.value, st.lineno)
        expr = Hoist(st.lineno).visit(st.value)
        kind, level = classify(expr, st.lineno)
        known[target] = (kind, level)
        stmts.append(_Stmt(target, expr, kind, level, frozenset(_names(expr)), st.lineno))
    defined = {s.name: s for s in stmts}
    for out in ("h",) + cell.states:
        if out not in defined:
            raise BadInput(f"{where}: the body must assign {out!r}")
        if defined[out].kind != "unit":
            raise BadInput(f"{where}: {out!r} must depend on the unit's inputs")
    levels = max((lv for _, lv in reductions.values()), default=0)
    return _Analysis(tuple(stmts), reductions, inputs, levels)


@functools.lru_cache(maxsize=None)
def foldable_biases(cell: Cell) -> tuple:
    """Which biases can be added into the input GEMM's result instead of inside the cell.

    Bias ``b`` (``bx`` or ``bh``) folds when, for every gate ``g``, each occurrence of ``gx_g``
    and of ``b_g`` is a term of the same sum (a chain of ``+``) holding each of them once: then
    ``gx_g + b_g`` computed once before the step loop is the same value (up to the order of the
    additions).  LSTM, vanilla RNN: both; GRU: ``bx`` only (``bh_n`` sits inside ``r * (...)``);
    layer-norm LSTM: neither (``gx`` is normalised before its biases are added).
    ``bh`` is tried only if ``bx`` folds: a builder folds ``bx`` first.
    """
    tree = ast.parse(_dedent(cell.body))
    occ: dict = {}
    chains = []

    def terms(n) -> list:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            return terms(n.left) + terms(n.right)
        return [n]

    def visit(n, in_sum: bool = False):
        if isinstance(n, ast.Name):
            occ[n.id] = occ.get(n.id, 0) + 1
        is_sum = isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)
        if is_sum and not in_sum:      # the outermost + of a chain: record its direct terms
            names = [t.id for t in terms(n) if isinstance(t, ast.Name)]
            chains.append({k: names.count(k) for k in set(names)})
        for child in ast.iter_child_nodes(n):
            visit(child, is_sum)

    visit(tree)

    def folds(src: str) -> bool:
        for g in cell.gates:
            a, b = f"gx_{g}", f"{src}_{g}"
            paired = sum(1 for c in chains if c.get(a) == 1 and c.get(b) == 1)
            if not paired == occ.get(a, 0) == occ.get(b, 0):
                return False
        return True

    if not folds("bx"):
        return ()
    return ("bx", "bh") if folds("bh") else ("bx",)


def _dedent(body: str) -> str:
    import textwrap
    return textwrap.dedent(body).strip() + "\n"


# -- expression printers -------------------------------------------------------------------------
class _Printer:
    """Prints an expression for one target; ``name(n)`` maps a DSL name, ``const(v)`` a number."""

    funcs: dict = {}

    def __init__(self, name, const):
        self.name, self.const = name, const

    def __call__(self, n) -> str:
        if isinstance(n, ast.Name):
            return self.name(n.id)
        if isinstance(n, ast.Constant):
            return self.const(float(n.value))
        if isinstance(n, ast.UnaryOp):
            return f"(-{self(n.operand)})" if isinstance(n.op, ast.USub) else self(n.operand)
        if isinstance(n, ast.BinOp):
            if isinstance(n.op, ast.Pow):
                a = self(n.left)
                return "(" + " * ".join([a] * n.right.value) + ")"
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(n.op)]
            return f"({self(n.left)} {op} {self(n.right)})"
        if isinstance(n, ast.Call):
            return f"{self.funcs[n.func.id]}({self(n.args[0])})"
        raise AssertionError(n)


def _needed(an: _Analysis, roots: set) -> list:
    """Unit statements needed (transitively) by names in ``roots``, in program order."""
    by_name = {s.name: s for s in an.stmts}
    need, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        s = by_name.get(n)
        if s is None or s.kind != "unit" or n in need:
            continue
        need.add(n)
        todo.extend(s.deps)
    return [s for s in an.stmts if s.name in need]


def _inputs_used(an: _Analysis, stmts, extra_exprs=()) -> list:
    used = set()
    for s in stmts:
        used |= s.deps
    for e in extra_exprs:
        used |= _names(e)
    return [n for n in an.inputs if n in used]


def _unit_lines(an: _Analysis, stmts, reds, load, pr, c_syntax: bool = False) -> list:
    """One pass's per-unit lines, shared by the generators: load each input the pass uses,
    compute its statements, add into its reductions (Python, or C with ``c_syntax``)."""
    decl, end = ("const float ", ";") if c_syntax else ("", "")
    lines = [f"{decl}v_{n} = {load(n)}{end}" for n in _inputs_used(an, stmts, [e for _, e in reds])]
    lines += [f"{decl}v_{st.name} = {pr(st.expr)}{end}" for st in stmts]
    lines += [f"a{n} += {pr(e)}{end}" for n, e in reds]
    return lines


def _passes(an: _Analysis, cell: Cell):
    """[(level, reductions of that level, unit statements they need)] then the final pass."""
    out = []
    for lv in range(1, an.levels + 1):
        reds = [(n, e) for n, (e, l) in an.reductions.items() if l == lv]
        roots = set().union(*(_names(e) for _, e in reds))
        out.append((lv, reds, _needed(an, roots)))
    outs = ("h",) + cell.states
    out.append((an.levels + 1, [], _needed(an, set(outs))))
    return out


def _row_stmts(an: _Analysis, level: int):
    return [s for s in an.stmts if s.kind == "row" and s.level == level and s.name not in an.reductions]


def _const_py(v: float) -> str:
    return repr(float(v))


def _cache_dir() -> Path:
    d = Path(os.environ.get("MICROBENCH_CACHE", Path(tempfile.gettempdir()) / f"microbench-{os.getuid()}")) / "cellexpr"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _load_module(source: str, stem: str):
    """Import generated source from a file named by its hash (so numba can cache to disk)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    path = _cache_dir() / f"{stem}_{digest}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    modname = f"_mb_cellexpr_{stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


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


def _named_constants():
    """A table of numeric literals and a function naming each one ``_k0``, ``_k1``, ...: the
    generated Python declares them once, typed, so fp32 math is not promoted by float literals."""
    consts: dict = {}

    def const(v):
        if v not in consts:
            consts[v] = f"_k{len(consts)}"
        return consts[v]
    return consts, const


# -- numba CPU -------------------------------------------------------------------------------------
def numba_source(cell: Cell, dtype: str = "float32") -> str:
    """Module source defining ``kernel(gx, gh, bx, bh, h_prev, <s>..., <params>..., h_out)``."""
    if dtype not in ("float32", "float64"):
        raise BadInput(f"the numba CPU kernels take float32 or float64, not {dtype}")
    from . import pointwise as fp
    an = analyse(cell)
    consts, const = _named_constants()

    class P(_Printer):
        funcs = {"sigmoid": "_sig", "tanh": "_tanh", "relu": "_relu", "exp": "np.exp", "sqrt": "np.sqrt"}

    pr = P(lambda n: f"v_{n}", const)
    states = list(cell.states)
    args = ["gx", "gh", "bx", "bh", "h_prev"] + states + [f"p_{p}" for p, _ in cell.params] + ["h_out"]
    body = ["    B = gx.shape[0]", "    H = gx.shape[2]", "    v_H = _ft(H)",
            "    for n in numba.prange(B):",
            "        r_gx = gx[n]", "        r_gh = gh[n]", "        r_hp = h_prev[n]", "        r_ho = h_out[n]"]
    body += [f"        r_{s} = {s}[n]" for s in states]

    def load(n):
        src = an.inputs[n]
        if src[0] in ("gx", "gh"):
            return f"r_{src[0]}[{src[1]}, j]"
        if src[0] in ("bx", "bh"):
            return f"{src[0]}[{src[1]}, j]"
        if src[0] == "prev":
            return "r_hp[j]" if src[1] == "h" else f"r_{src[1]}[j]"
        return f"p_{src[1]}[j]" if src[2] is None else f"p_{src[1]}[{src[2]}, j]"

    ind = " " * 8
    for s in _row_stmts(an, 0):
        body.append(f"{ind}v_{s.name} = {pr(s.expr)}")
    for lv, reds, stmts in _passes(an, cell):
        final = lv == an.levels + 1
        body.append(f"{ind}# pass {lv}: " + ("outputs" if final else ", ".join(n for n, _ in reds)))
        for n, _ in reds:
            body.append(f"{ind}a{n} = _zero")
        body.append(f"{ind}for j in range(H):")
        body += [f"{ind}    {ln}" for ln in _unit_lines(an, stmts, reds, load, pr)]
        if final:
            for s in states:
                body.append(f"{ind}    r_{s}[j] = v_{s}")
            body.append(f"{ind}    r_ho[j] = v_h")
        else:
            for n, _ in reds:
                body.append(f"{ind}v_{n} = a{n}")
            for s in _row_stmts(an, lv):
                body.append(f"{ind}v_{s.name} = {pr(s.expr)}")
    head = [
        f'"""Generated by fusion.cellexpr from cell {cell.name!r} ({dtype}); do not edit."""',
        "import numba", "import numpy as np", "",
        f"_ft = np.{dtype}", "_zero = _ft(0.0)", "_half = _ft(0.5)", "_one = _ft(1.0)",
    ]
    head += [f"{k} = _ft({v!r})" for v, k in consts.items()]
    if dtype == "float32":
        head += [f"_lo = _ft({-fp.TANH_CLAMP!r})", f"_hi = _ft({fp.TANH_CLAMP!r})", f"_inv = _ft({1 / fp.TANH_CLAMP!r})"]
        head += [f"_P{i} = _ft({a!r})" for i, a in enumerate(fp.TANH_P)]
        head += [f"_Q{i} = _ft({a!r})" for i, a in enumerate(fp.TANH_Q)]
        head += ["", "", "@numba.njit(inline='always')", "def _tanh(x):",
                 "    # the rational fp32 tanh of fusion.pointwise (vectorizes; libm's tanhf does not)",
                 "    xc = min(max(x, _lo), _hi)", "    u = (xc * _inv) * (xc * _inv)",
                 "    p = (((_P4 * u + _P3) * u + _P2) * u + _P1) * u + _P0",
                 "    q = ((((_Q5 * u + _Q4) * u + _Q3) * u + _Q2) * u + _Q1) * u + _Q0",
                 "    return min(max(xc * p / q, -_one), _one)"]
    else:
        head += ["", "", "@numba.njit(inline='always')", "def _tanh(x):", "    return np.tanh(x)"]
    # A row reduction (layer norm's mean and variance) is a float sum: LLVM vectorizes it only when
    # allowed to reassociate, and scalar it made the layer-norm LSTM step 10x slower than the plain
    # cell's.  "reassoc" alone: no assumption about NaN or infinities, so NaN still propagates.
    fm = ", fastmath={'reassoc'}" if any(reds for _, reds, _ in _passes(an, cell)) else ""
    head += ["", "", "@numba.njit(inline='always')", "def _relu(a):",
             "    return _zero if a < _zero else a    # NaN < 0 is false: NaN passes through"]
    head += ["", "", "@numba.njit(inline='always')", "def _sig(a):", "    return _half * _tanh(_half * a) + _half",
             "", "", f"@numba.njit(parallel=True, cache=True{fm})", f"def kernel({', '.join(args)}):"]
    return "\n".join(head + body) + "\n"


@functools.lru_cache(maxsize=None)
def numba_kernel(cell: Cell, dtype: str = "float32"):
    """The compiled numba CPU kernel (compiled on first call; cached on disk by numba)."""
    try:
        import numba  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise MissingDependency("numba", "generated numba kernels", "pip install numba") from e
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return _load_module(numba_source(cell, dtype), f"{cell.name}_{dtype}").kernel


class NumbaCell:
    """Provider with the :mod:`kernels.cells`-like call ``(xp, gx, gh, bx, bh, h_prev, states_prev,
    params, h_out, states_out)``: states are tuples; absent biases become zeros."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.zeros = {}

    def __call__(self, xp, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out):
        dt = gx.dtype
        kernel = numba_kernel(self.cell, dt.name)
        key = (dt.name, gx.shape[1], gx.shape[2])
        z = self.zeros.get(key)
        if z is None:
            z = self.zeros[key] = np.zeros(key[1:], dtype=dt)
        for sp, so in zip(states_prev, states_out):
            if so is not sp:
                so[...] = sp
        kernel(gx, gh, z if bx is None else bx, z if bh is None else bh, h_prev, *states_out, *params, h_out)
        return (h_out, *states_out)


# -- CUDA C ----------------------------------------------------------------------------------------
_CUDA_PRELUDE = r"""#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef MB_CELLEXPR_PRELUDE
#define MB_CELLEXPR_PRELUDE
namespace mbc {
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float sigmoid(float a) { return fmaf(0.5f, tanhf(0.5f * a), 0.5f); }
// a compare, not fmaxf (which returns 0 for a NaN): a NaN must reach the output and fail the check
__device__ __forceinline__ float relu(float a) { return a < 0.0f ? 0.0f : a; }
template <typename T>
__device__ __forceinline__ float bias(const T* __restrict__ b, long long off) { return b ? load(b + off) : 0.0f; }
// Sum of v over the block, returned to every thread.  blockDim.x is a multiple of 32, at most 1024.
// sh holds 33 floats; the first __syncthreads protects it from the previous call's readers.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nwarps ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}
}  // namespace mbc
#endif
"""


def _c_const(v: float) -> str:
    r = repr(float(np.float32(v)))
    if "e" not in r and "." not in r:
        r += ".0"
    return r + "f"


def cuda_source(cell: Cell, *, prelude: bool = True) -> str:
    """CUDA C: extern "C" ``<name>_cell_{f32,f16,bf16}`` (see the module doc for arguments)."""
    an = analyse(cell)

    class P(_Printer):
        funcs = {"sigmoid": "mbc::sigmoid", "tanh": "tanhf", "relu": "mbc::relu", "exp": "expf", "sqrt": "sqrtf"}

    pr = P(lambda n: f"v_{n}", _c_const)
    red = an.levels > 0
    params = [f"const T* __restrict__ p_{p}" for p, _ in cell.params]
    sig = (["const T* __restrict__ gx", "long long gx_sb", "long long gx_sg",
            "const T* __restrict__ gh", "long long gh_sb", "long long gh_sg",
            "const T* __restrict__ bx", "const T* __restrict__ bh",
            "const T* h_prev", "long long h_prev_sb"]
           + [x for s in cell.states for x in (f"const T* {s}_prev", f"long long {s}_prev_sb",
                                               f"T* {s}_out", f"long long {s}_out_sb")]
           + params + ["T* h_out", "long long h_out_sb", "int B", "int H"])

    def load(n):
        src = an.inputs[n]
        if src[0] in ("gx", "gh"):
            return f"mbc::load({src[0]} + b * {src[0]}_sb + {src[1]} * {src[0]}_sg + j)"
        if src[0] in ("bx", "bh"):
            return f"mbc::bias({src[0]}, {src[1]}LL * H + j)"
        if src[0] == "prev":
            return f"mbc::load({src[1]}_prev + b * {src[1]}_prev_sb + j)"
        off = "j" if src[2] is None else f"{src[2]}LL * H + j"
        return f"mbc::load(p_{src[1]} + {off})"

    def unit_block(stmts, reds, final, ind):
        out = [f"{ind}{ln}" for ln in _unit_lines(an, stmts, reds, load, pr, c_syntax=True)]
        if final:
            for s in cell.states:
                out.append(f"{ind}mbc::store({s}_out + b * {s}_out_sb + j, v_{s});")
            out.append(f"{ind}mbc::store(h_out + b * h_out_sb + j, v_h);")
        return out

    L = [f"// Generated by fusion.cellexpr from cell {cell.name!r}; do not edit.",
         "template <typename T>", f"__device__ __forceinline__ void {cell.name}_cell_body(",
         "        " + ",\n        ".join(sig) + ") {"]
    if "H" in set().union(*(st.deps for st in an.stmts)):
        L.append("    const float v_H = (float)H;")
    if not red:
        (_, _, stmts), = _passes(an, cell)
        L += ["    const int j = blockIdx.x * blockDim.x + threadIdx.x;", "    if (j >= H) return;",
              "    for (int b = blockIdx.y * blockDim.y + threadIdx.y; b < B; b += gridDim.y * blockDim.y) {"]
        L += unit_block(stmts, [], True, " " * 8)
        L.append("    }")
    else:
        L += ["    __shared__ float sh[33];",
              "    for (int b = blockIdx.x; b < B; b += gridDim.x) {  // uniform per block: safe to sync"]
        ind = " " * 8
        for s in _row_stmts(an, 0):
            L.append(f"{ind}const float v_{s.name} = {pr(s.expr)};")
        for lv, reds, stmts in _passes(an, cell):
            final = lv == an.levels + 1
            L.append(f"{ind}// pass {lv}: " + ("outputs" if final else ", ".join(n for n, _ in reds)))
            for n, _ in reds:
                L.append(f"{ind}float a{n} = 0.0f;")
            L.append(f"{ind}for (int j = threadIdx.x; j < H; j += blockDim.x) {{")
            L += unit_block(stmts, reds, final, ind + "    ")
            L.append(f"{ind}}}")
            if not final:
                for n, _ in reds:
                    L.append(f"{ind}const float v_{n} = mbc::block_sum(a{n}, sh);")
                for s in _row_stmts(an, lv):
                    L.append(f"{ind}const float v_{s.name} = {pr(s.expr)};")
        L.append("    }")
    L.append("}")
    names = [a.rsplit(" ", 1)[1] for a in sig]
    for dt, sfx in (("float", "f32"), ("__half", "f16"), ("__nv_bfloat16", "bf16")):
        L += [f'extern "C" __global__ void __launch_bounds__({CUDA_THREADS}) {cell.name}_cell_{sfx}(',
              "        " + ",\n        ".join(a.replace("T*", f"{dt}*") for a in sig) + ") {",
              f"    {cell.name}_cell_body<{dt}>({', '.join(names)});", "}"]
    return (_CUDA_PRELUDE if prelude else "") + "\n" + "\n".join(L) + "\n"


def cuda_launch_shape(cell: Cell, B: int, H: int, max_grid: int = 65535):
    """``(grid, block)``: the hand-written kernel's mapping without reductions; one block per row
    (threads: H rounded up to warps, at most CUDA_THREADS) with them."""
    import math
    if not analyse(cell).levels:
        from .pointwise_cuda import launch_shape
        return launch_shape(B, H, max_grid)
    tx = min(CUDA_THREADS, 32 * math.ceil(H / 32))
    return (min(B, max_grid), 1, 1), (tx, 1, 1)


def cuda_symbol(cell: Cell, dtype) -> str:
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return f"{cell.name}_cell_{SUFFIX[name]}"


# -- numba.cuda ------------------------------------------------------------------------------------
def numba_cuda_source(cell: Cell) -> str:
    """Module source defining the ``numba.cuda`` kernel ``kernel`` (fp32 math, one block per row)."""
    an = analyse(cell)
    consts, const = _named_constants()

    class P(_Printer):
        funcs = {"sigmoid": "_sig", "tanh": "math.tanh", "exp": "math.exp", "sqrt": "math.sqrt"}

        def __call__(self, n):
            if isinstance(n, ast.Call) and n.func.id == "relu":   # inline: a device function needs a context
                a = super().__call__(n.args[0])
                return f"(_zero if {a} < _zero else {a})"
            return super().__call__(n)

    pr = P(lambda n: f"v_{n}", const)
    states = list(cell.states)
    args = (["gx", "gh", "bx", "bh", "h_prev"] + [x for s in states for x in (f"{s}_prev", f"{s}_out")]
            + [f"p_{p}" for p, _ in cell.params] + ["h_out"])

    def load(n):
        src = an.inputs[n]
        if src[0] in ("gx", "gh"):
            return f"float32({src[0]}[b, {src[1]}, j])"
        if src[0] in ("bx", "bh"):
            return f"float32({src[0]}[{src[1]}, j])"
        if src[0] == "prev":
            return f"float32({src[1]}_prev[b, j])"
        return f"float32(p_{src[1]}[j])" if src[2] is None else f"float32(p_{src[1]}[{src[2]}, j])"

    B = ["    B = gx.shape[0]", "    H = gx.shape[2]", "    v_H = float32(H)",
         f"    sh = cuda.shared.array({NUMBA_CUDA_THREADS}, float32)",
         "    tid = cuda.threadIdx.x", "    nt = cuda.blockDim.x", "    b = cuda.blockIdx.x", "    while b < B:"]
    ind = " " * 8
    for s in _row_stmts(an, 0):
        B.append(f"{ind}v_{s.name} = {pr(s.expr)}")
    for lv, reds, stmts in _passes(an, cell):
        final = lv == an.levels + 1
        for n, _ in reds:
            B.append(f"{ind}a{n} = _zero")
        B += [f"{ind}j = tid", f"{ind}while j < H:"]
        B += [f"{ind}    {ln}" for ln in _unit_lines(an, stmts, reds, load, pr)]
        if final:
            for s in states:
                B.append(f"{ind}    {s}_out[b, j] = v_{s}")
            B.append(f"{ind}    h_out[b, j] = v_h")
        B.append(f"{ind}    j += nt")
        if not final:
            for n, _ in reds:
                # tree reduction in shared memory; nt is a power of two
                B += [f"{ind}sh[tid] = a{n}", f"{ind}cuda.syncthreads()", f"{ind}s = nt // 2",
                      f"{ind}while s > 0:", f"{ind}    if tid < s:", f"{ind}        sh[tid] += sh[tid + s]",
                      f"{ind}    cuda.syncthreads()", f"{ind}    s //= 2",
                      f"{ind}v_{n} = sh[0]", f"{ind}cuda.syncthreads()"]
            for s in _row_stmts(an, lv):
                B.append(f"{ind}v_{s.name} = {pr(s.expr)}")
    B.append(f"{ind}b += cuda.gridDim.x")
    head = [f'"""Generated by fusion.cellexpr from cell {cell.name!r} (numba.cuda); do not edit."""',
            "import math", "", "import numpy as np", "from numba import cuda, float32", "",
            "_zero = np.float32(0.0)", "_half = np.float32(0.5)"]
    head += [f"{k} = np.float32({v!r})" for v, k in consts.items()]
    # sigmoid written as a device function would need a CUDA context to type; a lambda-free macro:
    src = "\n".join(head + ["", "", "@cuda.jit", f"def kernel({', '.join(args)}):"] + B) + "\n"
    return src.replace("_sig(", "_SIG(")


def _expand_sig(src: str) -> str:
    """Inline ``_SIG(x)`` as ``(_half * math.tanh(_half * (x)) + _half)`` (balanced parentheses)."""
    out, i = [], 0
    while True:
        k = src.find("_SIG(", i)
        if k < 0:
            out.append(src[i:])
            return "".join(out)
        out.append(src[i:k])
        depth, m = 0, k + 4
        while True:
            if src[m] == "(":
                depth += 1
            elif src[m] == ")":
                depth -= 1
                if depth == 0:
                    break
            m += 1
        inner = _expand_sig(src[k + 5:m])
        out.append(f"(_half * math.tanh(_half * ({inner})) + _half)")
        i = m + 1


@functools.lru_cache(maxsize=None)
def numba_cuda_kernel(cell: Cell):
    try:
        import numba.cuda  # noqa: F401
    except ImportError as e:
        raise MissingDependency("numba-cuda", "generated numba.cuda kernels", "pip install numba-cuda[cu13]") from e
    return _load_module(_expand_sig(numba_cuda_source(cell)), f"{cell.name}_numba_cuda").kernel


def numba_cuda_launch_shape(B: int, H: int, max_grid: int = 65535):
    t = 1
    while t < min(H, NUMBA_CUDA_THREADS):
        t *= 2
    return (min(B, max_grid), 1, 1), (max(t, 1), 1, 1)


# -- the shipped cells -----------------------------------------------------------------------------
LSTM = Cell("lstm", gates="ifgo", states=("c",), body="""
    i = sigmoid(gx_i + gh_i + bx_i + bh_i)
    f = sigmoid(gx_f + gh_f + bx_f + bh_f)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    o = sigmoid(gx_o + gh_o + bx_o + bh_o)
    c = f * c_prev + i * g
    h = o * tanh(c)
""")

# Reset gate after the recurrent GEMM (cuDNN, PyTorch): b_hn stays inside the product.
GRU = Cell("gru", gates="rzn", states=(), body="""
    r = sigmoid(gx_r + bx_r + gh_r + bh_r)
    z = sigmoid(gx_z + bx_z + gh_z + bh_z)
    n = tanh(gx_n + bx_n + r * (gh_n + bh_n))
    h = (1 - z) * n + z * h_prev
""")

# Gers & Schmidhuber peepholes, diagonal: i and f see c_{t-1}, o sees c_t.
PEEPHOLE_LSTM = Cell("peephole_lstm", gates="ifgo", states=("c",), params=(("peep", "ifo"),), body="""
    i = sigmoid(gx_i + gh_i + bx_i + bh_i + peep_i * c_prev)
    f = sigmoid(gx_f + gh_f + bx_f + bh_f + peep_f * c_prev)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    c = f * c_prev + i * g
    o = sigmoid(gx_o + gh_o + bx_o + bh_o + peep_o * c)
    h = o * tanh(c)
""")

LN_EPS = 1e-5

# Ba, Kiros & Hinton 2016: LN over the 4H input pre-activations and over the 4H recurrent ones,
# each with its gain and bias, then the canonical biases, and LN over c (H) before the output tanh.
# The biases are added after normalisation, so a builder must not fold them into gx.
LAYERNORM_LSTM = Cell("layernorm_lstm", gates="ifgo", states=("c",), params=(
    ("lnx_g", "ifgo"), ("lnx_b", "ifgo"), ("lnh_g", "ifgo"), ("lnh_b", "ifgo"), ("lnc_g", None), ("lnc_b", None)),
    body=f"""
    mx = rowsum(gx_i + gx_f + gx_g + gx_o) / (4 * H)
    mh = rowsum(gh_i + gh_f + gh_g + gh_o) / (4 * H)
    vx = rowsum((gx_i - mx) ** 2 + (gx_f - mx) ** 2 + (gx_g - mx) ** 2 + (gx_o - mx) ** 2) / (4 * H)
    vh = rowsum((gh_i - mh) ** 2 + (gh_f - mh) ** 2 + (gh_g - mh) ** 2 + (gh_o - mh) ** 2) / (4 * H)
    sx = 1 / sqrt(vx + {LN_EPS!r})
    sh = 1 / sqrt(vh + {LN_EPS!r})
    i = sigmoid((gx_i - mx) * sx * lnx_g_i + lnx_b_i + (gh_i - mh) * sh * lnh_g_i + lnh_b_i + bx_i + bh_i)
    f = sigmoid((gx_f - mx) * sx * lnx_g_f + lnx_b_f + (gh_f - mh) * sh * lnh_g_f + lnh_b_f + bx_f + bh_f)
    g = tanh((gx_g - mx) * sx * lnx_g_g + lnx_b_g + (gh_g - mh) * sh * lnh_g_g + lnh_b_g + bx_g + bh_g)
    o = sigmoid((gx_o - mx) * sx * lnx_g_o + lnx_b_o + (gh_o - mh) * sh * lnh_g_o + lnh_b_o + bx_o + bh_o)
    c = f * c_prev + i * g
    mc = rowsum(c) / H
    vc = rowsum((c - mc) ** 2) / H
    h = o * tanh((c - mc) / sqrt(vc + {LN_EPS!r}) * lnc_g + lnc_b)
""")

# The vanilla (Elman) RNN: one gate block, biases summed (cuDNN's CUDNN_RNN_RELU / _TANH).
RNN_RELU = Cell("rnn_relu", gates="h", states=(), body="""
    h = relu(gx_h + gh_h + bx_h + bh_h)
""")
RNN_TANH = Cell("rnn_tanh", gates="h", states=(), body="""
    h = tanh(gx_h + gh_h + bx_h + bh_h)
""")

CELLS = {c.name: c for c in (LSTM, GRU, PEEPHOLE_LSTM, LAYERNORM_LSTM, RNN_RELU, RNN_TANH)}


def get(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise BadInput(f"cell {name!r} is unknown; have: {', '.join(CELLS)}") from None
