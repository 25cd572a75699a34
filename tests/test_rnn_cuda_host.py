"""The RNN kernels' CUDA C (kernels/cuda/rnn_pointwise.cu, kernels/cuda/rnn_persistent.cu) run on
the CPU through their real launchers, against the float64 reference.

g++ builds each .cu against tests/cuda_host/ (tests/cudahost.py): every CUDA thread a fiber,
__syncthreads() and grid.sync() barriers, warp shuffles through a per-warp barrier, fp16/bf16 as
16-bit types rounded to nearest even, dynamic shared memory NaN-filled inside guard zones, device
arrays framed by guard zones.  The pointwise kernels are launched by fusion/pointwise_cuda.py's
CuPy provider (its argument builder, strides and launch shape); the persistent kernel by
kernels/persistent.py's PersistentRNN on a stand-in CuPy whose device properties make the
planner choose small grids, batch chunks, every batch tile and K split.  Planted bugs (text
edits of a copy of the source) must fail.

Not modelled (see tests/cuda_host/mb_host.h): the GPU memory model (whether __ldcg is needed for
h written by other blocks: a host load always sees the latest store), races between threads inside
one barrier interval, timing, the occupancy the real device grants (the stand-in answers from
the plan's own numbers), and the device's own tanhf (the host's libm differs by an ulp or two);
the GPU tests in test_persistent.py and test_cuda_sources.py cover those on a GPU.
"""
from __future__ import annotations

import functools
import re
import sys
import types

import numpy as np
import pytest

import cudahost as ch
from tests import toolchain
from fusion import pointwise_cuda as pc
from kernels import persistent as kp
from kernels.dtypes import storage, tolerance
from kernels.params import GRUParams, LSTMParams
from kernels.reference import gru_reference, lstm_reference

pytestmark = toolchain.needs("g++")          # the host build of the .cu

PARAMS = {"lstm": LSTMParams, "gru": GRUParams}
PRECS = ("fp32", "fp16", "bf16")
SFX = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
POINTWISE_ENTRIES = [f"{c}_pointwise_fused_{s}" for c in ("lstm", "gru") for s in SFX.values()]
PERSIST_ENTRIES = [f"{c}_persistent_{s}" for c in ("lstm", "gru") for s in SFX.values()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda_host")


@pytest.fixture(scope="module")
def pointwise(workdir):
    return ch.build(pc.read_source(), POINTWISE_ENTRIES, "rnn_pointwise", workdir)


@pytest.fixture(scope="module")
def persistent(workdir):
    return ch.build(kp.read_source(), PERSIST_ENTRIES, "rnn_persistent", workdir)


def rel_err(got, want) -> float:
    got = np.asarray(got, np.float64)
    if not np.all(np.isfinite(got)):
        return np.inf
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# -- the model itself: conversions, barriers, guards -------------------------------------------------
TOY = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#define TOY_THREADS 256
extern "C" __global__ void __launch_bounds__(TOY_THREADS) toy_convert(const float* x, __half* h,
        __nv_bfloat16* b, float* hb, float* bb, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        h[i] = __float2half_rn(x[i]);
        b[i] = __float2bfloat16_rn(x[i]);
        hb[i] = __half2float(h[i]);
        bb[i] = __bfloat162float(b[i]);
    }
}
extern "C" __global__ void __launch_bounds__(TOY_THREADS) toy_sync(float* out, int mode, int n) {
    extern __shared__ float smem[];
    smem[threadIdx.x] = float(threadIdx.x);
    if (mode != 1 || threadIdx.x < 5) __syncthreads();               // 1: a divergent barrier
    if (mode == 2) cooperative_groups::this_grid().sync();           // 2: grid sync
    float v = smem[(threadIdx.x + 1) % blockDim.x];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (mode == 3) smem[n] = 0.f;                                    // 3: past the end
    if (mode == 4) v += reinterpret_cast<const float4*>(smem + 1)->x;  // 4: misaligned
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
"""


@pytest.fixture(scope="module")
def toy(workdir):
    return ch.build(TOY, ["toy_convert", "toy_sync"], "toy", workdir)


def test_half_and_bfloat16_round_to_nearest_even(toy):
    """Every fp16 value, the midpoints between neighbours (ties to even), one float either side of
    them, overflow, subnormals, NaN: bit-identical to NumPy's float16 and ml_dtypes' bfloat16."""
    bf16 = storage("bf16")
    allh = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = np.sort(allh[np.isfinite(allh)].astype(np.float32))
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    allb = np.arange(1 << 16, dtype=np.uint16).view(bf16).astype(np.float32)
    bfin = np.sort(allb[np.isfinite(allb)])
    bmids = ((bfin[:-1].astype(np.float64) + bfin[1:]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([allh.astype(np.float32), mids, np.nextafter(mids, np.inf),
                        np.nextafter(mids, -np.inf), allb, bmids, np.nextafter(bmids, np.inf),
                        (rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 6, 20000)).astype(np.float32),
                        np.float32([65504, 65519.99, 65520, 65536, 1e30, -1e30, np.inf, -np.inf, np.nan,
                                    2.0 ** -25, 2.0 ** -24 * 1.5, 2.0 ** -26, 3e38])])
    x = x[np.isfinite(x) | np.isnan(x)]
    n = x.size
    h, b = np.empty(n, np.float16), np.empty(n, bf16)
    hb, bb = np.empty(n, np.float32), np.empty(n, np.float32)
    toy.get_function("toy_convert")((64,), (256,), (x, h, b, hb, bb, np.int32(n)))
    with np.errstate(over="ignore", invalid="ignore"):
        want_h, want_b = x.astype(np.float16), x.astype(bf16)
    nan = np.isnan(x)
    assert np.array_equal(h.view(np.uint16)[~nan], want_h.view(np.uint16)[~nan])
    assert np.array_equal(b.view(np.uint16)[~nan], want_b.view(np.uint16)[~nan])
    assert np.all(np.isnan(h[nan])) and np.all(np.isnan(b[nan].astype(np.float32)))
    assert np.array_equal(hb[~nan], want_h[~nan].astype(np.float32))
    assert np.array_equal(bb[~nan], want_b[~nan].astype(np.float32))


def test_model_runs_barriers_and_shuffles(toy):
    k = toy.get_function("toy_sync")
    out = np.full(2 * 64, np.nan, np.float32)
    k((2,), (64,), (out, np.int32(0), np.int32(64)), shared_mem=64 * 4)
    # lane l of warp w sums smem[l'+1] over the warp: sum of (32w+1 .. 32w+32) mod 64
    want = [sum((32 * w + i + 1) % 64 for i in range(32)) for w in (0, 1)]
    assert out.reshape(2, 2, 32)[:, :, 0].tolist() == [want, want]


@pytest.mark.parametrize("mode,coop,message", [
    # lanes 5-31 wait in the shuffle for lanes 0-4; warp 1 finished and no longer counts
    (1, False, "deadlock: 32 threads never finished; __syncthreads() of block 0: 5 of 32 threads arrived"),
    (2, False, "grid.sync() in a launch that is not cooperative"),
    (3, False, "wrote at byte 256 of its 256 bytes of dynamic shared memory"),
    (4, False, "is not a multiple of 16 (the GPU faults)"),
])
def test_model_reports_faults(toy, mode, coop, message):
    k = toy.get_function("toy_sync", cooperative=coop)
    out = np.zeros(128, np.float32)
    with pytest.raises(ch.HostLaunchError) as e:
        k((2,), (64,), (out, np.int32(mode), np.int32(64)), shared_mem=256)
    assert message in str(e.value)


def test_guard_zones_catch_a_store_past_a_device_array(toy):
    mem = ch.GuardedMemory()
    out = mem.empty(127, np.float32)                  # one element short of the 128 threads
    k = toy.get_function("toy_sync")
    k.guards = [mem]
    try:
        with pytest.raises(ch.HostLaunchError, match="a store 0 bytes past the end of a 508-byte"):
            k((2,), (64,), (out, np.int32(0), np.int32(64)), shared_mem=256)
    finally:
        k.guards = []


def test_model_checks_launches_and_argument_types(toy):
    k = toy.get_function("toy_sync", cooperative=True)
    out = np.zeros(128, np.float32)
    k((2,), (64,), (out, np.int32(2), np.int32(64)), shared_mem=256)     # grid.sync: cooperative
    for args, block, msg in [
        ((out, np.int64(0), np.int32(64)), (64,), "argument 1 (int32): int64"),
        ((out, 0, np.int32(64)), (64,), "argument 1 (int32): int"),
        ((out.astype(np.float16), np.int32(0), np.int32(64)), (64,), "argument 0 (*float32): an array of float16"),
        ((out, np.int32(0), np.int32(64)), (512,), "over the kernel's __launch_bounds__ of 256"),
    ]:
        with pytest.raises(ch.HostLaunchError, match=re.escape(msg)):
            k((2,), block, args, shared_mem=256)


# -- rnn_pointwise.cu through the CuPy provider ------------------------------------------------------
def _step_inputs(cell, B, H, seed):
    p = PARAMS[cell].random(H, H, 1, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, B, H))
    h0 = 0.5 * rng.standard_normal((1, B, H))
    c0 = 0.5 * rng.standard_normal((1, B, H)) if cell == "lstm" else None
    return p, x, h0, c0


def _layout(mem, a, kind, dt, T=1, t=0):
    """(B, G, H) gate values ``a`` stored the ways fusion/gemm.py leaves them: ``grouped`` rows of
    (M, G*H), ``per_gate`` (G, M, H) transposed, or ``hoisted`` rows t*B.. of a (T*B, G*H) buffer."""
    B, G, H = a.shape
    if kind == "grouped":
        buf = mem.empty((B, G * H), dt)
        buf[...] = a.reshape(B, G * H)
        return buf.reshape(B, G, H)
    if kind == "per_gate":
        buf = mem.empty((G, B + 1, H), dt)           # one spare row: a batch stride != H*G
        buf[:, :B] = a.transpose(1, 0, 2)
        return buf[:, :B].transpose(1, 0, 2)
    buf = mem.empty((T * B, G * H), dt)
    view = buf[t * B:(t + 1) * B].reshape(B, G, H)
    view[...] = a
    return view


def _provider(pointwise, cell, dt, monkeypatch, max_grid_y=None):
    prov = {"lstm": pc.CupyLSTM, "gru": pc.CupyGRU}[cell]()
    prov.kernels[np.dtype(dt)] = pointwise.get_function(pc._symbol(prov.stem, dt))
    if max_grid_y is not None:       # few blocks along B: the kernel's grid-stride loop over b
        monkeypatch.setattr(pc, "launch_shape", functools.partial(pc.launch_shape, max_grid_y=max_grid_y))
    return prov


POINTWISE_CASES = [
    # B, H, gx layout, gh layout, biases apart, aliased state, max grid y
    (1, 1, "grouped", "grouped", False, True, None),
    (3, 33, "grouped", "per_gate", True, True, None),
    (5, 257, "hoisted", "per_gate", True, False, None),
    (7, 40, "per_gate", "grouped", False, False, 2),
    (9, 3, "hoisted", "grouped", True, True, 1),
]


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=lambda c: f"B{c[0]}-H{c[1]}-{c[2]}-{c[3]}")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pointwise_step_matches_reference(pointwise, monkeypatch, cell, case, prec):
    B, H, gx_kind, gh_kind, apart, alias, grid_y = case
    dt = storage(prec)
    p, x, h0, c0 = _step_inputs(cell, B, H, seed=B * 100 + H)
    w_ih, w_hh, b_ih, b_hh = p.layers[0].arrays()
    G = p.num_gates
    ax = (x[0] @ w_ih.T + (0 if apart else b_ih)).reshape(B, G, H)
    ah = (h0[0] @ w_hh.T + (0 if apart else b_hh)).reshape(B, G, H)
    mem = ch.GuardedMemory()
    gx, gh = _layout(mem, ax, gx_kind, dt, T=3, t=1), _layout(mem, ah, gh_kind, dt)
    bx = mem.array(b_ih.reshape(G, H), dt) if apart else None
    bh = mem.array(b_hh.reshape(G, H), dt) if apart else None
    prov = _provider(pointwise, cell, dt, monkeypatch, grid_y)
    prov.kernels[np.dtype(dt)].guards = [mem]
    wide = mem.empty((B, H + 3), dt)                  # an output with row stride H + 3
    h_out = wide[:, :H]
    if cell == "lstm":
        c_prev = mem.array(c0[0], dt)
        c_out = c_prev if alias else mem.empty((B, H), dt)
        prov(np, gx, gh, bx, bh, c_prev, h_out, c_out)
        _, (h_ref, c_ref) = lstm_reference(x, p, h0, c0)
        assert rel_err(c_out, c_ref[0]) <= tolerance(prec)
    else:
        h_prev = mem.array(h0[0], dt)
        if alias:
            h_out = h_prev
        prov(np, gx, gh, bx, bh, h_prev, h_out)
        _, h_ref = gru_reference(x, p, h0)
    assert rel_err(h_out, h_ref[0]) <= tolerance(prec)
    if not alias or cell == "lstm":
        assert np.all(np.isnan(wide[:, H:].astype(np.float32)))    # the row gaps stay untouched


def test_pycuda_argument_layouts_match_the_compiled_entries(pointwise):
    """PyCUDA's prepare() codes of the pointwise launcher against the parameter types g++ sees."""
    code = {"P": "*", "q": "int64", "i": "int32"}
    for stem, layout in (("lstm_pointwise_fused", pc._LSTM_ARGS), ("gru_pointwise_fused", pc._GRU_ARGS)):
        for prec, sfx in SFX.items():
            params = pointwise.get_function(f"{stem}_{sfx}").params
            assert [p[0] if p.startswith("*") else p for p in params] == [code[c] for c in layout]
            assert {p[1:] for p in params if p.startswith("*")} == {storage(prec).name}


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pointwise_layer_in_place_matches_reference(pointwise, monkeypatch, cell, prec):
    """T steps as the fused GPU path runs them: gx hoisted for all steps (row slices), h written
    into y[t], the state updated in place, h_{t-1} read back from y."""
    T, B, H = 4, 3, 37
    dt = storage(prec)
    p, x, h0, c0 = _step_inputs(cell, B, H, seed=5)
    x = np.random.default_rng(6).standard_normal((T, B, H))
    w_ih, w_hh, b_ih, b_hh = p.layers[0].arrays()
    G = p.num_gates
    mem = ch.GuardedMemory()
    gx_all = mem.empty((T * B, G * H), dt)
    gx_all[...] = x.reshape(T * B, H) @ w_ih.T + b_ih
    bh = mem.array(b_hh.reshape(G, H), dt)
    y = mem.empty((T, B, H), dt)
    prov = _provider(pointwise, cell, dt, monkeypatch)
    prov.kernels[np.dtype(dt)].guards = [mem]
    h = mem.array(h0[0], dt)
    c = mem.array(c0[0], dt) if cell == "lstm" else None
    for t in range(T):
        gh = mem.empty((B, G * H), dt)
        gh[...] = h.astype(np.float32) @ w_hh.T.astype(np.float32)
        gxt = gx_all[t * B:(t + 1) * B].reshape(B, G, H)
        if cell == "lstm":
            prov(np, gxt, gh.reshape(B, G, H), None, bh, c, y[t], c)
        else:
            prov(np, gxt, gh.reshape(B, G, H), None, bh, h, y[t])
        h = y[t]
    if cell == "lstm":
        y_ref, (_, c_ref) = lstm_reference(x, p, h0, c0)
        assert rel_err(c, c_ref[0]) <= tolerance(prec)
    else:
        y_ref, _ = gru_reference(x, p, h0)
    assert rel_err(y, y_ref) <= tolerance(prec)


# -- rnn_persistent.cu through PersistentRNN on a stand-in CuPy ----------------------------------------
class DevArray(np.ndarray):
    """A device array of the stand-in: GEMMs of 16-bit arrays accumulate in fp32 and round once,
    as cuBLAS does for CuPy (NumPy would round every partial sum)."""

    def __matmul__(self, other):
        a, b = np.asarray(self), np.asarray(other)
        if a.dtype == b.dtype and a.dtype.itemsize == 2:
            return (a.astype(np.float32) @ b.astype(np.float32)).astype(a.dtype).view(DevArray)
        return np.matmul(a, b).view(DevArray)


def fake_cupy(mem: ch.GuardedMemory, limits: kp.DeviceLimits):
    """The part of CuPy that PersistentRNN uses, on NumPy: arrays in guarded memory (``empty`` is
    NaN), the device's properties from ``limits``, kernels from the host build."""
    def dev(a):
        return a.view(DevArray)

    def asarray(a, dtype=None):
        return dev(mem.array(np.asarray(a), dtype))

    def occupancy(ptr, threads, smem):
        by_regs = limits.regs_per_sm // (limits.kernel_regs * threads)
        by_smem = limits.smem_per_sm // (smem + limits.reserved_per_block)
        return min(by_regs, by_smem)

    props = {"name": limits.name.encode(), "multiProcessorCount": limits.sms,
             "regsPerMultiprocessor": limits.regs_per_sm, "sharedMemPerMultiprocessor": limits.smem_per_sm,
             "sharedMemPerBlockOptin": limits.smem_per_block,
             "reservedSharedMemPerBlock": limits.reserved_per_block}
    cp = types.ModuleType("cupy")
    cp.asarray = asarray
    cp.ascontiguousarray = asarray
    cp.empty = lambda shape, dtype=np.float32: dev(mem.empty(shape, dtype))
    cp.zeros = lambda shape, dtype=np.float32: asarray(np.zeros(shape, dtype))
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceProperties=lambda d: props),
        driver=types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=occupancy),
        get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    cp.__getattr__ = lambda name: getattr(np, name)
    return cp


class RawKernelStandIn:
    """CuPy's RawKernel(..., enable_cooperative_groups=True) over a host-built entry: refuses what
    the driver refuses (dynamic shared memory over 48 KiB without the attribute, more blocks than
    can be co-resident), then launches on the host and checks the arrays' guard zones."""

    def __init__(self, host: ch.HostKernel, limits: kp.DeviceLimits, mem: ch.GuardedMemory):
        self.host, self.limits = host, limits
        self.num_regs = limits.kernel_regs
        self.kernel = types.SimpleNamespace(ptr=0)
        self.max_dynamic_shared_size_bytes = 0
        host.guards = [mem]

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > 48 * 1024 and shared_mem > self.max_dynamic_shared_size_bytes:
            raise ch.HostLaunchError(f"{shared_mem} B of dynamic shared memory without raising "
                                     f"max_dynamic_shared_size_bytes ({self.max_dynamic_shared_size_bytes})")
        if shared_mem > self.limits.smem_per_block:
            raise ch.HostLaunchError(f"{shared_mem} B of dynamic shared memory > {self.limits.smem_per_block}")
        if int(np.prod(grid)) > self.limits.sms:
            raise ch.HostLaunchError(f"cooperative launch of {grid} blocks on {self.limits.sms} SMs")
        self.host(grid, block, args, shared_mem=shared_mem)


def run_persistent(persistent, monkeypatch, cell, prec, T, B, H, limits, *, order=0, seed=0, module=None):
    """PersistentRNN on the stand-in CuPy: (geometry, outputs as NumPy, reference outputs)."""
    mem = ch.GuardedMemory()
    kernels = {}
    module = module or persistent

    def cupy_kernel(symbol, device):
        host = module.get_function(symbol, cooperative=True)
        host.order = order
        kernels[symbol] = RawKernelStandIn(host, limits, mem)
        return kernels[symbol]

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(mem, limits))
    monkeypatch.setattr(kp, "_cupy_kernel", cupy_kernel)
    p = PARAMS[cell].random(H, H, 1, seed=seed + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H))
    h0 = 0.5 * rng.standard_normal((B, H))
    c0 = 0.5 * rng.standard_normal((B, H)) if cell == "lstm" else None
    run = kp.PersistentRNN(p, prec)
    geo = run.geometry(B)
    cp = sys.modules["cupy"]
    dt = storage(prec)
    out = run(cp.asarray(x, dt), cp.asarray(h0, dt), None if c0 is None else cp.asarray(c0, dt))
    if cell == "lstm":
        y, (h_n, c_n) = out
        y_ref, (h_ref, c_ref) = lstm_reference(x, p, h0[None], c0[None])
        return geo, (y, h_n, c_n), (y_ref, h_ref[0], c_ref[0])
    y, h_n = out
    y_ref, h_ref = gru_reference(x, p, h0[None])
    return geo, (y, h_n), (y_ref, h_ref[0])


def limits(sms, smem_per_block=227 * 1024, name=None):
    """An H100 with ``sms`` SMs (and, to force batch chunks, less shared memory per block)."""
    return kp.DeviceLimits(name or f"{sms}-SM H100", sms, 65536, max(228 * 1024, smem_per_block + 1024),
                           smem_per_block)


def squeezed(cell, H, B, prec, sms):
    """Limits with just enough shared memory per block for one batch row per chunk."""
    g = kp.plan(cell, H, B, prec, limits(sms))
    need = kp.smem_layout(cell, H, B, kp.ITEMSIZE[prec], g.blocks, 1, 1, 1)["end"]
    return limits(sms, need, name=f"{sms}-SM squeezed")


PERSIST_CASES = {
    # name: (cell, T, B, H, limits) -- geometry asserted below where it matters
    "one_block_H1": ("lstm", 2, 1, 1, limits(1)),
    "gru_one_unit_per_block": ("gru", 3, 2, 3, limits(4)),
    "awkward_H33_B3": ("lstm", 3, 3, 33, limits(3)),
    "gru_H33_B3": ("gru", 3, 3, 33, limits(3)),
    "bt4_two_tiles_B5": ("lstm", 2, 5, 70, limits(5)),
    "over_48k_smem": ("lstm", 2, 2, 100, limits(2)),
    "gru_bt4_B6": ("gru", 2, 6, 45, limits(3)),
    "chunks_of_one": ("lstm", 3, 3, 40, squeezed("lstm", 40, 3, "fp32", 2)),
    "gru_chunks_of_one": ("gru", 3, 3, 40, squeezed("gru", 40, 3, "fp32", 2)),
    "ks2_lstm": ("lstm", 2, 1, 129, limits(33)),
    "ks2_gru_bt2": ("gru", 2, 2, 130, limits(33)),
    "ks2_lstm_bt4": ("lstm", 2, 4, 129, limits(33)),
    "ks3_gru": ("gru", 2, 1, 257, limits(65)),
    "ks3_gru_bt2": ("gru", 2, 2, 257, limits(65)),
    "ks3_lstm_bt4": ("lstm", 2, 4, 257, limits(86)),
}


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("name", PERSIST_CASES)
def test_persistent_matches_reference(persistent, monkeypatch, name, prec):
    cell, T, B, H, lim = PERSIST_CASES[name]
    geo, got, want = run_persistent(persistent, monkeypatch, cell, prec, T, B, H, lim, order=T)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= tolerance(prec), (name, geo.describe())


def test_stand_in_refuses_what_the_driver_refuses(persistent):
    """Without max_dynamic_shared_size_bytes a launch may not take over 48 KiB, and a cooperative
    launch may not have more blocks than SMs: the persistent cases above pass these checks."""
    lim = limits(2)
    k = RawKernelStandIn(persistent.get_function("lstm_persistent_f32", cooperative=True), lim,
                         ch.GuardedMemory())
    with pytest.raises(ch.HostLaunchError, match="without raising max_dynamic_shared_size_bytes"):
        k((1,), (kp.THREADS,), (), shared_mem=48 * 1024 + 16)
    with pytest.raises(ch.HostLaunchError, match="cooperative launch of"):
        k((3,), (kp.THREADS,), (), shared_mem=1024)


def test_persistent_cases_cover_every_tile_split_and_chunking():
    """Every (batch tile, K split) the planner picks on an H100 for H up to 2048 and B up to 64,
    and several batch chunks, occur among the geometries above."""
    seen = {}
    for name, (cell, T, B, H, lim) in PERSIST_CASES.items():
        g = kp.plan(cell, H, B, "fp32", lim)
        seen.setdefault((g.bt, g.ks), name)
        assert g.blocks <= lim.sms
        if name.startswith("ks"):
            assert g.ks == int(name[2]), (name, g.describe())
        if "chunks" in name:
            assert g.chunks == B and g.bc == 1, g.describe()
    chosen = set()
    for cell in ("lstm", "gru"):
        for prec in ("fp32", "fp16"):
            for H in list(range(1, 300, 7)) + [384, 512, 640, 1024, 1320, 1536, 2048]:
                for B in (1, 2, 3, 4, 5, 8, 17, 64):
                    try:
                        g = kp.plan(cell, H, B, prec)
                    except Exception:
                        continue
                    chosen.add((g.bt, g.ks))
    assert chosen <= set(seen), sorted(chosen - set(seen))


def test_persistent_state_may_be_updated_in_place(persistent):
    """c_n may alias c0 (and h_n a separate buffer): each block reads its own units of c0 once,
    before any step, and writes the same units of c_n after the last one."""
    cell, T, B, H = "lstm", 3, 3, 33
    lim = limits(3)
    geo = kp.plan(cell, H, B, "fp32", lim)
    p = LSTMParams.random(H, H, 1, seed=3)
    rng = np.random.default_rng(3)
    x, h0, c0 = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_ih, w_hh, b_ih, b_hh = p.layers[0].arrays()
    mem = ch.GuardedMemory()
    f32 = lambda a: mem.array(a, np.float32)  # noqa: E731
    gx = f32((x.reshape(T * B, H) @ w_ih.T + b_ih + b_hh).reshape(T, B, 4 * H))
    c = f32(c0)
    y, h_n = mem.empty((T, B, H), np.float32), mem.empty((B, H), np.float32)
    k = persistent.get_function("lstm_persistent_f32", cooperative=True)
    k.guards = [mem]
    for order in (0, 1):
        k.order = order
        c[...] = c0
        k((geo.blocks,), (kp.THREADS,), (f32(w_hh), gx, np.uint64(0), f32(h0), c, y, h_n, c,
                                         np.int32(T), np.int32(B), np.int32(H),
                                         *(np.int32(v) for v in geo.args())), shared_mem=geo.smem)
        y_ref, (h_ref, c_ref) = lstm_reference(x, p, h0[None], c0[None])
        assert rel_err(c, c_ref[0]) <= 1e-5 and rel_err(y, y_ref) <= 1e-5


# -- planted bugs: each edit of a copy of the source must fail --------------------------------------
def _edit(source: str, old: str, new: str, count: int = 1) -> str:
    assert source.count(old) == count, f"{old!r} occurs {source.count(old)} times"
    return source.replace(old, new)


PERSIST_SRC = kp.read_source()
# name: (edited source, cell, case, what must be seen in at least one of the three orders)
PERSIST_MUTANTS = {
    "no_grid_sync": (_edit(PERSIST_SRC, "if (t + 1 < steps) grid.sync();", ";"),
                     "lstm", "awkward_H33_B3", "error inf"),
    "gx_batch_stride_H": (_edit(PERSIST_SRC, "(long long)(b0 + b) * GH", "(long long)(b0 + b) * H", 2),
                          "gru", "gru_H33_B3", "error"),
    "no_barrier_after_staging": (_edit(PERSIST_SRC, "        __syncthreads();\n            // (2) dot",
                                       "            // (2) dot"), "lstm", "awkward_H33_B3", "error inf"),
    # caught only when a later thread stages the next chunk before an earlier one read h_{t-1}
    "no_barrier_between_chunks": (_edit(PERSIST_SRC, "__syncthreads();  // hs and part are overwritten",
                                        "  // hs and part are overwritten"),
                                  "gru", "gru_chunks_of_one", "order 1: error"),
    "split_k_loses_a_chunk": (_edit(PERSIST_SRC, "c1 = (ks + 1) * nchunks / KS;",
                                    "c1 = (ks + 1) * nchunks / KS - (ks + 1 == KS && KS > 1);"),
                              "lstm", "ks2_lstm", "error"),
    "smem_region_too_small": (_edit(PERSIST_SRC, "off = align16(off + (size_t)KS * R * BCp * 4);",
                                    "off = align16(off + (size_t)(KS + 1) * R * BCp * 4);"),
                              "lstm", "awkward_H33_B3", "bytes of dynamic shared memory"),
}
POINTWISE_SRC = pc.read_source()
POINTWISE_MUTANTS = {
    "gh_read_with_gx_stride": _edit(POINTWISE_SRC, "const T* r = gh + b * gh_sb + j;",
                                    "const T* r = gh + b * gx_sb + j;", 2),
    "state_read_with_output_stride": _edit(POINTWISE_SRC, "mb::load(c_prev + b * c_prev_sb + j)",
                                           "mb::load(c_prev + b * h_out_sb + j)"),
}


@pytest.fixture(scope="module")
def mutants(workdir):
    jobs = [(src, [f"{cell}_persistent_f32"], f"persist_{name}")
            for name, (src, cell, _, _) in PERSIST_MUTANTS.items()]
    jobs += [(src, ["lstm_pointwise_fused_f32", "gru_pointwise_fused_f32"], f"pointwise_{name}")
             for name, src in POINTWISE_MUTANTS.items()]
    mods = ch.build_all(jobs, workdir, opt="-O0")      # compiled unoptimised: they run little
    names = [f"persist_{n}" for n in PERSIST_MUTANTS] + [f"pointwise_{n}" for n in POINTWISE_MUTANTS]
    return dict(zip(names, mods))


@pytest.mark.parametrize("name", PERSIST_MUTANTS)
def test_planted_bug_in_persistent_is_caught(mutants, monkeypatch, name):
    src, cell, case, expect = PERSIST_MUTANTS[name]
    c, T, B, H, lim = PERSIST_CASES[case]
    assert c == cell
    caught = []
    for order in (0, 1, 7):           # lowest thread first, highest first, a seeded shuffle
        try:
            geo, got, want = run_persistent(None, monkeypatch, cell, "fp32", T, B, H, lim, order=order,
                                            module=mutants[f"persist_{name}"])
        except ch.HostLaunchError as e:
            caught.append(str(e))
            continue
        err = max(rel_err(g, w) for g, w in zip(got, want))
        if err > tolerance("fp32"):
            caught.append(f"order {order}: error {err:.3g}")
    assert any(expect in c for c in caught), f"{name}: {caught or 'passed every order'}"


@pytest.mark.parametrize("name", POINTWISE_MUTANTS)
def test_planted_bug_in_pointwise_is_caught(mutants, monkeypatch, name):
    mod = mutants[f"pointwise_{name}"]
    with pytest.raises(AssertionError, match="rel_err"):
        test_pointwise_step_matches_reference(mod, monkeypatch, "lstm", POINTWISE_CASES[2], "fp32")
