"""The results store: JSON lines files read tolerantly, and the identity that makes ``--resume`` work.

Writing is :class:`microbench.results.JsonlWriter` (one line per finished case, flushed and
fsynced at once; it also ends a torn last line before appending).  This module reads:

- :func:`load` returns the records of one or more files and the number of lines it skipped:
  blank lines are ignored, lines that are not JSON (a torn line from a killed run, an editor's
  accident) or not a microbench record are counted and skipped, never fatal.  Records of older
  schema versions (``microbench.result/0``, or none at all but with op/variant/backend) are
  upgraded in memory by :func:`normalize`, so old files keep loading.
- :func:`identity` is the key of a record: op, variant, backend, framework, dtype, shape,
  options (without the NVTX level, which does not change what was computed; a missing timing
  ``mode`` counts as ``warm``) and env_id.  The same
  key computed for a planned case (:func:`case_identity`) tells whether that case is already in
  the file for this environment.
- :func:`done_keys`: the keys ``--resume`` skips (status ok or skipped; a failed case runs again).
"""
from __future__ import annotations

import json
from pathlib import Path

from kernels.errors import BadInput

from .results import SCHEMA

# Options that describe how a case was observed, not what it computed.
VOLATILE_OPTIONS = ("nvtx",)
DONE_STATUSES = ("ok", "skipped")
DEFAULT_MODE = "warm"


def _freeze(value):
    """A hashable, order-independent copy of a JSON value."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def identity(rec: dict, *, with_env: bool = True) -> tuple:
    """The identity key of a record (``with_env=False`` drops env_id: compare across machines)."""
    options = {k: v for k, v in (rec.get("options") or {}).items() if k not in VOLATILE_OPTIONS}
    options.setdefault("mode", DEFAULT_MODE)   # older records, and skips (never timed), have none
    key = (rec.get("op"), rec.get("variant"), rec.get("backend"), rec.get("framework") or "",
           rec.get("dtype"), _freeze(rec.get("shape") or {}), _freeze(options))
    return key + ((rec.get("env_id"),) if with_env else ())


def case_identity(case, env_id: str | None, mode: str = "warm") -> tuple:
    """The key a planned case's record will have: the fields results.record writes, plus the
    timing ``mode`` (warm/cold, +graph) that runner.run_case adds to the options."""
    return identity({"op": case.op, "variant": case.variant, "backend": case.backend,
                     "framework": getattr(case.record, "framework", "") or "",
                     "dtype": case.precision, "shape": case.problem.shape(),
                     "options": {**case.options(), "mode": mode}, "env_id": env_id})


def normalize(rec: dict) -> dict | None:
    """A record in the current layout, or None if it is not a microbench record at all."""
    if not isinstance(rec, dict):
        return None
    schema = rec.get("schema")
    if schema is None:
        if not all(k in rec for k in ("op", "variant", "backend")):
            return None
        schema = "microbench.result/0"
    if not str(schema).startswith("microbench.result/"):
        return None
    out = dict(rec)
    out["schema_read"] = schema            # what the file said; "schema" is the layout now held
    out["schema"] = SCHEMA
    for key, default in (("options", {}), ("shape", {}), ("status", "ok"), ("error", None),
                         ("env_id", None), ("env", {}), ("stats", None), ("samples_s", None),
                         ("derived", None), ("flops", None), ("bytes", None), ("check", None),
                         ("device", "cpu"), ("dtype", "fp32"), ("framework", "")):
        if out.get(key) is None and default is not None:
            out[key] = default
        out.setdefault(key, default)
    if not isinstance(out["options"], dict) or not isinstance(out["shape"], dict):
        return None
    if not out["framework"] and isinstance(out.get("info"), dict) and out["info"].get("framework"):
        out["framework"] = str(out["info"]["framework"])    # files written before it was top-level
    if "label" not in out or not out["label"]:
        out["label"] = f"{out['options'].get('rung') or out['variant']}/{out['backend']}"
    stats = out.get("stats")
    if isinstance(stats, dict) and "median_s" not in stats and "median" in stats:  # old key names
        stats = dict(stats)
        for k in ("median", "q1", "q3", "iqr", "min", "mean"):
            if k in stats:
                stats[f"{k}_s"] = stats.pop(k)
        out["stats"] = stats
    if out["stats"] is not None and not isinstance(out["stats"], dict):
        return None
    return out


def read(path) -> tuple:
    """(records, skipped_lines) of one file; a missing or unreadable file raises BadInput."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{str(path)!r} is a directory, not a results file")
    if not p.exists():
        raise BadInput(f"results file {str(path)!r} does not exist")
    records, skipped = [], 0
    try:
        with open(p, "rb") as f:
            for raw in f:
                line = raw.strip()
                if not line:
                    continue
                try:
                    rec = normalize(json.loads(line.decode("utf-8")))
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    rec = None
                if rec is None:
                    skipped += 1
                else:
                    records.append(rec)
    except OSError as e:
        raise BadInput(f"results file {str(path)!r} cannot be read: {e.strerror}") from None
    return records, skipped


def load(paths, *, require: bool = True) -> tuple:
    """(records, skipped) of several files in order; ``require``: no record at all is BadInput."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records, skipped = [], 0
    for path in paths:
        recs, bad = read(path)
        for r in recs:
            r["source"] = str(path)
        records += recs
        skipped += bad
    if require and not records:
        names = ", ".join(map(str, paths))
        extra = f" ({skipped} line(s) that are not records)" if skipped else ""
        raise BadInput(f"no microbench records in {names}{extra}")
    return records, skipped


def done_keys(path) -> tuple:
    """(keys of finished cases, skipped lines) of a results file; a file not there yet has none."""
    if not Path(path).exists():
        return set(), 0
    records, skipped = read(path)
    return {identity(r) for r in records if r.get("status") in DONE_STATUSES}, skipped


def latest(records: list, *, with_env: bool = False, status: str | None = "ok") -> dict:
    """identity -> the last record of each identity (a rerun supersedes an earlier record)."""
    out = {}
    for r in records:
        if status is None or r.get("status") == status:
            out[identity(r, with_env=with_env)] = r
    return out
