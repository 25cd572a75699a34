"""Shared test set-up: `gpu`-marked tests skip with the reason where no GPU is found; the
`onednn_lib` fixture skips where oneDNN cannot be loaded (and fails in CI, where it is a base
dependency); tests skipped for want of a compiler (tests/toolchain.py) are counted in the summary.

The whole session runs in smoke mode (MICROBENCH_SMOKE=1, microbench.smoke), in this process and
in every command it starts: each command still builds, checks and times every case it asks for,
but with the timing rule capped and large sizes shrunk, so a test pays for a check, not for a
measurement.  A test of the timing rule itself turns it off with the ``no_smoke`` fixture.

Framework workers are reused across the session's cases (MICROBENCH_REUSE_WORKERS=1,
microbench.frameworks.client): a worker started the same way (framework, interpreter, threads,
device, environment) serves the next case instead of a new process importing the framework again.

The tests run on every usable core (pytest-xdist, ``-n auto`` in setup.cfg; the worker count is
:func:`pytest_xdist_auto_num_workers`'s); ``-n 0`` runs them in this one process."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the tests also run from a plain checkout
    sys.path.insert(0, str(ROOT))

os.environ["MICROBENCH_SMOKE"] = "1"
os.environ["MICROBENCH_REUSE_WORKERS"] = "1"


def _compile_caches() -> None:
    """torch.compile's and XLA's compiled code kept with ours, in the private kernel cache
    (kernels.cachedir; CI keeps it between runs, as it keeps the virtual environment), so the
    framework workers of the session compile a graph once, not once per process."""
    from kernels.cachedir import private_dir
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(private_dir("inductor")))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(private_dir("jax")))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


_compile_caches()


MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg): one worker per core this process may use, at most MAX_WORKERS.
    Each worker's tests run thread teams and BLAS pools sized to every usable core, so more
    workers than cores only make them wait for each other; past four, the framework imports every
    worker repeats cost more memory than the few long tests they could spread.
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides, as it does for xdist's own rule."""
    forced = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if forced:
        return int(forced)
    from microbench.threads import usable_cpus      # the affinity mask, lowered by a cgroup quota
    return max(1, min(usable_cpus()[0], MAX_WORKERS))


@pytest.fixture
def no_smoke(monkeypatch):
    """The timing rule and sizes as asked (for tests of the rule itself, in-process or through
    ``run_cli``)."""
    monkeypatch.delenv("MICROBENCH_SMOKE", raising=False)


def pytest_collection_modifyitems(config, items):
    from kernels import gpu
    ok, reason = gpu.detect()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"no GPU: {reason}")
    for item in items:
        # the marker itself, not item.keywords: keywords also hold the names of the folders
        # above the test, so a checkout in a folder named "gpu" skipped every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def run_cli():
    """Run ``python -m microbench ...`` in a subprocess from the repository root."""
    import subprocess

    def run(*args, timeout=300, env=None, cwd=None):
        e = dict(os.environ)
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        e.setdefault("COLUMNS", "160")
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "microbench", *args], cwd=cwd or ROOT, env=e,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def register_variants():
    """``register_variants(record, ...)`` puts test-double variants in the registry for one test;
    they are removed after it, so no other test sees them."""
    from microbench import registry
    added = []

    def register(*records):
        for r in records:
            registry.register(r)
            added.append(r)
    yield register
    for r in added:
        del registry.REGISTRY[r.key]


@pytest.fixture(scope="session")
def onednn_lib():
    from onednn_tools import require_onednn
    return require_onednn()


def pytest_terminal_summary(terminalreporter):
    """Tests that did not run for want of a compiler (tests/toolchain.py), counted in one loud
    line: a machine without nvcc or g++ must not look like a full pass."""
    from collections import Counter

    from tests.toolchain import MISSING
    reasons = Counter()
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = rep.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if MISSING in text:
            reasons[text.split(MISSING + ": ", 1)[-1]] += 1
    if reasons:
        total = sum(reasons.values())
        terminalreporter.write_sep("!", f"{total} test(s) NOT RUN for want of a compiler", red=True, bold=True)
        for why, n in reasons.items():
            terminalreporter.write_line(f"{MISSING}: {n} test(s): {why}", red=True)
