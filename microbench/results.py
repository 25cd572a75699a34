"""Result records (JSON lines): one object per case, appended and flushed as each case finishes.

Schema ``microbench.result/1`` (JSON Schema in ``microbench/schema/result-v1.json``, prose in
``docs/results.md``).  A record keeps identity (what was run), environment (where), raw samples
and the statistics derived from them, the check against the reference, and the outcome.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kernels.errors import BadInput

SCHEMA = "microbench.result/1"
SCHEMA_FILE = Path(__file__).parent / "schema" / "result-v1.json"


def record(*, case, status: str, env: dict, measurement=None, check=None, prepared=None,
           error: str | None = None, nvtx_info: dict | None = None) -> dict:
    """Build one record.  ``status``: ok, failed (check or run error) or skipped (with a reason)."""
    rec = {
        "schema": SCHEMA,
        "op": case.op,
        "variant": case.variant,
        "backend": case.backend,
        # "" for our variants; the framework of a framework row (its identity, and what the
        # report's framework plots group by)
        "framework": getattr(case.record, "framework", "") or "",
        "device": case.device,
        **placement(case.device, env),
        "dtype": case.precision,
        "shape": case.problem.shape(),
        "options": record_options(case),
        "label": case.label,
        "status": status,
        "error": error,
        "env_id": env.get("env_id"),
        "env": env,
        "timer": None,
        "samples_s": None,
        "stats": None,
        "flops": None,
        "bytes": None,
        "derived": None,
        "check": check.to_dict() if check is not None else None,
        "nvtx": nvtx_info,
        # whether the samples got their threads (microbench.contention; docs/results.md)
        "contention": None,
    }
    if prepared is not None:
        rec["flops"], rec["bytes"] = prepared.flops, prepared.bytes
        rec["info"] = prepared.info
        from .peaks import flops_kind
        if flops_kind(rec):      # Winograd, FFT: GFLOP/s of the direct convolution's FLOPs
            rec["info"] = {**(prepared.info or {}), "flops_kind": flops_kind(rec)}
    if measurement is not None:
        med = measurement.median
        rec["timer"] = case.timer_name
        rec["samples_s"] = list(measurement.samples)
        rec["stats"] = measurement.to_dict()
        rec["derived"] = {
            "gflops": prepared.flops / med / 1e9 if prepared and med > 0 else None,
            "gbps": prepared.bytes / med / 1e9 if prepared and med > 0 else None,
        }
        from . import contention, peaks
        from .threads import usable_cpus
        cpu_s = list(getattr(measurement, "cpu_s", None) or [])
        if len(cpu_s) == len(rec["samples_s"]):
            rec["cpu_s"] = cpu_s          # CPU seconds the process got per sample, beside samples_s
        rec["contention"] = contention.judge(getattr(measurement, "readings", None), rec["samples_s"],
                                             rec.get("cpu_s"), threads=case.threads, usable=usable_cpus()[0])
        peaks.attach(rec, case.device, case.precision, case.threads)
    return rec


def record_options(case) -> dict:
    """The case's options, and ``smoke`` when the run was a smoke run (microbench.smoke): its
    times are not measurements, and the record says so."""
    from . import smoke
    opts = case.options()
    mark = smoke.record_options(case.problem)
    if mark is not None:
        opts["smoke"] = mark
    return opts


def placement(device: str, env: dict) -> dict:
    """Where a case ran: ``host``, ``device_index`` (the CUDA ordinal; None on the CPU) and
    ``device_name`` (the GPU's or the CPU's model), so merged shards keep their machines apart."""
    if device == "cuda":
        from kernels import devices
        index = devices.selected()
        return {"host": env.get("host"), "device_index": index, "device_name": devices.name(index)}
    return {"host": env.get("host"), "device_index": None, "device_name": env.get("cpu")}


class JsonlWriter:
    """Appends one line per record and flushes it to disk at once, so an interrupted run keeps
    every finished case.  The path is checked up front (a one-line error): a regular file, or a
    stream (``/dev/null``, a terminal, a pipe or FIFO with a reader; see microbench.files).  A
    write that fails (a full disk, a reader gone) ends the run with a one-line error."""

    def __init__(self, path: str, flag: str = "--json"):
        from . import files
        self.path, self.flag, self.written = Path(path), flag, 0
        self._kind = files.check_output(path, flag, streams=True)
        self._f = files.open_append(path, flag, self._kind)
        if self._kind in ("file", "missing"):
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        """A run killed mid-write can leave a last line without its newline: end it, so the next
        record starts on its own line (the torn line is then skipped by the loaders)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        except OSError:
            return
        if torn:
            self._write_line("")

    def write(self, rec: dict) -> None:
        # One write call per line: a crash leaves at worst a partial last line, which load() skips.
        self._write_line(json.dumps(rec, separators=(",", ":"), default=_jsonable))
        self.written += 1

    def _write_line(self, text: str) -> None:
        from .files import shown
        try:
            self._f.write(text + "\n")
            self._f.flush()
            if self._kind in ("file", "missing"):   # fsync is for files (EINVAL on a device)
                os.fsync(self._f.fileno())
        except OSError as e:
            raise BadInput(f"{self.flag} {shown(self.path)} cannot be written: {e.strerror or e} "
                           f"(after {self.written} record(s)); the run stops here") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:   # the write that failed already said so; its buffered line is lost
            pass


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)

