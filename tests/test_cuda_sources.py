"""The GPU kernels, checked as far as each machine allows.

Without a GPU: every ``kernels/cuda/*.cu`` compiles with nvcc (sm_90 and sm_80, warnings are
errors, register and spill report printed and written under the test's tmp dir: ``pytest -rP``
shows it) and with NVRTC (the compiler CuPy's RawModule runs); the numba.cuda kernels compile to
PTX with fp32 math only and run in numba's CUDA simulator against the float64 math.
With a GPU (``-m gpu``): the whole RNN on each GPU backend against ``kernels.reference``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import toolchain
from fusion import cellexpr as ce
from fusion import pointwise_cuda as pc
from kernels import cudasrc
from kernels.errors import MissingDependency

from cudatools import parse_resource_usage

ROOT = Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "kernels" / "cuda").glob("*.cu"))
ARCHS = ("sm_90", "sm_80")   # H100/H200, and A100 so nothing Hopper-only slips in
ENTRIES = {f"{stem}_{sfx}" for stem in ("lstm_pointwise_fused", "gru_pointwise_fused")
           for sfx in pc.SUFFIX.values()}


# -- nvcc ------------------------------------------------------------------------------------
@toolchain.needs("nvcc")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles(cu, arch, tmp_path):
    cmd = [toolchain.nvcc(), f"-arch={arch}", "-c", "--resource-usage", "-Werror", "all-warnings",
           "-o", str(tmp_path / f"{cu.stem}.o"), str(cu)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    log = tmp_path / f"{cu.stem}-{arch}.resource-usage.txt"
    log.write_text(" ".join(cmd) + "\n" + report)
    usage = parse_resource_usage(report)
    print(f"{cu.name} {arch} (full report: {log})")
    for name, u in sorted(usage.items()):
        print(f"  {name:28s} {u.get('registers', '?'):>3} registers, {u.get('spill_stores', '?')} B spill "
              f"stores, {u.get('spill_loads', '?')} B spill loads, {u.get('stack', '?')} B stack")
    assert proc.returncode == 0, f"nvcc failed:\n{report}"
    assert usage, f"no kernel in the resource report:\n{report}"
    if cu.name == "rnn_pointwise.cu":
        assert set(usage) == ENTRIES
    spilled = {n: u for n, u in usage.items() if u.get("spill_stores") or u.get("spill_loads")}
    assert not spilled, f"register spills: {spilled}"


# -- NVRTC (what CuPy's RawModule compiles with) ----------------------------------------------
def _nvrtc_or_skip(source=pc.SOURCE, **kw):
    try:
        return cudasrc.nvrtc_compile(source, **kw)
    except MissingDependency as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles(arch):
    ptx = _nvrtc_or_skip(arch=arch, cubin=False).decode(errors="replace")
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == ENTRIES
    assert len(_nvrtc_or_skip(arch=arch)) > 0  # and the cubin


def test_compile_error_carries_the_log():
    broken = pc.read_source().replace("fmaf(f, ", "fmaf(f_undefined, ", 1)
    assert broken != pc.read_source()
    with pytest.raises(pc.KernelCompileError) as info:
        _nvrtc_or_skip(broken, filename=pc.SOURCE.name)
    msg = str(info.value)
    assert "rnn_pointwise.cu" in msg and "f_undefined" in msg and "undefined" in msg
    # the inlined header's #line markers keep the .cu's own line numbers in the log
    line = pc.SOURCE.read_text().splitlines().index(
        next(ln for ln in pc.SOURCE.read_text().splitlines() if "fmaf(f, " in ln)) + 1
    assert f"rnn_pointwise.cu({line})" in msg, msg


# -- the shared device header -------------------------------------------------------------------
HEADER = cudasrc.CUDA_DIR / "mb_device.cuh"
SHARED = ("load", "store", "sigmoid")


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_every_source_includes_the_shared_header(cu):
    """Each .cu takes load/store/sigmoid from mb_device.cuh instead of writing its own copy."""
    text = cu.read_text()
    assert '#include "mb_device.cuh"' in text
    for f in SHARED:
        assert not re.search(rf"__device__[^;{{]*\b(mb_)?{f}\(", text), f"{cu.name} defines its own {f}"
    expanded = cudasrc.read(cu)
    assert not re.search(r'^#include "mb_device.cuh"', expanded, re.M) and "namespace mb {" in expanded


def test_generated_source_includes_the_shared_header():
    src = ce.cuda_source(ce.LSTM)
    assert '#include "mb_device.cuh"' in src
    for f in SHARED:
        assert f"using mb::{f};" in src
        assert not re.search(rf"__device__[^;{{]*\b{f}\(", src), f"the prelude defines its own {f}"


def test_expand_inlines_once_and_keeps_line_numbers():
    text = '#include "mb_device.cuh"\n#include "mb_device.cuh"\nint x;\n#include <cuda_fp16.h>\n'
    out = cudasrc.expand(text, "t.cu")
    assert out.count("#define MB_DEVICE_CUH") == 1               # a header once per translation unit
    assert '#line 1 "mb_device.cuh"' in out and '#line 2 "t.cu"' in out
    # the second include leaves its line empty, so "int x;" is still line 3; system includes stay
    assert out.endswith('#line 2 "t.cu"\n\nint x;\n#include <cuda_fp16.h>\n')
    assert cudasrc.expand('#include "not_ours.h"\n', "t.cu") == '#include "not_ours.h"\n'


def test_header_compiles_in_a_generated_and_a_hand_written_source(tmp_path, monkeypatch):
    """NVRTC sees the header through the loader in both kinds of source, and an error inside the
    header is reported against the header's own file and line."""
    _nvrtc_or_skip(ce.cuda_source(ce.GRU), filename="gru_cell.cu")
    _nvrtc_or_skip(pc.SOURCE)
    broken = HEADER.read_text().replace("return *p;", "return *p + undefined_in_header;", 1)
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "undefined_in_header" in ln)
    (tmp_path / HEADER.name).write_text(broken)
    monkeypatch.setattr(cudasrc, "CUDA_DIR", tmp_path)
    with pytest.raises(cudasrc.KernelCompileError) as info:
        _nvrtc_or_skip(pc.SOURCE.read_text(), filename=pc.SOURCE.name)
    assert f"mb_device.cuh({line})" in str(info.value), str(info.value)


def _stand_in_cupy(monkeypatch, fail: str | None = None):
    """The slice of CuPy the loader calls: RawModule (records what it was given) and the
    compiler's CompileException, raised by get_function when ``fail`` is set."""
    import contextlib
    import types
    made = []

    class CompileException(Exception):
        def get_message(self):
            return fail

    class RawModule:
        def __init__(self, *, code, options, enable_cooperative_groups):
            self.code, self.options, self.coop = code, options, enable_cooperative_groups
            made.append(self)

        def get_function(self, symbol):
            if fail:
                raise CompileException(fail)
            return (self, symbol)
    compiler = types.SimpleNamespace(CompileException=CompileException)
    cuda = types.SimpleNamespace(Device=lambda d: contextlib.nullcontext(), compiler=compiler)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=RawModule, cuda=cuda))
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.compiler", compiler)
    for cached in ("module", "file_function"):   # fresh caches: no stand-in outlives the test
        monkeypatch.setattr(cudasrc, cached, functools.lru_cache(maxsize=None)(getattr(cudasrc, cached).__wrapped__))
    return made


def test_loader_gives_raw_module_the_expanded_source(monkeypatch):
    made = _stand_in_cupy(monkeypatch)
    mod, sym = cudasrc.file_function(pc.SOURCE, "lstm_pointwise_fused_f32", 0)
    assert sym == "lstm_pointwise_fused_f32" and mod.code == pc.read_source() and not mod.coop
    assert mod.options == cudasrc.compile_options()
    cudasrc.file_function(pc.SOURCE, "gru_pointwise_fused_f32", 0)
    assert len(made) == 1                                   # one module (one NVRTC run) per source
    mod, _ = cudasrc.function(ce.cuda_source(ce.GRU), "gru_cell_f32", 0, name="cell gru",
                              filename="gru_cell.cu", cooperative=True)
    assert mod.coop and '#line 1 "mb_device.cuh"' in mod.code and '"gru_cell.cu"' in mod.code


def test_loader_compile_error_carries_the_log(monkeypatch):
    _stand_in_cupy(monkeypatch, fail="rnn_pointwise.cu(80): error: identifier x is undefined")
    with pytest.raises(cudasrc.KernelCompileError, match=r"could not compile .*rnn_pointwise.cu \(options "
                       r"--std=c\+\+17.*\n.*identifier x is undefined"):
        cudasrc.file_function(pc.SOURCE, "lstm_pointwise_fused_f32", 0)


def test_resources_reads_the_loaded_entry():
    """What cudasrc.resources reports is the driver's attributes of the entry, as ints."""
    import types
    k = types.SimpleNamespace(num_regs=40, local_size_bytes=0, shared_size_bytes=132,
                              const_size_bytes=0, max_threads_per_block=1024)
    assert cudasrc.resources(k) == {"num_regs": 40, "local_size_bytes": 0, "shared_size_bytes": 132,
                                    "const_size_bytes": 0, "max_threads_per_block": 1024}


# -- launch shape -----------------------------------------------------------------------------
def test_launch_bounds_match_the_source():
    m = re.search(r"#define\s+MB_POINTWISE_THREADS\s+(\d+)", pc.read_source())
    assert m and int(m.group(1)) == pc.THREADS


@pytest.mark.parametrize("B,H", [(1, 1), (3, 129), (64, 1024), (7, 4096 + 32), (100_000, 1), (1, 151)])
def test_launch_shape_covers_every_unit(B, H):
    (gx, gy, gz), (tx, ty, tz) = pc.launch_shape(B, H)
    assert tx * ty * tz <= pc.THREADS and tx % 32 == 0 and gz == tz == 1
    assert gx * tx >= H and (gx - 1) * tx < H          # every column, no all-idle block column
    assert 1 <= gy <= pc.MAX_GRID_Y and ty <= B         # rows beyond gy*ty come from the grid-stride loop


def test_launcher_arguments_match_the_kernel_signatures():
    """The argument tuples, their PyCUDA/CuPy type codes and the .cu parameter lists agree
    (a mismatch would shift every argument after it on the GPU)."""
    B, H = 3, 129
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    lstm = pc._lstm_args(f(B, 4, H), f(B, 4, H), f(4, H), None, f(B, H), f(B, H), f(B, H))
    gru = pc._gru_args(f(B, 3, H), f(B, 3, H), None, f(3, H), f(B, H), f(B, H))
    src = pc.read_source()
    for args, layout, macro in ((lstm, pc._LSTM_ARGS, "MB_LSTM_ENTRY"), (gru, pc._GRU_ARGS, "MB_GRU_ENTRY")):
        assert len(args) == len(layout)
        params = re.search(macro + r"\(NAME, T\).*?\bNAME\(([^)]*)\)", src, re.S).group(1)
        params = [p.replace("\\", "").strip() for p in params.split(",")]
        codes = "".join("P" if "*" in p else "q" if "long long" in p else "i" for p in params)
        assert codes == layout, (macro, params)
    with pytest.raises(pc.BadInput, match="gh has shape"):
        pc._lstm_args(f(B, 4, H), f(B, 4, H + 1), None, None, f(B, H), f(B, H), f(B, H))
    with pytest.raises(pc.BadInput, match="unit stride"):
        pc._gru_args(f(B, 3, H), f(B, 3, H), None, f(3, H), f(B, 2 * H)[:, ::2], f(B, H))


# -- numba.cuda -------------------------------------------------------------------------------
def _numba_cuda_or_skip():
    import importlib.util
    if importlib.util.find_spec("numba") is None or importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba.cuda is not installed (pip install numba-cuda)")


def test_numba_cuda_kernels_in_the_simulator():
    """The numba.cuda kernels on awkward sizes, in a fresh interpreter with the simulator on
    (see tests/cudasim_check.py for the cases)."""
    _numba_cuda_or_skip()
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cudasim_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    print(proc.stdout[-4000:])
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    bad = [l for l in lines if l.get("ok") is False]
    assert proc.returncode == 0, \
        f"simulator check failed (rc {proc.returncode}): {bad[:5]}\n{proc.stderr[-3000:]}"
    summary = lines[-1]
    assert summary.get("summary") and summary["cases"] >= 72 and summary["failures"] == 0


def test_numba_cuda_kernels_compile_to_fp32_ptx(tmp_path):
    """Compiled for the real target (sm_90 PTX; needs NVVM, not a GPU): no fp64 instruction, so
    no Python float literal promoted the math; ptxas (if present) reports no spills."""
    _numba_cuda_or_skip()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("this process runs the CUDA simulator")
    from numba import cuda, types
    try:
        lstm_k, gru_k = pc.numba_cuda_kernels()
    except Exception as e:  # pragma: no cover - numba.cuda present but unusable
        pytest.skip(f"numba.cuda kernels unavailable: {e}")
    for dt in (types.float32, types.float16):
        a3, a2, c2 = types.Array(dt, 3, "A"), types.Array(dt, 2, "A"), types.Array(dt, 2, "C")
        flag = types.boolean
        for name, k, sig in (("lstm", lstm_k, (a3, a3, c2, flag, c2, flag, a2, a2, a2)),
                             ("gru", gru_k, (a3, a3, c2, flag, c2, flag, a2, a2))):
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(9, 0))
            except Exception as e:
                if any(k in str(e).lower() for k in ("nvvm", "nvrtc")):
                    pytest.skip(f"NVVM not found: {str(e).splitlines()[0]}")
                raise
            f64 = [l for l in ptx.splitlines() if ".f64" in l]
            assert not f64, f"{name} {dt}: fp64 instructions in the PTX: {f64[:3]}"
            if shutil.which("ptxas"):
                path = tmp_path / f"{name}_{dt}.ptx"
                path.write_text(ptx)
                proc = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(path), "-o", os.devnull],
                                      capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, proc.stderr
                usage = next(iter(parse_resource_usage(proc.stdout + proc.stderr).values()), {})
                print(f"numba.cuda {name}_pointwise_fused {dt} sm_90: {usage}")
                assert not usage.get("spill_stores"), usage


# -- on a GPU ---------------------------------------------------------------------------------
GPU_BACKENDS = ("cupy", "pycuda", "numba-cuda")
# grouped + hoisted + pretransposed; per-gate views one step at a time; per-gate hoisted (gate
# stride T*B*H): the three layouts the kernels read in place
OPTS = ("all", "fuse_pointwise", "hoist_input,fuse_pointwise")


def _backend_or_skip(name):
    from kernels.backends import get_backend
    b = get_backend(name)  # an unregistered name fails loudly: that is a bug, not a skip
    reason = b.missing()
    if reason:
        pytest.skip(reason)
    return b


@pytest.mark.gpu
@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("dtype", ("fp32", "fp16", "bf16"))
@pytest.mark.parametrize("cell", ("lstm", "gru"))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_rnn_on_gpu_matches_reference(backend, cell, dtype, opts):
    _backend_or_skip(backend)
    import cupy
    from kernels import GRUParams, LSTMParams, RNN, Unsupported
    from kernels.dtypes import storage, tolerance
    from kernels.reference import REFERENCES
    T, B, I, H, L = 5, 3, 17, 129, 2
    # Rounded to the storage type first, so the reference sees the same inputs and weights.
    st = storage(dtype)
    params = (LSTMParams if cell == "lstm" else GRUParams).random(I, H, L, seed=1).astype(st)
    x = np.random.default_rng(2).uniform(-1, 1, (T, B, I)).astype(st)
    try:
        run = RNN(params, variant="fused", backend=backend, dtype=dtype, opts=opts)
    except Unsupported as e:   # numba.cuda has no bf16 arrays: the message names what it allows
        assert dtype == "bf16" and "allowed: fp32, tf32, fp16" in str(e)
        pytest.skip(str(e))
    out = run(x)
    ref = REFERENCES[cell](x.astype(np.float64), params.astype(np.float64))
    got_y, ref_y = cupy.asnumpy(out[0]).astype(np.float64), ref[0]
    states = [(cupy.asnumpy(out[1][0]), ref[1][0]), (cupy.asnumpy(out[1][1]), ref[1][1])] \
        if cell == "lstm" else [(cupy.asnumpy(out[1]), ref[1])]
    tol = tolerance(dtype)
    for got, want in [(got_y, ref_y)] + states:
        e = float(np.max(np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))))
        assert e <= tol, f"{backend} {cell} {dtype} {opts}: error {e:.3g} > {tol}"


@pytest.mark.gpu
def test_cupy_pointwise_runs_on_the_current_stream():
    _backend_or_skip("cupy")
    import cupy
    from kernels import LSTMParams, RNN
    from kernels.reference import lstm_reference
    params = LSTMParams.random(8, 33, 1, seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, (4, 2, 8))
    run = RNN(params, variant="fused", backend="cupy", dtype="fp32")
    with cupy.cuda.Stream(non_blocking=True) as s:
        y = run(x)[0]
        s.synchronize()
    assert np.max(np.abs(cupy.asnumpy(y) - lstm_reference(x, params)[0])) <= 1e-5


@pytest.mark.gpu
def test_gpu_detection_and_memory_check():
    from kernels import gpu
    from kernels.errors import BadInput
    ok, reason = gpu.detect()
    assert ok and "GPU" in reason
    free = gpu.check_fits(1 << 20)
    assert free > 1 << 20
    with pytest.raises(BadInput, match="GiB free of"):
        gpu.check_fits(1 << 50, what="a 1 PiB case")
