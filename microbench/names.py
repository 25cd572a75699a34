"""Our names in a shared environment.

The distribution is ``microbench-kernels`` (``microbench`` on PyPI is another project).  The
import names ``kernels``, ``fusion``, ``profiles`` and ``microbench`` are also those of other
published packages (a kernel-loading package installed beside PyTorch and transformers imports as
``kernels``), so where one of ours resolves to a file outside this checkout, importing microbench
stops with a message naming the package in the way, rather than failing later with an
unrelated ImportError; ``env`` lists every other distribution that provides one of the names.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

DISTRIBUTION = "microbench-kernels"
PACKAGES = ("kernels", "fusion", "profiles", "microbench")
ROOT = Path(__file__).resolve().parent.parent


def _owners(name: str) -> list:
    import importlib.metadata as md
    return [d for d in md.packages_distributions().get(name, []) if d.lower() != DISTRIBUTION]


def shadowed(name: str) -> str | None:
    """Why ``import name`` would not give our package (None: it does, or it is absent, as in a
    framework worker under another interpreter, which sees only ``microbench``)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    where = Path(spec.origin).resolve()
    if where.parent.parent == ROOT and where.parent.name == name:
        return None
    owners = _owners(name)
    by = f" (distribution {', '.join(owners)})" if owners else ""
    return f"'import {name}' gives {where}{by}, not microbench's {ROOT / name}"


def check() -> None:
    """Raise ImportError, with what to do, if a foreign package shadows one of ours; under
    ``python -m microbench`` print that one line and exit 2 instead of a traceback."""
    import sys
    problems = [p for p in (shadowed(n) for n in PACKAGES if n != "microbench") if p]
    if not problems:
        return
    msg = ("microbench: " + "; ".join(problems) + ". Another installed package uses the same import "
           "name: uninstall it (pip uninstall NAME) or run microbench in its own virtual environment.")
    if sys.argv[:1] == ["-m"]:          # python -m microbench, while the package is located
        print(f"microbench: error: {msg[len('microbench: '):]}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(msg)


def others() -> dict:
    """Import name -> other distributions installed here that also provide it (env's report)."""
    return {n: o for n in PACKAGES if (o := _owners(n))}
