"""Custom cells on the GPU backends (fusion.cellexpr_gpu, kernels.custom with cupy / numba-cuda).

Without a GPU: NVRTC compiles each cell's generated CUDA C for sm_90 with the launcher's source
and options; the launch geometry (grid, block, shared memory of the reduction) is checked on the
CPU for awkward B and H by emulating the kernels' index mapping; the argument list the CuPy
launcher builds is checked against the generated signature; the generated numba.cuda kernels run
the whole layer-norm (and peephole) LSTM in numba's CUDA simulator (subprocess) against the
float64 references.  The ``gpu`` tests run CustomLSTM on cupy and numba-cuda against the
references (skipped without a GPU).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion import cellexpr as ce
from fusion import cellexpr_gpu as cg
from kernels import cudasrc
from kernels.custom import CUSTOM_PARAMS, CUSTOM_REFERENCES, CustomLSTM
from kernels.errors import BadInput, MissingDependency, Unsupported

ROOT = Path(__file__).resolve().parent.parent

# The README's user-defined example (coupled input-forget gate), as in tests/test_custom_cells.py.
CIFG = ce.Cell("cifg_lstm", gates="fgo", states=("c",), body="""
    f = sigmoid(gx_f + gh_f + bx_f + bh_f)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    o = sigmoid(gx_o + gh_o + bx_o + bh_o)
    c = f * c_prev + (1 - f) * g
    h = o * tanh(c)
""")
ALL_CELLS = (*ce.CELLS.values(), CIFG)
AWKWARD = (1, 129, 1025)


# -- NVRTC, as the launcher compiles ------------------------------------------------------------
@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_nvrtc_compiles_launcher_source(cell):
    try:   # the compile RawModule runs in kernels.cudasrc.function: same text, same options
        cubin = cudasrc.nvrtc_compile(cg.module_source(cell), "sm_90", filename=f"{cell.name}_cell.cu")
    except MissingDependency as e:
        pytest.skip(str(e))
    assert cubin[:4] == b"\x7fELF"
    for dt in ce.SUFFIX:
        assert ce.cuda_symbol(cell, dt).encode() in cubin, (cell.name, dt)


# -- launch geometry on the CPU ------------------------------------------------------------------
def _declared(src: str, pattern: str) -> int:
    m = re.search(pattern, src)
    assert m, pattern
    return int(m.group(1))


@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_cuda_launch_geometry(cell):
    src = cg.module_source(cell)
    bound = _declared(src, r"__launch_bounds__\((\d+)\)")
    red = cell.has_reductions
    assert red == (cell is ce.LAYERNORM_LSTM)
    if red:
        assert "__shared__ float sh[" in src
        sh_floats = _declared(src, r"__shared__ float sh\[(\d+)\]")
        assert sh_floats == cg.CUDA_SHARED_FLOATS
    for B, H, max_grid in itertools.chain(itertools.product(AWKWARD, AWKWARD, (cg.MAX_GRID,)),
                                          [(1025, 129, 7), (129, 1025, 1), (70000, 1, cg.MAX_GRID)]):
        lc = cg.cuda_launch(cell, B, H, max_grid)
        case = (cell.name, B, H, max_grid, lc)
        assert lc.shared_mem == 0, case                  # no dynamic shared memory
        assert 1 <= lc.threads <= bound, case
        assert lc.block[0] % 32 == 0, case               # whole warps along H
        assert lc.per_row == red, case
        if red:
            # one block per row, grid-stride over B; block_sum keeps one float per warp and the total
            assert lc.grid[1:] == (1, 1) and lc.block[1:] == (1, 1), case
            assert lc.grid[0] == min(B, max_grid), case
            assert lc.block[0] // 32 + 1 <= sh_floats <= 33, case
            assert lc.block[0] == min(bound, 32 * -(-H // 32)), case
            assert lc.static_shared == 4 * sh_floats, case
        else:
            assert lc.static_shared == 0 and lc.grid[1] <= max_grid, case
            assert lc.grid[0] * lc.block[0] >= H, case
        count = cg.coverage(lc, B, H)
        assert count.shape == (B, H) and count.min() == 1 and count.max() == 1, case


def test_numba_cuda_launch_geometry():
    src = ce.numba_cuda_source(ce.LAYERNORM_LSTM)
    sh = _declared(src, r"cuda\.shared\.array\((\d+), float32\)")
    assert sh == ce.NUMBA_CUDA_THREADS
    for B, H, max_grid in itertools.chain(itertools.product(AWKWARD, AWKWARD, (cg.MAX_GRID,)),
                                          [(1025, 129, 1), (129, 1025, 7)]):
        lc = cg.numba_cuda_launch(B, H, max_grid)
        case = (B, H, max_grid, lc)
        t = lc.block[0]
        assert lc.per_row and lc.block[1:] == (1, 1) and lc.grid[1:] == (1, 1), case
        assert t & (t - 1) == 0 and t <= sh, case        # tree reduction over a power of two
        assert t >= min(H, sh) and (t == 1 or t // 2 < min(H, sh)), case
        assert lc.grid[0] == min(B, max_grid) and lc.shared_mem == 0, case
        assert lc.static_shared == 4 * sh, case
        count = cg.coverage(lc, B, H)
        assert count.min() == 1 and count.max() == 1, case


def test_launch_rejects_empty():
    with pytest.raises(BadInput):
        cg.cuda_launch(ce.LSTM, 0, 4)
    with pytest.raises(BadInput):
        cg.numba_cuda_launch(3, 0)


# -- the CuPy launcher's argument list against the generated signature ---------------------------
def _signature(src: str, symbol: str) -> list:
    body = src[src.index(f"{symbol}(") + len(symbol) + 1:]
    body = body[:body.index(") {")]
    return [a.strip() for a in body.split(",")]


@pytest.mark.parametrize("cell", [ce.PEEPHOLE_LSTM, ce.LAYERNORM_LSTM, ce.GRU], ids=lambda c: c.name)
def test_cuda_args_match_signature(cell):
    B, H, G = 3, 5, cell.num_gates
    dt = np.float32
    gx = np.zeros((G, B, H), dt).transpose(1, 0, 2)             # per-gate buffer: gate stride B*H
    gh = np.zeros((B, G * H), dt).reshape(B, G, H)              # grouped: batch stride G*H
    h_prev = np.zeros((2 * B, H), dt)[::2]                      # batch stride 2H
    states = tuple(np.zeros((B, H), dt) for _ in cell.states)
    params = tuple(np.zeros(cell.param_shape(p, H), dt) for p, _ in cell.params)
    h_out = np.zeros((B, H), dt)
    null = np.uint64(0)
    args = cg.cuda_args(cell, gx, gh, np.zeros((G, H), dt), None, h_prev, states, params, h_out, states,
                        null=null)
    sig = _signature(cg.module_source(cell), ce.cuda_symbol(cell, "float32"))
    assert len(args) == len(sig)
    for a, decl in zip(args, sig):
        if "*" in decl:
            assert isinstance(a, np.ndarray) or a is null, decl
        elif decl.startswith("long long"):
            assert type(a) is np.int64, decl
        else:
            assert decl.startswith("int ") and type(a) is np.int32, decl
    named = dict(zip((d.rsplit(" ", 1)[1] for d in sig), args))
    assert (named["gx_sb"], named["gx_sg"]) == (H, B * H)
    assert (named["gh_sb"], named["gh_sg"]) == (G * H, H)
    assert named["h_prev_sb"] == 2 * H and named["bh"] is null
    assert (named["B"], named["H"]) == (B, H)


def test_cuda_args_reject_bad_layouts():
    cell, B, H = ce.LAYERNORM_LSTM, 2, 4
    dt = np.float32
    gx = np.zeros((B, 4, H), dt)
    ok = dict(gh=np.zeros((B, 4, H), dt), bx=None, bh=None, h_prev=np.zeros((B, H), dt),
              states_prev=(np.zeros((B, H), dt),),
              params=tuple(np.zeros(cell.param_shape(p, H), dt) for p, _ in cell.params),
              h_out=np.zeros((B, H), dt), states_out=(np.zeros((B, H), dt),))
    cg.cuda_args(cell, gx, **ok)
    with pytest.raises(BadInput, match="unit stride"):
        cg.cuda_args(cell, np.zeros((B, 4, 2 * H), dt)[:, :, ::2], **ok)
    with pytest.raises(BadInput, match="float64"):
        cg.cuda_args(cell, gx, **{**ok, "h_out": np.zeros((B, H))})
    with pytest.raises(BadInput, match="lnc_g"):
        bad = list(ok["params"])
        bad[4] = np.zeros((H + 1,), dt)
        cg.cuda_args(cell, gx, **{**ok, "params": tuple(bad)})
    with pytest.raises(Unsupported):
        cg.cuda_args(cell, gx.astype(np.float64), **ok)


def test_cupy_cell_launch_call(monkeypatch):
    """CupyCell without a GPU: a stand-in for the compiled entry records the launch; grid, block,
    shared memory and arguments must be those of cuda_launch and cuda_args (grid capped at 2)."""
    import types
    calls, looked_up = [], []

    def fake_function(cell, dtype_name, device):
        looked_up.append((cell.name, dtype_name, device))
        return lambda grid, block, args, shared_mem=0: calls.append((grid, block, args, shared_mem))
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(cg, "cupy_function", fake_function)
    cell, B, H = ce.LAYERNORM_LSTM, 5, 129
    rng = np.random.default_rng(1)
    arr = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)  # noqa: E731
    gx, gh, bx, bh, h_prev, c, h_out = arr(B, 4, H), arr(B, 4, H), arr(4, H), arr(4, H), arr(B, H), arr(B, H), arr(B, H)
    params = tuple(arr(*cell.param_shape(p, H)) for p, _ in cell.params)
    prov = cg.CupyCell(cell, max_grid=2)
    for _ in range(2):
        out = prov(None, gx, gh, bx, bh, h_prev, (c,), params, h_out, (c,))
    assert out[0] is h_out and out[1] is c
    assert looked_up == [(cell.name, "float32", 0)]          # compiled entry looked up once
    lc = cg.cuda_launch(cell, B, H, 2)
    grid, block, args, shared = calls[-1]
    assert (grid, block, shared) == (lc.grid, lc.block, 0) == ((2, 1, 1), (160, 1, 1), 0)
    want = cg.cuda_args(cell, gx, gh, bx, bh, h_prev, (c,), params, h_out, (c,), null=np.uint64(0))
    assert len(args) == len(want) and all(a is w or a == w for a, w in zip(args, want))


# -- without a GPU: the GPU backends are skipped with the reason ----------------------------------
def test_gpu_backends_unsupported_without_gpu():
    from kernels import gpu
    if gpu.available():
        pytest.skip("a GPU is present")
    p = CUSTOM_PARAMS["layernorm"].random(3, 4, 1, seed=0)
    from microbench.cases.custom import build_custom
    from microbench.problems import RNNProblem
    for backend in ("cupy", "numba-cuda"):
        with pytest.raises(Unsupported, match="GPU"):
            CustomLSTM(p, backend=backend, dtype="fp32")
        problem = RNNProblem("lstm", T=2, B=2, I=3, H=4, L=1)
        with pytest.raises(Unsupported, match="GPU"):
            build_custom(problem, 0, cell="layernorm", variant="fused", backend=backend, precision="fp32")
    # a known backend without the generated kernels: Unsupported with the reason (an unknown
    # name would be bad input)
    with pytest.raises(Unsupported, match="backend 'pycuda' has no generated kernels"):
        CustomLSTM(p, backend="pycuda")
    with pytest.raises(BadInput, match="backend"):
        CustomLSTM(p, backend="pycudaa")


# -- numba.cuda generated kernels in the simulator, whole LSTM vs the float64 references -----------
_SIM = r"""
import json, sys
import numpy as np
from fusion import cellexpr as ce
from fusion import cellexpr_gpu as cg
from kernels import cudasrc
from kernels.custom import CUSTOM_PARAMS, CUSTOM_REFERENCES, CustomLSTM
if type(ce.numba_cuda_kernel(ce.LAYERNORM_LSTM)).__name__ != "FakeCUDAKernel":
    print("simulator not active", file=sys.stderr); sys.exit(2)
out = {}
cases = [("layernorm", 3, 3, 5, 37, 2, "fp32", 65535), ("layernorm", 2, 3, 4, 1, 1, "fp32", 1),
         ("layernorm", 2, 2, 3, 9, 1, "fp16", 1), ("peephole", 2, 3, 4, 6, 2, "fp32", 2)]
for cell, T, B, I, H, L, prec, max_grid in cases:
    rng = np.random.default_rng(H)
    dt = np.float32 if prec == "fp32" else np.float16
    p = CUSTOM_PARAMS[cell].random(I, H, L, seed=H).astype(dt)
    x = rng.standard_normal((T, B, I)).astype(dt)
    h0 = (0.5 * rng.standard_normal((L, B, H))).astype(dt)
    c0 = (0.5 * rng.standard_normal((L, B, H))).astype(dt)
    # backend numba-cuda under the simulator: the GPU backends' step loop (hoisted input GEMM,
    # grouped recurrent GEMM, the generated kernel per step) with NumPy arrays and GEMMs
    run = CustomLSTM(p, variant="fused", backend="numba-cuda", dtype=prec)
    assert run.xp is np and isinstance(run.provider, cg.NumbaCudaCell)
    run.provider.max_grid = max_grid
    y, (h, c) = run(x, h0, c0)
    ry, (rh, rc) = CUSTOM_REFERENCES[cell](x, p, h0, c0)
    err = max(float(np.max(np.abs(np.asarray(g, np.float64) - w)) / max(1.0, float(np.max(np.abs(w)))))
              for g, w in ((y, ry), (h, rh), (c, rc)))
    assert y.dtype == dt, y.dtype
    out[f"{cell}/T{T}B{B}H{H}L{L}/{prec}/grid{max_grid}"] = err
print(json.dumps(out))
"""


def test_numba_cuda_custom_lstm_in_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _SIM], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(worst) == 4
    for case, err in worst.items():
        assert err <= (2e-5 if "fp32" in case else 1e-2), (case, err)


def test_numba_cuda_cell_refuses_host_arrays_outside_simulator():
    pytest.importorskip("numba")
    from numba import config
    if getattr(config, "ENABLE_CUDASIM", False):
        pytest.skip("the simulator is active in this process")
    cell, B, H = ce.LSTM, 1, 2
    a = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    with pytest.raises(BadInput, match="simulator"):
        cg.NumbaCudaCell(cell)(np, a(B, 4, H), a(B, 4, H), None, None, a(B, H), (a(B, H),), (),
                               a(B, H), (a(B, H),))


# -- on a GPU ------------------------------------------------------------------------------------
def _rel_err(got, want) -> float:
    got = np.asarray(got.get() if hasattr(got, "get") else got, np.float64)
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba-cuda"])
@pytest.mark.parametrize("cell", ["layernorm", "peephole"])
@pytest.mark.parametrize("prec,tol", [("fp32", 2e-5), ("fp16", 1e-2)])
@pytest.mark.parametrize("T,B,I,H,L", [(5, 3, 7, 129, 2), (3, 1, 4, 1025, 1), (2, 129, 8, 1, 1)])
def test_custom_lstm_gpu_vs_reference(backend, cell, prec, tol, T, B, I, H, L):
    pytest.importorskip("cupy")
    if backend == "numba-cuda":
        pytest.importorskip("numba.cuda")
    import cupy
    st = np.float32 if prec == "fp32" else np.float16
    rng = np.random.default_rng(T * 1000 + H)
    p = CUSTOM_PARAMS[cell].random(I, H, L, seed=H).astype(st)
    x = rng.standard_normal((T, B, I)).astype(st)
    h0 = (0.5 * rng.standard_normal((L, B, H))).astype(st)
    c0 = (0.5 * rng.standard_normal((L, B, H))).astype(st)
    ry, (rh, rc) = CUSTOM_REFERENCES[cell](x, p, h0, c0)
    # naive (op by op on CuPy) at fp32 only: its fp16 row sums are CuPy's, not ours to bound
    for variant in ("fused", "naive") if prec == "fp32" else ("fused",):
        run = CustomLSTM(p, variant=variant, backend=backend, dtype=prec)
        y, (h, c) = run(cupy.asarray(x), cupy.asarray(h0), cupy.asarray(c0))
        assert isinstance(y, cupy.ndarray) and y.dtype == st
        err = max(_rel_err(y, ry), _rel_err(h, rh), _rel_err(c, rc))
        assert err <= tol, (variant, backend, cell, prec, err)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba-cuda"])
def test_generated_kernel_grid_stride_and_in_place_on_gpu(backend):
    """One step through the launcher with a grid capped at 2 blocks, c updated in place, the gate
    views strided (per-gate buffer): against the op-by-op float64 step."""
    cupy = pytest.importorskip("cupy")
    if backend == "numba-cuda":
        pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(0)
    for cell in (ce.LAYERNORM_LSTM, ce.PEEPHOLE_LSTM, ce.GRU):
        B, H, G = 7, 129, cell.num_gates
        gx = rng.uniform(-3, 3, (G, B, H)).astype(np.float32)
        gh = rng.uniform(-3, 3, (B, G * H)).astype(np.float32)
        bx = rng.uniform(-1, 1, (G, H)).astype(np.float32)
        hp = rng.uniform(-1, 1, (B, H)).astype(np.float32)
        sp = [rng.uniform(-2, 2, (B, H)).astype(np.float32) for _ in cell.states]
        ps = [rng.uniform(0.5, 1.5, cell.param_shape(p, H)).astype(np.float32) for p, _ in cell.params]
        f = lambda a: np.asarray(a, np.float64)  # noqa: E731
        want = ce.numpy_step(cell)(np, f(gx).transpose(1, 0, 2), f(gh).reshape(B, G, H), f(bx), None,
                                   f(hp), *map(f, sp), *map(f, ps))
        d = cupy.asarray
        dgx, dgh = d(gx).transpose(1, 0, 2), d(gh).reshape(B, G, H)
        states = tuple(d(s) for s in sp)
        h_out = cupy.full((B, H), cupy.nan, cupy.float32)
        prov = cg.provider(cell, backend, max_grid=2)
        prov(cupy, dgx, dgh, d(bx), None, d(hp), states, tuple(d(p) for p in ps), h_out, states)
        cupy.cuda.get_current_stream().synchronize()
        for got, w in zip((h_out, *states), want):
            assert _rel_err(got, w) <= 1e-5, (backend, cell.name)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba-cuda"])
def test_build_custom_gpu_check_passes(backend):
    pytest.importorskip("cupy")
    from microbench.cases.custom import build_custom
    from microbench.problems import RNNProblem
    problem = RNNProblem("lstm", T=4, B=5, I=6, H=33, L=2)
    for cell, prec in (("layernorm", "fp32"), ("peephole", "tf32"), ("layernorm", "fp16")):
        prep = build_custom(problem, 0, cell=cell, variant="fused", backend=backend, precision=prec)
        chk = prep.check()
        assert chk.passed, (cell, prec, chk)
