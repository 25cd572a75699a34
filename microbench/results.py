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
        "framework": getattr(case.record, "framework", "") or "",   # "" for our own variants
        "device": case.device,
        "dtype": case.precision,
        "shape": case.problem.shape(),
        "options": case.options(),
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
    }
    if prepared is not None:
        rec["flops"], rec["bytes"] = prepared.flops, prepared.bytes
        rec["info"] = prepared.info
    if measurement is not None:
        med = measurement.median
        rec["timer"] = case.timer_name
        rec["samples_s"] = list(measurement.samples)
        rec["stats"] = measurement.to_dict()
        rec["derived"] = {
            "gflops": prepared.flops / med / 1e9 if prepared and med > 0 else None,
            "gbps": prepared.bytes / med / 1e9 if prepared and med > 0 else None,
        }
    return rec


class JsonlWriter:
    """Appends one line per record and flushes it to disk at once, so an interrupted run keeps
    every finished case.  The path is checked for writability up front (a one-line error)."""

    def __init__(self, path: str):
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInput(f"--json {path!r} is a directory; give a file path")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.exists():
            raise BadInput(f"--json {path!r}: folder {str(parent)!r} does not exist")
        try:
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise BadInput(f"--json {path!r} cannot be written: {e.strerror}") from None
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
            self._f.write("\n")
            self._f.flush()

    def write(self, rec: dict) -> None:
        # One write call per line: a crash leaves at worst a partial last line, which load() skips.
        self._f.write(json.dumps(rec, separators=(",", ":"), default=_jsonable) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def load(path: str) -> list:
    """Records of a JSON lines file; lines that do not parse or lack a known schema are skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and str(rec.get("schema", "")).startswith("microbench.result/"):
                out.append(rec)
    return out
