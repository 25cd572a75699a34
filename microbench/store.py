"""The results store: JSON lines files read as untrusted input, and the identity that makes ``--resume`` work.

Writing is :class:`microbench.results.JsonlWriter` (one line per finished case, flushed and
fsynced at once; it also ends a torn last line before appending).  This module reads:

- :func:`load` returns the records of one or more files and a note for each line it skipped
  (``file:line: why``): blank lines are ignored; every other line becomes either a record or one
  note, never an exception.  Records are untrusted input (docs/results.md, "Reading rules"):
  a line longer than :data:`MAX_LINE_BYTES` is skipped unread; the JSON is parsed within bounds
  (:func:`kernels.untrusted.loads`: integers fit in 64 bits, nesting at most 32 levels, lone
  surrogates replaced); a current record is validated against the published schema
  (``microbench/schema/result-v1.json``, with jsonschema; every field a reader uses is typed and
  bounded there, and numbers are finite), an older one (``microbench.result/0``, or none at all
  but with op/variant/backend) is upgraded in memory by :func:`normalize` and validated against
  the same types without the required lists; a newer version is one note saying so.  Then every
  version obeys the same rules (:func:`problem`): status ok needs a passed check, a passed
  check a finite error within a non-negative tolerance, the stats are those of ``samples_s``
  (and ordered: min <= q1 <= median <= q3), the median of an ok record at least a picosecond.
  A file left with no usable record is BadInput (exit 2).
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
from kernels.untrusted import finite

from .results import SCHEMA, SCHEMA_FILE

# Options that describe how a case was observed, not what it computed.
VOLATILE_OPTIONS = ("nvtx", "rounds", "rounds_timed")   # how it was timed, not what was computed
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
    """The key a planned case's record will have: the fields results.record writes (a smoke run's
    mark included: a smoke record never stands for a measured one), plus the timing ``mode``
    (warm/cold, +graph) that runner.run_case adds to the options."""
    from .results import record_options
    return identity({"op": case.op, "variant": case.variant, "backend": case.backend,
                     "framework": getattr(case.record, "framework", "") or "",
                     "dtype": case.precision, "shape": case.problem.shape(),
                     "options": {**record_options(case), "mode": mode}, "env_id": env_id})


def normalize(rec: dict) -> dict | None:
    """A record in the current layout, or None if it is not a microbench record at all."""
    if not isinstance(rec, dict):
        return None
    schema = rec.get("schema")
    if schema is None:
        if not all(k in rec for k in ("op", "variant", "backend")):
            return None
        schema = "microbench.result/0"
    if not str(schema).startswith(SCHEMA_PREFIX):
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
    if out["schema_read"] != SCHEMA and isinstance(stats, dict):
        out["stats"] = _derived_stats(stats)
    if out["stats"] is not None and not isinstance(out["stats"], dict):
        return None
    return out


def _derived_stats(stats: dict) -> dict:
    """Older records' stats with what the current layout adds and readers use (``iqr_s``,
    ``rel_noise``, ``noisy``), where the record holds what they are computed from."""
    st = dict(stats)
    if "iqr_s" not in st and finite(st.get("q1_s")) and finite(st.get("q3_s")):
        st["iqr_s"] = st["q3_s"] - st["q1_s"]
    med = st.get("median_s")
    if "rel_noise" not in st and finite(st.get("iqr_s")) and finite(med) and med > 0:
        st["rel_noise"] = st["iqr_s"] / med
    if "noisy" not in st and finite(st.get("rel_noise")):
        limit = st.get("max_noise") if finite(st.get("max_noise")) else DEFAULT_MAX_NOISE
        st["noisy"] = st["rel_noise"] > limit
    return st


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@functools.lru_cache(maxsize=2)
def _validator(current: bool):
    """The schema validator for current records, or (``current=False``) for upgraded older
    ones: the same types and values, without the required lists and the per-status rules
    (those :func:`problem` applies to every version).  Types as JSON means them: a "number" is
    finite (Python's json reads NaN and Infinity; only fields marked ``x-nonfinite`` take them)
    and an "integer" fits in 64 bits."""
    try:
        import jsonschema
        from jsonschema import validators
    except ImportError:
        raise BadInput("reading results files validates them with jsonschema, which cannot be "
                       "imported; pip install jsonschema") from None
    schema = json.loads(SCHEMA_FILE.read_text())
    # the samples (hundreds per record) are checked by problem() in a plain loop: through the
    # validator they cost about 80 ms a record
    schema["properties"]["samples_s"].pop("items", None)
    if not current:
        schema = copy.deepcopy(schema)
        schema.pop("required", None)
        schema.pop("allOf", None)
        schema["properties"].pop("schema", None)
        schema["properties"]["stats"]["required"] = ["median_s"]
        schema["properties"]["check"].pop("required", None)
    base = jsonschema.Draft202012Validator
    json_type = base.VALIDATORS["type"]

    def finite_type(validator, types, instance, sch):
        if isinstance(instance, float) and not math.isfinite(instance):
            if not sch.get("x-nonfinite"):
                yield jsonschema.ValidationError(f"{instance!r} is not a finite number")
                return
            if "number" in (types if isinstance(types, list) else [types]):
                return
        yield from json_type(validator, types, instance, sch)

    def integer(checker, v) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, float):
            return v.is_integer() and abs(v) <= INT_MAX
        return isinstance(v, int)

    cls = validators.extend(base, validators={"type": finite_type},
                            type_checker=base.TYPE_CHECKER.redefine("integer", integer))
    return cls(schema)


# Below a picosecond no clock measures; above it, medians keep ratios and logarithms finite.
MIN_MEDIAN_S = 1e-12
MAX_TIME_S = 1e6            # the schema's bound on any time: about 11 days
DEFAULT_MAX_NOISE = 0.05    # harness.Settings' default, for older records that lack it
INT_MAX = 2**63 - 1
SCHEMA_PREFIX = "microbench.result/"
KNOWN_VERSIONS = ("0", SCHEMA[len(SCHEMA_PREFIX):])
REL = 1e-6                  # agreement of a stored statistic with the one recomputed


def problem(rec: dict, *, current: bool) -> str | None:
    """Why a record cannot be used, or None: the schema (``current``: the full one, else the
    one for upgraded older records), then the rules every version obeys: finite samples, stats
    that are the samples', a check that says what it claims, status ok only with a passed one."""
    import jsonschema
    validator = _validator(current)
    # of several errors at one place, the type's is named ("inf is not a finite number" rather
    # than "inf is greater than the maximum")
    error = None if validator.is_valid(rec) else jsonschema.exceptions.best_match(
        validator.iter_errors(rec), key=jsonschema.exceptions.by_relevance(strong=frozenset({"type"})))
    if error is not None:
        where = error.json_path.replace("$.", "", 1) if error.json_path != "$" else "record"
        return f"{_short(where, 60)}: {_short(error.message)}"
    samples = rec.get("samples_s")
    for i, v in enumerate(samples or ()):   # the schema's items: times
        if not finite(v) or not 0 <= v <= MAX_TIME_S:
            return f"samples_s[{i}]: {_short(repr(v), 40)} is not a finite number >= 0 (at most {MAX_TIME_S:g} s)"
    stats = rec.get("stats")
    if isinstance(stats, dict):
        med = stats.get("median_s")
        if rec.get("status") == "ok" and not (_number(med) and med >= MIN_MEDIAN_S):
            return f"stats.median_s: {med!r} is not a time (at least {MIN_MEDIAN_S:g} s)"
        why = _stats_problem(stats, samples)
        if why:
            return why
    why = _check_problem(rec.get("check"))
    if why:
        return why
    if rec.get("status") == "ok":
        chk = rec.get("check")
        if not (isinstance(chk, dict) and chk.get("passed") is True):
            said = f"check.passed is {chk.get('passed')!r}" if isinstance(chk, dict) else "no check"
            return f"status ok with {said}: only a case that matched the reference is ok"
        if not isinstance(stats, dict):
            return "status ok without stats"
    shard = rec.get("shard")
    if isinstance(shard, dict) and shard.get("index", 0) > shard.get("count", 0):
        return f"shard.index {shard['index']} > shard.count {shard['count']}"
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-300


def _stats_problem(st: dict, samples) -> str | None:
    """Stats that contradict themselves or their samples (readers take ratios from the stats and
    run tests on the samples: the two must tell the same story)."""
    have = {k: st[k] for k in ("n", "median_s", "q1_s", "q3_s", "iqr_s", "min_s", "mean_s", "rel_noise")
            if finite(st.get(k))}
    order = [k for k in ("min_s", "q1_s", "median_s", "q3_s") if k in have]
    for lo, hi in zip(order, order[1:]):
        if have[lo] > have[hi] and not _close(have[lo], have[hi]):
            return f"stats: {lo} {have[lo]:.6g} > {hi} {have[hi]:.6g}"
    if {"q1_s", "q3_s", "iqr_s"} <= set(have) and \
            abs(have["iqr_s"] - (have["q3_s"] - have["q1_s"])) > REL * have["q3_s"] + 1e-300:
        return f"stats.iqr_s: {have['iqr_s']:.6g} is not q3_s - q1_s ({have['q3_s'] - have['q1_s']:.6g})"
    if {"iqr_s", "median_s", "rel_noise"} <= set(have) and have["median_s"] > 0 \
            and not _close(have["rel_noise"], have["iqr_s"] / have["median_s"]):
        return f"stats.rel_noise: {have['rel_noise']:.6g} is not iqr_s / median_s ({have['iqr_s'] / have['median_s']:.6g})"
    if not samples:
        return None
    import numpy as np
    if "n" in have and have["n"] != len(samples):
        return f"stats.n: {have['n']} but samples_s holds {len(samples)} sample(s)"
    arr = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
    for k, want in (("median_s", med), ("q1_s", q1), ("q3_s", q3), ("min_s", float(arr.min())),
                    ("mean_s", float(arr.mean()))):
        if k in have and not _close(have[k], want):
            return f"stats.{k}: {have[k]:.6g} is not the samples' ({want:.6g}): stats and samples_s disagree"
    return None


def _check_problem(chk) -> str | None:
    """A check that claims to have passed must show it: a finite error within a non-negative,
    finite tolerance (NaN never passes)."""
    if not isinstance(chk, dict) or chk.get("passed") is not True:
        return None
    err, tol = chk.get("max_rel_err"), chk.get("tol")
    if not finite(tol) or tol < 0:
        return f"check.passed is true with tol {tol!r} (not a finite number >= 0)"
    if not finite(err):
        return f"check.passed is true with max_rel_err {err!r} (not a finite number)"
    if err > tol:
        return f"check.passed is true but max_rel_err {err:.3g} > tol {tol:.3g}"
    return None


def _short(text: str, n: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


# A line longer than this is skipped without being parsed (a record holds at most some hundred
# thousand samples, a few MB): a file that is one endless line cannot fill the memory.
MAX_LINE_BYTES = 64 * 2**20


def _lines(f):
    """(line number, bytes) of a binary file; bytes None for a line over MAX_LINE_BYTES, whose
    rest is read past in bounded pieces."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:
                more = f.readline(MAX_LINE_BYTES)
                if not more or more.endswith(b"\n"):
                    break
            yield lineno, None
        else:
            yield lineno, raw


def parse_line(raw: bytes) -> tuple:
    """(record, None) or (None, why) for one line of a results file (not blank)."""
    from kernels import untrusted
    try:
        obj = untrusted.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not JSON (a torn or corrupt line)"
    except untrusted.Untrusted as e:
        return None, str(e)
    if not isinstance(obj, dict):
        return None, "not a microbench record"
    schema = obj.get("schema")
    if schema is not None:
        if not isinstance(schema, str):
            return None, f"schema: {_short(repr(schema), 40)} is not a string"
        if not schema.startswith(SCHEMA_PREFIX):
            return None, "not a microbench record"
        version = schema[len(SCHEMA_PREFIX):]
        if version not in KNOWN_VERSIONS:
            newer = version.isascii() and version.isdigit() and len(version) < 10 \
                and int(version) > int(KNOWN_VERSIONS[-1])
            if newer:
                return None, (f"schema {_short(schema, 40)} is newer than this microbench reads "
                              f"({SCHEMA} and older): upgrade microbench to read it")
            return None, (f"schema {_short(repr(schema), 40)} is not a version this microbench "
                          f"knows ({', '.join(SCHEMA_PREFIX + v for v in KNOWN_VERSIONS)})")
    # a current record as written, before normalize fills any gap; an older one as upgraded
    current = schema == SCHEMA
    why = problem(obj, current=True) if current else None
    if why:
        return None, why
    rec = normalize(obj)
    if rec is None:
        return None, "not a microbench record"
    why = None if current else problem(rec, current=False)
    return (None, why) if why else (rec, None)


def read(path) -> tuple:
    """(records, notes) of one file: a note ``file:line: why`` for every line skipped (not JSON,
    not a microbench record, an invalid record); a missing or unreadable file raises BadInput."""
    from .files import open_input, shown
    records, skipped = [], []
    try:
        with open_input(path, "results file") as f:
            for lineno, raw in _lines(f):
                if raw is None:
                    skipped.append(f"{path}:{lineno}: longer than {MAX_LINE_BYTES // 2**20} MiB, not read")
                    continue
                if not raw.strip():
                    continue
                rec, why = parse_line(raw.strip())
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
    from kernels.untrusted import terminal
    for n in notes[:limit]:
        err.print(f"note: skipped {terminal(n)}", highlight=False)
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
        # counted, never enumerated: a record's count (10**10) must not size a list or a set
        have = sorted(i for i in have if isinstance(i, int) and 1 <= i <= n)
        n_missing = n - len(have)
        first, k, present = [], 1, set(have)
        while len(first) < SHOWN_SHARDS and k <= n and len(first) < n_missing:
            if k not in present:
                first.append(k)
            k += 1
        line = f"plan {plan}: shard(s) {_listed(have)} of {n} merged"
        if n_missing:
            line += f"; MISSING shard(s) {', '.join(map(str, first))}"
            line += f" ... ({n_missing} missing in all)" if n_missing > len(first) else ""
        out.append(line)
    return out


SHOWN_SHARDS = 10


def _listed(numbers: list) -> str:
    if len(numbers) <= SHOWN_SHARDS:
        return ", ".join(map(str, numbers))
    return ", ".join(map(str, numbers[:SHOWN_SHARDS])) + f" ... ({len(numbers)} in all)"


def latest(records: list, *, with_env: bool = False, status: str | None = "ok") -> dict:
    """identity -> the last record of each identity (a rerun supersedes an earlier record)."""
    out = {}
    for r in records:
        if status is None or r.get("status") == status:
            out[identity(r, with_env=with_env)] = r
    return out
