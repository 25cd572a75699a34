"""Persistent LSTM/GRU (``kernels/cuda/rnn_persistent.cu``): plan, CPU emulation, CuPy launcher.

Literate order, as the rest of ``kernels``:

1. :func:`plan` -- does a shape fit on chip, and with which launch geometry?  Pure arithmetic over
   a :class:`DeviceLimits` (the H100's numbers in :data:`H100`, or the live device's), so the
   decisions are tested without a GPU.  A shape that does not fit raises
   :class:`~kernels.errors.Unsupported` naming the resource, what is needed and what is there.
2. :func:`emulate` -- the kernel's decomposition in NumPy: every block computes exactly what it
   computes on the GPU from what it reads before the step barrier and writes what it writes after;
   a :class:`_Tracked` memory checks that no two blocks write one element in one step, that every
   read of ``h`` happens after the barrier that published it, and that every output is written once.
3. :class:`PersistentRNN` -- the launcher: one cuBLAS GEMM for the input projection of all T steps
   (biases folded), then one cooperative launch through CuPy (:func:`kernels.cudasrc.file_function`
   with ``cooperative=True``).  The entry's CUfunction is shared by every instance of one cell and
   precision, so its dynamic shared-memory limit is only raised, and checked before every launch.

Bytes per launch (S = storage size): W_hh G*H*H*S once (not once per step), gx T*B*G*H*S,
h_{t-1} read by every block each step P*B*H*S*T (from L2), y written T*B*H*S.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import cudasrc
from .dtypes import canonical, storage
from .errors import BadInput, MissingDependency, Unsupported

SOURCE = cudasrc.CUDA_DIR / "rnn_persistent.cu"

# Must equal the #defines of the .cu (tests/test_persistent.py checks).
THREADS = 256
WARPS = 8
RT = 4            # rows per warp tile
KCHUNK = 128      # columns per lane sweep: 32 lanes x 4 elements
BATCH_TILES = (4, 2, 1)
GATES = {"lstm": 4, "gru": 3}
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
SUFFIX = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
FALLBACK = "use the fused variant"


@dataclass(frozen=True)
class DeviceLimits:
    """What the plan needs to know about a GPU (cudaDeviceProp names in the comments)."""

    name: str
    sms: int                     # multiProcessorCount
    regs_per_sm: int             # regsPerMultiprocessor
    smem_per_sm: int             # sharedMemPerMultiprocessor
    smem_per_block: int          # sharedMemPerBlockOptin (dynamic, after cudaFuncSetAttribute)
    reserved_per_block: int = 1024   # reservedSharedMemPerBlock
    kernel_regs: int = 123       # registers per thread of the kernel (nvcc sm_90: 90-123)
    blocks_per_sm: int | None = None  # from the occupancy API when known


# H100 SXM / PCIe: 132 / 114 SMs; 64K registers, 228 KB shared memory per SM, 227 KB per block.
H100 = DeviceLimits("H100", 132, 65536, 228 * 1024, 227 * 1024)


@dataclass(frozen=True)
class Geometry:
    """A launch of the persistent kernel (see the comment at the top of the .cu)."""

    cell: str
    H: int
    B: int
    precision: str
    blocks: int          # P, one per SM at most
    umax: int            # units of the largest block
    rows: int            # R: kept W_hh rows per block, round_up(G*umax, RT)
    kp: int              # padded row length
    bc: int              # batch rows per chunk
    bt: int              # batch tile of a warp item (1, 2 or 4)
    ks: int              # K splits
    smem: int            # dynamic shared memory bytes
    layout: dict = field(default_factory=dict)

    @property
    def G(self) -> int:
        return GATES[self.cell]

    @property
    def bcp(self) -> int:
        return _round_up(self.bc, self.bt)

    @property
    def chunks(self) -> int:
        return -(-self.B // self.bc)

    def units(self, p: int) -> tuple:
        """Units [j0, j1) of block p (the kernel's balanced split)."""
        return p * self.H // self.blocks, (p + 1) * self.H // self.blocks

    def args(self) -> tuple:
        """The trailing int arguments of the kernel after ``steps, B, H``."""
        return self.kp, self.bc, self.bt, self.ks

    def describe(self) -> str:
        return (f"{self.blocks} blocks x {THREADS} threads, {self.umax} units/block, "
                f"{self.rows}x{self.kp} W_hh tile, batch chunk {self.bc} (tile {self.bt}), "
                f"{self.ks} K splits, {self.smem / 1024:.1f} KiB smem/block")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _align16(n: int) -> int:
    return _round_up(n, 16)


def smem_layout(cell: str, H: int, B: int, itemsize: int, blocks: int, bc: int, bt: int, ks: int) -> dict:
    """Byte offsets of the shared-memory regions, in the kernel's order; ``end`` is the total."""
    G, umax = GATES[cell], -(-H // blocks)
    R, kp, bcp = _round_up(G * umax, RT), _round_up(H, KCHUNK), _round_up(bc, bt)
    out, off = {}, 0
    for name, size in (("w", R * kp * itemsize), ("hs", bcp * kp * 4), ("part", ks * R * bcp * 4),
                       ("c", umax * B * 4 if cell == "lstm" else 0),
                       ("bhn", umax * 4 if cell == "gru" else 0)):
        out[name] = (off, size)
        off = _align16(off + size)
    out["end"] = off
    return out


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def plan(cell: str, H: int, B: int, precision, limits: DeviceLimits = H100) -> Geometry:
    """The launch geometry of a shape, or :class:`Unsupported` saying which resource is short.

    Steps: (1) registers: the kernel's registers x 256 threads must fit one SM; (2) blocks: one per
    SM (or what the occupancy API allows), at most H; units split evenly, umax = ceil(H/P);
    (3) shared memory: W tile + per-block state (c, b_hn) + h staging of at least one batch tile
    must fit the per-block limit; the batch chunk is the largest that fits, then evened out over
    the chunks; (4) K splits so that row tiles x batch tiles x splits keeps the 8 warps busy.
    """
    if cell not in GATES:
        raise BadInput(f"cell {cell!r} is unknown; allowed: {', '.join(GATES)}")
    prec = canonical(precision)
    if prec not in ITEMSIZE:
        raise Unsupported(f"persistent {cell}: dtype {prec} is not available; allowed: "
                          f"{', '.join(ITEMSIZE)}")
    if H < 1 or B < 1:
        raise BadInput(f"H={H} and B={B} must be positive")
    S, G = ITEMSIZE[prec], GATES[cell]
    what = f"persistent {cell} H={H} B={B} {prec} on {limits.name}"
    regs = limits.kernel_regs * THREADS
    if regs > limits.regs_per_sm:
        raise Unsupported(f"{what}: a block needs {regs} registers ({limits.kernel_regs}/thread x "
                          f"{THREADS}) but an SM has {limits.regs_per_sm}; {FALLBACK}")
    per_sm = limits.blocks_per_sm if limits.blocks_per_sm is not None else 1
    if per_sm < 1:
        raise Unsupported(f"{what}: the occupancy API allows no co-resident block; {FALLBACK}")
    blocks = min(limits.sms * per_sm, H)
    umax = -(-H // blocks)
    blocks = -(-H // umax)
    cap = min(limits.smem_per_block, limits.smem_per_sm // per_sm - limits.reserved_per_block)
    kp = _round_up(H, KCHUNK)
    R = _round_up(G * umax, RT)

    def layout(bc, bt, ks):
        return smem_layout(cell, H, B, S, blocks, bc, bt, ks)

    bt_min = 1
    base = layout(1, 1, 1)["end"]
    if base > cap:
        w = base - layout(1, 1, 1)["w"][1]  # everything but the weights, at the smallest chunk
        need_w = R * kp * S
        if need_w + bt_min * kp * 4 <= cap:
            raise Unsupported(f"{what}: W_hh tile ({_kib(need_w)}) fits but the per-block state for "
                              f"B={B} (cell state {_kib(umax * B * 4)}) brings shared memory to "
                              f"{_kib(base)}, over the {_kib(cap)} a block can have; {FALLBACK}")
        raise Unsupported(f"{what}: recurrent weights need {_kib(need_w)} of shared memory per block "
                          f"({R} gate rows x {kp} x {S} B, {umax} units on each of {blocks} blocks) "
                          f"+ {_kib(w)} of staging and state, but a block can have {_kib(cap)} "
                          f"({limits.sms} SMs); {FALLBACK}")
    # Largest batch chunk that fits (at most B), then evened out: ceil(B / chunks) rows each.
    bt = next(t for t in BATCH_TILES if t <= B)
    bc = B
    while bc > 1 and layout(bc, min(bt, bc) if bc < 4 else bt, 1)["end"] > cap:
        bc -= 1
    chunks = -(-B // bc)
    bc = -(-B // chunks)
    bt = next(t for t in BATCH_TILES if t <= bc)
    # K splits: enough items for all warps, each split at least one 128-column chunk.
    items = (R // RT) * (_round_up(bc, bt) // bt)
    ks = max(1, min(kp // KCHUNK, -(-WARPS // items)))
    while ks > 1 and layout(bc, bt, ks)["end"] > cap:
        ks -= 1
    lay = layout(bc, bt, ks)
    if lay["end"] > cap:  # unreachable when base fits; kept as a guard
        raise Unsupported(f"{what}: needs {_kib(lay['end'])} of shared memory, {_kib(cap)} "
                          f"available; {FALLBACK}")
    return Geometry(cell, H, B, prec, blocks, umax, R, kp, bc, bt, ks, lay["end"], lay)


def largest_h(cell: str, B: int, precision, limits: DeviceLimits = H100, hi: int = 1 << 15) -> int:
    """Largest H the plan accepts at this B (the limits in docs/gpu-status.md)."""
    best = 0
    # smem need grows with H in steps (umax and kp round up), so scan at unit resolution near the top
    H = 1
    while H <= hi:
        try:
            plan(cell, H, B, precision, limits)
            best, H = H, H * 2
        except Unsupported:
            break
    lo, hi = best, min(H, hi)
    for H in range(hi, lo, -1):
        try:
            plan(cell, H, B, precision, limits)
            return H
        except Unsupported:
            continue
    return lo


# -- CPU emulation of the kernel's decomposition ---------------------------------------------
class DecompositionError(AssertionError):
    """The emulated decomposition broke a rule (write conflict, unpublished read, gap)."""


class _Tracked:
    """A global array with, per element, the step (epoch) of its last write and the writer block.

    Epoch e is the interval between barrier e-1 and barrier e; a read in epoch e may only see
    writes of epochs < e (published by a barrier), and one element gets at most one writer per epoch.
    """

    def __init__(self, name: str, shape, dtype, initial=None):
        self.name = name
        self.data = np.zeros(shape, dtype) if initial is None else np.array(initial, dtype=dtype)
        self.epoch = np.full(shape, -1 if initial is not None else -2, np.int64)  # -2: never written
        self.writer = np.full(shape, -1, np.int64)
        self.writes = np.zeros(shape, np.int64)

    def read(self, idx, epoch: int, block: int):
        e = self.epoch[idx]
        if np.any(e == -2):
            raise DecompositionError(f"block {block} reads {self.name}{_fmt(idx)} before anyone wrote it")
        if np.any(e >= epoch):
            raise DecompositionError(f"block {block} reads {self.name}{_fmt(idx)} in step {epoch}, "
                                     f"written in the same step (no barrier between)")
        return self.data[idx]

    def write(self, idx, value, epoch: int, block: int):
        same = (self.epoch[idx] == epoch) & (self.writer[idx] != block)
        if np.any(same):
            raise DecompositionError(f"blocks {block} and {np.unique(self.writer[idx][same])} both "
                                     f"write {self.name}{_fmt(idx)} in step {epoch}")
        self.data[idx] = value
        self.epoch[idx] = epoch
        self.writer[idx] = block
        self.writes[idx] += 1


def _fmt(idx) -> str:
    return "[" + ", ".join(f"{i.start}:{i.stop}" if isinstance(i, slice) else str(i)
                           for i in (idx if isinstance(idx, tuple) else (idx,))) + "]"


def _sigmoid(a):
    return 0.5 * np.tanh(0.5 * a) + 0.5


def emulate(geo: Geometry, w_hh, gx, h0, c0=None, b_hn=None, *, order: str = "reverse",
            stats: dict | None = None):
    """Run the kernel's decomposition on the CPU: ``y (T, B, H)``, ``h_n``, ``c_n`` (LSTM).

    ``w_hh (G*H, H)``, ``gx (T, B, G*H)`` (biases folded as the launcher folds them), ``h0, c0
    (B, H)``, ``b_hn (H,)`` (GRU) in the storage dtype; arithmetic in float32 as on the GPU.
    Blocks run one after another inside a step, in ``order`` ("forward", "reverse" or a seed for a
    random permutation), so a read of a value another block writes in the same step is caught
    whichever runs first.  ``stats`` (a dict) receives counts of what was checked.
    """
    G, H, B = geo.G, geo.H, geo.B
    T = gx.shape[0]
    st = np.asarray(gx).dtype
    if w_hh.shape != (G * H, H) or gx.shape != (T, B, G * H) or h0.shape != (B, H):
        raise BadInput(f"emulate: shapes w_hh {w_hh.shape}, gx {gx.shape}, h0 {h0.shape} do not "
                       f"match the geometry (G={G}, H={H}, B={B})")
    y = _Tracked("y", (T, B, H), st)
    h_n = _Tracked("h_n", (B, H), st)
    c_n = _Tracked("c_n", (B, H), st)
    h_init = _Tracked("h0", (B, H), st, h0)
    R, kp, bcp, ks_n = geo.rows, geo.kp, geo.bcp, geo.ks
    nchunks = kp // KCHUNK
    counts = {"dot_items": 0, "h_reads": 0, "writes": 0, "barriers": 0}
    # per-block shared state that lives across steps: W tile, c, b_hn
    shared = []
    for p in range(geo.blocks):
        j0, j1 = geo.units(p)
        U = j1 - j0
        if not 1 <= U <= geo.umax:
            raise DecompositionError(f"block {p} owns {U} units; expected 1..{geo.umax}")
        wsm = np.zeros((R, kp), st)
        for r in range(G * U):
            g, u = divmod(r, U)
            wsm[r, :H] = w_hh[g * H + j0 + u]
        cs = (np.asarray(c0[:, j0:j1], np.float32).T.copy() if geo.cell == "lstm" else None)  # (U, B)
        bs = (np.zeros(U, np.float32) if b_hn is None else np.asarray(b_hn[j0:j1], np.float32))
        shared.append((j0, U, wsm.astype(np.float32), cs, bs))
    owned = np.zeros(H, np.int64)
    for j0, U, *_ in shared:
        owned[j0:j0 + U] += 1
    if not np.all(owned == 1):
        raise DecompositionError(f"units owned by no block or by several: {np.flatnonzero(owned != 1)[:8]}")
    if order == "forward":
        blocks = list(range(geo.blocks))
    elif order == "reverse":
        blocks = list(range(geo.blocks))[::-1]
    else:
        blocks = list(np.random.default_rng(int(order)).permutation(geo.blocks))
    for t in range(T):
        for p in blocks:
            j0, U, wsm, cs, bs = shared[p]
            for b0 in range(0, B, geo.bc):
                nb = min(geo.bc, B - b0)
                # (1) stage h_{t-1} rows b0..b0+nb as fp32, zero padding to bcp x kp
                hs = np.zeros((bcp, kp), np.float32)
                src = h_init.read((slice(b0, b0 + nb), slice(0, H)), t, p) if t == 0 else \
                    y.read((t - 1, slice(b0, b0 + nb), slice(0, H)), t, p)
                hs[:nb, :H] = src
                counts["h_reads"] += nb * H
                # (2) warp items: (row tile, batch tile, K split) -> part[ks, rows, batch]
                part = np.full((ks_n, R, bcp), np.nan, np.float32)
                n_rt, n_bt = R // RT, bcp // geo.bt
                items = n_rt * n_bt * ks_n
                warp_of = {}
                for it in range(items):
                    ks, rest = it % ks_n, it // ks_n
                    bt, rt = rest % n_bt, rest // n_bt
                    c_lo, c_hi = ks * nchunks // ks_n, (ks + 1) * nchunks // ks_n
                    rows = slice(rt * RT, rt * RT + RT)
                    bat = slice(bt * geo.bt, bt * geo.bt + geo.bt)
                    cols = slice(c_lo * KCHUNK, c_hi * KCHUNK)
                    if not np.all(np.isnan(part[ks, rows, bat])):
                        raise DecompositionError(f"block {p}: warp items overlap at ks={ks} rows "
                                                 f"{rows} batch {bat}")
                    warp_of[it] = it % WARPS
                    part[ks, rows, bat] = wsm[rows, cols] @ hs[bat, cols].T
                    counts["dot_items"] += 1
                if np.any(np.isnan(part)):
                    raise DecompositionError(f"block {p}: partial sums left unwritten "
                                             f"({int(np.isnan(part).sum())} entries)")
                # (3) pointwise, one (unit, batch row) per thread
                idx = np.arange(U * nb)
                u, b = idx % U, idx // U
                a = np.stack([part[:, g * U + u, b].sum(axis=0) for g in range(G)])  # (G, U*nb)
                xg = np.stack([np.asarray(gx[t, b0 + b, g * H + j0 + u], np.float32) for g in range(G)])
                if geo.cell == "lstm":
                    i_, f_ = _sigmoid(xg[0] + a[0]), _sigmoid(xg[1] + a[1])
                    g_, o_ = np.tanh(xg[2] + a[2]), _sigmoid(xg[3] + a[3])
                    c = f_ * cs[u, b0 + b] + i_ * g_
                    cs[u, b0 + b] = c
                    h = o_ * np.tanh(c)
                else:
                    r_, z_ = _sigmoid(xg[0] + a[0]), _sigmoid(xg[1] + a[1])
                    n_ = np.tanh(xg[2] + r_ * (a[2] + bs[u]))
                    h = n_ + z_ * (hs[b, j0 + u] - n_)
                out = np.zeros((nb, U), np.float32)
                out[b, u] = h
                sl = (slice(b0, b0 + nb), slice(j0, j0 + U))
                y.write((t,) + sl, out.astype(st), t, p)
                counts["writes"] += nb * U
                if t == T - 1:
                    h_n.write(sl, out.astype(st), t, p)
                    if geo.cell == "lstm":
                        cc = np.zeros((nb, U), np.float32)
                        cc[b, u] = c
                        c_n.write(sl, cc.astype(st), t, p)
        if t + 1 < T:
            counts["barriers"] += 1   # grid.sync(): everything written in step t is published
    for arr in (y, h_n) + ((c_n,) if geo.cell == "lstm" else ()):
        if not np.all(arr.writes == 1):
            bad = np.argwhere(arr.writes != 1)[:4].tolist()
            raise DecompositionError(f"{arr.name}: elements written {sorted(set(arr.writes.ravel()))} "
                                     f"times, expected once each (e.g. at {bad})")
    if stats is not None:
        stats.update(counts)
    return (y.data, h_n.data, c_n.data) if geo.cell == "lstm" else (y.data, h_n.data)


def fold_biases(cell: str, b_ih, b_hh, H: int):
    """(bias added to the hoisted input GEMM (G*H,), b_hn (H,) or None) as the kernel expects."""
    if cell == "lstm":
        return b_ih + b_hh, None
    fold = b_ih.copy()
    fold[:2 * H] += b_hh[:2 * H]
    return fold, b_hh[2 * H:].copy()


def emulate_layer(cell: str, layer, x, h0, c0=None, *, limits: DeviceLimits = H100, precision="fp32",
                  order="reverse", stats=None):
    """One layer end to end on the CPU: hoisted input GEMM in float32, then :func:`emulate`."""
    w_ih, w_hh, b_ih, b_hh = (np.asarray(a) for a in layer.arrays())
    T, B, _ = x.shape
    H = w_hh.shape[1]
    st = w_hh.dtype
    geo = plan(cell, H, B, precision, limits)
    bias, b_hn = fold_biases(cell, b_ih.astype(np.float32), b_hh.astype(np.float32), H)
    gx = (x.reshape(T * B, -1).astype(np.float32) @ w_ih.T.astype(np.float32) + bias)
    gx = gx.reshape(T, B, -1).astype(st)
    return geo, emulate(geo, w_hh, gx, h0, c0, None if b_hn is None else b_hn.astype(st),
                        order=order, stats=stats)


# -- compilation and launch (CuPy) ------------------------------------------------------------
def read_source() -> str:
    """The .cu as every compiler gets it (its shared header inlined by :func:`kernels.cudasrc.read`)."""
    return cudasrc.read(SOURCE)


def limits_from_device(device: int | None = None, kernel=None, smem: int | None = None) -> DeviceLimits:
    """The live device's :class:`DeviceLimits` (CuPy), with the kernel's registers and, when
    ``kernel`` and ``smem`` are given, the occupancy API's blocks per SM."""
    import cupy
    dev = cupy.cuda.runtime.getDevice() if device is None else device
    pr = cupy.cuda.runtime.getDeviceProperties(dev)
    name = pr["name"].decode() if isinstance(pr["name"], bytes) else str(pr["name"])
    regs = kernel.num_regs if kernel is not None else H100.kernel_regs
    per_sm = None
    if kernel is not None and smem is not None:
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            kernel.kernel.ptr, THREADS, smem)
    return DeviceLimits(name, pr["multiProcessorCount"], pr["regsPerMultiprocessor"],
                        pr["sharedMemPerMultiprocessor"], pr["sharedMemPerBlockOptin"],
                        pr.get("reservedSharedMemPerBlock", 1024), regs, per_sm)


def _allow_smem(kernel, smem: int) -> None:
    """Raise the kernel's dynamic shared-memory limit (cudaFuncAttributeMaxDynamicSharedMemorySize)
    to ``smem`` if it is lower.  The attribute belongs to the CUfunction, which every
    PersistentRNN of one cell and precision shares (the loader caches it): set per plan, the
    limit a smaller batch's plan left behind failed a later larger launch, so it only grows and
    is read back before every launch (one cuFuncGetAttribute, which CuPy's getter calls)."""
    if smem > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < smem:
        kernel.max_dynamic_shared_size_bytes = smem


def _cupy_kernel(symbol: str, device: int):
    # cooperative: the entries sync the grid between steps (cuLaunchCooperativeKernel)
    return cudasrc.file_function(SOURCE, symbol, device, cooperative=True)


class PersistentRNN:
    """One layer of LSTM/GRU as one cooperative launch.  ``run = PersistentRNN(params, "fp16");
    y, (h_n, c_n) = run(x, h0, c0)`` (GRU: ``y, h_n``).  Arrays are CuPy, time-major."""

    def __init__(self, params, precision="fp32", *, device: int | None = None):
        try:
            import cupy
        except ImportError as e:
            raise MissingDependency("cupy", "the persistent variant", "pip install cupy-cuda13x") from e
        if params.num_layers != 1:
            raise Unsupported(f"persistent {params.cell}: runs 1 layer (got {params.num_layers}); "
                              "multi-layer wavefront is not implemented; use the fused variant")
        self.cell, self.precision = params.cell, canonical(precision)
        if self.precision not in SUFFIX:
            raise Unsupported(f"persistent {self.cell}: dtype {self.precision} not available; "
                              f"allowed: {', '.join(SUFFIX)}")
        self.H, self.G = params.hidden_size, params.num_gates
        dev = cupy.cuda.runtime.getDevice() if device is None else device
        self.kernel = _cupy_kernel(f"{self.cell}_persistent_{SUFFIX[self.precision]}", dev)
        self.limits = limits_from_device(dev, self.kernel)
        self._plans = {}
        # Rounded to the storage type on the host (bf16: ml_dtypes' bfloat16, which CuPy 14 takes).
        dt = storage(self.precision)
        self.dtype = dt
        w_ih, w_hh, b_ih, b_hh = (np.asarray(a, np.float64) for a in params.layers[0].arrays())
        bias, b_hn = fold_biases(self.cell, b_ih, b_hh, self.H)
        dev_array = lambda a: cupy.asarray(np.asarray(a).astype(dt))  # noqa: E731
        self.w_ih_t = dev_array(np.ascontiguousarray(w_ih.T))   # (I, G*H)
        self.w_hh = dev_array(w_hh)
        self.bias = dev_array(bias)
        self.b_hn = dev_array(b_hn if b_hn is not None else np.zeros(1))
        self._dummy = cupy.zeros(1, dt)

    def geometry(self, B: int) -> Geometry:
        geo = self._plans.get(B)
        if geo is None:
            import cupy
            geo = plan(self.cell, self.H, B, self.precision, self.limits)
            _allow_smem(self.kernel, geo.smem)
            # The occupancy API has the final word on co-residency of this very launch.
            per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                self.kernel.kernel.ptr, THREADS, geo.smem)
            if per_sm * self.limits.sms < geo.blocks:
                raise Unsupported(f"persistent {self.cell} H={self.H} B={B}: the occupancy API "
                                  f"allows {per_sm} block(s)/SM x {self.limits.sms} SMs < "
                                  f"{geo.blocks} blocks for a cooperative launch; {FALLBACK}")
            self._plans[B] = geo
        return geo

    def __call__(self, x, h0=None, c0=None):
        """Three launches: the input GEMM, the bias add and the persistent kernel.

        ``x`` (T, B, I) is taken in the storage type, converted if it is not: the kernel reads
        the GEMM's output as that type, so an fp32 ``x`` with fp16 weights must not promote the
        GEMM to fp32.  ``h0``/``c0`` (B, H) default to zeros, as in every other variant.
        """
        import cupy
        lstm = self.cell == "lstm"
        if getattr(x, "ndim", 0) != 3:
            raise BadInput(f"x must be (T, B, I); got shape {getattr(x, 'shape', None)}")
        T, B, _ = x.shape
        if not lstm and c0 is not None:
            raise BadInput("a GRU has no cell state: c0 must be None")
        for name, v in (("h0", h0), ("c0", c0)):
            if v is not None and tuple(v.shape) != (B, self.H):
                raise BadInput(f"{name} must be (B, H) = {(B, self.H)}; got {tuple(v.shape)}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        geo = self.geometry(B)
        H = self.H
        # gemm_x: one cuBLAS GEMM for all T steps, biases folded: gx (T, B, G*H)
        gx = x.reshape(T * B, -1) @ self.w_ih_t
        gx += self.bias
        y = cupy.empty((T, B, H), self.dtype)
        h_n = cupy.empty((B, H), self.dtype)
        c_n = cupy.empty((B, H), self.dtype) if lstm else self._dummy

        def state(v):
            return cupy.zeros((B, H), self.dtype) if v is None else cupy.ascontiguousarray(v, self.dtype)
        args = (self.w_hh, gx, self._dummy if lstm else self.b_hn, state(h0),
                state(c0) if lstm else self._dummy,
                y, h_n, c_n, np.int32(T), np.int32(B), np.int32(H),
                *(np.int32(v) for v in geo.args()))
        _allow_smem(self.kernel, geo.smem)    # another instance/batch may share this CUfunction
        self.kernel((geo.blocks,), (THREADS,), args, shared_mem=geo.smem)
        return (y, (h_n, c_n)) if lstm else (y, h_n)


def source_defines() -> dict:
    """The #define MB_PERSIST_* values of the .cu (tests compare them with this module)."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define\s+MB_PERSIST_(\w+)\s+(\d+)", read_source())}


__all__ = ["DeviceLimits", "Geometry", "H100", "plan", "largest_h", "emulate", "emulate_layer",
           "PersistentRNN", "smem_layout", "fold_biases", "DecompositionError"]
