"""Results and trace files are untrusted input; report outputs cannot inject or destroy.

Every reader (report, compare, suite --resume, explain --reference; microbench.store) turns any
line into a record or one ``file:line: why`` note, never a traceback, a hang or an unbounded
allocation; each output target escapes record text for itself; a report never writes over an
input or over another of its outputs.  The class tests are followed by a seeded fuzz test over
every reader (docs/results.md, "Reading rules").
"""
from __future__ import annotations

import copy
import csv
import io
import json
import random
from pathlib import Path

import pytest

from microbench import cli, store
from microbench.stats import Measurement

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "results-sample.jsonl"
REFERENCE = ROOT / "profiles" / "reference" / "h100-2026-11-26-torch-jax.json"
SAMPLES = [1.0e-3, 1.01e-3, 1.02e-3, 1.03e-3]


def _record(**over) -> dict:
    """A valid ok record whose stats are those of its samples."""
    rec = {"schema": "microbench.result/1", "op": "lstm", "variant": "naive", "backend": "numpy",
           "device": "cpu", "dtype": "fp32", "shape": {"T": 3, "B": 2, "I": 8, "H": 8, "L": 1},
           "options": {"plan": None, "threads": 1, "seed": 0, "rung": "naive", "nvtx": "on", "mode": "warm"},
           "label": "naive/numpy", "status": "ok", "error": None, "env_id": "e1",
           "env": {"cpu": "EPYC", "cores": 2, "date": "2026-12-01T10:00:00+00:00",
                   "microbench": {"commit": "abc", "dirty": False}},
           "timer": "perf_counter", "samples_s": list(SAMPLES), "stats": Measurement(list(SAMPLES)).to_dict(),
           "flops": 10**6, "bytes": 10**5, "derived": {"gflops": 0.87, "gbps": 0.087},
           "check": {"max_rel_err": 1e-7, "tol": 1e-5, "passed": True, "detail": ""}}
    rec.update(over)
    return rec


def _set(rec: dict, path: tuple, value) -> dict:
    rec = copy.deepcopy(rec)
    d = rec
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return rec


def _read_one(tmp_path, line: str) -> tuple:
    """(records, notes) of a file holding a valid record and then ``line``."""
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(_record()) + "\n" + line + "\n")
    recs, notes = store.read(f)
    assert len(recs) + len(notes) == 2, (recs, notes)
    return recs, [n.split(":2: ", 1)[1] for n in notes if f"{f}:2: " in n]


def _skipped(tmp_path, line: str, why: str) -> str:
    recs, notes = _read_one(tmp_path, line)
    assert len(recs) == 1 and len(notes) == 1 and why in notes[0], notes
    return notes[0]


def _json_with(rec: dict, path: tuple, literal: str) -> str:
    """The record as JSON text with the value at ``path`` replaced by a raw JSON literal."""
    marker = 123456.789012
    return json.dumps(_set(rec, path, marker)).replace(repr(marker), literal, 1)


@pytest.fixture
def png_only(monkeypatch):
    """Figures drawn as PNG only (the SVG and PDF files cost twice the time and are not read)."""
    from microbench import plots
    monkeypatch.setattr(plots, "FORMATS", ())


# -- item 3: numbers JSON allows and Python chokes on -------------------------------------------

NUMERIC = [("stats", "n"), ("stats", "median_s"), ("stats", "rel_noise"), ("samples_s", 0), ("flops",),
           ("bytes",), ("shape", "T"), ("options", "threads"), ("options", "seed"), ("check", "tol"),
           ("check", "max_rel_err"), ("derived", "gflops"), ("env", "cores"), ("device_index",),
           ("info", "anything")]


@pytest.mark.parametrize("literal,why", [("9" * 4400, "an integer of 4400 digits"),
                                         ("1" + "0" * 30, "an integer of 31 digits"),
                                         (str(2**64), "does not fit in 64 bits")], ids=["4400", "31", "2**64"])
@pytest.mark.parametrize("path", NUMERIC, ids=lambda p: ".".join(map(str, p)))
def test_an_integer_beyond_64_bits_is_one_note_in_any_field(path, literal, why, tmp_path):
    _skipped(tmp_path, _json_with(_record(info={}), path, literal), why)


@pytest.mark.parametrize("path,literal", [(("stats", "median_s"), "1e306"), (("samples_s", 2), "1e306"),
                                          (("derived", "gflops"), "1e306"), (("stats", "gpu_busy_s"), "1e306"),
                                          (("derived", "gbps"), "NaN"), (("stats", "rel_noise"), "Infinity"),
                                          (("flops",), "1e300"), (("shape", "H"), "1e300"),
                                          (("check", "tol"), "-Infinity")])
def test_numbers_out_of_range_or_not_finite_are_one_note(path, literal, tmp_path):
    recs, notes = _read_one(tmp_path, _json_with(_record(), path, literal))
    assert len(recs) == 1 and len(notes) == 1, notes


def test_a_finite_value_whose_plot_would_overflow_never_reaches_the_report(tmp_path, capsys, png_only):
    f = tmp_path / "r.jsonl"
    big = _set(_set(_record(variant="fused", label="fused/numpy"), ("derived", "gflops"), 1e306), ("flops",), 2**62)
    f.write_text(json.dumps(_record()) + "\n" + json.dumps(big) + "\n")
    assert cli.main(["report", str(f), "--md", str(tmp_path / "r.md"), "--no-roofs"]) == 0
    err = capsys.readouterr().err
    assert f"note: skipped {f}:2: derived.gflops: 1e+306 is greater than the maximum" in err


# -- item 4: every field a reader touches is typed ---------------------------------------------------

@pytest.mark.parametrize("path,value,why", [
    (("env", "microbench"), "abc", "env.microbench: 'abc' is not of type"),
    (("env", "microbench", "commit"), 12345, "env.microbench.commit: 12345 is not of type"),
    (("env", "cpu"), {"model": "x"}, "env.cpu:"),
    (("env", "date"), 20261201, "env.date: 20261201 is not of type 'string'"),
    (("env", "cores"), "two", "env.cores:"),
    (("env", "gpu"), {"available": "yes"}, "env.gpu.available:"),
    (("env", "libraries"), {"numpy": ["2"]}, "env.libraries.numpy:"),
    (("info",), {"cell": ["plain"]}, "info.cell: ['plain'] is not of type"),
    (("info",), {"pass": 3}, "info.pass:"),
    (("info",), {"framework": {}}, "info.framework:"),
    (("stats", "noisy"), "no", "stats.noisy:"),
    (("shard",), {"index": 1, "count": 2, "plan": 7}, "shard.plan:"),
    (("label",), 7, "label: 7 is not of type 'string'"),
    (("gpu_busy_s",), "fast", "gpu_busy_s:"),
    (("contention",), {"contended": "no"}, "contention.contended:"),
    (("roof",), {"gflops": "high"}, "roof.gflops:"),
    (("options", "smoke"), "yes", "options.smoke:"),
])
def test_untyped_fields_are_refused_by_the_schema(path, value, why, tmp_path):
    _skipped(tmp_path, json.dumps(_set(_record(info={}), path, value)), why)


def test_every_reader_gets_typed_fields_from_an_older_record_too(tmp_path):
    old = {k: v for k, v in _record().items() if k != "schema"}
    _skipped(tmp_path, json.dumps(_set(old, ("env", "microbench"), {"commit": 5})), "env.microbench.commit")


# -- item 5: text a renderer parses ------------------------------------------------------------------

def test_lone_surrogates_become_replacement_characters_and_every_output_works(tmp_path, capsys, png_only):
    f = tmp_path / "r.jsonl"
    text = json.dumps(_record(label="x\ud800y", env={"cpu": "\udfff", "date": "d"}))
    assert "\\ud800" in text
    f.write_text(text + "\n")
    [rec], notes = store.read(f)
    assert rec["label"] == "x\ufffdy" and rec["env"]["cpu"] == "\ufffd" and notes == []
    out = tmp_path / "o"
    assert cli.main(["report", str(f)]) == 0
    assert cli.main(["report", str(f), "--md", f"{out}.md", "--html", f"{out}.html", "--csv", f"{out}.csv",
                     "--no-roofs"]) == 0
    assert "x\ufffdy" in Path(f"{out}.md").read_text(encoding="utf-8")


def test_math_text_in_labels_is_drawn_as_text(tmp_path):
    from microbench import plots
    hostile = r"$\notacommand{$ ours"
    recs = [store.normalize(_record(label=hostile, options={**_record()["options"], "rung": r"$\frac{$"}))]
    for fn in (plots.convergence_plot, plots.ladder_plot):
        p = fn(recs)
        assert p.png and p.files["svg"]
    [panel] = plots.convergence_plot(recs).data.values()
    assert list(panel["rows"]) == [f"ours: {hostile}"]


def test_a_megabyte_label_is_one_note(tmp_path):
    _skipped(tmp_path, json.dumps(_record(label="x" * 2**20)), "label: ")


@pytest.mark.parametrize("depth", [40, 900, 5000, 200000])
def test_deep_nesting_is_one_note(depth, tmp_path):
    line = json.dumps(_record()).replace('"seed": 0', '"seed": 0, "deep": ' + "[" * depth + "]" * depth)
    _skipped(tmp_path, line, "nested deeper than 32 levels")


def test_a_line_beyond_the_limit_is_skipped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "MAX_LINE_BYTES", 1000)
    f = tmp_path / "r.jsonl"
    f.write_bytes(b"x" * 5000 + b"\n" + json.dumps(_record()).encode()[:900] + b"\n")
    recs, notes = store.read(f)
    assert notes[0] == f"{f}:1: longer than 0 MiB, not read" and len(notes) == 2 and not recs


# -- item 6: counts are never used to allocate -------------------------------------------------------

def test_a_huge_shard_count_is_counted_not_enumerated(tmp_path, capsys):
    rec = _record(shard={"index": 1, "count": 10**10, "plan": "p"})
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    assert store.shards(store.read(f)[0]) == [
        "plan p: shard(s) 1 of 10000000000 merged; MISSING shard(s) 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 "
        "... (9999999999 missing in all)"]
    assert cli.main(["report", str(f)]) == 0
    _skipped(tmp_path, json.dumps(_record(shard={"index": 3, "count": 2, "plan": "p"})), "shard.index 3 > shard.count 2")


# -- item 7: contradictory records -------------------------------------------------------------------

OLD = {k: v for k, v in _record().items() if k != "schema"}
CONTRADICTIONS = [
    ("passed above tol", _set(_record(), ("check", "max_rel_err"), 0.5), "check.passed is true but max_rel_err 0.5 > tol 1e-05"),
    ("passed with NaN", _set(_record(), ("check", "max_rel_err"), float("nan")), "check.passed is true with max_rel_err nan"),
    ("passed with null", _set(_record(), ("check", "max_rel_err"), None), "check.passed is true with max_rel_err None"),
    ("negative tol", _set(_record(status="failed", error="x"), ("check", "tol"), -1.0), "check.tol: -1.0 is less than the minimum of 0"),
    ("q1 above the median", _set(_set(_record(samples_s=None, status="failed", error="x"), ("stats", "q1_s"), 2e-3),
                                 ("stats", "iqr_s"), 0.0), "stats: q1_s 0.002 > median_s 0.001015"),
    ("stats 1000x the samples", _record(samples_s=[s / 1000 for s in SAMPLES]), "stats.median_s: 0.001015 is not the samples'"),
    ("n not the samples'", _set(_record(), ("stats", "n"), 9), "stats.n: 9 but samples_s holds 4 sample(s)"),
    ("iqr not q3-q1", _set(_record(), ("stats", "iqr_s"), 1.0), "stats.iqr_s: 1 is not q3_s - q1_s"),
    ("rel_noise not iqr/median", _set(_record(), ("stats", "rel_noise"), 0.5), "stats.rel_noise: 0.5 is not iqr_s / median_s"),
    ("old layout, ok with a failed check", {**OLD, "check": {**OLD["check"], "passed": False}},
     "status ok with check.passed is False"),
    ("old layout, ok without a check", {**OLD, "check": None}, "status ok with no check"),
    ("version 0, passed above tol", _set({**OLD, "schema": "microbench.result/0"}, ("check", "max_rel_err"), 1.0),
     "check.passed is true but max_rel_err 1 > tol"),
    ("version 0, stats not the samples'", {**OLD, "schema": "microbench.result/0", "samples_s": [1.0, 2.0]}, "stats.n: 4"),
    ("future version", _record(schema="microbench.result/2"),
     "schema microbench.result/2 is newer than this microbench reads (microbench.result/1 and older): upgrade"),
    ("unknown version", _record(schema="microbench.result/x"), "schema 'microbench.result/x' is not a version"),
    ("schema not a string", _record(schema=2), "schema: 2 is not a string"),
]


@pytest.mark.parametrize("name,rec,why", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_contradictory_records_are_one_note_in_every_version(name, rec, why, tmp_path):
    _skipped(tmp_path, json.dumps(rec), why)


def test_compare_never_shows_stats_that_disagree_with_the_samples(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_record()) + "\n")
    liar = _record(samples_s=[s * 1.01 for s in SAMPLES])      # samples as A's, stats 40000x
    liar["stats"] = Measurement([s * 42795.76 for s in SAMPLES]).to_dict()
    b.write_text(json.dumps(liar) + "\n")
    assert cli.main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "is not the samples'" in err and "42795" not in capsys.readouterr().out


# -- item 8: --resume ---------------------------------------------------------------------------------

def _suite_args(path):
    return ["suite", "quick", "--only", "lstm-h128", "--backend", "numpy", "--variants", "naive",
            "--device", "cpu", "--json", str(path), "--resume", "--quiet", "--warmup", "0",
            "--min-time", "0", "--min-samples", "2"]


def _planned_record(path, env, **over) -> dict:
    """The record of the one case _suite_args plans, in the older layout (no schema)."""
    from microbench import results
    from microbench.commands import suite as msuite
    from microbench.suites import catalog
    args = cli.build_parser().parse_args(_suite_args(path))
    [entry] = msuite.plan(args, catalog.get("quick"), "cpu")
    [case] = entry.cases
    rec = results.record(case=case, status="ok", env=env, error=None)
    rec["options"]["mode"] = "warm"
    st = Measurement(list(SAMPLES)).to_dict()
    rec.update(samples_s=list(SAMPLES), stats={k: st[k] for k in ("n", "median_s", "q1_s", "q3_s", "min_s", "mean_s")},
               check={"max_rel_err": 1e-7, "tol": 1e-5, "passed": True})
    rec.pop("schema")
    rec.update(over)
    return json.loads(json.dumps(rec))


@pytest.fixture
def cheap_env(monkeypatch, no_smoke):
    """An environment collected at no cost; not a smoke run (its records carry options.smoke,
    which a planned case's identity does not)."""
    from microbench import env as menv
    env = {"env_id": "E", "nvtx": {"cost_per_range_s": 0.0}, "cpu": "x", "cores": 1}
    monkeypatch.setattr(menv, "collect", lambda cheap=False: dict(env))
    return env


def test_resume_reruns_an_older_record_whose_check_failed(tmp_path, cheap_env, capsys):
    f = tmp_path / "r.jsonl"
    rec = _planned_record(f, cheap_env, check={"max_rel_err": 0.5, "tol": 1e-5, "passed": False})
    f.write_text(json.dumps(rec) + "\n")
    keys, notes = store.done_keys(f)
    assert keys == set() and "status ok with check.passed is False" in notes[0]
    assert cli.main([*_suite_args(f), "--list"]) == 0
    out = capsys.readouterr()
    assert "already recorded" not in out.out and "status ok with check.passed is False" in out.err


def test_resume_shows_an_older_record_without_noisy(tmp_path, cheap_env, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(_planned_record(f, cheap_env)) + "\n")
    assert len(store.done_keys(f)[0]) == 1
    assert cli.main(_suite_args(f)) == 0
    out = capsys.readouterr().out
    assert "nothing left to run: all 1 case(s)" in out and "recorded earlier (--resume)" in out


# -- item 2: output that injects -----------------------------------------------------------------------

HOSTILE = ["<script>alert(1)</script>", "[x](javascript:alert(1))", "![t](http://t.example/p.png)",
           "**bold** _em_ `code` ~~del~~ $x$", "| a | b |", "# head", "- item", "1. item", "> quote",
           "=HYPERLINK(\"http://evil\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx",
           "\x1b[31mred\x1b[0m\x1b]0;title\x07", "[bold red]markup[/]", "a\u202eb", "&lt;b&gt;"]


def _hostile_records() -> list:
    recs = []
    for i, text in enumerate(HOSTILE):
        r = _record(variant=f"v{i}", label=text, op=text[:200], env_id=f"e{i}", error=None,
                    env={"cpu": text, "date": text, "host": text, "microbench": {"commit": text, "dirty": True}})
        recs.append(r)
    recs.append(_record(variant="bad", status="failed", error=HOSTILE[0] + " " + HOSTILE[4],
                        check={"max_rel_err": float("nan"), "tol": 1e-5, "passed": False}))
    return recs


@pytest.fixture
def hostile_file(tmp_path):
    f = tmp_path / "hostile.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _hostile_records()))
    recs, notes = store.read(f)
    assert notes == [] and len(recs) == len(HOSTILE) + 1
    return f


def test_markdown_report_renders_hostile_text_as_text(hostile_file, tmp_path, capsys, png_only):
    from markdown_it import MarkdownIt
    md_path = tmp_path / "r.md"
    assert cli.main(["report", str(hostile_file), "--md", str(md_path), "--no-roofs"]) == 0
    md = md_path.read_text(encoding="utf-8")
    page = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").render(md)
    assert "<script" not in page and "javascript:" not in page.replace("javascript:alert(1))", "")
    assert "href=" not in page
    assert page.count("<img") == page.count('<img src="data:image/png;base64,')
    for tag in ("<em>em", "<strong>bold", "<code>", "<s>del", "<del>", "<blockquote>", "<ol", "<ul>", "<h1>head"):
        assert tag not in page, tag
    assert "\x1b" not in md and "\u202e" not in md and "\r" not in md
    # every hostile text is shown: the table cells hold it, entity-escaped where it is HTML
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "[x](javascript:alert(1))" in page
    assert "**bold** _em_ `code` ~~del~~ $x$" in page and "&amp;lt;b&amp;gt;" in page


def test_csv_cells_never_start_a_formula(hostile_file, tmp_path):
    out = tmp_path / "r.csv"
    assert cli.main(["report", str(hostile_file), "--csv", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r", "\n")]
    assert "'=HYPERLINK(\"http://evil\")" in cells and "'-2+3" in cells and "'@SUM(A1)" in cells
    assert "1e-07" in cells or "1e-7" in cells or any(c.startswith("1e-0") for c in cells)   # numbers stay numbers


def test_terminal_tables_show_control_characters_and_markup_as_text(hostile_file, tmp_path, capsys):
    for argv in (["report", str(hostile_file)], ["compare", str(hostile_file), str(hostile_file)]):
        assert cli.main(argv) == 0, argv
        out, err = capsys.readouterr()
        for text in (out, err):
            assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\r" not in text
        assert "\\x1b" in out and "\\u202e" in out
    # rich markup in a record is printed, not applied
    assert cli.main(["report", str(hostile_file)]) == 0
    assert "[bold red]" in capsys.readouterr().out


def test_error_messages_quoting_record_text_show_control_characters(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_record(host="\x1b]0;owned\x07", device_name="x")) + "\n")
    b.write_text(json.dumps(_record(host="other", device_name="x")) + "\n")
    assert cli.main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]0;owned\\x07" in err and len(err.strip().splitlines()) == 1


def test_skipped_line_notes_show_control_characters(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(shape={"\x1b[2J": "x"})) + "\n")
    assert cli.main(["report", str(f)]) == 0
    err = capsys.readouterr().err
    assert "note: skipped" in err and "\x1b" not in err


# -- item 9: nothing lost or overwritten ---------------------------------------------------------------

def test_report_outputs_never_name_an_input_or_each_other(tmp_path, capsys):
    src = tmp_path / "r-ladder.svg"                     # a results file named like a figure
    src.write_text(json.dumps(_record()) + "\n")
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    hard = tmp_path / "hard.csv"
    hard.hardlink_to(src)
    cases = [
        (["report", str(src), "--html", str(tmp_path / "r.html")], "is the input file"),
        (["report", str(link), "--md", str(tmp_path / "r.md")], "is the input file"),
        (["report", str(src), "--csv", str(link)], "is the input file"),
        (["report", str(src), "--csv", str(hard)], "is the input file"),
        (["report", str(src), "--csv", str(tmp_path / "x" / ".." / "r-ladder.svg")], "is the input file"),
        (["report", str(src), "--csv", str(tmp_path / "p"), "--html", str(tmp_path / "p")], "are the same file"),
        (["report", str(src), "--csv", str(tmp_path / "q-roofline.pdf"), "--md", str(tmp_path / "q.md")],
         "are the same file"),
        (["report", str(src), "--html", str(tmp_path / "s.html"), "--md", str(tmp_path / "s.html")],
         "are the same file"),
    ]
    (tmp_path / "x").mkdir()
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.csv", "link.jsonl", "r-ladder.svg", "x"]
    # one stem for --html and --md: the figures beside them are the same files, written once
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(_record()) + "\n")
    assert cli.main(["report", str(good), "--html", str(tmp_path / "t.html"), "--md", str(tmp_path / "t.md"),
                     "--no-roofs"]) == 0


# -- explain --reference ----------------------------------------------------------------------------

def _small_trace() -> dict:
    data = json.loads(REFERENCE.read_text())
    lstm = [t for t in data["traces"] if t["meta"].get("op") == "lstm"][:2]
    for t in lstm:
        t["records"] = t["records"][:20]
    return {"env": data["env"], "traces": lstm}


def _explain(path) -> str:
    """explain --reference's reader and tables (the library: the command adds a CPU profile)."""
    from rich.console import Console

    from profiles import explain
    buf = io.StringIO()
    explain.render(explain.explain_reference("lstm", path), Console(file=buf, width=200))
    return buf.getvalue()


@pytest.mark.parametrize("edit,why", [
    (lambda d: d["traces"][0]["records"][0].update(start_ns=float("inf")), "start_ns is inf"),
    (lambda d: d["traces"][0]["records"][0].update(end_ns=10**30), "an integer of 31 digits"),
    (lambda d: d["traces"][0].update(wall_ns="9" * 5000), "wall_ns is"),
    (lambda d: d["traces"][0]["records"][0].update(name="k" * 10**5), "name is 100000 characters long"),
    (lambda d: d["traces"][0]["records"][0].update(grid=[1, 2]), "grid is [1, 2], not 3 integers"),
    (lambda d: d["traces"][0]["meta"].update(extra=[[[[1]]]]), "meta.extra"),
    (lambda d: d["traces"][0]["records"][0].update(deep=json.loads("[" * 40 + "]" * 40)), "nested deeper"),
])
def test_explain_reference_refuses_out_of_range_traces_in_one_line(edit, why, tmp_path, capsys):
    d = _small_trace()
    edit(d)
    f = tmp_path / "t.json"
    f.write_text(json.dumps(d))
    assert cli.main(["explain", "lstm", "--reference", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and str(f) in err, err


def test_explain_reference_prints_trace_text_as_text(tmp_path):
    d = _small_trace()
    d["traces"][0]["label"] = "[bold]\x1b[31mred"
    d["traces"][0]["records"][0]["name"] = "\x1b]0;owned\x07kernel_\ud800"
    d["env"]["gpu"] = "[link=http://evil]GPU[/link]\x1b[2J"
    d["env"]["cudnn"] = float("inf")
    del d["traces"][0]["meta"]["B"]
    for t in d["traces"]:
        for r in t["records"]:
            r["end_ns"] = r["start_ns"]                    # nothing busy: no division by zero
    f = tmp_path / "t.json"
    f.write_text(json.dumps(d))
    out = _explain(f)
    assert "\x1b" not in out and "[bold]\\x1b[31mred" in out and "[link=http://evil]GPU[/link]" in out


# -- fuzz: seeded mutations over every reader -----------------------------------------------------------

HOSTILE_VALUES = ["9" * 4400, "1" + "0" * 25, str(2**63), "-" + str(2**63 + 1), "1e306", "-1e306", "1e-320",
                  "NaN", "Infinity", "-Infinity", "-0.0", "0", "-1", "true", "null", '""', '"\\ud800"',
                  '"$\\\\frac{$"', '"[bold]x[/]"', '"\\u001b[31m"', '"<script>"', '"=cmd|x"',
                  json.dumps("x" * 3000), "[]", "{}", "[" * 40 + "]" * 40, '{"a": {"b": [1, {"c": null}]}}']


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (i,))


def _mutant(rng: random.Random, base: dict) -> str:
    paths = [p for p in _paths(base) if p]
    path = rng.choice(paths)
    how = rng.random()
    if how < 0.15:                                         # a field removed
        rec = copy.deepcopy(base)
        d = rec
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
        return json.dumps(rec)
    if how < 0.25:                                         # a line cut short (a killed run)
        text = json.dumps(base)
        return text[:rng.randrange(1, len(text))]
    return _json_with(base, path, rng.choice(HOSTILE_VALUES))


def test_fuzz_every_reader_turns_each_line_into_a_record_or_one_note(tmp_path, capsys, png_only):
    rng = random.Random(27)
    bases = [json.loads(line) for line in FIXTURE.read_text().splitlines()[:4]]
    bases = [dict(b, samples_s=b["samples_s"][:5], stats=Measurement(b["samples_s"][:5]).to_dict()) for b in bases]
    bases += _hostile_records()[:3] + [{k: v for k, v in _record().items() if k != "schema"}]
    lines = [_mutant(rng, rng.choice(bases)) for _ in range(300)]
    f = tmp_path / "fuzz.jsonl"
    f.write_text("\n".join(lines) + "\n" + "".join(json.dumps(b) + "\n" for b in bases))
    recs, notes = store.read(f)
    nonblank = sum(1 for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    assert len(recs) + len(notes) == nonblank
    assert all(n.startswith(f"{f}:") and "\n" not in n for n in notes)
    assert 0 < len(recs) < nonblank
    store.shards(recs), store.done_keys(f)
    out = tmp_path / "o"
    for argv in (["report", str(f)], ["compare", str(FIXTURE), str(f)],
                 ["report", str(f), "--csv", f"{out}.csv", "--md", f"{out}.md", "--html", f"{out}.html",
                  "--no-roofs"]):
        code = cli.main(argv)
        o, e = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in e and "\x1b" not in o + e, (argv, e[-2000:])
    # the trace reader: one line (or a working explanation) for every mutant of a small trace file
    from kernels.errors import BadInput
    base = _small_trace()
    for i in range(60):
        t = tmp_path / f"t{i}.json"
        t.write_text(_mutant(rng, base))
        try:
            assert "\x1b" not in _explain(t)
        except BadInput as e:
            assert "\n" not in str(e) and t.name in str(e)


# -- the rules refuse no record microbench wrote --------------------------------------------------------

@pytest.mark.parametrize("name", ["benchmarks/results/cpu-2026-11-26/lstm-frameworks.jsonl",
                                  "benchmarks/results/cpu-2026-11-26/conv-res2-3x3.jsonl",
                                  "benchmarks/results/cpu-graph-step-2026-12-02/lstm-H256-B16-ladder.jsonl",
                                  "tests/fixtures/results-sample.jsonl"])
def test_committed_results_files_read_without_a_skipped_line(name):
    recs, notes = store.read(ROOT / name)
    assert recs and notes == []
