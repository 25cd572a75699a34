"""Nsight Systems / Nsight Compute: the command lines to run, and readers for their CSV output.

Builders return argv lists (for subprocess) and :func:`shell` quotes one for printing.  Parsers
read ``nsys stats --report cuda_gpu_kern_sum|nvtx_sum --format csv`` and ``ncu --csv`` (page
``details``: one row per kernel and metric; page ``raw``: one row per kernel, a units row under
the header) into :class:`profiles.explain.KernelRow` lists, so a report taken on another machine
feeds the same analysis as an in-process trace.  Tool banners before the CSV header
(``==PROF==`` lines, report titles) are skipped.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import shlex
from pathlib import Path
from typing import Iterable

from kernels.errors import BadInput
from kernels import nvtx
from profiles.explain import KernelRow

# -- command lines -----------------------------------------------------------------------------
# The ops, and the variant and backend an NVTX filter names, come from the caller (the `profile`
# command reads them from microbench's registry and the benchmark's own parser); this package
# keeps no list of its own.

def _op(bench_args: list[str], ops) -> str:
    ops = tuple(ops)
    if not bench_args or bench_args[0] not in ops:
        got = bench_args[0] if bench_args else "nothing"
        raise BadInput(f"profile needs a benchmark op first, got {got!r}; allowed: {', '.join(ops)}")
    return bench_args[0]


def nvtx_filter(op: str, variant: str | None = None, backend: str | None = None) -> str:
    """ncu's ``--nvtx-include`` value for nested push/pop ranges: ``microbench@lstm/fused/``."""
    parts = [op] + [p for p in (variant, backend) if p]
    if backend and not variant:
        raise BadInput("an NVTX filter on a backend needs its variant too (ranges nest op > variant > backend)")
    return f"{nvtx.DOMAIN}@" + "".join(p + "/" for p in parts)


def nsys_command(bench_args: list[str], output: str = "microbench", python: str = "python",
                 extra: Iterable[str] = (), *, ops) -> list[str]:
    """Nsight Systems over the ``--profile`` region only (cudaProfilerStart/Stop), CUDA + NVTX.
    ``ops``: the benchmark ops there are (the first argument must be one)."""
    _op(bench_args, ops)
    return ["nsys", "profile", "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
            "--trace=cuda,nvtx", f"--output={output}", "--force-overwrite=true", *extra,
            python, "-m", "microbench", *_with_nvtx(bench_args), "--profile"]


def ncu_command(bench_args: list[str], output: str | None = None, python: str = "python",
                section_set: str | None = None, extra: Iterable[str] = (), *, ops,
                variant: str | None = None, backend: str | None = None) -> list[str]:
    """Nsight Compute on the kernels inside this case's NVTX range: the op, and ``variant`` (and
    ``backend``) when the arguments select one, as the registry names them (``fused``,
    ``layernorm-fused``, ``fused+bwd``)."""
    op = _op(bench_args, ops)
    cmd = ["ncu", "--nvtx", "--nvtx-include", nvtx_filter(op, variant, backend if variant else None)]
    if section_set:
        cmd += ["--set", section_set]
    if output:
        cmd += ["--export", output, "--force-overwrite"]
    return cmd + [*extra, python, "-m", "microbench", *_with_nvtx(bench_args)]


def _with_nvtx(bench_args: list[str]) -> list[str]:
    """The benchmark's arguments with NVTX ranges on unless they say otherwise (the default,
    auto, would also see the tool, but the printed command should not depend on that)."""
    has = any(a == "--nvtx" or a.startswith("--nvtx=") for a in bench_args)
    return list(bench_args) if has else [*bench_args, "--nvtx", "on"]


def profile_command(tool: str, bench_args: list[str], **kw) -> list[str]:
    """``python -m microbench profile nsys|ncu <bench args>``: the command to run (``ops`` and,
    for ncu, ``variant``/``backend`` as keywords: see :func:`ncu_command`)."""
    builders = {"nsys": nsys_command, "ncu": ncu_command}
    if tool not in builders:
        raise BadInput(f"profile tool {tool!r} is unknown; allowed: {', '.join(builders)}")
    if tool == "nsys":       # nsys records the whole capture range: no filter to name
        kw.pop("variant", None)
        kw.pop("backend", None)
    return builders[tool](list(bench_args), **kw)


def shell(argv: list[str]) -> str:
    """One argv as a line to paste into a POSIX shell."""
    return shlex.join(argv)


# -- CSV readers -------------------------------------------------------------------------------

def _text(src: str | Path) -> str:
    if isinstance(src, Path) or ("\n" not in src and Path(src).is_file()):
        return Path(src).read_text()
    return src


def _table(src: str | Path, must: tuple[str, ...], what: str) -> list[dict]:
    """Rows of the first CSV table whose header holds all ``must`` columns."""
    lines = _text(src).splitlines()
    for i, line in enumerate(lines):
        if all(f'"{m}"' in line or m in next(csv.reader([line]), []) for m in must):
            return list(csv.DictReader(io.StringIO("\n".join(lines[i:]))))
    raise BadInput(f"no {what} table found: a header with {', '.join(must)} is needed")


def _num(v: str | None) -> float:
    """Numbers as the tools print them: '1,234,567', '1.5', '' (missing -> 0)."""
    v = (v or "").replace(",", "").strip()
    return float(v) if v else 0.0


_TIME_UNITS = {"ns": 1, "nsecond": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
               "second": 1e9, "s": 1e9}


def _ns(value: str, unit: str) -> float:
    unit = unit.strip()
    if unit not in _TIME_UNITS:
        raise BadInput(f"time unit {unit!r} is unknown; allowed: {', '.join(_TIME_UNITS)}")
    return _num(value) * _TIME_UNITS[unit]


def read_kern_sum(src: str | Path) -> list[KernelRow]:
    """``nsys stats --report cuda_gpu_kern_sum --format csv``: one row per kernel name."""
    rows = _table(src, ("Total Time (ns)", "Instances", "Name"), "cuda_gpu_kern_sum")
    return [KernelRow(r["Name"], int(_num(r["Instances"])), int(_num(r["Total Time (ns)"])))
            for r in rows if r.get("Name")]


@dataclasses.dataclass(frozen=True)
class NvtxRow:
    range: str              # as nsys prints it; the ``microbench:`` domain prefix removed
    instances: int
    total_ns: int
    avg_ns: float


def read_nvtx_sum(src: str | Path) -> list[NvtxRow]:
    """``nsys stats --report nvtx_sum --format csv``: time per NVTX range name."""
    rows = _table(src, ("Total Time (ns)", "Instances", "Range"), "nvtx_sum")
    out = []
    for r in rows:
        name = r["Range"]
        for prefix in (f"{nvtx.DOMAIN}:", f"{nvtx.DOMAIN}@"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out.append(NvtxRow(name, int(_num(r["Instances"])), int(_num(r["Total Time (ns)"])),
                           _num(r.get("Avg (ns)"))))
    return out


@dataclasses.dataclass
class NcuKernel:
    """One profiled launch in an ncu report."""
    id: int
    name: str
    duration_ns: float
    grid: str = ""
    block: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)   # metric name -> (value, unit)


_DURATION = ("gpu__time_duration.sum", "Duration")


def read_ncu(src: str | Path) -> list[NcuKernel]:
    """``ncu --csv`` in page ``details`` (default) or ``raw``; each launch with its duration."""
    text = _text(src)
    if '"Metric Name"' in text:
        return _ncu_details(text)
    return _ncu_raw(text)


def _ncu_details(text: str) -> list[NcuKernel]:
    rows = _table(text, ("ID", "Kernel Name", "Metric Name", "Metric Value"), "ncu details")
    by_id: dict[int, NcuKernel] = {}
    for r in rows:
        k = by_id.setdefault(int(_num(r["ID"])), NcuKernel(int(_num(r["ID"])), r["Kernel Name"],
                                                           0.0, r.get("Grid Size", ""),
                                                           r.get("Block Size", "")))
        unit = r.get("Metric Unit", "")
        k.metrics[r["Metric Name"]] = (r["Metric Value"], unit)
        if r["Metric Name"] in _DURATION:
            k.duration_ns = _ns(r["Metric Value"], unit)
    return list(by_id.values())


def _ncu_raw(text: str) -> list[NcuKernel]:
    rows = _table(text, ("ID", "Kernel Name"), "ncu raw")
    if not rows:
        return []
    units, rows = rows[0], rows[1:]        # the line under the header carries the units
    col = next((c for c in _DURATION if c in units), None)
    if col is None:
        raise BadInput(f"ncu raw page has no duration column; needed one of: {', '.join(_DURATION)}")
    return [NcuKernel(int(_num(r["ID"])), r["Kernel Name"], _ns(r[col], units[col]),
                      r.get("Grid Size", ""), r.get("Block Size", ""),
                      {k: (v, units.get(k, "")) for k, v in r.items()}) for r in rows]


def ncu_rows(kernels: list[NcuKernel]) -> list[KernelRow]:
    """ncu launches summed per kernel name, in the table :mod:`profiles.explain` takes.

    ncu serializes and replays each kernel, so these durations are per kernel in isolation:
    compare them with each other, not with wall time.
    """
    acc: dict[str, list[float]] = {}
    for k in kernels:
        a = acc.setdefault(k.name, [0, 0.0])
        a[0] += 1
        a[1] += k.duration_ns
    return sorted((KernelRow(n, c, int(round(t))) for n, (c, t) in acc.items()),
                  key=lambda r: -r.total_ns)
