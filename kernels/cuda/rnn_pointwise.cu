// Fused pointwise stage of one LSTM / GRU step: everything between the step's GEMMs and the next
// step, as one kernel (the `fuse_pointwise` step of fusion/steps.py).  The op-by-op version in
// kernels/cells.py runs ~15 (LSTM) or ~17 (GRU) array operations, each a launch and a pass over
// memory; here every gate pre-activation is read once and every intermediate stays in registers.
//
// Math: the same as kernels/cells.py (and kernels/reference.py), gate order LSTM i,f,g,o and
// GRU r,z,n with the reset gate applied after the recurrent GEMM:
//   LSTM  c = sig(f) * c_prev + sig(i) * tanh(g);     h = sig(o) * tanh(c)
//   GRU   n = tanh(x_n + b_in + sig(r) * (h_n + b_hn));  h = n + sig(z) * (h_prev - n)
// with sig(a) = 0.5 * tanh(0.5 * a) + 0.5, which never overflows (cells.sigmoid).
//
// Layout.  The GEMM results gx, gh are (B, G, H) with unit stride along H and *explicit* batch and
// gate strides, in elements.  The launcher passes the strides of whatever view it was given, so
// both layouts of fusion/gemm.py (grouped (M, G*H): strides (G*H, H); per gate (G, M, H): strides
// (H, M*H)) and row slices of a hoisted T*B buffer are read in place, without a copy.  States and
// outputs are (B, H) with unit stride along H and an explicit row stride.  Biases are (G, H)
// contiguous, or nullptr when already folded into gx.  Offsets are 64-bit: a per-gate hoisted
// buffer's gate stride is T*B*H, which passes 2^31 elements at DeepBench sizes.
//
// Storage float / __half / __nv_bfloat16, math in fp32: each value is widened on load and rounded
// once on store, so a half-precision step loses no more than the storage rounding.
//
// Mapping: one thread per unit (b, j).  threadIdx.x / blockIdx.x run along H (coalesced loads of
// each gate row), threadIdx.y / blockIdx.y along B; the launcher packs several batch rows into one
// block when H is small, so a block is never mostly idle.  The grid-stride loop over b covers B
// beyond gridDim.y's 65535 limit.  No index division: a 64-bit divide is ~30 instructions.
//
// Aliasing: c_prev may equal c_out (the cell state is updated in place) and h_prev may equal
// h_out; each thread reads its unit before writing it, so those pointers are not __restrict__.
// The read-only inputs are, which lets the compiler use the non-coherent load path.
//
// Bytes per step (S = sizeof(storage)): reads 2*G*B*H*S (gx, gh) + B*H*S (c or h) + biases
// G*H*S each; writes 2*B*H*S (LSTM: h, c) or B*H*S (GRU: h).
//
// Compiles with nvcc and with NVRTC (CuPy RawModule): only the fp16/bf16 headers, which NVRTC
// ships built in.  Symbols (extern "C", so the launchers find them by name):
//   lstm_pointwise_fused_f32  lstm_pointwise_fused_f16  lstm_pointwise_fused_bf16
//   gru_pointwise_fused_f32   gru_pointwise_fused_f16   gru_pointwise_fused_bf16
#include "mb_device.cuh"   // mb::load, mb::store, mb::sigmoid

// The launcher never uses more threads per block; telling the compiler lets it budget registers.
#define MB_POINTWISE_THREADS 256

namespace mb {

// Pre-activation of gate k at unit (b, j): gx + gh + the biases that are not folded.
template <typename T>
__device__ __forceinline__ float preact(const T* __restrict__ gx, long long gx_sg,
                                        const T* __restrict__ gh, long long gh_sg,
                                        const T* __restrict__ bx, const T* __restrict__ bh,
                                        int k, int H, int j) {
    float a = load(gx + k * gx_sg) + load(gh + k * gh_sg);
    if (bx) a += load(bx + (long long)k * H + j);
    if (bh) a += load(bh + (long long)k * H + j);
    return a;
}

}  // namespace mb

template <typename T>
__device__ __forceinline__ void lstm_pointwise_fused(
        const T* __restrict__ gx, long long gx_sb, long long gx_sg,
        const T* __restrict__ gh, long long gh_sb, long long gh_sg,
        const T* __restrict__ bx, const T* __restrict__ bh,
        const T* c_prev, long long c_prev_sb,
        T* h_out, long long h_out_sb,
        T* c_out, long long c_out_sb,
        int B, int H) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= H) return;
    for (int b = blockIdx.y * blockDim.y + threadIdx.y; b < B; b += gridDim.y * blockDim.y) {
        const T* x = gx + b * gx_sb + j;
        const T* r = gh + b * gh_sb + j;
        const float i = mb::sigmoid(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 0, H, j));
        const float f = mb::sigmoid(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 1, H, j));
        const float g = tanhf(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 2, H, j));
        const float o = mb::sigmoid(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 3, H, j));
        const float c = fmaf(f, mb::load(c_prev + b * c_prev_sb + j), i * g);
        mb::store(c_out + b * c_out_sb + j, c);
        mb::store(h_out + b * h_out_sb + j, o * tanhf(c));
    }
}

template <typename T>
__device__ __forceinline__ void gru_pointwise_fused(
        const T* __restrict__ gx, long long gx_sb, long long gx_sg,
        const T* __restrict__ gh, long long gh_sb, long long gh_sg,
        const T* __restrict__ bx, const T* __restrict__ bh,
        const T* h_prev, long long h_prev_sb,
        T* h_out, long long h_out_sb,
        int B, int H) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= H) return;
    for (int b = blockIdx.y * blockDim.y + threadIdx.y; b < B; b += gridDim.y * blockDim.y) {
        const T* x = gx + b * gx_sb + j;
        const T* r = gh + b * gh_sb + j;
        const float rg = mb::sigmoid(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 0, H, j));
        const float z = mb::sigmoid(mb::preact(x, gx_sg, r, gh_sg, bx, bh, 1, H, j));
        // n's two halves stay apart: the reset gate scales only the recurrent half (and b_hn).
        float hn = mb::load(r + 2 * gh_sg);
        if (bh) hn += mb::load(bh + 2LL * H + j);
        float xn = mb::load(x + 2 * gx_sg);
        if (bx) xn += mb::load(bx + 2LL * H + j);
        const float n = tanhf(fmaf(rg, hn, xn));
        const float hp = mb::load(h_prev + b * h_prev_sb + j);
        mb::store(h_out + b * h_out_sb + j, fmaf(z, hp - n, n));  // (1 - z) * n + z * h_prev
    }
}

// One extern "C" entry per storage type, so CuPy, PyCUDA and ncu see plain, stable names.
#define MB_LSTM_ENTRY(NAME, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(MB_POINTWISE_THREADS) NAME(                    \
            const T* __restrict__ gx, long long gx_sb, long long gx_sg,                          \
            const T* __restrict__ gh, long long gh_sb, long long gh_sg,                          \
            const T* __restrict__ bx, const T* __restrict__ bh,                                  \
            const T* c_prev, long long c_prev_sb, T* h_out, long long h_out_sb,                  \
            T* c_out, long long c_out_sb, int B, int H) {                                        \
        lstm_pointwise_fused<T>(gx, gx_sb, gx_sg, gh, gh_sb, gh_sg, bx, bh, c_prev, c_prev_sb,   \
                                h_out, h_out_sb, c_out, c_out_sb, B, H);                         \
    }

#define MB_GRU_ENTRY(NAME, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(MB_POINTWISE_THREADS) NAME(                    \
            const T* __restrict__ gx, long long gx_sb, long long gx_sg,                          \
            const T* __restrict__ gh, long long gh_sb, long long gh_sg,                          \
            const T* __restrict__ bx, const T* __restrict__ bh,                                  \
            const T* h_prev, long long h_prev_sb, T* h_out, long long h_out_sb, int B, int H) {  \
        gru_pointwise_fused<T>(gx, gx_sb, gx_sg, gh, gh_sb, gh_sg, bx, bh, h_prev, h_prev_sb,    \
                               h_out, h_out_sb, B, H);                                           \
    }

MB_LSTM_ENTRY(lstm_pointwise_fused_f32, float)
MB_LSTM_ENTRY(lstm_pointwise_fused_f16, __half)
MB_LSTM_ENTRY(lstm_pointwise_fused_bf16, __nv_bfloat16)
MB_GRU_ENTRY(gru_pointwise_fused_f32, float)
MB_GRU_ENTRY(gru_pointwise_fused_f16, __half)
MB_GRU_ENTRY(gru_pointwise_fused_bf16, __nv_bfloat16)
