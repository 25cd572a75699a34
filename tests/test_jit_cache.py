"""kernels.jit: numba's compiled code kept in the private cache, one file per function and compile
options, under a key of this package's sources; the kernels load from it in the next process."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MODULE = textwrap.dedent("""
    import numba
    import numpy as np
    from kernels.jit import njit

    @njit(inline="always")
    def twice(v):
        return v * 2.0

    @njit(parallel=True)
    def par(x, out):
        for i in numba.prange(x.shape[0]):
            out[i] = twice(x[i])

    ser = njit(error_model="numpy")(par.py_func)    # the same function, other options
""")
RUN = textwrap.dedent("""
    import numpy as np, jitmod
    x = np.arange(8.0); o1, o2 = np.empty(8), np.empty(8)
    jitmod.par(x, o1); jitmod.ser(x, o2)
    assert (o1 == 2 * x).all() and (o2 == 2 * x).all()
    print(sum(jitmod.par.stats.cache_hits.values()), sum(jitmod.ser.stats.cache_hits.values()),
          jitmod.par.stats.cache_path)
""")


def _run(tmp_path, env=None):
    (tmp_path / "jitmod.py").write_text(MODULE)
    e = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", MICROBENCH_CACHE=str(tmp_path / "cache"))
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hits_par, hits_ser, path = r.stdout.split()
    return int(hits_par), int(hits_ser), path


def test_the_next_process_loads_what_the_first_compiled(tmp_path):
    assert _run(tmp_path)[:2] == (0, 0)
    hits_par, hits_ser, path = _run(tmp_path)
    assert (hits_par, hits_ser) == (1, 1)       # each form from its own file, none taking the other's
    assert Path(path).parent == tmp_path / "cache" / "numba"
    files = sorted(p.name for p in Path(path).iterdir())
    assert len([f for f in files if f.startswith("jitmod.par-") and f.endswith(".nbi")]) == 2, files


def test_the_cache_can_be_turned_off(tmp_path):
    _run(tmp_path)
    assert _run(tmp_path, {"MICROBENCH_JIT_CACHE": "0"})[:2] == (0, 0)


def test_the_key_follows_the_sources_and_old_generations_are_removed(tmp_path, monkeypatch):
    from kernels import jit
    monkeypatch.setenv("MICROBENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv(jit.ENV_OFF, raising=False)
    top = tmp_path / "c" / "numba"
    keys = [f"{i:016x}" for i in range(jit.KEEP + 3)]
    for i, k in enumerate(keys):
        monkeypatch.setattr(jit, "_key", lambda k=k: k)
        jit.cache_dir.cache_clear()
        d = jit.cache_dir()
        assert d == top / k and oct(d.stat().st_mode & 0o777) == "0o700"
        (d / "x.nbi").write_bytes(b"")
        os.utime(d, (1000 + i, 1000 + i))
    jit.cache_dir.cache_clear()
    kept = sorted(p.name for p in top.iterdir())
    assert kept == keys[-jit.KEEP:]             # the newest few, the current one among them


def test_the_key_hashes_every_source_of_kernels_and_fusion(monkeypatch, tmp_path):
    """A change in any module the kernels inline from (not only the defining file, which is all
    numba itself looks at) gives another key."""
    from kernels import jit
    jit._key.cache_clear()
    before = jit._key()
    spin = ROOT / "fusion" / "spin.py"
    text = spin.read_bytes()
    real_read = Path.read_bytes

    def read(self):
        return real_read(self) + (b"# changed" if self == spin else b"")
    monkeypatch.setattr(Path, "read_bytes", read)
    jit._key.cache_clear()
    try:
        assert jit._key() != before
    finally:
        monkeypatch.undo()
        jit._key.cache_clear()
    assert spin.read_bytes() == text and jit._key() == before


@pytest.mark.parametrize("closure", ["jitted", "pointer"])
def test_functions_numba_cannot_key_stay_uncached(closure):
    """A closure over a jitted function or a ctypes object changes its key in every process:
    compiled as before, never written to (or read from) the cache."""
    import ctypes

    import numba

    from kernels import jit
    inner = numba.njit(lambda v: v + 1)
    obj = inner if closure == "jitted" else ctypes.c_int(3)

    def f(v):
        return obj

    assert jit.uncachable(numba.njit(f))
    assert not jit.uncachable(numba.njit(lambda v: v))
