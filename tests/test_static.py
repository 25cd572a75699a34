"""Names every module uses are defined: the GPU-only paths (cuDNN, CuPy launchers) never run on a
machine without a GPU, so a name a refactor left behind would first fail on a device."""
from __future__ import annotations

from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api", reason="pyflakes is in the test extra")
from pyflakes import messages  # noqa: E402
from pyflakes.reporter import Reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "fusion", "microbench", "profiles", "benchmarks")
FATAL = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class _Collect(Reporter):
    def __init__(self):
        self.problems = []

    def flake(self, message):
        if isinstance(message, FATAL):
            self.problems.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.problems.append(f"{filename}:{lineno}: syntax error: {msg}")

    def unexpectedError(self, filename, msg):
        self.problems.append(f"{filename}: {msg}")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_undefined_names(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    rep = _Collect()
    for f in files:
        pyflakes_api.checkPath(str(f), rep)
    assert not rep.problems, "\n".join(rep.problems)


def test_the_check_sees_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return cupy.empty(3)\n")
    rep = _Collect()
    pyflakes_api.checkPath(str(bad), rep)
    assert len(rep.problems) == 1 and "undefined name 'cupy'" in rep.problems[0]
