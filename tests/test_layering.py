"""The import layers (docs/design.md, "The import layers"): kernels' foundation, then fusion,
then kernels' API built on fusion, then profiles, then microbench.  Every import (at module level
or inside a function) runs down that list or stays in its layer, and no file circle exists: no
module reaches itself through the imports of others."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "fusion", "profiles", "microbench")
# kernels modules that import fusion themselves (kernels' API layer): fusion importing them would
# be a cycle
KERNELS_ON_FUSION = {"kernels", "kernels.recurrent", "kernels.custom", "kernels.backward", "kernels.train",
                     "kernels.torch", "kernels.jax",
                     # the convolutions whose layers run GEMMs on a thread team (fusion's step-loop
                     # machinery: oneDNN calls by address, the shared OpenMP runtime)
                     "kernels.conv.team", "kernels.conv.implicit_packed", "kernels.conv.winograd_packed"}
LAYERS = ("kernels foundation", "fusion", "kernels API", "profiles", "microbench")


def layer(module: str) -> int:
    top = module.split(".")[0]
    if top == "kernels":
        return LAYERS.index("kernels API" if module in KERNELS_ON_FUSION else "kernels foundation")
    return LAYERS.index(top)


def _modules() -> dict:
    """module name -> path, for every .py file of our packages."""
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set:
    """Our modules ``module`` imports (``from X import y`` counts y when y is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    # a name like kernels.onednn.lib counts as the deepest of our modules it names
    out = set()
    for name in found:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_import_runs_down_the_layers():
    bad = [f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
           for m, targets in GRAPH.items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def _circles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_file_imports_itself_back():
    assert _circles(GRAPH) == []


def test_the_circle_finder_finds_a_circle():
    """The check above can fail: two modules importing each other (or three in a ring) are found."""
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module,expected", [
    ("kernels.errors", "kernels foundation"), ("kernels.onednn.matmul", "kernels foundation"),
    ("kernels.nvtx", "kernels foundation"), ("fusion.gemm", "fusion"), ("kernels.recurrent", "kernels API"),
    ("kernels", "kernels API"), ("profiles.explain", "profiles"), ("microbench.args", "microbench")])
def test_layer_of(module, expected):
    assert LAYERS[layer(module)] == expected


def test_research_code_keeps_its_names():
    """What research code imports stays where it was: kernels.RNN, kernels.lstm, kernels.torch."""
    import kernels
    from kernels import torch as kt   # noqa: F401
    assert callable(kernels.RNN) and callable(kernels.lstm) and callable(kernels.gru) and callable(kernels.rnn)
