"""README.md and docs/*.md against the code and the committed results: the README's shape, the
option tables against argparse, every flag of the benchmark commands documented, the extras
table against setup.cfg, links that resolve, and every measured number citing a results file.

Citation convention (docs/timing.md's and every page's): a measured number (a time in s, ms, us
or ns, a GFLOP/s or GB/s rate, or a ratio written like ``1.17x``) stands in a paragraph, list item,
table or code block that names a committed path under ``benchmarks/results/`` (a table or code
block may take it from the paragraph right before it). Every such path must exist, and so must
every results folder named by itself (``cpu-2026-12-01/``) and every results file named without
its folder in a paragraph that cites one. Definitions are written in words ("three times the
FLOPs"), so that only measurements carry these units."""
from __future__ import annotations

import argparse
import configparser
import re
from pathlib import Path

import pytest

from microbench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
RESULTS = ROOT / "benchmarks" / "results"


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- splitting a page into blocks -----------------------------------------------------------------
def _blocks(text: str) -> list:
    """``(kind, text)`` per block: ``code`` (a fenced block), ``table``, ``heading``, ``comment``
    (an HTML comment line), ``para`` (a paragraph, or one item of a list)."""
    out, cur, kind = [], [], None

    def flush():
        nonlocal cur, kind
        if cur:
            out.append((kind, "\n".join(cur)))
        cur, kind = [], None

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(("code", "\n".join(lines[i + 1:j])))
            i = j + 1
            continue
        if not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            out.append(("heading", line))
        elif line.startswith("<!--"):
            flush()
            out.append(("comment", line))
        elif line.startswith("|"):
            if kind != "table":
                flush()
                kind = "table"
            cur.append(line)
        elif re.match(r"(- |\* |\d+\. )", line):
            flush()
            kind = "para"
            cur.append(line)
        else:
            if kind == "table":
                flush()
            kind = kind or "para"
            cur.append(line)
        i += 1
    flush()
    return out


# -- the README's shape ---------------------------------------------------------------------------
def test_readme_is_an_entry_point():
    """Under 300 lines; the status first (what ran on which device), then requirements, the two
    set-up commands and a real output sample, before the contents and the usage by task."""
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move detail to docs/ (limit 299)"
    assert lines[0] == "# microbench"
    status = next(line for line in lines[1:] if line.strip())
    assert status.startswith("**Status:**") and "GPU" in status and "CPU" in status and "CI" in status
    heads = [line for line in lines if line.startswith("## ")]
    order = ["## Requirements", "## Set-up", "## What it prints", "## Contents", "## Benchmark a layer",
             "## Compare frameworks", "## Explain convergence", "## Use the kernels in research code",
             "## Run suites", "## Profile", "## Results files", "## Timing you can trust", "## Scaling out"]
    assert [h for h in heads if h in order] == order, heads
    sample = text.split("## What it prints")[1].split("## Contents")[0]
    assert "benchmarks/results/" in sample and "```" in sample


def test_every_doc_is_linked_from_the_readme():
    text = README.read_text()
    for doc in DOCS:
        assert f"](docs/{doc.name}" in text, f"README does not link {_rel(doc)}"


# -- links --------------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = heading.lstrip("#").strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    """Every relative link names an existing file, and an anchor into a page names a heading."""
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{_rel(page)}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(line) for line in dest.read_text().splitlines() if line.startswith("#")}
            assert anchor in slugs, f"{_rel(page)}: link to {target}: no such heading in {dest.name}"


# -- option tables against argparse ---------------------------------------------------------------
def _subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _flags(command: str) -> set:
    """The user-facing option strings of a command (help and hidden options left out)."""
    return {s for a in _subparsers()[command]._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings if s not in ("-h", "--help")}


FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _option_tables():
    """``(page, commands, rows)`` for each table after an ``<!-- options: CMD ... -->`` marker."""
    for page in PAGES:
        blocks = _blocks(page.read_text())
        for (kind, text), nxt in zip(blocks, blocks[1:]):
            m = re.match(r"<!-- options: ([\w ]+) -->", text) if kind == "comment" else None
            if m:
                assert nxt[0] == "table", f"{_rel(page)}: {text} is not followed by a table"
                rows = [r for r in nxt[1].splitlines()[2:]]
                yield page, m.group(1).split(), rows


def test_option_tables_name_only_flags_the_parser_has():
    """Each flag in an option table's first column exists in the parser of every command the table
    is for (a row whose meaning starts with "(lstm)" or "(lstm, gru)" is for those only)."""
    tables = list(_option_tables())
    covered = {c for _, cmds, _ in tables for c in cmds}
    assert {"lstm", "gru", "rnn", "conv"} <= covered, covered
    for page, commands, rows in tables:
        for row in rows:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            named = [f for code in re.findall(r"`([^`]+)`", cells[0]) for f in FLAG.findall(code)]
            assert named, f"{_rel(page)}: a row names no flag: {row[:80]}"
            only = re.match(r"\(([\w, ]+)\)", cells[1])
            for cmd in (only.group(1).replace(",", " ").split() if only else commands):
                missing = [f for f in named if f not in _flags(cmd)]
                assert not missing, f"{_rel(page)}: {missing} not options of `{cmd}` (row: {row[:80]})"


@pytest.mark.parametrize("command", ["lstm", "gru", "rnn", "conv"])
def test_every_flag_of_a_benchmark_command_is_documented(command):
    """Every user-facing flag appears in the README or a doc it links (as `--flag` or `-F`)."""
    text = "\n".join(p.read_text() for p in PAGES)
    missing = sorted(f for f in _flags(command)
                     if not re.search(r"(?<![\w-])" + re.escape(f) + r"(?![\w-])", text))
    assert not missing, f"{command}: flags nowhere in README.md or docs/: {missing}"


# -- the extras table against setup.cfg ------------------------------------------------------------
def _extras() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for name, value in cfg["options.extras_require"].items():
        reqs = [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]
        out[name] = [re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", r).group(0) for r in reqs]
    return out


def test_readme_extras_table_lists_what_setup_cfg_holds():
    """One row per extra of setup.cfg, naming every distribution the extra installs."""
    blocks = _blocks(README.read_text())
    table = next(text for kind, text in blocks if kind == "table" and text.startswith("| extra"))
    rows = {re.match(r"\| `([\w-]+)`", r).group(1): r for r in table.splitlines()[2:]}
    extras = _extras()
    assert set(rows) == set(extras), (sorted(rows), sorted(extras))
    for name, dists in extras.items():
        missing = [d for d in dists if f"`{d}`" not in rows[name]]
        assert not missing, f"README's `{name}` row leaves out {missing}"


# -- numbers cite committed results -------------------------------------------------------------
CITED = re.compile(r"benchmarks/results/[\w.*/-]+")
NUMBER = r"(?<![\w.\-/^])\d+(?:\.\d+)?(?:\s*-\s*\d+(?:\.\d+)?)?"
MEASURED = re.compile(NUMBER + r"(?:\s?(?:ms|us|µs|ns|s|GFLOP/s|TFLOP/s|GB/s)(?![\w/])|x(?![\w]))")
FOLDER = re.compile(r"`([\w-]+-\d{4}-\d{2}-\d{2})/?`")
RESULT_FILE = re.compile(r"`([\w*.-]+\.(?:txt|jsonl|cmd|csv))`")


def _exists(rel: str) -> bool:
    rel = rel.rstrip(".,;:")
    return bool(list(ROOT.glob(rel))) if "*" in rel else (ROOT / rel).exists()


def _units(pages):
    """``(page, kind, text, cited paths)``; a table or code block inherits the citations of the
    paragraph right before it."""
    for page in pages:
        prev = []
        for kind, text in _blocks(page.read_text()):
            cites = CITED.findall(text)
            if kind in ("table", "code"):
                cites = cites + prev
            yield page, kind, text, cites
            if kind != "comment":
                prev = cites if kind == "para" else (prev if kind in ("table", "code") else [])


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_measured_numbers_cite_a_committed_results_file(page):
    bad = []
    for _, kind, text, cites in _units([page]):
        prose = text if kind == "code" else re.sub(r"`[^`]*`", "", text)
        found = [m.group(0) for m in MEASURED.finditer(prose)]
        if found and not cites:
            bad.append(f"{found} in the {'paragraph' if kind == 'para' else kind} {text[:70]!r}...")
    assert not bad, (f"{_rel(page)}: measured numbers without a benchmarks/results/ path in the same "
                     "paragraph or table (cite the file, or write a definition in words):\n" + "\n".join(bad))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_cited_results_exist(page):
    """Every path under benchmarks/results/, every results folder named by itself and every
    results file named without its folder (in a paragraph citing folders) exists."""
    for _, kind, text, cites in _units([page]):
        for rel in CITED.findall(text):
            assert _exists(rel), f"{_rel(page)}: cites {rel}, which is not committed"
        for folder in FOLDER.findall(text):
            assert (RESULTS / folder).is_dir(), f"{_rel(page)}: names results folder {folder}, which does not exist"
        folders = {str(Path(c.rstrip(".,;:")).parent if "." in Path(c).name else Path(c)) for c in cites}
        for name in RESULT_FILE.findall(text):
            if folders and not name.startswith(("out", "quick-", "db-", "report", "results-sample")):
                assert any(list((ROOT / f).glob(name)) for f in folders), (
                    f"{_rel(page)}: {name} is in none of the cited folders {sorted(folders)}")


def test_the_citation_check_catches_an_uncited_number():
    """The check above is not vacuous: a number with a unit and no citation is found, and a
    citation of a path that does not exist is caught."""
    page = "Runs took 12.5 ms on one thread.\n\nSee `benchmarks/results/cpu-2026-12-01/`: 3.4 ms.\n"
    blocks = _blocks(page)
    assert MEASURED.search(blocks[0][1]) and not CITED.findall(blocks[0][1])
    assert CITED.findall(blocks[1][1]) and _exists(CITED.findall(blocks[1][1])[0])
    assert not _exists("benchmarks/results/cpu-1999-01-01/x.txt")
    for definition in ("three times the FLOPs", "a 3x3 filter", "cupy-cuda13x", "1e-12 s", "`--min-time 1`"):
        assert not MEASURED.search(re.sub(r"`[^`]*`", "", definition)), definition
    for measured in ("1.17x", "85 us", "730-790 us", "108 vs 198 us", "4.39 s", "54.9 GFLOP/s"):
        assert MEASURED.search(measured), measured
