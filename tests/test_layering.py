"""The package layering: kernels compute, fusion optimizes, profiles explain, microbench measures.
kernels never imports microbench; fusion imports no microbench and only kernels' leaf modules
(never kernels.rnn or kernels.custom, which are built on fusion); profiles does not import
microbench.  Imports inside functions count too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# kernels modules that import fusion themselves: fusion importing them would be a cycle
KERNELS_ON_FUSION = {"kernels.rnn", "kernels.custom", "kernels.backward", "kernels.torch", "kernels.jax",
                     # the conv layers whose chunks run on a thread team calling oneDNN from numba
                     # (fusion.native's call by address, fusion.cpuloop's OpenMP-runtime check)
                     "kernels.conv.team", "kernels.conv.winograd_packed", "kernels.conv.implicit_packed"}


def _imports(path: Path, package: str) -> set:
    tree = ast.parse(path.read_text(), str(path))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            mods.add(mod)
            mods.update(f"{mod}.{a.name}" for a in node.names)
    return mods


def _package_files(top: str):
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        package = ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])
        yield path, package


@pytest.mark.parametrize("top,forbidden", [
    ("kernels", ("microbench",)),
    ("fusion", ("microbench",) + tuple(sorted(KERNELS_ON_FUSION))),
    ("profiles", ("microbench",)),
])
def test_layering(top, forbidden):
    bad = []
    for path, package in _package_files(top):
        for mod in _imports(path, package):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_kernels_imports_fusion_only_where_built_on_it():
    """The launchers (persistent, conv, cuDNN, oneDNN) build their CUDA and load their libraries
    through kernels' own leaf modules (kernels.cudasrc, kernels.vendorlib), not through fusion."""
    bad = []
    for path, package in _package_files("kernels"):
        module = package if path.stem == "__init__" else f"{package}.{path.stem}"
        if module in KERNELS_ON_FUSION:
            continue
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path, package)
                if m == "fusion" or m.startswith("fusion.")]
    assert not bad, "\n".join(bad)
