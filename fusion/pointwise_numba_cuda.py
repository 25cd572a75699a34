"""The fused LSTM/GRU step in ``numba.cuda``: the math of ``kernels/cuda/rnn_pointwise.cu`` in Python.

Imported only by :func:`fusion.pointwise_cuda.numba_cuda_kernels`, because importing numba.cuda
is slow and fixes the choice between the real target and the simulator (NUMBA_ENABLE_CUDASIM)
for the whole process.  ``cuda`` must be a module global here: the simulator runs a kernel by
swapping the ``cuda`` it finds in the kernel's globals for its fake module (a name from a
closure would keep the real one, which has no ``blockIdx`` outside a kernel).

One thread per unit (b, j), x along H, y along B with a grid-stride loop, as in the .cu; shapes
and strides come with the arrays.  Constants are float32 so fp32 math stays fp32 (a Python float
literal would promote it to fp64); loads widen fp16 to fp32 and stores round back.
sigmoid(a) = 0.5 * tanh(0.5 * a) + 0.5 is written out in each kernel rather than as a device
function: typing a call to a device function needs a CUDA context, and written out the kernels
also compile to PTX on a machine without a GPU (tests/test_cuda_sources.py checks that PTX).
"""
import math

import numpy as np
from numba import cuda, float32

half, one = np.float32(0.5), np.float32(1.0)


@cuda.jit
def lstm_pointwise_fused(gx, gh, bx, has_bx, bh, has_bh, c_prev, h_out, c_out):
    B, H = gx.shape[0], gx.shape[2]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j >= H:
        return
    b = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while b < B:
        ai = float32(gx[b, 0, j]) + float32(gh[b, 0, j])
        af = float32(gx[b, 1, j]) + float32(gh[b, 1, j])
        ag = float32(gx[b, 2, j]) + float32(gh[b, 2, j])
        ao = float32(gx[b, 3, j]) + float32(gh[b, 3, j])
        if has_bx:
            ai += float32(bx[0, j])
            af += float32(bx[1, j])
            ag += float32(bx[2, j])
            ao += float32(bx[3, j])
        if has_bh:
            ai += float32(bh[0, j])
            af += float32(bh[1, j])
            ag += float32(bh[2, j])
            ao += float32(bh[3, j])
        i = half * math.tanh(half * ai) + half
        f = half * math.tanh(half * af) + half
        o = half * math.tanh(half * ao) + half
        c = f * float32(c_prev[b, j]) + i * math.tanh(ag)
        c_out[b, j] = c
        h_out[b, j] = o * math.tanh(c)
        b += cuda.gridDim.y * cuda.blockDim.y

@cuda.jit
def gru_pointwise_fused(gx, gh, bx, has_bx, bh, has_bh, h_prev, h_out):
    B, H = gx.shape[0], gx.shape[2]
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j >= H:
        return
    b = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    while b < B:
        xr, xz, xn = float32(gx[b, 0, j]), float32(gx[b, 1, j]), float32(gx[b, 2, j])
        hr, hz, hn = float32(gh[b, 0, j]), float32(gh[b, 1, j]), float32(gh[b, 2, j])
        if has_bx:
            xr += float32(bx[0, j])
            xz += float32(bx[1, j])
            xn += float32(bx[2, j])
        if has_bh:
            hr += float32(bh[0, j])
            hz += float32(bh[1, j])
            hn += float32(bh[2, j])
        r = half * math.tanh(half * (xr + hr)) + half
        z = half * math.tanh(half * (xz + hz)) + half
        n = math.tanh(xn + r * hn)  # the reset gate scales only the recurrent half
        h_out[b, j] = (one - z) * n + z * float32(h_prev[b, j])
        b += cuda.gridDim.y * cuda.blockDim.y
