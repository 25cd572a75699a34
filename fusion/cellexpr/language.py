"""The cell language: :class:`Cell`, its analysis (statements, reduction levels, which biases fold),
and the helpers every generator shares (expression printers, passes, the loader of generated
source).  See :mod:`fusion.cellexpr` for the language itself."""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import BadInput

FUNCS = ("sigmoid", "tanh", "relu", "exp", "sqrt", "rowsum")
MAX_POW = 4


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
    """Where generated modules (and numba's cache of them) live: the private per-user cache
    (kernels.cachedir), never a shared temporary directory, since both are executed."""
    from kernels.cachedir import private_dir
    return private_dir("cellexpr")


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


def _named_constants():
    """A table of numeric literals and a function naming each one ``_k0``, ``_k1``, ...: the
    generated Python declares them once, typed, so fp32 math is not promoted by float literals."""
    consts: dict = {}

    def const(v):
        if v not in consts:
            consts[v] = f"_k{len(consts)}"
        return consts[v]
    return consts, const
