"""The results store: JSON lines files read tolerantly, and the identity that makes ``--resume`` work.

Writing is :class:`microbench.results.JsonlWriter` (one line per finished case, flushed and
fsynced at once; it also ends a torn last line before appending).  This module reads:

- :func:`load` returns the records of one or more files and a note for each line it skipped
  (``file:line: why``): blank lines are ignored; lines that are not JSON (a torn line from a
  killed run, an editor's accident), not a microbench record, or a record that fails
  validation are skipped, never fatal.  Records are untrusted input: a current record is
  validated against the published schema (``microbench/schema/result-v1.json``, with
  jsonschema), an older one (``microbench.result/0``, or none at all but with
  op/variant/backend) is upgraded in memory by :func:`normalize` and validated against the same
  schema without its required lists; then every timing must be a finite number and the median
  of a timed record at least a picosecond, so the ratios and logarithms readers take are
  defined.  A file left with no usable record is BadInput (exit 2).
- :func:`identity` is the key of a record: op, variant, backend, framework, dtype, shape,
  options (without the NVTX level, which does not change what was computed; a missing timing
  ``mode`` counts as ``warm``) and env_id.  The same
  key computed for a planned case (:func:`case_identity`) tells whether that case is already in
  the file for this environment.
- :func:`done_keys`: the keys ``--resume`` skips (status ok or skipped; a failed case runs again).
"""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

from kernels.errors import BadInput

from .results import SCHEMA, SCHEMA_FILE

# Options that describe how a case was observed, not what it computed.
VOLATILE_OPTIONS = ("nvtx", "rounds")   # how it was timed, not what was computed
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
    if "mode_asked" in options:   # a row that could not run the mode asked is keyed by the request
        options["mode"] = options.pop("mode_asked")
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
    if out["schema_read"] != SCHEMA and isinstance(stats, dict) and "iqr_s" not in stats \
            and _number(stats.get("q1_s")) and _number(stats.get("q3_s")):   # older records lack it
        out["stats"] = {**stats, "iqr_s": stats["q3_s"] - stats["q1_s"]}
    if out["stats"] is not None and not isinstance(out["stats"], dict):
        return None
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@functools.lru_cache(maxsize=2)
def _validator(current: bool):
    """The schema validator for current records, or (``current=False``) for upgraded older
    ones: the same types and values, without the required lists and the per-status rules."""
    try:
        import jsonschema
    except ImportError:
        raise BadInput("reading results files validates them with jsonschema, which cannot be "
                       "imported; pip install jsonschema") from None
    schema = json.loads(SCHEMA_FILE.read_text())
    # the samples (hundreds per record) are checked by problem() in a plain loop: through the
    # validator they cost about 80 ms a record
    schema["properties"]["samples_s"].pop("items", None)
    schema["properties"]["cpu_s"].pop("items", None)
    if not current:
        schema = copy.deepcopy(schema)
        schema.pop("required", None)
        schema.pop("allOf", None)
        schema["properties"].pop("schema", None)
        schema["properties"]["stats"]["required"] = ["median_s"]
        schema["properties"]["check"].pop("required", None)
    return jsonschema.Draft202012Validator(schema)


# Below a picosecond no clock measures; above it, medians keep ratios and logarithms finite.
MIN_MEDIAN_S = 1e-12


def problem(rec: dict, *, current: bool) -> str | None:
    """Why a record cannot be used, or None: the schema (``current``: the full one, else the
    one for upgraded older records), then finite timings."""
    import jsonschema
    validator = _validator(current)
    error = None if validator.is_valid(rec) else jsonschema.exceptions.best_match(validator.iter_errors(rec))
    if error is not None:
        where = error.json_path.replace("$.", "", 1) if error.json_path != "$" else "record"
        return f"{where}: {_short(error.message)}"
    stats = rec.get("stats")
    if isinstance(stats, dict):
        for k, v in stats.items():
            if _number(v) and not math.isfinite(v):
                return f"stats.{k}: {v} is not a finite number"
        med = stats.get("median_s")
        if rec.get("status") == "ok" and not (_number(med) and med >= MIN_MEDIAN_S):
            return f"stats.median_s: {med!r} is not a time (at least {MIN_MEDIAN_S:g} s)"
    for key in ("samples_s", "cpu_s"):                     # the schema's items: numbers >= 0
        for i, v in enumerate(rec.get(key) or ()):
            if not _number(v) or not math.isfinite(v) or v < 0:
                return f"{key}[{i}]: {v!r} is not a finite number >= 0"
    for k, v in (rec.get("derived") or {}).items():
        if _number(v) and not math.isfinite(v):
            return f"derived.{k}: {v} is not a finite number"
    return None


def _short(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def read(path) -> tuple:
    """(records, notes) of one file: a note ``file:line: why`` for every line skipped (not JSON,
    not a microbench record, an invalid record); a missing or unreadable file raises BadInput."""
    from .files import open_input, shown
    records, skipped = [], []
    try:
        with open_input(path, "results file") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line.decode("utf-8"))
                    # a current record as written, before normalize fills any gap; an older one
                    # as upgraded
                    current = isinstance(obj, dict) and obj.get("schema") == SCHEMA
                    why = problem(obj, current=True) if current else None
                    rec = None if why else normalize(obj)
                    if not why:
                        why = "not a microbench record" if rec is None else \
                            (None if current else problem(rec, current=False))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    why = "not JSON (a torn or corrupt line)"
                except RecursionError:
                    why = "nested too deeply"
                if why:
                    skipped.append(f"{path}:{lineno}: {why}")
                else:
                    records.append(rec)
    except OSError as e:
        raise BadInput(f"results file {shown(path)} cannot be read: {e.strerror or e}") from None
    return records, skipped


def load(paths, *, require: bool = True) -> tuple:
    """(records, notes) of several files in order (notes: one ``file:line: why`` per skipped
    line); ``require``: no usable record at all is BadInput."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records, skipped = [], []
    for path in paths:
        recs, bad = read(path)
        for r in recs:
            r["source"] = str(path)
        records += recs
        skipped += bad
    if require and not records:
        names = ", ".join(map(str, paths))
        extra = f" ({len(skipped)} line(s) skipped; first: {skipped[0]})" if skipped else ""
        raise BadInput(f"no microbench records in {names}{extra}")
    return records, skipped


def print_skipped(notes: list, err, limit: int = 5) -> None:
    """The skipped lines on stderr, one note each (the first ``limit``, then a count)."""
    from rich.markup import escape
    for n in notes[:limit]:
        err.print(f"note: skipped {escape(n)}", highlight=False)
    if len(notes) > limit:
        err.print(f"note: ... and {len(notes) - limit} more skipped line(s)", highlight=False)


def done_keys(path) -> tuple:
    """(keys of finished cases, notes on skipped lines) of a results file; a file not there yet
    has none."""
    from .files import kind, shown
    k = kind(path, "--json")
    if k == "missing":
        return set(), []
    if k != "file":
        raise BadInput(f"--resume reads --json {shown(path)} back, so it must be a regular file, not a {k}")
    records, skipped = read(path)
    return {identity(r) for r in records if r.get("status") in DONE_STATUSES}, skipped


def machine(rec: dict) -> str | None:
    """The machine a record was measured on: host and the device's model (``host`` and
    ``device_name``, or the environment's host and CPU in records that predate them); None when
    the record does not say.  Ratios (compare, report) never pair records of different machines
    unless asked: identical hardware on two hosts still differs in clocks, cooling and neighbours."""
    env = rec.get("env") if isinstance(rec.get("env"), dict) else {}
    host = rec.get("host") or env.get("host")
    dev = rec.get("device_name") or (env.get("cpu") if rec.get("device", "cpu") == "cpu" else None)
    if host is None and dev is None:
        return None
    index = rec.get("device_index")
    return f"{host or '?'} ({dev or '?'}{'' if index is None else f', cuda:{index}'})"


def same_machine(a: dict, b: dict) -> bool:
    """Whether two records come from one machine (GPU ordinals of one host count as one machine
    when the model matches; records that do not say are taken as one machine)."""
    ma, mb = machine(a), machine(b)
    if ma is None or mb is None:
        return True
    strip = lambda m: m.split(", cuda:")[0]  # noqa: E731
    return strip(ma) == strip(mb)


def shards(records: list) -> list:
    """One line per sharded plan in the records: which shards are present and which missing."""
    plans: dict = {}
    for r in records:
        sh = r.get("shard")
        if isinstance(sh, dict) and isinstance(sh.get("count"), int):
            plans.setdefault((sh.get("plan"), sh["count"]), set()).add(sh.get("index"))
    out = []
    for (plan, n), have in plans.items():
        missing = sorted(set(range(1, n + 1)) - have)
        line = f"plan {plan}: shard(s) {', '.join(map(str, sorted(have)))} of {n} merged"
        out.append(line + (f"; MISSING shard(s) {', '.join(map(str, missing))}" if missing else ""))
    return out


def latest(records: list, *, with_env: bool = False, status: str | None = "ok") -> dict:
    """identity -> the last record of each identity (a rerun supersedes an earlier record)."""
    out = {}
    for r in records:
        if status is None or r.get("status") == status:
            out[identity(r, with_env=with_env)] = r
    return out
