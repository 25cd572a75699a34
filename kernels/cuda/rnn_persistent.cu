// Persistent LSTM / GRU layer: one cooperative launch runs all T steps of one layer.
//
// The grid stays resident; each block owns a contiguous slice of hidden units and keeps the rows
// of W_hh of *all gates* of those units in shared memory for the whole sequence, so W_hh is read
// from device memory once per launch instead of once per step.  Steps are separated by one
// grid-wide barrier (cooperative_groups grid.sync(), ~1.2 us on an H100) instead of kernel launches.
// The input projection gx = x @ W_ih^T + biases is hoisted into one cuBLAS GEMM before the launch.
//
// Math (canonical gate order, as kernels/reference.py; sig(a) = 0.5*tanh(0.5a) + 0.5):
//   LSTM  a = gx[t] + W_hh h_{t-1};  c = sig(a_f) c + sig(a_i) tanh(a_g);  h = sig(a_o) tanh(c)
//   GRU   r = sig(gx_r + W_hr h);  z = sig(gx_z + W_hz h);  n = tanh(gx_n + r (W_hn h + b_hn))
//         h = n + z (h_{t-1} - n)
// gx carries every bias that can be folded: LSTM b_ih + b_hh; GRU b_ih + (b_hr, b_hz, 0).  b_hn
// sits inside r * (...) and is passed apart (GRU only).
//
// Decomposition (kernels/persistent.py emulates exactly this in NumPy, tests/test_persistent.py):
//   units     block p of P owns units j in [p*H/P, (p+1)*H/P)  (U_p = 1 + ... <= Umax = ceil(H/P))
//   rows      local row r = g*U_p + u  <->  W_hh row g*H + j0 + u;  R = round_up(G*Umax, RT) rows
//             are kept, the ones past G*U_p are zero
//   columns   zero-padded to Kp = round_up(H, 128): every lane reads 4 consecutive elements of a
//             128-wide chunk, so the inner loop has no bounds checks
//   batch     processed in chunks of BC rows; h_{t-1} of a chunk is staged as fp32 in shared memory
//             (BCp = round_up(BC, BT) rows, padding rows zero)
//   warps     work item = (row tile of RT rows, batch tile of BT rows, K split ks of KS); warp w
//             takes items w, w+8, ...  A lane keeps RT float4 weight fragments and BT float4 h
//             fragments in registers and accumulates RT x BT dot products: every weight read from
//             shared memory is used BT times and every h read RT times (a register-tiled GEMM, the
//             fix for the first cut's batch loop over shared memory).  Split K (KS > 1) keeps all
//             8 warps busy when the block has few rows (small H or B = 1): each split writes its
//             own partial-sum slice, summed in a fixed order by the pointwise stage (deterministic).
//   pointwise one thread per (unit, batch row) of the chunk: sums the partials, adds gx[t], applies
//             the cell, keeps c in shared memory (fp32) for the whole sequence, writes h_t to y[t].
//
// h buffers: y itself.  Step t reads h_{t-1} = y[t-1] (h0 at t = 0) written by every block before
// the last barrier and writes its own units of y[t]: reads and writes never touch the same buffer
// within a step, so one barrier per step suffices (a ping-pong over T buffers instead of 2).  h is
// read with ld.global.cg (L2, never a possibly stale L1 line), after the grid.sync() that published it.
//
// Shared memory per block, in this order, each region 16-byte aligned (persistent.smem_layout):
//   W   R*Kp*S          (S = sizeof storage)     hs  BCp*Kp*4      part KS*R*BCp*4
//   c   Umax*B*4 (LSTM) bhn Umax*4 (GRU)
// Registers: accumulators RT*BT + fragments 4*(RT+BT) floats per lane; __launch_bounds__(256, 1).
//
// Storage float / __half / __nv_bfloat16, all arithmetic in fp32 (weights widened on load).
// Symbols: lstm_persistent_{f32,f16,bf16}  gru_persistent_{f32,f16,bf16}.
// Grid sync compiles without -rdc (CUDA >= 11 implements it in the header); the launch must be
// cooperative (cuLaunchCooperativeKernel; CuPy RawKernel(enable_cooperative_groups=True)).
#include <cooperative_groups.h>
#include "mb_device.cuh"

#define MB_PERSIST_THREADS 256
#define MB_PERSIST_WARPS 8
#define MB_PERSIST_RT 4
#define MB_PERSIST_KCHUNK 128

namespace mbp {

namespace cg = cooperative_groups;

using mb::load;
using mb::store;
using mb::sigmoid;

// h_{t-1} was written by other blocks in this launch: bypass L1 (not coherent across SMs).
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ float load_cg(const __half* p) {
    return __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load_cg(const __nv_bfloat16* p) {
    return __bfloat162float(__ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}

// Four consecutive elements of shared memory, widened to fp32 (one 16- or 8-byte load).
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 ld4(const __half* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 ld4(const __nv_bfloat16* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Partial dot products of one batch chunk: part[ks][r][b] = sum_{k in split ks} W[r][k] * hs[b][k].
template <typename T, int BT>
__device__ __forceinline__ void matvec(const T* __restrict__ wsm, const float* __restrict__ hs,
                                       float* __restrict__ part, int R, int Kp, int BCp, int KS) {
    constexpr int RT = MB_PERSIST_RT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_rt = R / RT, n_bt = BCp / BT, nchunks = Kp / MB_PERSIST_KCHUNK;
    const int items = n_rt * n_bt * KS;
    for (int it = warp; it < items; it += MB_PERSIST_WARPS) {
        const int ks = it % KS, rest = it / KS;
        const int bt = rest % n_bt, rt = rest / n_bt;
        const int c0 = ks * nchunks / KS, c1 = (ks + 1) * nchunks / KS;
        float acc[RT][BT];
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < BT; ++j) acc[i][j] = 0.f;
        const T* wp = wsm + (size_t)rt * RT * Kp + 4 * lane;
        const float* hp = hs + (size_t)bt * BT * Kp + 4 * lane;
        for (int c = c0; c < c1; ++c) {
            const int k = c * MB_PERSIST_KCHUNK;
            float4 w[RT], h[BT];
#pragma unroll
            for (int i = 0; i < RT; ++i) w[i] = ld4(wp + (size_t)i * Kp + k);
#pragma unroll
            for (int j = 0; j < BT; ++j) h[j] = ld4(hp + (size_t)j * Kp + k);
#pragma unroll
            for (int i = 0; i < RT; ++i)
#pragma unroll
                for (int j = 0; j < BT; ++j) {
                    float a = acc[i][j];
                    a = fmaf(w[i].x, h[j].x, a);
                    a = fmaf(w[i].y, h[j].y, a);
                    a = fmaf(w[i].z, h[j].z, a);
                    a = fmaf(w[i].w, h[j].w, a);
                    acc[i][j] = a;
                }
        }
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < BT; ++j) {
                float v = acc[i][j];
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
                acc[i][j] = v;
            }
        if (lane == 0) {
            float* out = part + ((size_t)ks * R + rt * RT) * BCp + bt * BT;
#pragma unroll
            for (int i = 0; i < RT; ++i)
#pragma unroll
                for (int j = 0; j < BT; ++j) out[(size_t)i * BCp + j] = acc[i][j];
        }
    }
}

// CELL 0: LSTM (G = 4, gates i f g o), 1: GRU (G = 3, gates r z n).
template <typename T, int CELL>
__device__ __forceinline__ void rnn_persistent(
        const T* __restrict__ w_hh, const T* __restrict__ gx, const T* __restrict__ b_hn,
        const T* __restrict__ h0, const T* __restrict__ c0, T* y, T* h_n, T* c_n,
        int steps, int B, int H, int Kp, int BC, int BT, int KS) {
    constexpr int G = CELL == 0 ? 4 : 3;
    constexpr int RT = MB_PERSIST_RT;
    cg::grid_group grid = cg::this_grid();
    const int P = gridDim.x, p = blockIdx.x, tid = threadIdx.x;
    const int j0 = (int)((long long)p * H / P), j1 = (int)((long long)(p + 1) * H / P);
    const int U = j1 - j0, Umax = (H + P - 1) / P;
    const int R = (G * Umax + RT - 1) / RT * RT;
    const int BCp = (BC + BT - 1) / BT * BT;
    const long long GH = (long long)G * H, BH = (long long)B * H;

    extern __shared__ float4 smem_raw[];
    char* base = reinterpret_cast<char*>(smem_raw);
    size_t off = 0;
    T* wsm = reinterpret_cast<T*>(base + off);       off = align16(off + (size_t)R * Kp * sizeof(T));
    float* hs = reinterpret_cast<float*>(base + off); off = align16(off + (size_t)BCp * Kp * 4);
    float* part = reinterpret_cast<float*>(base + off); off = align16(off + (size_t)KS * R * BCp * 4);
    float* cs = reinterpret_cast<float*>(base + off);
    if (CELL == 0) off = align16(off + (size_t)Umax * B * 4);
    float* bs = reinterpret_cast<float*>(base + off);

    // Once per launch: this block's W_hh rows (zero rows and columns pad R x Kp), c0, b_hn.
    for (int r = 0; r < R; ++r) {
        const bool live = r < G * U;
        const T* src = w_hh + (live ? ((long long)(r / U) * H + j0 + r % U) * H : 0);
        for (int k = tid; k < Kp; k += MB_PERSIST_THREADS)
            wsm[(size_t)r * Kp + k] = (live && k < H) ? src[k] : T(0.f);
    }
    if (CELL == 0) {
        for (int i = tid; i < U * B; i += MB_PERSIST_THREADS) {
            const int u = i % U, b = i / U;
            cs[u * B + b] = load(c0 + (long long)b * H + j0 + u);
        }
    } else {
        for (int u = tid; u < U; u += MB_PERSIST_THREADS) bs[u] = b_hn ? load(b_hn + j0 + u) : 0.f;
    }
    __syncthreads();

    for (int t = 0; t < steps; ++t) {
        const T* hin = t == 0 ? h0 : y + (long long)(t - 1) * BH;
        T* hout = y + (long long)t * BH;
        const T* gxt = gx + (long long)t * B * GH;
        for (int b0 = 0; b0 < B; b0 += BC) {
            const int nb = min(BC, B - b0);
            // Prefetch this thread's first pointwise item's gx: in flight during the dot products.
            float xg[G];
            const int first = tid;
            if (first < U * nb) {
                const int u = first % U, b = first / U;
                const T* src = gxt + (long long)(b0 + b) * GH + j0 + u;
#pragma unroll
                for (int g = 0; g < G; ++g) xg[g] = load(src + (long long)g * H);
            }
            // (1) stage h_{t-1} of the chunk as fp32; padding rows and columns are zero.
            for (int b = 0; b < BCp; ++b) {
                const T* src = hin + (long long)(b0 + b) * H;
                for (int k = tid; k < Kp; k += MB_PERSIST_THREADS)
                    hs[(size_t)b * Kp + k] = (b < nb && k < H) ? load_cg(src + k) : 0.f;
            }
            __syncthreads();
            // (2) dot products of every kept row with every staged batch row
            if (BT == 1) matvec<T, 1>(wsm, hs, part, R, Kp, BCp, KS);
            else if (BT == 2) matvec<T, 2>(wsm, hs, part, R, Kp, BCp, KS);
            else matvec<T, 4>(wsm, hs, part, R, Kp, BCp, KS);
            __syncthreads();
            // (3) pointwise: one thread per (unit, batch row) of the chunk
            for (int i = tid; i < U * nb; i += MB_PERSIST_THREADS) {
                const int u = i % U, b = i / U;
                float a[G];
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const int r = g * U + u;
                    float s = 0.f;
                    for (int ks = 0; ks < KS; ++ks) s += part[((size_t)ks * R + r) * BCp + b];
                    a[g] = s;
                }
                if (i != first) {
                    const T* src = gxt + (long long)(b0 + b) * GH + j0 + u;
#pragma unroll
                    for (int g = 0; g < G; ++g) xg[g] = load(src + (long long)g * H);
                }
                const long long o = (long long)(b0 + b) * H + j0 + u;
                float h;
                if (CELL == 0) {
                    const float ig = sigmoid(xg[0] + a[0]), fg = sigmoid(xg[1] + a[1]);
                    const float gg = tanhf(xg[2] + a[2]), og = sigmoid(xg[3] + a[3]);
                    const float c = fmaf(fg, cs[u * B + b0 + b], ig * gg);
                    cs[u * B + b0 + b] = c;
                    h = og * tanhf(c);
                    if (t == steps - 1 && c_n) store(c_n + o, c);
                } else {
                    const float rg = sigmoid(xg[0] + a[0]), zg = sigmoid(xg[1] + a[1]);
                    const float n = tanhf(fmaf(rg, a[2] + bs[u], xg[2]));
                    const float hp = hs[(size_t)b * Kp + j0 + u];
                    h = fmaf(zg, hp - n, n);
                }
                store(hout + o, h);
                if (t == steps - 1 && h_n) store(h_n + o, h);
            }
            __syncthreads();  // hs and part are overwritten by the next chunk
        }
        if (t + 1 < steps) grid.sync();  // publishes y[t] to every block
    }
}

}  // namespace mbp

#define MB_PERSIST_ENTRY(NAME, T, CELL)                                                          \
    extern "C" __global__ void __launch_bounds__(MB_PERSIST_THREADS, 1) NAME(                   \
            const T* __restrict__ w_hh, const T* __restrict__ gx, const T* __restrict__ b_hn,    \
            const T* __restrict__ h0, const T* __restrict__ c0, T* y, T* h_n, T* c_n,            \
            int steps, int B, int H, int Kp, int BC, int BT, int KS) {                           \
        mbp::rnn_persistent<T, CELL>(w_hh, gx, b_hn, h0, c0, y, h_n, c_n, steps, B, H, Kp, BC,  \
                                     BT, KS);                                                    \
    }

MB_PERSIST_ENTRY(lstm_persistent_f32, float, 0)
MB_PERSIST_ENTRY(lstm_persistent_f16, __half, 0)
MB_PERSIST_ENTRY(lstm_persistent_bf16, __nv_bfloat16, 0)
MB_PERSIST_ENTRY(gru_persistent_f32, float, 1)
MB_PERSIST_ENTRY(gru_persistent_f16, __half, 1)
MB_PERSIST_ENTRY(gru_persistent_bf16, __nv_bfloat16, 1)
