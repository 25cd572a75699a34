"""The numba CPU cell kernels on bf16 storage: the CPU's counterpart of the ``*_bf16`` entries of
``kernels/cuda/rnn_pointwise.cu``.

numba has no bf16 type, so every bf16 array reaches these kernels as its ``uint16`` view (the
callers pass ``a.view(np.uint16)`` of ml_dtypes' bfloat16 arrays: the same bits).  The rounding
points are the GPU bf16 path's (and the NumPy backend's twin in :mod:`fusion.pointwise`): each
value is widened to fp32 on load, all the cell's math is fp32, and each stored value (h, and the
LSTM's c) is rounded once to bf16.  The GEMM results gx and gh arrive in bf16 too: the packed
oneDNN GEMMs accumulate in fp32 and round once on store, as cuBLAS does with bf16 C.

- :func:`bf16_to_f32`: the 16 bits become the high half of an fp32 (exact);
- :func:`f32_to_bf16`: round to nearest, ties to even, as ml_dtypes does: add ``0x7FFF`` plus
  the lowest kept bit and keep the high half (overflow rounds to infinity, subnormals stay
  subnormal); a NaN becomes the quiet NaN ``0x7FC0`` with its sign, ml_dtypes' answer.  Both
  are written as LLVM instructions (a select, no branch), so the row loops still vectorize.

The kernels have the forms and signatures of :mod:`fusion.pointwise_numba` (whose module doc
says why rows, why unsigned indices, why a serial twin), with the fp32 ``sig`` and ``tanh``
shared from there.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.jit import njit

from .pointwise_numba import sig, tanh


@intrinsic
def bf16_to_f32(typingctx, u):
    """A bf16 (its uint16 bits) as float32, exactly."""
    if u != types.uint16:
        return None

    def codegen(context, builder, sig_, args):
        i32 = ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_bf16(typingctx, x):
    """A float32 rounded to bf16 (round to nearest even; NaN -> signed quiet NaN), as uint16 bits."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig_, args):
        i32, i16 = ir.IntType(32), ir.IntType(16)
        c = lambda v: ir.Constant(i32, v)     # noqa: E731
        bits = builder.bitcast(args[0], i32)
        lsb = builder.and_(builder.lshr(bits, c(16)), c(1))
        rounded = builder.lshr(builder.add(builder.add(bits, c(0x7FFF)), lsb), c(16))
        nan = builder.or_(builder.and_(builder.lshr(bits, c(16)), c(0x8000)), c(0x7FC0))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, nan, rounded), i16)
    return types.uint16(types.float32), codegen


@njit
def to_bf16_bits(a, out):
    """``out[i] = f32_to_bf16(a[i])`` over flat arrays (tests hold it to ml_dtypes' conversion)."""
    for i in range(a.shape[0]):
        out[i] = f32_to_bf16(a[i])


@njit
def from_bf16_bits(u, out):
    """``out[i] = bf16_to_f32(u[i])`` over flat arrays."""
    for i in range(u.shape[0]):
        out[i] = bf16_to_f32(u[i])


# -- one batch row (see fusion.pointwise_numba: the same math, loads widened, stores rounded) ----
@njit(inline="always")
def lstm_row(x, r, b, has_b, cn, ho, j0):
    base = numba.uint64(j0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        ai = bf16_to_f32(x[0, j]) + bf16_to_f32(r[0, u])
        af = bf16_to_f32(x[1, j]) + bf16_to_f32(r[1, u])
        ag = bf16_to_f32(x[2, j]) + bf16_to_f32(r[2, u])
        ao = bf16_to_f32(x[3, j]) + bf16_to_f32(r[3, u])
        if has_b:
            ai += bf16_to_f32(b[0, j])
            af += bf16_to_f32(b[1, j])
            ag += bf16_to_f32(b[2, j])
            ao += bf16_to_f32(b[3, j])
        cj = sig(af) * bf16_to_f32(cn[j]) + sig(ai) * tanh(ag)
        cn[j] = f32_to_bf16(cj)
        ho[j] = f32_to_bf16(sig(ao) * tanh(cj))      # h from the fp32 c, as the CUDA kernel


@njit(inline="always")
def gru_row(x, r, bx, has_bx, bh, hp, ho, j0):
    base = numba.uint64(j0)
    one = numba.float32(1.0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        xr, xz, xn = bf16_to_f32(x[0, j]), bf16_to_f32(x[1, j]), bf16_to_f32(x[2, j])
        if has_bx:
            xr += bf16_to_f32(bx[0, j])
            xz += bf16_to_f32(bx[1, j])
            xn += bf16_to_f32(bx[2, j])
        rg = sig(xr + bf16_to_f32(r[0, u]) + bf16_to_f32(bh[0, j]))
        z = sig(xz + bf16_to_f32(r[1, u]) + bf16_to_f32(bh[1, j]))
        c = tanh(xn + rg * (bf16_to_f32(r[2, u]) + bf16_to_f32(bh[2, j])))
        ho[j] = f32_to_bf16((one - z) * c + z * bf16_to_f32(hp[j]))


@njit(inline="always")
def rnn_relu_row(x, r, b, has_b, ho, j0):
    base = numba.uint64(j0)
    zero = numba.float32(0.0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        a = bf16_to_f32(x[0, j]) + bf16_to_f32(r[0, u])
        if has_b:
            a += bf16_to_f32(b[0, j])
        ho[j] = f32_to_bf16(zero if a < zero else a)     # NaN < 0 is false: NaN passes through


@njit(inline="always")
def rnn_tanh_row(x, r, b, has_b, ho, j0):
    base = numba.uint64(j0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        a = bf16_to_f32(x[0, j]) + bf16_to_f32(r[0, u])
        if has_b:
            a += bf16_to_f32(b[0, j])
        ho[j] = f32_to_bf16(tanh(a))


# -- whole blocks, parallel over the batch rows --------------------------------------------------
@njit(parallel=True)
def lstm_block(gx, gh, b, has_b, c, h_out):
    for n in numba.prange(gx.shape[0]):
        lstm_row(gx[n], gh[n], b, has_b, c[n], h_out[n], 0)


@njit(parallel=True)
def gru_block(gx, gh, bx, has_bx, bh, h_prev, h_out):
    for n in numba.prange(gx.shape[0]):
        gru_row(gx[n], gh[n], bx, has_bx, bh, h_prev[n], h_out[n], 0)


@njit(parallel=True)
def rnn_relu_block(gx, gh, b, has_b, h_out):
    for n in numba.prange(gx.shape[0]):
        rnn_relu_row(gx[n], gh[n], b, has_b, h_out[n], 0)


@njit(parallel=True)
def rnn_tanh_block(gx, gh, b, has_b, h_out):
    for n in numba.prange(gx.shape[0]):
        rnn_tanh_row(gx[n], gh[n], b, has_b, h_out[n], 0)


# one-thread twins (error_model="numpy": fusion.pointwise_numba says why)
lstm_block_serial = njit(error_model="numpy")(lstm_block.py_func)
gru_block_serial = njit(error_model="numpy")(gru_block.py_func)
rnn_relu_block_serial = njit(error_model="numpy")(rnn_relu_block.py_func)
rnn_tanh_block_serial = njit(error_model="numpy")(rnn_tanh_block.py_func)
SERIAL = {lstm_block: lstm_block_serial, gru_block: gru_block_serial, rnn_relu_block: rnn_relu_block_serial,
          rnn_tanh_block: rnn_tanh_block_serial}


# -- a block of units, serial (a team thread's share) ------------------------------------------
@njit(error_model="numpy")
def lstm_units(gx, gh, b, has_b, c, h_out, j0):
    for n in range(gx.shape[0]):
        lstm_row(gx[n], gh[n], b, has_b, c[n], h_out[n], j0)


@njit(error_model="numpy")
def gru_units(gx, gh, bx, has_bx, bh, h_prev, h_out, j0):
    for n in range(gx.shape[0]):
        gru_row(gx[n], gh[n], bx, has_bx, bh, h_prev[n], h_out[n], j0)


@njit(error_model="numpy")
def rnn_relu_units(gx, gh, b, has_b, h_out, j0):
    for n in range(gx.shape[0]):
        rnn_relu_row(gx[n], gh[n], b, has_b, h_out[n], j0)


@njit(error_model="numpy")
def rnn_tanh_units(gx, gh, b, has_b, h_out, j0):
    for n in range(gx.shape[0]):
        rnn_tanh_row(gx[n], gh[n], b, has_b, h_out[n], j0)


# (whole-block parallel, unit-block serial) per cell mode, as fusion.pointwise_numba.KERNELS
KERNELS = {"lstm": (lstm_block, lstm_units), "gru": (gru_block, gru_units),
           "rnn_relu": (rnn_relu_block, rnn_relu_units), "rnn_tanh": (rnn_tanh_block, rnn_tanh_units)}
