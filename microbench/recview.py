"""How a record is named and grouped in tables and figures: its shape as text, its thread count,
framework and computation, the label of its implementation, and the records that carry a
measurement.  Shared by the figures (microbench.plots, microbench.convergence) and the report's
tables; records are the normalized dicts of :mod:`microbench.store`."""
from __future__ import annotations

from kernels.untrusted import visible      # record text: control characters shown, not drawn


def ok_records(records: list) -> list:
    """Records with a measurement, the last of each identity (a rerun supersedes)."""
    from .store import latest
    return [r for r in latest(records, with_env=True).values()
            if isinstance(r.get("stats"), dict) and (r["stats"].get("median_s") or 0) > 0]


def shape_text(rec: dict) -> str:
    s = rec.get("shape") or {}
    if rec.get("op") == "conv":
        # stride, padding, dilation and groups where they are not the plain default: two layers
        # that differ only there are different work
        def two(k):        # "2", or "2x1" where height and width differ
            h, w = s.get(f"{k}_h"), s.get(f"{k}_w", s.get(f"{k}_h"))
            return f"{h}" if h == w else f"{h}x{w}"
        extra = "".join(f" {w}{two(k)}" for w, k, plain in (("stride", "stride", "1"), ("pad", "pad", "0"),
                                                            ("dil", "dilation", "1"))
                        if s.get(f"{k}_h") is not None and two(k) != plain)
        extra += f" g{s['groups']}" if s.get("groups", 1) != 1 else ""
        return (f"N{s.get('N')} C{s.get('C')} {s.get('H')}x{s.get('W')} K{s.get('K')} {s.get('R')}x{s.get('S')}"
                + extra)
    extra = "" if s.get("I") in (None, s.get("H")) else f" I{s.get('I')}"
    layers = "" if s.get("L", 1) == 1 else f" L{s.get('L')}"
    return f"H{s.get('H')} B{s.get('B')} T{s.get('T')}{extra}{layers}"


def threads_of(rec: dict):
    return (rec.get("options") or {}).get("threads")


def framework_of(rec: dict) -> str:
    """The framework of a framework row ("" for ours); older files kept it only under ``info``."""
    return str(rec.get("framework") or (rec.get("info") or {}).get("framework") or "")


def computation_of(rec: dict) -> str:
    """What a row computes beyond its shape: "" for a plain forward pass, else the cell
    (layernorm, peephole) and/or "training step" (forward + backward)."""
    info = rec.get("info") or {}
    cell = info.get("cell") if info.get("cell") not in (None, "plain") else ""
    step = "training step" if info.get("pass") == "forward+backward" else ""
    return ", ".join(w for w in (cell, step) if w)


def impl_name(rec: dict) -> str:
    """``torch/fused`` (framework/path) for framework rows, ``ours: fused/numba`` for ours."""
    fw = framework_of(rec)
    if fw:
        return visible(f"{fw}/{rec.get('backend')}")
    return visible(f"ours: {rec.get('label') or rec.get('variant') + '/' + str(rec.get('backend'))}")


def gpu_busy(rec: dict):
    """Seconds the GPU was busy per call, where a record carries it (profiles, framework adapters)."""
    for where in (rec, rec.get("stats") or {}, rec.get("info") or {}):
        v = where.get("gpu_busy_s")
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def group_by(records: list, key) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out
