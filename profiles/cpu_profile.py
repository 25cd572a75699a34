"""Why the CPU paths differ: PyTorch's own profiler over its fused and generic RNN paths.

On a machine without a GPU there is no kernel trace to explain, but the same question has a CPU
answer: ``nn.LSTM`` reaches one fused oneDNN primitive (``aten::mkldnn_rnn_layer``) while an
``LSTMCell`` loop issues a GEMM and a handful of pointwise ops every step.  This module records
both under ``torch.profiler`` (after a warm-up call, in inference mode), groups the operators into
classes, measures wall time separately without the profiler, and states the difference in
sentences computed from those numbers.
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

from kernels.errors import BadInput, MissingDependency

# Ordered: the first matching pattern names an operator's class.
CPU_CLASSES = (
    ("fused_rnn", re.compile(r"mkldnn_rnn|_thnn_fused|lstm_cell|gru_cell|rnn_tanh_cell")),
    ("gemm", re.compile(r"addmm|\bmm\b|aten::mm$|matmul|linear|bmm")),
    ("pointwise", re.compile(r"tanh|sigmoid|mul|add|sub|div|relu")),
    ("copy", re.compile(r"copy|cat|stack|select|narrow|slice|empty|zeros|view|reshape|unsqueeze|chunk|split|to$")),
)


def cpu_class(name: str) -> str:
    for cls, pattern in CPU_CLASSES:
        if pattern.search(name):
            return cls
    return "other"


@dataclass
class CpuRun:
    label: str
    wall_s: float                 # untraced, median of a few calls
    ops: int                      # aten operator calls recorded, nested calls included
    steps: int
    self_s: dict = field(default_factory=dict)     # class -> seconds of self CPU time
    top: list = field(default_factory=list)        # (name, calls, self seconds, class)

    @property
    def ops_per_step(self) -> float:
        return self.ops / self.steps

    def share(self, cls: str) -> float:
        total = sum(self.self_s.values())
        return self.self_s.get(cls, 0.0) / total if total else 0.0


def _torch():
    try:
        import torch
    except ImportError as e:
        raise MissingDependency("torch", "the CPU explanation", "pip install -e '.[frameworks]'") from e
    return torch


def _kineto_marker(line: str) -> bool:
    """Kineto's 'USDT:... SyncActivityProfilerHandler.cpp:52] profiler_start' (and _stop) lines."""
    return line.startswith("USDT:") and line.rstrip().endswith(("profiler_start", "profiler_stop"))


@contextlib.contextmanager
def _without_kineto_markers():
    """PyTorch's profiler (Kineto) writes a line to fd 2 at every start and stop, at its highest
    log level (KINETO_LOG_LEVEL=6, the one above it, would hide its errors too): 12 lines for one
    explanation.  fd 2 is held in a file around the profile and every other line is passed on."""
    import ctypes
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                ctypes.CDLL(None).fflush(None)        # C stdio's buffered stderr, if any
            except (OSError, AttributeError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if not _kineto_marker(line):
                    print(line, file=sys.stderr)


def _record(torch, label: str, fn, steps: int, repeats: int = 3) -> CpuRun:
    from torch.profiler import ProfilerActivity, profile
    fn()                                   # warm-up: oneDNN primitive creation, allocator
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    # Each call is profiled on its own and every operator keeps its median self time over the
    # calls: one preemption on a busy machine would otherwise decide a whole class's share.
    per_call = []
    for _ in range(repeats):
        with _without_kineto_markers(), profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        per_call.append({e.key: (e.count, e.self_cpu_time_total / 1e6)
                         for e in prof.key_averages() if e.key.startswith("aten::")})
    keys = set().union(*per_call)
    events = {k: (max(c.get(k, (0, 0.0))[0] for c in per_call),
                  statistics.median(c.get(k, (0, 0.0))[1] for c in per_call)) for k in keys}
    self_s: dict = {}
    for key, (_, secs) in events.items():
        cls = cpu_class(key)
        self_s[cls] = self_s.get(cls, 0.0) + secs
    top = sorted(((k, n, secs, cpu_class(k)) for k, (n, secs) in events.items()),
                 key=lambda r: -r[2])[:5]
    return CpuRun(label, sorted(walls)[len(walls) // 2], sum(n for n, _ in events.values()), steps, self_s, top)


def profile_torch(op: str, T: int, B: int, H: int, seed: int = 0) -> list:
    """torch/fused (nn.LSTM or nn.GRU) and torch/generic (the cell stepped T times), same weights."""
    if op not in ("lstm", "gru"):
        raise BadInput(f"the CPU explanation covers lstm and gru, not {op!r}")
    torch = _torch()
    torch.manual_seed(seed)
    layer = (torch.nn.LSTM if op == "lstm" else torch.nn.GRU)(H, H)
    cell = (torch.nn.LSTMCell if op == "lstm" else torch.nn.GRUCell)(H, H)
    with torch.no_grad():   # the cell gets the layer's weights: the same function, two paths
        cell.weight_ih.copy_(layer.weight_ih_l0)
        cell.weight_hh.copy_(layer.weight_hh_l0)
        cell.bias_ih.copy_(layer.bias_ih_l0)
        cell.bias_hh.copy_(layer.bias_hh_l0)
    x = torch.randn(T, B, H)

    def fused():
        with torch.inference_mode():
            return layer(x)

    def generic():
        with torch.inference_mode():
            h = torch.zeros(B, H)
            state = (h, torch.zeros(B, H)) if op == "lstm" else h
            for t in range(T):
                state = cell(x[t], state)
            return state

    return [_record(torch, "torch/fused", fused, T), _record(torch, "torch/generic", generic, T)]


def sentences(runs: list, op: str) -> list:
    """Plain statements computed from the two runs."""
    fused, generic = runs
    out = []
    main_f = fused.top[0] if fused.top else None
    if main_f:
        out.append(f"{fused.label} makes {fused.ops} aten operator calls (nested ones included) for "
                   f"{fused.steps} steps "
                   f"({fused.ops_per_step:.2f} per step); {100 * fused.share('fused_rnn'):.0f}% of its "
                   f"CPU time is in fused RNN primitives, led by {main_f[0]} ({main_f[1]} call(s)).")
    out.append(f"{generic.label} makes {generic.ops_per_step:.1f} operator calls per step: "
               f"{100 * generic.share('gemm'):.0f}% of its CPU time in GEMMs, "
               f"{100 * generic.share('pointwise'):.0f}% in pointwise ops, "
               f"{100 * generic.share('fused_rnn'):.0f}% in fused cell kernels and "
               f"{100 * generic.share('copy'):.0f}% in copies and views.")
    ratio = generic.wall_s / fused.wall_s if fused.wall_s > 0 else float("nan")
    faster, slower = (fused, generic) if ratio >= 1 else (generic, fused)
    out.append(f"Untraced, {faster.label} takes {faster.wall_s * 1e3:.2f} ms and {slower.label} "
               f"{slower.wall_s * 1e3:.2f} ms ({max(ratio, 1 / ratio):.1f}x): on the CPU what the fused "
               f"path saves is per-step dispatch and memory passes, not arithmetic (the GEMM FLOPs "
               f"are the same).")
    return out


def render(runs: list, op: str, console) -> None:
    from rich.table import Table
    t = Table(title=f"CPU: {op} through PyTorch's profiler (this machine)", title_justify="left")
    for col in ("path", "wall (untraced)", "aten calls", "per step", "top operators (self CPU time)"):
        t.add_column(col)
    for r in runs:
        top = "; ".join(f"{n} x{c} {s * 1e3:.2f} ms ({cls})" for n, c, s, cls in r.top[:3])
        t.add_row(r.label, f"{r.wall_s * 1e3:.2f} ms", str(r.ops), f"{r.ops_per_step:.2f}", top)
    console.print(t)
    for s in sentences(runs, op):
        console.print(f"- {s}")
